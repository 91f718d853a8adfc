"""dicom_node.dicom.validation on synthetic files: one test per code, the UID rule, pixel lengths.

Each case writes a real file and reads it with `read_instance`, as ingest does, because several
checks (truncation, deferred pixel data) depend on how the bytes were parsed. SERIES_IN_OTHER_STUDY
needs the database and is covered in tests/services/test_ingest.py.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from dicom_node.dicom.validation import (
    Code,
    ReceiveContext,
    UnreadableInstance,
    ValidationRules,
    read_instance,
    validate_instance,
)
from tests.harness import datasets

RULES = ValidationRules(max_rows=65535, max_columns=65535, modality_allowlist=frozenset())


def context_of(ds: Dataset, **changes: str) -> ReceiveContext:
    values = {
        "context_sop_class_uid": str(ds.SOPClassUID),
        "affected_sop_class_uid": str(ds.SOPClassUID),
        "affected_sop_instance_uid": str(ds.SOPInstanceUID),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
    }
    values.update(changes)
    return ReceiveContext(**values)


def write(ds: Dataset, directory: Path) -> Path:
    path = directory / f"{uuid.uuid4().hex}.dcm"
    with pydicom_config.disable_value_validation():  # some cases are invalid on purpose
        datasets.write(ds, path)
    return path


def check(
    ds: Dataset,
    directory: Path,
    *,
    rules: ValidationRules = RULES,
    context: ReceiveContext | None = None,
    truncate_by: int = 0,
) -> list[str]:
    path = write(ds, directory)
    if truncate_by:
        data = path.read_bytes()
        path.write_bytes(data[:-truncate_by])
    ctx = context or context_of(ds)
    parsed = read_instance(path, transfer_syntax_uid=ctx.transfer_syntax_uid)
    return validate_instance(parsed, context=ctx, rules=rules)


def small_ct(**kwargs: object) -> Dataset:
    return datasets.make_ct(rows=8, columns=8, **kwargs)  # type: ignore[arg-type]


# --- one test per code ---------------------------------------------------------------------------


def test_a_valid_instance_has_no_codes(tmp_path: Path) -> None:
    assert check(small_ct(), tmp_path) == []


def test_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"\x00" * 10 + b"not dicom" * 50)
    with pytest.raises(UnreadableInstance) as raised:
        read_instance(path, transfer_syntax_uid="1.2.840.10008.1.2.1")
    assert raised.value.code == Code.UNREADABLE


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableInstance):
        read_instance(tmp_path / "absent.dcm", transfer_syntax_uid="1.2.840.10008.1.2.1")


@pytest.mark.parametrize("cut", [2, 100, 4000])
def test_truncated_in_the_pixel_data(tmp_path: Path, cut: int) -> None:
    codes = check(datasets.make_ct(rows=64, columns=64), tmp_path, truncate_by=cut)
    assert codes[0] == Code.TRUNCATED


def test_truncated_in_deferred_pixel_data(tmp_path: Path) -> None:
    codes = check(datasets.make_ct(rows=256, columns=256), tmp_path, truncate_by=1000)
    assert codes[0] == Code.TRUNCATED


def _document(size: int) -> Dataset:
    """A data set whose last element is a large non-pixel value (an encapsulated document)."""
    ds = datasets.make_ct(rows=1, columns=1)
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = bytes(size)
    return ds


def test_truncated_in_a_small_trailing_non_pixel_element(tmp_path: Path) -> None:
    assert check(_document(4000), tmp_path, truncate_by=1000) == [Code.TRUNCATED]


def test_truncated_in_a_large_deferred_trailing_non_pixel_element(tmp_path: Path) -> None:
    """Above read_instance's defer_size the last element is deferred; truncation must still show."""
    assert check(_document(200_000), tmp_path) == []
    assert check(_document(200_000), tmp_path, truncate_by=1000) == [Code.TRUNCATED]


def test_sop_class_mismatch_between_context_and_command(tmp_path: Path) -> None:
    ds = small_ct()
    codes = check(ds, tmp_path, context=context_of(ds, context_sop_class_uid=MRImageStorage))
    assert codes == [Code.SOP_CLASS_MISMATCH]


