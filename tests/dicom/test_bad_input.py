"""The bad-input table over the network: a valid CT with one thing broken, sent by a pynetdicom SCU.

Every case must get its precise status with the error code in ErrorComment, exactly one rejection row
(and its validation result) with that code and status, the received bytes quarantined, no instance
row, and a node that still answers an echo on a new association.

Each case is written as a file (preamble, file meta, then the data set bytes exactly as they go on the
wire) and sent by path with chunked sending, so pynetdicom neither decodes nor repairs the data set;
the file meta decides the announced SOP Class/Instance UIDs and the presentation context.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pynetdicom._config
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from dicom_node.dicom.dimse_status import Status, primary_code
from dicom_node.dicom.validation import Code
from dicom_node.services.node import Node
from storage.errors import BlobStoreFailed
from storage.models import Instance, Rejection, ValidationResult
from tests.conftest import NodeMaker
from tests.harness.datasets import make_ct


@dataclass(frozen=True, slots=True)
class Sent:
    path: Path
    dataset_bytes: bytes
    sop_instance_uid: str  # as announced (AffectedSOPInstanceUID)


def wire_file(
    dataset_bytes: bytes,
    directory: Path,
    *,
    sop_class_uid: str = CTImageStorage,
    sop_instance_uid: str | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Sent:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid or generate_uid())
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid_name()}.dcm"
    path.write_bytes(buffer.getvalue() + dataset_bytes)
    return Sent(path, dataset_bytes, str(meta.MediaStorageSOPInstanceUID))


_counter = iter(range(1_000_000))


def uuid_name() -> str:
    return f"case{next(_counter)}"


def encoded(ds: Dataset) -> bytes:
    data = encode(ds, False, True)
    assert data is not None
    return data


def ct_file(directory: Path, change: Callable[[Dataset], None] | None = None, **meta: str) -> Sent:
    """A valid CT with `change` applied to its data set, announced as the CT it was (unless `meta` says)."""
    ds = make_ct()
    announced = {"sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID), **meta}
    ds["PixelData"].VR = "OW"  # resolved now: a case may delete BitsAllocated, which decides it
    if change is not None:
        change(ds)
    return wire_file(encoded(ds), directory, **announced)


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        delattr(ds, keyword)

    return change


def _set(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return change


def _short_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:-64]  # complete element, wrong length for 64 x 64 x 16 bits


def _truncated(directory: Path) -> Sent:
    sent = ct_file(directory)
    cut = sent.dataset_bytes[:-1000]  # the sender stopped inside the pixel data
    return wire_file(cut, directory, sop_instance_uid=sent.sop_instance_uid)


def _garbage(directory: Path) -> Sent:
    return wire_file(b"This is not a DICOM data set; it is text sent as one.\r\n" * 8, directory)


def _garbage_deflated(directory: Path) -> Sent:
    return wire_file(b"\xde\xad\xbe\xef" * 64, directory, transfer_syntax_uid=DeflatedExplicitVRLittleEndian)


def _unterminated_sequence(directory: Path) -> Sent:
    ds = make_ct()
    head = encoded(ds)
    # An undefined-length sequence whose item is never closed, where the data set ends.
    broken = head + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00"
    return wire_file(broken, directory, sop_instance_uid=str(ds.SOPInstanceUID))


LONG_UID = "1." + "2" * 63  # 65 characters


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Sent]
    status: Status
    code: str
    settings: dict[str, object] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "garbage_bytes": Case(_garbage, Status.CANNOT_UNDERSTAND, Code.UNREADABLE),
    "garbage_bytes_deflated": Case(_garbage_deflated, Status.CANNOT_UNDERSTAND, Code.UNREADABLE),
    "unterminated_sequence": Case(_unterminated_sequence, Status.CANNOT_UNDERSTAND, Code.UNREADABLE),
    "truncated_pixel_data": Case(_truncated, Status.TRUNCATED, Code.TRUNCATED),
    "sop_class_not_context": Case(
        lambda d: ct_file(d, _set(SOPClassUID=MRImageStorage)),
        Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        Code.SOP_CLASS_MISMATCH,
    ),
    "sop_instance_not_affected": Case(
        lambda d: ct_file(d, sop_instance_uid=generate_uid()),
        Status.SOP_INSTANCE_UID_MISMATCH,
        Code.SOP_INSTANCE_UID_MISMATCH,
    ),
    **{
        f"missing_{keyword}": Case(
            lambda d, keyword=keyword: ct_file(d, _delete(keyword)), Status.TYPE1_MISSING, Code.TYPE1_MISSING
        )
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "Modality",
            "SOPInstanceUID",
            "SOPClassUID",
            "Rows",
            "Columns",
            "BitsAllocated",
            "PhotometricInterpretation",
            "SamplesPerPixel",
        )
    },
    "empty_Modality": Case(lambda d: ct_file(d, _set(Modality="")), Status.TYPE1_MISSING, Code.TYPE1_MISSING),
    "uid_leading_zero": Case(
        lambda d: ct_file(d, _set(StudyInstanceUID="1.2.03.4")), Status.UID_INVALID, Code.UID_INVALID
    ),
    "uid_65_chars": Case(
        lambda d: ct_file(d, _set(SeriesInstanceUID=LONG_UID)), Status.UID_INVALID, Code.UID_INVALID
    ),
    "uid_letters": Case(
        lambda d: ct_file(d, _set(StudyInstanceUID="1.2.abc.4")), Status.UID_INVALID, Code.UID_INVALID
    ),
    "photometric_unknown": Case(
        lambda d: ct_file(d, _set(PhotometricInterpretation="MONOCHROME3")),
        Status.PHOTOMETRIC_UNKNOWN,
        Code.PHOTOMETRIC_UNKNOWN,
    ),
    "bits_stored_exceeds_allocated": Case(
        lambda d: ct_file(d, _set(BitsStored=17, HighBit=16)),
        Status.BITS_STORED_EXCEEDS_ALLOCATED,
        Code.BITS_STORED_EXCEEDS_ALLOCATED,
    ),
    "rows_beyond_max": Case(
        ct_file, Status.DIMENSIONS_OUT_OF_BOUNDS, Code.DIMENSIONS_OUT_OF_BOUNDS, {"max_rows": 63}
    ),
    "columns_beyond_max": Case(
        ct_file, Status.DIMENSIONS_OUT_OF_BOUNDS, Code.DIMENSIONS_OUT_OF_BOUNDS, {"max_columns": 32}
    ),
    "zero_rows": Case(
        lambda d: ct_file(d, _set(Rows=0, PixelData=b"")),
        Status.DIMENSIONS_OUT_OF_BOUNDS,
        Code.DIMENSIONS_OUT_OF_BOUNDS,
    ),
    "native_pixel_length_mismatch": Case(
        lambda d: ct_file(d, _short_pixels),
        Status.PIXEL_DATA_LENGTH_MISMATCH,
        Code.PIXEL_DATA_LENGTH_MISMATCH,
    ),
    "modality_not_allowed": Case(
        ct_file,
        Status.SOP_CLASS_NOT_SUPPORTED,
        Code.MODALITY_NOT_ALLOWED,
        {"modality_allowlist": ["MR", "US"]},
    ),
}


# -- node, sending, checking ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _raw_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    # Send each file's data set bytes as they are; let pydicom write the invalid values the cases need.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)


def _no_delay(event: evt.Event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send(port: int, sent: Sent) -> Dataset:
    meta, _ = split_dataset(sent.path)
    ae = AE(ae_title="BADINPUT")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="DICOM_NODE", evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)]
    )
    assert assoc.is_established
    try:
        response = assoc.send_c_store(sent.path)
    finally:
        if assoc.is_established:
            assoc.release()
    assert "Status" in response, "no C-STORE response: the association was aborted"
    return response


def echo_succeeds(port: int) -> bool:
    ae = AE(ae_title="BADINPUT")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().get("Status", -1)) == Status.SUCCESS
    finally:
        assoc.release()


def assert_refused(response: Dataset, status: Status, code: str) -> None:
    assert (int(response.Status), str(response.get("ErrorComment"))) == (int(status), code)


def assert_recorded(node: Node, sent: Sent, status: Status, code: str) -> None:
    with node.sessions() as session:
        rejections = session.scalars(select(Rejection)).all()
        assert len(rejections) == 1
        rejection = rejections[0]
        codes = rejection.codes.split(",")
        assert code in codes and primary_code(codes) == code
        assert rejection.status == int(status)
        assert rejection.calling_ae_title == "BADINPUT"
        results = session.scalars(
            select(ValidationResult).where(ValidationResult.rejection_id == rejection.id)
        ).all()
        assert [(r.passed, r.codes) for r in results] == [(False, rejection.codes)]
        instance_rows = session.scalars(
            select(Instance).where(Instance.original_sop_instance_uid == sent.sop_instance_uid)
        ).all()
        assert instance_rows == []
    assert rejection.quarantine_key is not None and rejection.quarantine_key.startswith("quarantine/")
    quarantined = node.blobs.path_of(rejection.quarantine_key)
    assert quarantined.is_relative_to(node.blobs.root / "quarantine")
    assert quarantined.read_bytes()[split_dataset(quarantined)[1] :] == sent.dataset_bytes


# -- the tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_name", list(CASES))
def test_bad_input_is_refused_precisely(case_name: str, make_node: NodeMaker, tmp_path: Path) -> None:
    case = CASES[case_name]
    node, server = make_node(**case.settings)
    sent = case.make(tmp_path / "in")
    response = send(server.port, sent)
    assert_refused(response, case.status, case.code)
    assert_recorded(node, sent, case.status, case.code)
    assert echo_succeeds(server.port)


def test_valid_ct_is_stored(make_node: NodeMaker, tmp_path: Path) -> None:
    """The baseline every case breaks: unchanged, the same file is stored."""
    node, server = make_node()
    sent = ct_file(tmp_path / "in")
    response = send(server.port, sent)
    assert int(response.Status) == Status.SUCCESS
    with node.sessions() as session:
        assert session.scalars(select(Rejection)).all() == []
        row = session.scalars(select(Instance)).one()
    assert row.original_sop_instance_uid == sent.sop_instance_uid
    stored = node.blobs.path_of(row.blob_key)
    assert stored.read_bytes()[split_dataset(stored)[1] :] == sent.dataset_bytes


def test_series_already_in_another_study_is_refused(make_node: NodeMaker, tmp_path: Path) -> None:
    node, server = make_node()
    series_uid = generate_uid()
    first = wire_file(
        encoded(ds := make_ct(series_uid=series_uid)), tmp_path / "in", sop_instance_uid=ds.SOPInstanceUID
    )
    assert int(send(server.port, first).Status) == Status.SUCCESS
    second = wire_file(
        encoded(ds := make_ct(series_uid=series_uid, instance_number=2)),
        tmp_path / "in",
        sop_instance_uid=ds.SOPInstanceUID,
    )
    response = send(server.port, second)
    assert_refused(response, Status.SERIES_IN_OTHER_STUDY, Code.SERIES_IN_OTHER_STUDY)
    assert_recorded(node, second, Status.SERIES_IN_OTHER_STUDY, Code.SERIES_IN_OTHER_STUDY)
    with node.sessions() as session:
        assert [row.original_sop_instance_uid for row in session.scalars(select(Instance))] == [
            first.sop_instance_uid
        ]
    assert echo_succeeds(server.port)


def test_store_directory_unusable_is_out_of_resources(make_node: NodeMaker, tmp_path: Path) -> None:
    """The store tree cannot take the file (a regular file where the directory was): A700, nothing stored.

    (chmod would not do: the tests run as root, and root ignores permissions.) The failure is recorded
    as a rejection row with the status the sender was given; the sender retries once the disk is fixed.
    """
    node, server = make_node()
    store = node.blobs.root / "store"
    shutil.rmtree(store)
    store.write_bytes(b"not a directory")
    sent = ct_file(tmp_path / "in")
    response = send(server.port, sent)
    assert_refused(response, Status.OUT_OF_RESOURCES, BlobStoreFailed.code)
    with node.sessions() as session:
        assert session.scalars(select(Instance)).all() == []
        rejection = session.scalars(select(Rejection)).one()
    assert rejection.codes == BlobStoreFailed.code
    assert rejection.status == int(Status.OUT_OF_RESOURCES)
    assert echo_succeeds(server.port)

    # Once the disk is fixed, the sender's retry is stored.
    store.unlink()
    store.mkdir()
    assert int(send(server.port, sent).Status) == Status.SUCCESS
    with node.sessions() as session:
        assert [row.original_sop_instance_uid for row in session.scalars(select(Instance))] == [
            sent.sop_instance_uid
        ]
