"""The pipeline in real processes: storescu, receivers, study complete, worker, de-identified copies."""

from __future__ import annotations

import stat
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.blobs import FileBlobStore
from storage.models import DeidInstance, Event, Job
from tests.e2e.conftest import StartNode
from tests.harness import datasets, dicom_tools
from tests.harness.datasets import PATIENT_ID_CANARY, PATIENT_NAME_CANARY
from tests.harness.node_process import NodeProcess, node_env
from tests.harness.waiting import wait_until

TIMING = {"study_idle_seconds": 1, "completion_poll_seconds": 0.2, "job_poll_seconds": 0.2}


def _study_files(directory: Path, count: int) -> list[Path]:
    from pydicom.uid import generate_uid

    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        datasets.write(
            datasets.make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=i + 1, seed=i),
            directory / f"ct{i:03d}.dcm",
        )
        for i in range(count)
    ]


def _deidentified(db: sessionmaker[Session]) -> list[DeidInstance]:
    with db() as session:
        return list(session.scalars(select(DeidInstance)))


def _event_kinds(db: sessionmaker[Session]) -> list[str]:
    with db() as session:
        return list(session.scalars(select(Event.kind).order_by(Event.id)))


def test_a_stored_study_is_deidentified_by_the_served_worker(
    start_node: StartNode, db: sessionmaker[Session], data_dir: Path, tmp_path: Path
) -> None:
    files = _study_files(tmp_path / "in", 6)
    node = start_node(scp_processes=2, workers=1, **TIMING)
    result = dicom_tools.storescu(node.port or 0, files)
    assert result.returncode == 0, result.stderr

    wait_until(lambda: "study_deidentified" in _event_kinds(db), timeout=60, what="the study de-identified")
    rows = _deidentified(db)
    assert len(rows) == 6
    assert {row.outcome for row in rows} == {"deidentified"}
    blobs = FileBlobStore(data_dir)
    for row in rows:
        data = blobs.path_of(row.blob_key or "").read_bytes()
        assert PATIENT_ID_CANARY.encode() not in data
        assert b"CANARY" not in data
        copy = pydicom.dcmread(blobs.path_of(row.blob_key or ""))
        assert copy.SOPInstanceUID == row.sop_instance_uid
    assert _event_kinds(db) == ["study_complete", "study_deidentified"]

    secret = data_dir / "secrets" / "deid-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    node.terminate()
    assert node.wait(timeout=30) == 0
    logged = node.stderr_path.read_text()
    assert "study_deidentified" in logged
    assert PATIENT_ID_CANARY not in logged
    assert PATIENT_NAME_CANARY.split("^")[0] not in logged


def test_scp_only_leaves_the_job_queued_and_a_separate_worker_runs_it(
    start_node: StartNode,
    db: sessionmaker[Session],
    base_settings: dict[str, object],
    tmp_path: Path,
) -> None:
    files = _study_files(tmp_path / "in", 3)
    receiver = start_node(command="scp", **TIMING)
    assert dicom_tools.storescu(receiver.port or 0, files).returncode == 0
    wait_until(lambda: "study_complete" in _event_kinds(db), timeout=30, what="the study to complete")
    with db() as session:
        (job,) = session.scalars(select(Job)).all()
    assert job.status == "queued"

    env = node_env(**{**base_settings, **TIMING, "workers": 1})
    with NodeProcess(env, tmp_path / "logs", command="worker", name="worker") as worker:
        worker.start()
        wait_until(lambda: len(_deidentified(db)) == 3, timeout=60, what="the worker to de-identify")
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    with db() as session:
        (job,) = session.scalars(select(Job)).all()
    assert job.status == "succeeded"
