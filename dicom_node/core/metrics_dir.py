"""Where multiprocess metrics live, and clearing what a previous lifetime left there."""

from __future__ import annotations

import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def clear_stale_files() -> None:
    """Remove the value files of processes that are gone (a previous lifetime), called by the owner
    of the data directory. Files of live processes stay: this process has its own open already, and
    a file unlinked under a writer would silently swallow its values."""
    directory = multiprocess_dir()
    if directory is None or not directory.is_dir():
        return
    for path in directory.glob("*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
