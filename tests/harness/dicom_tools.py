"""Real DICOM peers for tests: DCMTK command-line tools, run with TCP_NODELAY=1 and a deadline.

A missing tool fails the test with the make target that installs it; it never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make install` as root (installs dcmtk and dicom3tools)")
    return path


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def run_tool(name: str, args: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(name), *args],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=timeout,
        check=False,
    )


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called_ae: str = "DICOM_NODE",
    calling_ae: str = "STORESCU",
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send files on one association; storescu exits non-zero when any store fails."""
    args = ["-aet", calling_ae, "-aec", called_ae, *extra, "127.0.0.1", str(port), *map(str, files)]
    return run_tool("storescu", args, timeout=timeout)


def echoscu(
    port: int, *, called_ae: str = "DICOM_NODE", calling_ae: str = "ECHOSCU", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return run_tool(
        "echoscu", ["-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)], timeout=timeout
    )
