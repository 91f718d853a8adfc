"""De-identify files in a process of its own, as a worker does: `python -m tests.harness.deid_process`.

Arguments: the secret file, the output folder, then the input files; each output is named after its input's
position in the argument list (never after the input, whose name may carry PHI). Run it through `run`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from dicom_node.dicom.deid import DeidPolicy, deidentify_dataset
from dicom_node.dicom.deid_keys import DeidKeys, load_or_create_secret

REPO_ROOT = Path(__file__).resolve().parents[2]


def output_name(index: int) -> str:
    return f"{index:04d}.dcm"


def run(secret: Path, out_dir: Path, inputs: list[Path], *, hash_seed: str) -> list[Path]:
    """Run this module in a fresh interpreter; the outputs, in the order of `inputs`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        [sys.executable, "-m", "tests.harness.deid_process", str(secret), str(out_dir), *map(str, inputs)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise AssertionError(f"deid process failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return [out_dir / output_name(index) for index in range(len(inputs))]


def main(argv: list[str]) -> int:
    keys = DeidKeys.from_secret(load_or_create_secret(Path(argv[0])))
    out_dir = Path(argv[1])
    for index, name in enumerate(argv[2:]):
        result = deidentify_dataset(dcmread(name), DeidPolicy(), keys)
        dcmwrite(out_dir / output_name(index), result.dataset, enforce_file_format=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
