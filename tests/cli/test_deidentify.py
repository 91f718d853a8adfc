"""`dicom-node deidentify IN OUT`: the user's own files, a line per file, never a partial output.

In-process through `cli.main` for most cases (jobs=1 and jobs=2: the worker pool is real), and once
as a subprocess, as users run it.
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.cli import main
from tests.harness import datasets
from tests.harness.node_process import dicom_node_executable

CANARIES = (b"CANARY", datasets.PATIENT_ID_CANARY.encode())


def run(*argv: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue().splitlines()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = secrets.token_hex(32)
    monkeypatch.setenv("DICOM_NODE_DEID_SECRET", value)
    return value


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Five CT files of one study in a nested folder, one other study, one non-DICOM and one truncated."""
    root = tmp_path / "in"
    study, series = generate_uid(), generate_uid()
    for index in range(5):
        ds = datasets.make_ct(study_uid=study, series_uid=series, instance_number=index + 1, seed=index)
        datasets.write(ds, root / "study" / "series" / f"ct{index}.dcm")
    datasets.write(datasets.make_ct(), root / "other.dcm")
    (root / "notes.txt").write_bytes(b"not DICOM at all")
    whole = (root / "study" / "series" / "ct0.dcm").read_bytes()
    (root / "cut.dcm").write_bytes(whole[: len(whole) - 500])
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_tree_is_deidentified_into_the_same_relative_tree(
    tree: Path, tmp_path: Path, secret: str, jobs: str
) -> None:
    out = tmp_path / "out"
    code, lines = run("deidentify", str(tree), str(out), "--jobs", jobs)
    assert code == 1, "two inputs failed, so the run fails"
    assert sorted(line for line in lines if line.startswith("failed")) == [
        "failed\tcut.dcm\tdeid.truncated",
        "failed\tnotes.txt\tdeid.unreadable",
    ]
    ok = sorted(line.split("\t")[1] for line in lines if line.startswith("ok"))
    assert ok == ["other.dcm", *[f"study/series/ct{i}.dcm" for i in range(5)]]
    assert lines[-1].startswith("de-identified 6, failed 2 (key ")
    written = _files(out)
    assert sorted(written) == ok, "nothing for the failed files, no temporaries left behind"
    for name, data in written.items():
        assert not any(canary in data for canary in CANARIES), name
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        original = pydicom.dcmread(tree / name)
        assert ds.PixelData == original.PixelData
        assert ds.SOPInstanceUID != original.SOPInstanceUID
    studies = {pydicom.dcmread(out / f"study/series/ct{i}.dcm").StudyInstanceUID for i in range(5)}
    assert len(studies) == 1, "one study stays one study"


def test_the_same_secret_gives_identical_files_and_another_secret_does_not(
    tree: Path, tmp_path: Path, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("deidentify", str(tree), str(tmp_path / "a"), "--jobs", "1")
    run("deidentify", str(tree), str(tmp_path / "b"), "--jobs", "2")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    monkeypatch.setenv("DICOM_NODE_DEID_SECRET", secrets.token_hex(32))
    run("deidentify", str(tree), str(tmp_path / "c"), "--jobs", "1")
    a, c = _files(tmp_path / "a"), _files(tmp_path / "c")
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def test_a_secret_file_is_used_and_an_exposed_or_missing_one_refused(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DICOM_NODE_DEID_SECRET", raising=False)
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(secrets.token_bytes(32))
    os.chmod(secret_file, 0o600)
    code, lines = run(
        "deidentify", str(tree / "other.dcm"), str(tmp_path / "one.dcm"), "--secret-file", str(secret_file)
    )
    assert (code, lines[0].split("\t")[0]) == (0, "ok")
    assert (tmp_path / "one.dcm").is_file()

    os.chmod(secret_file, 0o644)
    assert run("deidentify", str(tree), str(tmp_path / "x"), "--secret-file", str(secret_file))[0] == 2
    assert (
        run("deidentify", str(tree), str(tmp_path / "y"), "--secret-file", str(tmp_path / "absent"))[0] == 2
    )
    assert run("deidentify", str(tree), str(tmp_path / "z"))[0] == 2, "no secret at all"
    err = capsys.readouterr().err
    assert "[deid.secret_invalid]" in err
    assert not (tmp_path / "absent").exists(), "the tool never creates a secret"
    assert not any((tmp_path / name).exists() for name in ("x", "y", "z"))


def test_a_bad_secret_value_and_out_inside_in_are_refused(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DEID_SECRET", "not-hex")
    assert run("deidentify", str(tree), str(tmp_path / "out"))[0] == 2
    monkeypatch.setenv("DICOM_NODE_DEID_SECRET", secrets.token_hex(32))
    assert run("deidentify", str(tree), str(tree / "nested-out"))[0] == 2
    assert "[deid.paths_invalid]" in capsys.readouterr().err
    assert not (tree / "nested-out").exists()


def test_as_a_subprocess_no_value_from_the_files_reaches_stdout_or_stderr(tree: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env["DICOM_NODE_DEID_SECRET"] = secrets.token_hex(32)
    result = subprocess.run(
        [dicom_node_executable(), "deidentify", str(tree), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    for stream in (result.stdout, result.stderr):
        assert not any(canary in stream for canary in CANARIES)
        assert b"Traceback" not in stream
