"""The error tables: every validation code has a status, every error class a DIMSE answer."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_node.core import errors as core_errors
from dicom_node.core.errors import DicomNodeError, InstanceRejected, PeerNotFound, SettingsInvalid
from dicom_node.dicom.dimse_status import CODE_STATUS, Status, primary_code, status_for_codes
from dicom_node.dicom.validation import Code
from dicom_node.net.status import ERROR_STATUS, INTERNAL_ERROR_CODE, status_for_error
from storage import errors as storage_errors
from storage.errors import BlobNotFound, BlobStoreFailed, DatabaseUnavailable, StorageError

VALIDATION_CODES = sorted(value for name, value in vars(Code).items() if name.isupper())


def _error_classes(module: ModuleType) -> list[type[Exception]]:
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == module.__name__
    ]


ERROR_CLASSES = _error_classes(core_errors) + _error_classes(storage_errors)


def test_the_code_list_is_what_we_think_it_is() -> None:
    assert len(VALIDATION_CODES) == 12
    assert all(code.startswith("instance.") for code in VALIDATION_CODES)
    assert len(set(VALIDATION_CODES)) == len(VALIDATION_CODES)


@pytest.mark.parametrize("code", VALIDATION_CODES)
def test_every_validation_code_maps_to_a_failure_status(code: str) -> None:
    assert code in CODE_STATUS
    status = CODE_STATUS[code]
    assert status not in (Status.SUCCESS, Status.PENDING, Status.CANCEL)
    assert status_for_codes([code]) is status


def test_storage_failures_recorded_as_rejections_ask_for_a_retry() -> None:
    for cls in (BlobStoreFailed, DatabaseUnavailable):
        assert CODE_STATUS[cls.code] is Status.OUT_OF_RESOURCES


def test_every_status_value_is_a_distinct_sixteen_bit_value() -> None:
    values = [int(s) for s in Status]
    assert len(values) == len(set(values))
    assert all(0 <= value <= 0xFFFF for value in values)


def test_the_error_tree_is_found() -> None:
    names = {cls.__name__ for cls in ERROR_CLASSES}
    assert {
        "DicomNodeError",
        "SettingsInvalid",
        "InstanceRejected",
        "StorageError",
        "BlobStoreFailed",
    } <= names


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_is_in_the_status_table(cls: type[Exception]) -> None:
    assert cls is InstanceRejected or cls in ERROR_STATUS


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_has_a_code_and_a_message_of_its_own(cls: type[Exception]) -> None:
    code = getattr(cls, "code", None)
    assert isinstance(code, str)
    assert "." in code
    assert (cls.__doc__ or "").strip(), "the docstring is the default message"
    if cls is not InstanceRejected:
        assert str(cls()) == (cls.__doc__ or "").strip().splitlines()[0]


def test_error_codes_are_unique() -> None:
    codes = [cls.code for cls in ERROR_CLASSES]  # type: ignore[attr-defined]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (BlobStoreFailed(), Status.OUT_OF_RESOURCES, "storage.blob_write_failed"),
        (BlobNotFound(), Status.OUT_OF_RESOURCES, "storage.blob_not_found"),
        (DatabaseUnavailable(), Status.OUT_OF_RESOURCES, "storage.database_unavailable"),
        (StorageError(), Status.OUT_OF_RESOURCES, "storage.error"),
        (PeerNotFound(), Status.MOVE_DESTINATION_UNKNOWN, "peer.not_found"),
        (SettingsInvalid("x"), Status.OUT_OF_RESOURCES, "settings.invalid"),
        (DicomNodeError(), Status.CANNOT_UNDERSTAND, "node.error"),
        (RuntimeError("1.2.826.0.1.3680043.8.498.4711"), Status.OUT_OF_RESOURCES, INTERNAL_ERROR_CODE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_status_for_error(error: Exception, status: Status, code: str) -> None:
    assert status_for_error(error) == (status, code)


def test_a_subclass_resolves_along_the_mro() -> None:
    class DiskFull(BlobStoreFailed):
        """The disk is full."""

    assert status_for_error(DiskFull()) == (Status.OUT_OF_RESOURCES, "storage.blob_write_failed")


def test_a_rejection_is_answered_by_its_most_fundamental_code() -> None:
    rejected = InstanceRejected((Code.PIXEL_DATA_LENGTH_MISMATCH, Code.TYPE1_MISSING))
    assert status_for_error(rejected) == (Status.TYPE1_MISSING, Code.TYPE1_MISSING)


# --- precedence ----------------------------------------------------------------------------------

PRECEDENCE = list(CODE_STATUS)


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([Code.TYPE1_MISSING, Code.UNREADABLE], Status.CANNOT_UNDERSTAND),
        ([Code.PIXEL_DATA_LENGTH_MISMATCH, Code.TRUNCATED], Status.TRUNCATED),
        ([Code.UID_INVALID, Code.SOP_CLASS_MISMATCH], Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ([Code.PHOTOMETRIC_UNKNOWN, Code.UID_INVALID], Status.UID_INVALID),
        ([Code.MODALITY_NOT_ALLOWED, Code.TRUNCATED], Status.SOP_CLASS_NOT_SUPPORTED),
        ([Code.SERIES_IN_OTHER_STUDY, Code.DIMENSIONS_OUT_OF_BOUNDS], Status.DIMENSIONS_OUT_OF_BOUNDS),
        (["instance.from_the_future"], Status.CANNOT_UNDERSTAND),
        (["instance.from_the_future", Code.PHOTOMETRIC_UNKNOWN], Status.PHOTOMETRIC_UNKNOWN),
    ],
)
def test_status_for_codes_precedence(codes: list[str], expected: Status) -> None:
    assert status_for_codes(codes) is expected
    assert status_for_codes(list(reversed(codes))) is expected


def test_no_codes_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        status_for_codes([])


@given(st.lists(st.sampled_from(PRECEDENCE), min_size=1, unique=True), st.randoms())
def test_the_first_listed_code_decides_whatever_the_order(codes: list[str], rnd: object) -> None:
    expected = min(codes, key=PRECEDENCE.index)
    shuffled = list(codes)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert primary_code(shuffled) == expected
    assert status_for_codes(shuffled) is CODE_STATUS[expected]
