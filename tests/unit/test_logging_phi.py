"""The JSON log formatter keeps PHI out, and a real receive leaves no canary in logs or metrics."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from dicom_node.core.errors import InstanceRejected
from dicom_node.core.observability import (
    JsonFormatter,
    assoc_id,
    bound,
    configure_logging,
    correlation_id,
    job_id,
)
from dicom_node.dicom.validation import ReceiveContext
from dicom_node.services.ingest import ReceivedInstance, receive_instance
from dicom_node.services.node import Node
from dicom_node.services.studies import complete_idle_studies
from storage.errors import BlobStoreFailed
from tests.harness import datasets

FIXED_KEYS = {"ts", "level", "logger", "event", "msg", "correlation_id", "assoc_id", "job_id", "pid"}
MRN_UID = "1.2.826.0.1.3680043.8.498.4711"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the rest of the suite."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("pynetdicom", "pydicom", "alembic", "sqlalchemy", "sqlalchemy.engine")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"tests.phi.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


# --- the formatter -------------------------------------------------------------------------------


def test_one_json_object_per_record_with_the_fixed_keys(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    logger.info("first")
    logger.warning("second\nline")
    records = lines(stream)
    assert len(records) == 2
    for record in records:
        assert set(record) == FIXED_KEYS
    first, second = records
    assert first["level"] == "INFO"
    assert first["logger"] == logger.name
    assert first["event"] == "log"
    assert first["msg"] == "first"
    assert (first["correlation_id"], first["assoc_id"], first["job_id"]) == (None, None, None)
    assert str(first["ts"]).endswith("+00:00")
    assert second["msg"] == "second\nline"
    assert second["level"] == "WARNING"


def test_correlation_ids_are_included(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    with bound(correlation_id, "req_1"), bound(assoc_id, "assoc_2"), bound(job_id, "job_3"):
        logger.info("inside", extra={"event": "something"})
    logger.info("outside")
    inside, outside = lines(stream)
    assert (inside["correlation_id"], inside["assoc_id"], inside["job_id"]) == ("req_1", "assoc_2", "job_3")
    assert inside["event"] == "something"
    assert outside["correlation_id"] is None


def test_allow_listed_extras_are_kept_and_others_dropped(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.info(
        "stored",
        extra={
            "outcome": "stored",
            "count": 3,
            "instance_ref": "ins_0123",
            "patient_name": datasets.PATIENT_NAME_CANARY,
            "patient_id": datasets.PATIENT_ID_CANARY,
            "sop_instance_uid": MRN_UID,
            "dataset": {"PatientID": datasets.PATIENT_ID_CANARY},
        },
    )
    (record,) = lines(stream)
    assert set(record) == FIXED_KEYS | {"outcome", "count", "instance_ref"}
    assert (record["outcome"], record["count"], record["instance_ref"]) == ("stored", 3, "ins_0123")
    text = stream.getvalue()
    assert "CANARY" not in text
    assert "4711" not in text


def test_uids_are_redacted_from_messages_and_string_extras(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.info("study %s of sop class %s", MRN_UID, CT_IMAGE_STORAGE, extra={"reason": f"uid={MRN_UID}"})
    (record,) = lines(stream)
    assert record["msg"] == f"study <uid> of sop class {CT_IMAGE_STORAGE}"
    assert record["reason"] == "uid=<uid>"
    assert "4711" not in stream.getvalue()


def test_standard_uids_are_kept_in_extras(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    logger.info("x", extra={"sop_class": CT_IMAGE_STORAGE, "transfer_syntax": "1.2.840.10008.1.2.4.91"})
    (record,) = lines(stream)
    assert (record["sop_class"], record["transfer_syntax"]) == (CT_IMAGE_STORAGE, "1.2.840.10008.1.2.4.91")


def test_a_uid_that_only_starts_like_a_standard_one_is_redacted(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.info("a %s b", "1.2.840.100084.4711.5.6")
    (record,) = lines(stream)
    assert record["msg"] == "a <uid> b"


def test_a_uid_inside_a_non_string_allow_listed_extra_is_redacted(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    """An allow-listed key does not make its value safe: a list or dict may carry a UID too."""
    logger, stream = json_log
    logger.info("x", extra={"reason": [MRN_UID], "outcome": {"study": MRN_UID}})
    assert "4711" not in stream.getvalue()


@pytest.mark.parametrize("glue", ["sop_", "uid", "x", "_"])
def test_a_uid_glued_to_a_word_is_redacted(json_log: tuple[logging.Logger, io.StringIO], glue: str) -> None:
    logger, stream = json_log
    logger.info("%s%s", glue, MRN_UID)
    assert "4711" not in stream.getvalue()


_component = st.integers(min_value=0, max_value=10**9).map(str)


def _is_ipv4_shaped(uid: str) -> bool:
    parts = uid.split(".")
    return len(parts) == 4 and all(len(part) <= 3 and int(part) <= 255 for part in parts)


# Three components already make a UID (2.25.<uuid> is the commonest private form). IPv4-shaped values
# are kept on purpose for operators (peer addresses); they cannot hold an MRN-sized number.
private_uids = (
    st.lists(_component, min_size=3, max_size=12)
    .map(".".join)
    .filter(lambda uid: not uid.startswith("1.2.840.10008.") and not _is_ipv4_shaped(uid))
)
_separators = st.sampled_from([" ", "=", ": ", "/", "(", ")", ",", "'", '"', "[", "]", "\t"])


@given(uid=private_uids, before=_separators, after=_separators, prefix=st.text("abc XYZ", max_size=8))
def test_any_private_uid_between_separators_is_redacted(
    uid: str, before: str, after: str, prefix: str
) -> None:
    record = logging.makeLogRecord(
        {"msg": f"{prefix}{before}{uid}{after}tail", "levelno": 20, "levelname": "INFO"}
    )
    payload = json.loads(JsonFormatter().format(record))
    assert uid not in payload["msg"]
    assert "<uid>" in payload["msg"]


def test_a_2_25_uid_is_redacted_and_an_ipv4_address_is_kept() -> None:
    uid = "2.25.329800735698586629295641978511506172918"
    record = logging.makeLogRecord(
        {"msg": f"from 192.168.10.7 got {uid}", "levelno": 20, "levelname": "INFO"}
    )
    payload = json.loads(JsonFormatter().format(record))
    assert uid not in payload["msg"]
    assert "192.168.10.7" in payload["msg"]


def test_exception_text_never_appears_only_its_type(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    try:
        try:
            raise OSError(f"/var/store/{MRN_UID}.dcm {datasets.PATIENT_ID_CANARY}")
        except OSError as inner:
            raise BlobStoreFailed() from inner
    except BlobStoreFailed:
        logger.exception("store failed")
    try:
        raise ValueError(f"bad value {datasets.PATIENT_NAME_CANARY}")
    except ValueError:
        logger.error("plain", exc_info=True, stack_info=True)
    first, second = lines(stream)
    assert (first["exc_type"], first["exc_cause_type"]) == ("BlobStoreFailed", "OSError")
    assert second["exc_type"] == "ValueError"
    assert "exc_cause_type" not in second
    text = stream.getvalue()
    assert "CANARY" not in text
    assert "4711" not in text
    assert "Traceback" not in text
    assert "could not durably" not in text  # not even our own message: only the type


# --- canaries through a real receive -------------------------------------------------------------


def _write(node: Node, ds: Dataset) -> Path:
    return datasets.write(ds, node.blobs.tmp_dir / f"{uuid.uuid4().hex}.dcm")


def _request(node: Node, ds: Dataset, **context: str) -> ReceivedInstance:
    values = {
        "context_sop_class_uid": str(ds.SOPClassUID),
        "affected_sop_class_uid": str(ds.SOPClassUID),
        "affected_sop_instance_uid": str(ds.SOPInstanceUID),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
    }
    values.update(context)
    return ReceivedInstance(
        path=_write(node, ds),
        context=ReceiveContext(**values),
        calling_ae_title="STORESCU",
        called_ae_title="DICOM_NODE",
        association_ref="assoc_canary",
    )


def _canary_dataset(suffix: int, *, study_uid: str, series_uid: str, seed: int = 0) -> Dataset:
    return datasets.make_ct(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=f"{MRN_UID}.{suffix}",
        patient_id=datasets.PATIENT_ID_CANARY,
        patient_name=datasets.PATIENT_NAME_CANARY,
        seed=seed,
    )


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
@pytest.mark.usefixtures("restore_logging")
def test_no_canary_or_data_uid_in_logs_or_metrics(
    node: Node, clock: object, caplog: pytest.LogCaptureFixture, level: str
) -> None:
    stream = io.StringIO()
    configure_logging(level, stream=stream)
    logging.getLogger().addHandler(caplog.handler)  # configure_logging removed pytest's handlers

    study_uid = f"{MRN_UID}.1"
    series_uid = f"{MRN_UID}.2"
    stored = _canary_dataset(10, study_uid=study_uid, series_uid=series_uid)
    data_uids = {study_uid, series_uid, str(stored.SOPInstanceUID), str(stored.FrameOfReferenceUID)}

    receive_instance(node, _request(node, stored))  # stored
    receive_instance(node, _request(node, stored))  # identical duplicate
    changed = _canary_dataset(10, study_uid=study_uid, series_uid=series_uid, seed=9)
    receive_instance(node, _request(node, changed))  # different bytes, kept

    invalid = _canary_dataset(11, study_uid=study_uid, series_uid=series_uid)
    invalid.PhotometricInterpretation = "NOPE"
    with pytest.raises(InstanceRejected) as rejected:
        receive_instance(node, _request(node, invalid, affected_sop_instance_uid=f"{MRN_UID}.12"))
    assert "4711" not in str(rejected.value)

    unreadable = node.blobs.tmp_dir / f"{MRN_UID}.13.dcm"
    unreadable.write_bytes(f"{datasets.PATIENT_NAME_CANARY} {datasets.PATIENT_ID_CANARY} {MRN_UID}".encode())
    with pytest.raises(InstanceRejected):
        receive_instance(
            node,
            ReceivedInstance(
                path=unreadable,
                context=ReceiveContext(
                    CT_IMAGE_STORAGE, CT_IMAGE_STORAGE, f"{MRN_UID}.13", "1.2.840.10008.1.2.1"
                ),
                calling_ae_title="STORESCU",
                called_ae_title="DICOM_NODE",
                association_ref=None,
            ),
        )

    # The node's own failure: the store namespace is unusable (a regular file), so adopt fails.
    store = node.blobs.root / "store"
    store.rename(node.blobs.root / "store-aside")
    store.write_bytes(b"not a directory")
    failing = _canary_dataset(14, study_uid=study_uid, series_uid=series_uid)
    with pytest.raises(BlobStoreFailed):
        receive_instance(node, _request(node, failing))

    node.clock.advance(node.study_idle_seconds + 1)  # type: ignore[attr-defined]
    assert len(complete_idle_studies(node)) == 1

    json_text = stream.getvalue()
    records = [json.loads(line) for line in json_text.splitlines()]
    events = {record["event"] for record in records}
    assert {"instance_received", "instance_rejected", "study_complete"} <= events, events
    texts = {
        "json log": json_text,
        "caplog": caplog.text,
        "metrics": prometheus_client.generate_latest().decode(),
    }
    texts["caplog messages"] = "\n".join(caplog.messages)
    canaries = {
        datasets.PATIENT_NAME_CANARY,
        datasets.PATIENT_ID_CANARY,
        "CANARY",
        MRN_UID,
        "3680043.8.498.4711",
        *data_uids,
    }
    for where, text in texts.items():
        for canary in canaries:
            assert canary not in text, f"{canary!r} leaked into the {where}"