def test_sop_class_mismatch_between_command_and_data_set(tmp_path: Path) -> None:
    ds = small_ct()
    context = context_of(ds, context_sop_class_uid=MRImageStorage, affected_sop_class_uid=MRImageStorage)
    assert check(ds, tmp_path, context=context) == [Code.SOP_CLASS_MISMATCH]


def test_sop_instance_uid_mismatch(tmp_path: Path) -> None:
    ds = small_ct()
    codes = check(ds, tmp_path, context=context_of(ds, affected_sop_instance_uid=generate_uid()))
    assert codes == [Code.SOP_INSTANCE_UID_MISMATCH]


@pytest.mark.parametrize(
    "keyword",
    [
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ],
)
def test_type1_missing(tmp_path: Path, keyword: str) -> None:
    ds = small_ct()
    context = context_of(ds)
    ds["PixelData"].VR = "OW"  # so it can be written without BitsAllocated
    delattr(ds, keyword)
    assert Code.TYPE1_MISSING in check(ds, tmp_path, context=context)


def test_type1_present_but_empty(tmp_path: Path) -> None:
    ds = small_ct()
    ds.Modality = ""
    assert check(ds, tmp_path) == [Code.TYPE1_MISSING]


def test_image_pixel_attributes_are_not_required_without_pixel_data(tmp_path: Path) -> None:
    ds = small_ct()
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        delattr(ds, keyword)
    assert check(ds, tmp_path) == []


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_uid_invalid(tmp_path: Path, keyword: str) -> None:
    ds = small_ct()
    setattr(ds, keyword, "1.2.826.0.01.5")
    assert check(ds, tmp_path) == [Code.UID_INVALID]


def test_photometric_unknown(tmp_path: Path) -> None:
    ds = small_ct()
    ds.PhotometricInterpretation = "MONOCHROME3"
    assert check(ds, tmp_path) == [Code.PHOTOMETRIC_UNKNOWN]


def test_bits_stored_exceeds_allocated(tmp_path: Path) -> None:
    ds = small_ct()
    ds.BitsStored = 17
    assert check(ds, tmp_path) == [Code.BITS_STORED_EXCEEDS_ALLOCATED]


@pytest.mark.parametrize(("max_rows", "max_columns"), [(7, 65535), (65535, 7)])
def test_dimensions_out_of_bounds(tmp_path: Path, max_rows: int, max_columns: int) -> None:
    rules = ValidationRules(max_rows=max_rows, max_columns=max_columns, modality_allowlist=frozenset())
    assert check(small_ct(), tmp_path, rules=rules) == [Code.DIMENSIONS_OUT_OF_BOUNDS]


def test_dimensions_at_the_limit_are_accepted(tmp_path: Path) -> None:
    rules = ValidationRules(max_rows=8, max_columns=8, modality_allowlist=frozenset())
    assert check(small_ct(), tmp_path, rules=rules) == []


def test_zero_rows_is_out_of_bounds(tmp_path: Path) -> None:
    ds = small_ct()
    ds.Rows = 0
    ds.PixelData = b""
    assert Code.DIMENSIONS_OUT_OF_BOUNDS in check(ds, tmp_path)


def test_pixel_data_length_mismatch(tmp_path: Path) -> None:
    ds = small_ct()
    ds.PixelData = ds.PixelData[:-2]
    assert check(ds, tmp_path) == [Code.PIXEL_DATA_LENGTH_MISMATCH]


def test_modality_not_allowed(tmp_path: Path) -> None:
    rules = ValidationRules(max_rows=65535, max_columns=65535, modality_allowlist=frozenset({"MR"}))
    assert check(small_ct(), tmp_path, rules=rules) == [Code.MODALITY_NOT_ALLOWED]
    allowed = ValidationRules(max_rows=65535, max_columns=65535, modality_allowlist=frozenset({"CT"}))
    assert check(small_ct(), tmp_path, rules=allowed) == []


def test_several_failures_are_all_reported(tmp_path: Path) -> None:
    ds = small_ct()
    ds.PhotometricInterpretation = "NOPE"
    ds.StudyInstanceUID = "1.2.3.04"
    codes = check(ds, tmp_path, context=context_of(ds, affected_sop_instance_uid=generate_uid()))
    assert codes == [Code.SOP_INSTANCE_UID_MISMATCH, Code.UID_INVALID, Code.PHOTOMETRIC_UNKNOWN]


