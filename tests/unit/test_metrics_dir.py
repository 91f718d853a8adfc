"""Multiprocess metric files: a previous lifetime's go at start, a live process's stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.core.metrics_dir import MULTIPROC_ENV, clear_stale_files
from dicom_node.entry import _config_argument, metrics_dir_for


def test_only_files_of_dead_processes_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(finished.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        names = [
            f"counter_{dead}.db",
            f"gauge_livesum_{dead}.db",
            f"counter_{live.pid}.db",
            f"counter_{os.getpid()}.db",
        ]
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        clear_stale_files()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    finally:
        live.kill()
        live.wait()


def test_the_metrics_directory_is_per_data_directory_and_outside_it(tmp_path: Path) -> None:
    first, second = metrics_dir_for(tmp_path / "a"), metrics_dir_for(tmp_path / "b")
    assert first != second
    assert tmp_path not in first.parents
    assert metrics_dir_for(tmp_path / "a") == first


def test_the_config_argument_is_read_as_the_cli_reads_it() -> None:
    assert _config_argument(["--config", "x.toml", "serve"]) == Path("x.toml")
    assert _config_argument(["--config=y.toml", "serve"]) == Path("y.toml")
    assert _config_argument(["serve"]) is None
