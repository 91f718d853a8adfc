"""The admin API of a real `dicom-node serve`: tokens from the CLI, metrics summed over receiver processes."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

from tests.e2e.conftest import StartNode
from tests.harness import datasets, dicom_tools
from tests.harness.datasets import PATIENT_ID_CANARY, PATIENT_NAME_CANARY
from tests.harness.node_process import dicom_node_executable, node_env
from tests.harness.waiting import wait_until


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)", line)
        if match is None:
            continue
        present = ",".join(sorted((match.group("labels") or "").split(","))) if match.group("labels") else ""
        if present == wanted:
            total += float(match.group("value"))
    return total


def _files(directory: Path, count: int, study_uid: str) -> list[Path]:
    series = generate_uid()
    return [
        datasets.write(
            datasets.make_ct(study_uid=study_uid, series_uid=series, instance_number=i + 1, seed=i),
            directory / f"ct{i:03d}.dcm",
        )
        for i in range(count)
    ]


def test_metrics_count_traffic_of_both_receivers_and_the_api_serves_pseudonyms(
    start_node: StartNode, base_settings: dict[str, object], tmp_path: Path
) -> None:
    node = start_node(
        scp_processes=2, workers=1, study_idle_seconds=1, completion_poll_seconds=0.2, job_poll_seconds=0.2
    )
    assert node.api_port
    base = f"http://127.0.0.1:{node.api_port}"
    study_uid = generate_uid()
    batches = [_files(tmp_path / f"in{i}", 5, study_uid) for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # four associations, spread over both receivers
        results = list(pool.map(lambda files: dicom_tools.storescu(node.port or 0, files), batches))
    assert all(result.returncode == 0 for result in results), [r.stderr for r in results]

    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert _sample(metrics, "dicom_node_instances_received_total", outcome="stored") == 20
    assert _sample(metrics, "dicom_node_associations_total", result="accepted", reason="none") == 4
    assert _sample(metrics, "dicom_node_associations_active") == 0

    created = subprocess.run(
        [dicom_node_executable(), "token", "create", "--role", "viewer", "--name", "e2e"],
        env=node_env(**base_settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = created.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}

    def deidentified() -> bool:
        body = httpx.get(f"{base}/api/v1/studies", headers=headers, timeout=10).json()
        return body["total"] == 1 and body["items"][0]["pipeline_state"] == "deidentified"

    wait_until(deidentified, timeout=60, what="the study to be de-identified")
    answer = httpx.get(f"{base}/api/v1/studies", headers=headers, timeout=10)
    study = answer.json()["items"][0]
    assert study["instance_count"] == 20
    assert study["pseudonym_study_instance_uid"].startswith("2.25.")
    assert study["original"] is None
    for needle in (PATIENT_ID_CANARY, PATIENT_NAME_CANARY.split("^")[0], study_uid):
        assert needle not in answer.text
    assert httpx.get(f"{base}/api/v1/audit", headers=headers, timeout=10).status_code == 403

    ready = httpx.get(f"{base}/readyz", timeout=10).json()
    assert ready["ready"] and ready["scp_listening"] and ready["migrations_at_head"]
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert _sample(metrics, "dicom_node_jobs", kind="deidentify", status="succeeded") == 1
    assert _sample(metrics, "dicom_node_deid_instances_total", outcome="deidentified", reason="none") == 20
    assert 'route="/api/v1/studies"' in metrics
    node.terminate()
    assert node.wait(timeout=30) == 0
    assert PATIENT_ID_CANARY not in node.stderr_path.read_text()
