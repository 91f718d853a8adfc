"""The `dicom-node` console script: turns on prometheus-client's multiprocess mode, then runs the CLI.

prometheus-client picks its value store when it is first imported, so PROMETHEUS_MULTIPROC_DIR must be
set before anything imports it; this module imports only the settings before that. The directory is
per host and per data directory, under the system's temporary directory and never on DATA_DIR (which
several containers may share, with colliding process ids).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from dicom_node.core.metrics_dir import MULTIPROC_ENV


def metrics_dir_for(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"dicom-node-metrics-{os.getuid()}-{digest}"


def _config_argument(argv: list[str]) -> Path | None:
    """`--config FILE` or `--config=FILE` before the command, as the CLI's parser reads it."""
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def _enable_multiprocess_metrics() -> None:
    if os.environ.get(MULTIPROC_ENV):
        return
    from dicom_node.core.settings import load_settings

    try:
        data_dir = load_settings(_config_argument(sys.argv[1:])).data_dir
    except Exception:
        return  # the CLI reports bad settings itself
    directory = metrics_dir_for(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def main() -> None:
    _enable_multiprocess_metrics()
    from dicom_node.cli import main as cli_main

    sys.exit(cli_main())
