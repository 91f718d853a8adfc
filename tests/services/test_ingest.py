"""receive_instance, called directly: stored, duplicates under both policies, rejections, races.

Each call gets a fresh spool file in the node's `tmp_dir`, as pynetdicom leaves one (file meta, then
the data set), because receive_instance consumes it.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicom_node.bootstrap import build_node
from dicom_node.core.clock import ManualClock
from dicom_node.core.errors import InstanceRejected
from dicom_node.dicom.dimse_status import Status
from dicom_node.dicom.validation import Code, ReceiveContext
from dicom_node.services.ingest import IngestOutcome, IngestResult, ReceivedInstance, receive_instance
from dicom_node.services.node import Node
from storage.blobs import digest_file
from storage.errors import BlobStoreFailed
from storage.models import (
    DuplicateOutcome,
    DuplicateReceipt,
    Instance,
    Rejection,
    Series,
    Study,
    ValidationResult,
)
from tests.conftest import make_settings
from tests.harness import datasets
from tests.harness.ingest import received

T = TypeVar("T")


def count(node: Node, model: type) -> int:
    with node.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def blob_files(node: Node, namespace: str = "store") -> set[Path]:
    return {p for p in (node.blobs.root / namespace).rglob("*.dcm") if p.is_file()}


def spool_files(node: Node) -> list[Path]:
    return [p for p in node.blobs.tmp_dir.iterdir() if p.is_file()]


def run_concurrently(calls: list[Callable[[], T]]) -> list[T]:
    """Run each call in its own thread, released together by a barrier; re-raise any failure."""
    barrier = threading.Barrier(len(calls))
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = calls[index]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a receiver hung"
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


@pytest.fixture
def replace_node(tmp_path: Path, database_url: str, clock: ManualClock) -> Iterator[Node]:
    built = build_node(make_settings(tmp_path / "var", database_url, duplicate_policy="replace"), clock=clock)
    yield built
    built.engine.dispose()


# --- stored --------------------------------------------------------------------------------------


def test_a_valid_instance_is_stored_with_its_digest_and_a_passed_validation(
    node: Node, clock: ManualClock
) -> None:
    ds = datasets.make_ct()
    request = received(node, ds)
    expected = digest_file(request.path)

    outcome = receive_instance(node, request)

    assert outcome.result is IngestResult.STORED
    assert outcome.study_reopened is False
    assert not request.path.exists(), "the spool file is adopted, not copied"
    assert spool_files(node) == []
    with node.sessions() as session:
        instance = session.get(Instance, outcome.instance_ref)
        assert instance is not None
        assert instance.original_sop_instance_uid == ds.SOPInstanceUID
        assert instance.sop_class_uid == ds.SOPClassUID
        assert instance.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert instance.sha256 == expected.sha256
        assert instance.size_bytes == expected.size_bytes
        assert instance.calling_ae_title == "STORESCU"
        assert instance.association_ref == "assoc_test"
        assert instance.received_at == clock.now()
        assert instance.study_id == outcome.study_ref
        assert digest_file(node.blobs.path_of(instance.blob_key)) == expected

        study = session.get(Study, outcome.study_ref)
        assert study is not None
        assert study.original_study_instance_uid == ds.StudyInstanceUID
        assert study.original_patient_id == datasets.PATIENT_ID_CANARY
        assert study.instance_count == 1
        assert study.status == "receiving"
        series = session.get(Series, instance.series_id)
        assert series is not None
        assert series.original_series_instance_uid == ds.SeriesInstanceUID
        assert series.modality == "CT"
        assert series.study_id == study.id

        results = session.scalars(select(ValidationResult)).all()
        assert [(r.instance_id, r.passed, r.codes) for r in results] == [(instance.id, True, "")]
    assert blob_files(node) == {node.blobs.path_of(instance.blob_key)}


def test_instances_of_one_study_share_study_and_series_rows(node: Node, clock: ManualClock) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    outcomes = []
    for number in range(1, 4):
        clock.advance(1)
        ds = datasets.make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=number, seed=number)
        outcomes.append(receive_instance(node, received(node, ds)))
    assert len({o.study_ref for o in outcomes}) == 1
    assert len({o.instance_ref for o in outcomes}) == 3
    assert (count(node, Study), count(node, Series), count(node, Instance)) == (1, 1, 3)
    with node.sessions() as session:
        study = session.get(Study, outcomes[0].study_ref)
        assert study is not None
        assert study.instance_count == 3
        assert study.last_received_at == clock.now()


# --- duplicates ----------------------------------------------------------------------------------


def test_identical_duplicate_succeeds_and_stores_nothing_new(node: Node) -> None:
    ds = datasets.make_ct()
    first = receive_instance(node, received(node, ds))
    files_before = blob_files(node)

    again = received(node, ds)
    digest = digest_file(again.path)
    outcome = receive_instance(node, again)

    assert outcome.result is IngestResult.DUPLICATE_IDENTICAL
    assert outcome.instance_ref == first.instance_ref
    assert blob_files(node) == files_before, "an identical duplicate must not leave a second blob"
    assert blob_files(node, "quarantine") == set()
    assert spool_files(node) == []
    assert count(node, Instance) == 1
    with node.sessions() as session:
        receipts = session.scalars(select(DuplicateReceipt)).all()
        assert len(receipts) == 1
        receipt = receipts[0]
        assert receipt.instance_id == first.instance_ref
        assert receipt.outcome == DuplicateOutcome.IDENTICAL
        assert receipt.policy == "keep"
        assert receipt.retained_blob_key is None
        assert (receipt.sha256, receipt.size_bytes) == (digest.sha256, digest.size_bytes)
        study = session.get(Study, first.study_ref)
        assert study is not None
        assert study.instance_count == 1


def test_different_bytes_under_keep_keep_the_existing_and_retain_the_new(node: Node) -> None:
    ds = datasets.make_ct(seed=1)
    first = receive_instance(node, received(node, ds))
    with node.sessions() as session:
        original = session.get(Instance, first.instance_ref)
        assert original is not None
        original_key, original_sha = original.blob_key, original.sha256

    changed = datasets.make_ct(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        seed=2,
    )
    request = received(node, changed)
    new_digest = digest_file(request.path)
    assert new_digest.sha256 != original_sha
    outcome = receive_instance(node, request)

    assert outcome.result is IngestResult.DUPLICATE_KEPT_EXISTING
    assert outcome.instance_ref == first.instance_ref
    assert count(node, Instance) == 1
    with node.sessions() as session:
        instance = session.get(Instance, first.instance_ref)
        assert instance is not None
        assert (instance.blob_key, instance.sha256) == (original_key, original_sha)
        assert digest_file(node.blobs.path_of(original_key)).sha256 == original_sha
        receipt = session.scalars(select(DuplicateReceipt)).one()
        assert receipt.outcome == DuplicateOutcome.KEPT_EXISTING
        assert receipt.policy == "keep"
        assert receipt.sha256 == new_digest.sha256
        assert receipt.retained_blob_key is not None
        assert receipt.retained_blob_key != original_key
        # The new bytes are a valid instance, not failed input: retained in the store, not quarantined.
        assert receipt.retained_blob_key.startswith("store/")
        assert digest_file(node.blobs.path_of(receipt.retained_blob_key)) == new_digest
    assert spool_files(node) == []


def test_different_bytes_under_replace_point_the_instance_at_the_new_blob(replace_node: Node) -> None:
    node = replace_node
    ds = datasets.make_ct(seed=1)
    first = receive_instance(node, received(node, ds))
    with node.sessions() as session:
        original = session.get(Instance, first.instance_ref)
        assert original is not None
        original_key, original_digest = original.blob_key, digest_file(node.blobs.path_of(original.blob_key))

    changed = datasets.make_ct(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        seed=2,
    )
    request = received(node, changed)
    new_digest = digest_file(request.path)
    outcome = receive_instance(node, request)

    assert outcome.result is IngestResult.DUPLICATE_REPLACED
    assert outcome.instance_ref == first.instance_ref
    assert count(node, Instance) == 1
    with node.sessions() as session:
        instance = session.get(Instance, first.instance_ref)
        assert instance is not None
        assert instance.blob_key != original_key
        assert (instance.sha256, instance.size_bytes) == (new_digest.sha256, new_digest.size_bytes)
        assert digest_file(node.blobs.path_of(instance.blob_key)) == new_digest
        receipt = session.scalars(select(DuplicateReceipt)).one()
        assert receipt.outcome == DuplicateOutcome.REPLACED
        assert receipt.policy == "replace"
        assert receipt.retained_blob_key == original_key
        assert digest_file(node.blobs.path_of(original_key)) == original_digest, "nothing is deleted"


def test_identical_duplicate_under_replace_is_still_identical(replace_node: Node) -> None:
    ds = datasets.make_ct()
    first = receive_instance(replace_node, received(replace_node, ds))
    files = blob_files(replace_node)
    outcome = receive_instance(replace_node, received(replace_node, ds))
    assert outcome.result is IngestResult.DUPLICATE_IDENTICAL
    assert outcome.instance_ref == first.instance_ref
    assert blob_files(replace_node) == files


# --- rejections ----------------------------------------------------------------------------------


def _assert_rejected(
    node: Node, raised: InstanceRejected, codes: tuple[str, ...], status: Status
) -> Rejection:
    assert raised.codes == codes
    assert raised.rejection_ref is not None
    with node.sessions() as session:
        rejection = session.get(Rejection, raised.rejection_ref)
        assert rejection is not None
        assert rejection.codes == ",".join(codes)
        assert rejection.status == int(status)
        assert rejection.calling_ae_title == "STORESCU"
        assert rejection.called_ae_title == "DICOM_NODE"
        assert rejection.association_ref == "assoc_test"
        assert rejection.quarantine_key is not None
        assert rejection.quarantine_key.startswith("quarantine/"), "rejected bytes are quarantined"
        result = session.scalars(
            select(ValidationResult).where(ValidationResult.rejection_id == rejection.id)
        ).one()
        assert (result.passed, result.codes, result.instance_id) == (False, rejection.codes, None)
        session.expunge(rejection)
    return rejection


def test_an_invalid_instance_is_rejected_recorded_and_quarantined(node: Node) -> None:
    ds = datasets.make_ct()
    del ds.Modality
    request = received(node, ds)
    digest = digest_file(request.path)

    with pytest.raises(InstanceRejected) as raised:
        receive_instance(node, request)

    rejection = _assert_rejected(node, raised.value, (Code.TYPE1_MISSING,), Status.TYPE1_MISSING)
    assert rejection.sop_class_uid == ds.SOPClassUID
    assert (rejection.sha256, rejection.size_bytes) == (digest.sha256, digest.size_bytes)
    assert rejection.quarantine_key is not None
    assert rejection.quarantine_key.startswith("quarantine/")
    assert digest_file(node.blobs.path_of(rejection.quarantine_key)) == digest
    assert (count(node, Instance), count(node, Study), count(node, Series)) == (0, 0, 0)
    assert blob_files(node) == set()
    assert spool_files(node) == []


def test_several_failures_are_all_recorded_and_the_most_fundamental_decides_the_status(node: Node) -> None:
    ds = datasets.make_ct()
    ds.PhotometricInterpretation = "NOT_A_PHOTOMETRIC"
    context = ReceiveContext(
        context_sop_class_uid=ds.SOPClassUID,
        affected_sop_class_uid=ds.SOPClassUID,
        affected_sop_instance_uid=generate_uid(),
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
    )
    with pytest.raises(InstanceRejected) as raised:
        receive_instance(node, received(node, ds, context=context))
    _assert_rejected(
        node,
        raised.value,
        (Code.SOP_INSTANCE_UID_MISMATCH, Code.PHOTOMETRIC_UNKNOWN),
        Status.SOP_INSTANCE_UID_MISMATCH,
    )


def test_unreadable_bytes_are_rejected_and_recorded(node: Node) -> None:
    path = node.blobs.tmp_dir / f"{uuid.uuid4().hex}.dcm"
    path.write_bytes(b"this is not DICOM at all" * 10)
    request = ReceivedInstance(
        path=path,
        context=ReceiveContext(
            context_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            affected_sop_instance_uid=generate_uid(),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        ),
        calling_ae_title="STORESCU",
        called_ae_title="DICOM_NODE",
        association_ref="assoc_test",
    )
    with pytest.raises(InstanceRejected) as raised:
        receive_instance(node, request)
    _assert_rejected(node, raised.value, (Code.UNREADABLE,), Status.CANNOT_UNDERSTAND)
    assert count(node, Instance) == 0


def test_a_series_uid_reused_in_another_study_is_rejected(node: Node) -> None:
    first = datasets.make_ct()
    receive_instance(node, received(node, first))
    other = datasets.make_ct(series_uid=first.SeriesInstanceUID)  # a new study UID
    with pytest.raises(InstanceRejected) as raised:
        receive_instance(node, received(node, other))
    _assert_rejected(node, raised.value, (Code.SERIES_IN_OTHER_STUDY,), Status.SERIES_IN_OTHER_STUDY)
    assert count(node, Instance) == 1
    assert count(node, Study) == 1, "the rejected instance's study row must not be committed"
    assert len(blob_files(node)) == 1


def test_a_modality_outside_the_allowlist_is_rejected(
    tmp_path: Path, database_url: str, clock: ManualClock
) -> None:
    node = build_node(make_settings(tmp_path / "var", database_url, modality_allowlist=["mr"]), clock=clock)
    try:
        with pytest.raises(InstanceRejected) as raised:
            receive_instance(node, received(node, datasets.make_ct()))
        _assert_rejected(node, raised.value, (Code.MODALITY_NOT_ALLOWED,), Status.SOP_CLASS_NOT_SUPPORTED)
    finally:
        node.engine.dispose()


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_instances_of_a_new_study_create_one_study_and_one_series(node: Node) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    requests = [
        received(
            node, datasets.make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=n, seed=n)
        )
        for n in range(1, 5)
    ]
    outcomes: list[IngestOutcome] = run_concurrently(
        [lambda r=r: receive_instance(node, r) for r in requests]  # type: ignore[misc]
    )
    assert [o.result for o in outcomes] == [IngestResult.STORED] * 4
    assert len({o.study_ref for o in outcomes}) == 1
    assert (count(node, Study), count(node, Series), count(node, Instance)) == (1, 1, 4)
    with node.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 4
    assert len(blob_files(node)) == 4
    assert spool_files(node) == []


def test_concurrent_identical_copies_of_one_instance_store_it_once(node: Node) -> None:
    ds = datasets.make_ct()
    requests = [received(node, ds), received(node, ds)]
    outcomes: list[IngestOutcome] = run_concurrently(
        [lambda r=r: receive_instance(node, r) for r in requests]  # type: ignore[misc]
    )
    assert sorted(o.result.value for o in outcomes) == ["duplicate_identical", "stored"]
    assert len({o.instance_ref for o in outcomes}) == 1
    assert count(node, Instance) == 1
    with node.sessions() as session:
        receipt = session.scalars(select(DuplicateReceipt)).one()
        assert receipt.outcome == DuplicateOutcome.IDENTICAL
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 1
    assert len(blob_files(node)) == 1
    assert spool_files(node) == []


def test_a_blob_store_failure_is_recorded_as_a_rejection_and_raised(node: Node) -> None:
    """The store namespace is unusable (a regular file; root ignores permission bits)."""
    store = node.blobs.root / "store"
    shutil.rmtree(store)
    store.write_bytes(b"not a directory")
    ds = datasets.make_ct()
    request = received(node, ds)
    digest = digest_file(request.path)

    with pytest.raises(BlobStoreFailed):
        receive_instance(node, request)

    assert count(node, Instance) == 0
    assert count(node, Study) == 0
    with node.sessions() as session:
        rejection = session.scalars(select(Rejection)).one()
        assert rejection.codes == BlobStoreFailed.code
        assert rejection.status == int(Status.OUT_OF_RESOURCES)
        assert (rejection.sha256, rejection.size_bytes) == (digest.sha256, digest.size_bytes)
        assert rejection.quarantine_key is not None
        assert digest_file(node.blobs.path_of(rejection.quarantine_key)) == digest
    assert spool_files(node) == []
