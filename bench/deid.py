"""De-identification benchmark: the node's engine against a plain pydicom read + write of the same files.

The floor is what any pydicom-based tool pays per file (parse, encode, write); the engine adds the
walk, the keyed remapping and the recording. Both run in fresh subprocesses, one file at a time,
single-threaded, on synthetic 512x512 16-bit CT with a full header, from the page cache, writing to
an empty folder; every case once per round in a shuffled order; the ratio is taken per round
(floor seconds / engine seconds) and the median reported. Memory: peak RSS (ru_maxrss) of each
subprocess, for N and for 4N instances, to show it does not grow with the study. Also the CLI
(`dicom-node deidentify`, all cores) end to end.

    .venv/bin/python bench/deid.py [--instances N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

OUT = REPO_ROOT / "bench" / "out" / "deid"
TARGET = 0.5


def generate(folder: Path, count: int) -> list[Path]:
    """`count` CT instances of one study (cached between runs)."""
    from pydicom.uid import generate_uid

    from tests.harness.datasets import make_ct, write

    marker = folder / f".complete-{count}"
    if marker.exists():
        return sorted(folder.glob("*.dcm"))
    shutil.rmtree(folder, ignore_errors=True)
    study, series = generate_uid(), generate_uid()
    files = [
        write(
            make_ct(study_uid=study, series_uid=series, rows=512, columns=512, instance_number=i + 1, seed=i),
            folder / f"ct{i:05d}.dcm",
        )
        for i in range(count)
    ]
    marker.touch()
    return files


def run_case(case: str, source: Path, target: Path) -> None:
    """Body of one measuring subprocess: prints {"seconds", "files", "peak_rss_mb"} as JSON."""
    import pydicom
    from pydicom import config

    from dicom_node.dicom.deid import DeidPolicy, deidentify_dataset
    from dicom_node.dicom.deid_keys import DeidKeys

    config.settings.reading_validation_mode = config.IGNORE
    files = sorted(source.glob("*.dcm"))
    target.mkdir(parents=True, exist_ok=True)
    keys = DeidKeys.from_secret(secrets.token_bytes(32))
    policy = DeidPolicy()
    started = time.perf_counter()
    for path in files:
        ds = pydicom.dcmread(path)
        if case == "engine":
            ds = deidentify_dataset(ds, policy, keys).dataset
        pydicom.dcmwrite(target / path.name, ds, enforce_file_format=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "files": len(files), "peak_rss_mb": peak}))


def measure(case: str, source: Path) -> dict[str, float]:
    target = OUT / "runs" / case
    shutil.rmtree(target, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, __file__, "--case", case, "--source", str(source), "--target", str(target)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    shutil.rmtree(target, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure_cli(source: Path) -> float:
    target = OUT / "runs" / "cli"
    shutil.rmtree(target, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env["DICOM_NODE_DEID_SECRET"] = secrets.token_hex(32)
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).with_name("dicom-node")), "deidentify", str(source), str(target)],
        env=env,
        capture_output=True,
        timeout=1800,
        check=True,
    )
    seconds = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", choices=["floor", "engine"], help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.source, args.target)
        return 0

    small = OUT / f"ct-{args.instances}"
    large = OUT / f"ct-{4 * args.instances}"
    files = generate(small, args.instances)
    generate(large, 4 * args.instances)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    results: dict[str, list[dict[str, float]]] = {"floor": [], "engine": []}
    for _ in range(args.rounds):
        cases = ["floor", "engine"]
        random.shuffle(cases)
        for case in cases:
            results[case].append(measure(case, small))
    ratios = [f["seconds"] / e["seconds"] for f, e in zip(results["floor"], results["engine"], strict=True)]
    ratio = statistics.median(ratios)
    big = measure("engine", large)
    cli = measure_cli(small)

    def row(label: str, runs: list[dict[str, float]]) -> str:
        seconds = statistics.median(r["seconds"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        ms = seconds * 1000 / args.instances
        return (
            f"| {label} | {args.instances} | {seconds:.2f} | {args.instances / seconds:.0f} "
            f"| {megabytes / seconds:.0f} | {ms:.1f} | {rss:.0f} |"
        )

    print(f"Data: {args.instances} x CT 512x512 16-bit, {megabytes:.1f} MB; {args.rounds} rounds; 1 process.")
    print()
    print("| Case | files | median s | inst/s | MB/s | ms/inst | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    print(row("pydicom read + write (floor)", results["floor"]))
    print(row("dicom-node engine: read + de-identify + write", results["engine"]))
    print()
    verdict = "PASS" if ratio >= TARGET else "MISS"
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    print(f"ratio engine/floor: **{ratio:.2f}** ({spread}), target >= {TARGET}: {verdict}")
    print(
        f"memory: peak RSS {max(r['peak_rss_mb'] for r in results['engine']):.0f} MB for {args.instances} "
        f"instances, {big['peak_rss_mb']:.0f} MB for {4 * args.instances} (flat in study size)"
    )
    print(
        f"CLI `dicom-node deidentify` ({os.cpu_count()} workers, incl. start-up): {cli:.2f} s, "
        f"{args.instances / cli:.0f} inst/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