# --- the UID rule, with hypothesis ---------------------------------------------------------------

_component = st.integers(min_value=0, max_value=10**15).map(str)
_components = st.lists(_component, min_size=2, max_size=12)
valid_uids = _components.map(".".join).filter(lambda uid: len(uid) <= 64)
_UID_KEYWORDS = st.sampled_from(["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])


@st.composite
def leading_zero_uids(draw: st.DrawFn) -> str:
    parts = draw(_components)
    index = draw(st.integers(min_value=0, max_value=len(parts) - 1))
    parts[index] = "0" + draw(st.integers(min_value=0, max_value=10**6).map(str))
    return ".".join(parts)


@st.composite
def empty_component_uids(draw: st.DrawFn) -> str:
    parts = draw(_components)
    parts.insert(draw(st.integers(min_value=0, max_value=len(parts))), "")
    return ".".join(parts)


@st.composite
def non_digit_uids(draw: st.DrawFn) -> str:
    uid = draw(valid_uids)
    where = draw(st.integers(min_value=0, max_value=len(uid)))
    bad = draw(st.sampled_from("abcXYZ-+_/:;,!?*#=()[]"))
    return uid[:where] + bad + uid[where:]


too_long_uids = st.lists(_component, min_size=2, max_size=40).map(".".join).filter(lambda uid: len(uid) > 64)
invalid_uids = st.one_of(leading_zero_uids(), empty_component_uids(), non_digit_uids(), too_long_uids)


def _uid_codes(directory: Path, keyword: str, uid: str) -> list[str]:
    ds = datasets.make_ct(rows=1, columns=1)
    setattr(ds, keyword, uid)
    return check(ds, directory)


_HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_HYPOTHESIS
@given(uid=valid_uids, keyword=_UID_KEYWORDS)
def test_generated_valid_uids_are_accepted(
    tmp_path_factory: pytest.TempPathFactory, uid: str, keyword: str
) -> None:
    assert _uid_codes(tmp_path_factory.getbasetemp(), keyword, uid) == []


@_HYPOTHESIS
@given(uid=invalid_uids, keyword=_UID_KEYWORDS)
def test_generated_invalid_uids_are_rejected(
    tmp_path_factory: pytest.TempPathFactory, uid: str, keyword: str
) -> None:
    assert _uid_codes(tmp_path_factory.getbasetemp(), keyword, uid) == [Code.UID_INVALID]


def test_a_64_character_uid_is_accepted_and_65_is_not(tmp_path: Path) -> None:
    uid64 = "1.2." + "1" * 60
    assert len(uid64) == 64
    assert _uid_codes(tmp_path, "StudyInstanceUID", uid64) == []
    assert _uid_codes(tmp_path, "StudyInstanceUID", uid64 + "1") == [Code.UID_INVALID]


# --- native pixel data length --------------------------------------------------------------------


def native(
    *,
    rows: int,
    columns: int,
    bits_allocated: int,
    pixel_bytes: int,
    samples: int = 1,
    frames: int | None = None,
) -> Dataset:
    ds = datasets.make_ct(rows=rows, columns=columns)
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_allocated if bits_allocated < 16 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.SamplesPerPixel = samples
    if samples == 3:
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes(pixel_bytes)
    return ds


@pytest.mark.parametrize(
    ("case", "ds", "accepted"),
    [
        ("8-bit exact", native(rows=4, columns=4, bits_allocated=8, pixel_bytes=16), True),
        ("8-bit short", native(rows=4, columns=4, bits_allocated=8, pixel_bytes=14), False),
        ("8-bit long", native(rows=4, columns=4, bits_allocated=8, pixel_bytes=18), False),
        ("8-bit odd, written as is", native(rows=3, columns=3, bits_allocated=8, pixel_bytes=9), True),
        ("8-bit odd, padded to even", native(rows=3, columns=3, bits_allocated=8, pixel_bytes=10), True),
        ("8-bit odd, short", native(rows=3, columns=3, bits_allocated=8, pixel_bytes=8), False),
        ("8-bit odd, over the pad", native(rows=3, columns=3, bits_allocated=8, pixel_bytes=12), False),
        ("16-bit exact", native(rows=4, columns=4, bits_allocated=16, pixel_bytes=32), True),
        ("16-bit short", native(rows=4, columns=4, bits_allocated=16, pixel_bytes=30), False),
        ("16-bit as if 8-bit", native(rows=4, columns=4, bits_allocated=16, pixel_bytes=16), False),
        ("16-bit odd dims", native(rows=3, columns=3, bits_allocated=16, pixel_bytes=18), True),
        ("32-bit exact", native(rows=2, columns=2, bits_allocated=32, pixel_bytes=16), True),
        ("RGB exact", native(rows=4, columns=4, bits_allocated=8, samples=3, pixel_bytes=48), True),
        ("RGB one plane", native(rows=4, columns=4, bits_allocated=8, samples=3, pixel_bytes=16), False),
        ("multi-frame exact", native(rows=4, columns=4, bits_allocated=16, frames=3, pixel_bytes=96), True),
        (
            "multi-frame one frame",
            native(rows=4, columns=4, bits_allocated=16, frames=3, pixel_bytes=32),
            False,
        ),
        (
            "multi-frame 8-bit odd",
            native(rows=3, columns=3, bits_allocated=8, frames=3, pixel_bytes=28),
            True,
        ),
        ("1-bit 5x5 packed", native(rows=5, columns=5, bits_allocated=1, pixel_bytes=4), True),
        ("1-bit 5x5 as bytes", native(rows=5, columns=5, bits_allocated=1, pixel_bytes=25), False),
        ("1-bit 3x3 odd packed", native(rows=3, columns=3, bits_allocated=1, pixel_bytes=2), True),
        ("1-bit 8x8 exact", native(rows=8, columns=8, bits_allocated=1, pixel_bytes=8), True),
        ("1-bit 8x8 short", native(rows=8, columns=8, bits_allocated=1, pixel_bytes=6), False),
        (
            "1-bit multi-frame packed",
            native(rows=3, columns=3, bits_allocated=1, frames=3, pixel_bytes=4),
            True,
        ),
        (
            "1-bit multi-frame per frame",
            native(rows=3, columns=3, bits_allocated=1, frames=3, pixel_bytes=6),
            False,
        ),
        ("deferred exact", native(rows=200, columns=200, bits_allocated=16, pixel_bytes=80000), True),
        ("deferred short", native(rows=200, columns=200, bits_allocated=16, pixel_bytes=79998), False),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_native_pixel_data_length(tmp_path: Path, case: str, ds: Dataset, accepted: bool) -> None:
    codes = check(ds, tmp_path)
    assert codes == ([] if accepted else [Code.PIXEL_DATA_LENGTH_MISMATCH]), case


# --- encapsulated pixel data is not length-checked -----------------------------------------------


def _jpeg2000(tmp_path: Path) -> tuple[Path, Dataset]:
    source = get_testdata_file("JPEG2000.dcm")
    assert source is not None
    path = tmp_path / "jpeg2000.dcm"
    shutil.copyfile(str(source), path)
    return path, dcmread(path)


def test_encapsulated_pixel_data_passes_without_being_read(tmp_path: Path) -> None:
    path, ds = _jpeg2000(tmp_path)
    context = context_of(ds)
    parsed = read_instance(path, transfer_syntax_uid=context.transfer_syntax_uid)
    assert "PixelData" not in parsed.dataset
    assert validate_instance(parsed, context=context, rules=RULES) == []


def test_encapsulated_pixel_data_is_not_length_checked(tmp_path: Path) -> None:
    _, ds = _jpeg2000(tmp_path)
    ds.Rows = ds.Rows * 4  # the fragments now hold far fewer bytes than Rows x Columns implies
    ds.NumberOfFrames = 7
    assert check(ds, tmp_path) == []


def test_encapsulated_image_attributes_are_still_checked(tmp_path: Path) -> None:
    _, ds = _jpeg2000(tmp_path)
    ds.PhotometricInterpretation = "MONOCHROME3"
    assert check(ds, tmp_path) == [Code.PHOTOMETRIC_UNKNOWN]
    _, ds = _jpeg2000(tmp_path)
    del ds.BitsStored
    assert check(ds, tmp_path) == [Code.TYPE1_MISSING]
