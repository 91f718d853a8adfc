"""Where multiprocess metrics live, and clearing what a previous lifetime left there."""

from __future__ import annotations

import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def clear_stale_files() -> None:
    """Remove the value files of a previous lifetime (dead pids), called by the owner of the data dir."""
    directory = multiprocess_dir()
    if directory is None or not directory.is_dir():
        return
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)
