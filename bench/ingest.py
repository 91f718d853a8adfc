"""C-STORE ingest benchmark: dicom-node against DCMTK `storescp`, measured side by side in one run.

Method (docs: PERFORMANCE.md, "Methodology"): synthetic 512x512 16-bit CT with a full header, split
round-robin into 4 folders; every case once per round in a freshly shuffled order; a fresh receiver,
a free port and an empty folder per run; `sync` between runs; every run time-bounded. Timing is the
wall clock from starting the senders (DCMTK `storescu`, TCP_NODELAY=1) until the last one exits. A run
counts only when every sender exited 0 and the receiver holds exactly the instances sent (files for
`storescp`, rows in `instances` for the node); failed runs are excluded and counted. Ratios are taken
per round against the baseline of the same round (`storescp` for one association, `storescp --fork`
for four), then the median. Memory is the summed VmRSS of the receiver's process tree sampled every
20 ms from /proc; CPU is utime + stime of that tree (reaped children included) over the timed window.

Extra cases: 16 concurrent associations into the node (no refused association, no failed store,
rows == files), and large multi-frame instances on one association with RSS growth after a warm-up.

Exit status: 0 when every run succeeded, whether or not a target was met (this is a report); 1 when
a run failed; 2 when the benchmark could not start (missing tools).

    .venv/bin/python bench/ingest.py [--quick] [--instances N] [--rounds R] [--no-large] ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness.datasets import make_ct  # noqa: E402

BENCH_OUT = REPO_ROOT / "bench" / "out"
DATA_FORMAT_VERSION = 1
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
NODE_AE = "DICOM_NODE"
STORESCP_AE = "STORESCP"
SAMPLE_SECONDS = 0.020
TARGET_ONE_ASSOC = 0.35
TARGET_FOUR_ASSOC = 0.45
TARGET_LARGE_GROWTH_MB = 100.0
KNOWN_NODE_WARNINGS = ("calling_ae_allowlist_empty",)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

ReceiverKind = Literal["storescp", "pynetdicom", "node"]


# ----------------------------------------------------------------------------------------------
# Data generation
# ----------------------------------------------------------------------------------------------


def body_phantom(rows: int, columns: int) -> np.ndarray:
    """Stored values (HU + 1024) of an axial body section: air, soft tissue, two lungs, spine."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows / 2.0, columns / 2.0
    image = np.full((rows, columns), -1000.0, dtype=np.float32)

    def ellipse(ey: float, ex: float, ry: float, rx: float) -> np.ndarray:
        return ((y - ey) / ry) ** 2 + ((x - ex) / rx) ** 2 <= 1.0

    image[ellipse(cy, cx, rows * 0.36, columns * 0.45)] = 40.0
    image[ellipse(cy - rows * 0.04, cx - columns * 0.2, rows * 0.2, columns * 0.13)] = -820.0
    image[ellipse(cy - rows * 0.04, cx + columns * 0.2, rows * 0.2, columns * 0.13)] = -820.0
    image[ellipse(cy + rows * 0.22, cx, rows * 0.06, columns * 0.05)] = 700.0
    image[ellipse(cy - rows * 0.05, cx + columns * 0.03, rows * 0.07, columns * 0.06)] = 60.0
    return image + 1024.0


def noisy_frame(phantom: np.ndarray, rng: np.random.Generator, sigma: float = 15.0) -> bytes:
    noise = rng.normal(0.0, sigma, size=phantom.shape).astype(np.float32)
    return np.clip(phantom + noise, 0, 4095).astype("<u2").tobytes()


def _common_header(ds: Dataset, *, study_uid: str, frame_of_reference_uid: str, number: int) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = "20260101"
    ds.InstanceCreationTime = "120000"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.AcquisitionDate = "20260101"
    ds.AcquisitionTime = "120000"
    ds.StudyDescription = "BENCH CHEST ABDOMEN"
    ds.SeriesDescription = "BENCH AXIAL 1.0"
    ds.InstitutionName = "dicom-node bench"
    ds.StationName = "BENCH01"
    ds.ManufacturerModelName = "Synthetic"
    ds.SoftwareVersions = "1"
    ds.DeviceSerialNumber = "0001"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.PatientAge = "056Y"
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    ds.StudyInstanceUID = study_uid
    ds.InstanceNumber = number


def make_ct_instance(
    *, index: int, study_uid: str, series_uid: str, frame_of_reference_uid: str, phantom: np.ndarray
) -> Dataset:
    rows, columns = phantom.shape
    ds = make_ct(
        study_uid=study_uid,
        series_uid=series_uid,
        rows=rows,
        columns=columns,
        instance_number=index + 1,
        patient_id="BENCH0001",
        patient_name="BENCH^PHANTOM",
        seed=index,
    )
    _common_header(ds, study_uid=study_uid, frame_of_reference_uid=frame_of_reference_uid, number=index + 1)
    z = -float(index)
    ds.ImagePositionPatient = [-179.2, -179.2, z]
    ds.SliceLocation = z
    ds.ConvolutionKernel = "B30f"
    ds.DataCollectionDiameter = 500.0
    ds.ReconstructionDiameter = 358.4
    ds.GantryDetectorTilt = 0.0
    ds.TableHeight = 150.0
    ds.RotationDirection = "CW"
    ds.ExposureTime = 500
    ds.XRayTubeCurrent = 200
    ds.Exposure = 100
    ds.FilterType = "BODY"
    ds.GeneratorPower = 24
    ds.FocalSpots = 1.2
    ds.RescaleType = "HU"
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"
    ds.LossyImageCompression = "00"
    ds.PixelData = noisy_frame(phantom, np.random.default_rng(index))
    return ds


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def make_enhanced_ct_header(
    *, study_uid: str, series_uid: str, number: int, rows: int, columns: int, frames: int
) -> Dataset:
    """An Enhanced CT header with shared and per-frame functional groups and no Pixel Data."""
    ds = make_ct(
        study_uid=study_uid,
        series_uid=series_uid,
        rows=8,
        columns=8,
        instance_number=number,
        patient_id="BENCH0002",
        patient_name="BENCH^PHANTOM^LARGE",
    )
    for keyword in (
        "PixelData",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleIntercept",
        "RescaleSlope",
        "WindowCenter",
        "WindowWidth",
    ):
        delattr(ds, keyword)
    ds.SOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    _common_header(ds, study_uid=study_uid, frame_of_reference_uid=generate_uid(), number=number)
    ds.Rows = rows
    ds.Columns = columns
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionDateTime = "20260101120000"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.NumberOfFrames = frames
    dimension_uid = generate_uid()
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dimension_uid)])
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=dimension_uid,
                DimensionIndexPointer=0x00209057,  # In-Stack Position Number
                FunctionalGroupPointer=0x00209111,  # Frame Content Sequence
            )
        ]
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence(
        [
            _item(
                PixelMeasuresSequence=DicomSequence([_item(PixelSpacing=[0.7, 0.7], SliceThickness=1.0)]),
                PlaneOrientationSequence=DicomSequence(
                    [_item(ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])]
                ),
                FrameVOILUTSequence=DicomSequence([_item(WindowCenter=40, WindowWidth=400)]),
                PixelValueTransformationSequence=DicomSequence(
                    [_item(RescaleIntercept=-1024, RescaleSlope=1, RescaleType="HU")]
                ),
                CTImageFrameTypeSequence=DicomSequence(
                    [_item(FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"])]
                ),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [
            _item(
                FrameContentSequence=DicomSequence(
                    [
                        _item(
                            FrameAcquisitionNumber=1,
                            StackID="1",
                            InStackPositionNumber=frame + 1,
                            DimensionIndexValues=[frame + 1],
                        )
                    ]
                ),
                PlanePositionSequence=DicomSequence(
                    [_item(ImagePositionPatient=[-179.2, -179.2, -float(frame)])]
                ),
            )
            for frame in range(frames)
        ]
    )
    return ds


def write_enhanced_ct_streaming(
    path: Path, header: Dataset, phantom: np.ndarray, frames: int, rng: np.random.Generator
) -> int:
    """Write header then Pixel Data frame by frame: never more than one frame in memory."""
    frame_bytes = phantom.size * 2
    length = frame_bytes * frames
    temporary = path.with_suffix(".part")
    with temporary.open("wb") as f:
        header.save_as(f, enforce_file_format=True)
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length.
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for _ in range(frames):
            f.write(noisy_frame(phantom, rng))
    temporary.rename(path)
    return path.stat().st_size


@dataclass(frozen=True)
class DataSet:
    root: Path
    files: tuple[Path, ...]
    total_bytes: int

    @property
    def count(self) -> int:
        return len(self.files)


def _load_cached(root: Path, params: dict[str, object]) -> DataSet | None:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if data.get("params") != params:
        return None
    files = tuple(root / name for name in data["files"])
    sizes = data["sizes"]
    for file, size in zip(files, sizes, strict=True):
        if not file.is_file() or file.stat().st_size != size:
            return None
    return DataSet(root=root, files=files, total_bytes=sum(sizes))


def _save_manifest(root: Path, params: dict[str, object], files: Sequence[Path]) -> DataSet:
    sizes = [f.stat().st_size for f in files]
    names = [str(f.relative_to(root)) for f in files]
    (root / "manifest.json").write_text(json.dumps({"params": params, "files": names, "sizes": sizes}))
    return DataSet(root=root, files=tuple(files), total_bytes=sum(sizes))


def ct_data_set(count: int, rows: int, columns: int, folders: int) -> DataSet:
    """N single-frame CT split round-robin into `folders` sub-folders of `<root>/all`."""
    params: dict[str, object] = {
        "kind": "ct",
        "version": DATA_FORMAT_VERSION,
        "count": count,
        "rows": rows,
        "columns": columns,
        "folders": folders,
    }
    root = BENCH_OUT / f"ct-{rows}x{columns}-n{count}-f{folders}"
    cached = _load_cached(root, params)
    if cached is not None:
        print(f"data: using cached {count} CT instances in {root.relative_to(REPO_ROOT)}")
        return cached
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    phantom = body_phantom(rows, columns)
    study_uid, series_uid, frame_of_reference_uid = generate_uid(), generate_uid(), generate_uid()
    files: list[Path] = []
    for index in range(count):
        folder = root / "all" / f"d{index % folders}"
        folder.mkdir(parents=True, exist_ok=True)
        ds = make_ct_instance(
            index=index,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=frame_of_reference_uid,
            phantom=phantom,
        )
        path = folder / f"ct{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    data = _save_manifest(root, params, files)
    print(
        f"data: generated {count} CT instances ({data.total_bytes / 1e6:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return data


def split_folders(data: DataSet, ways: int) -> list[Path]:
    """Hard links of the data set split round-robin `ways` ways (outside `<root>/all`)."""
    base = data.root / f"split{ways}"
    marker = base / "complete"
    folders = [base / f"s{k:02d}" for k in range(ways)]
    if marker.is_file():
        return folders
    shutil.rmtree(base, ignore_errors=True)
    for folder in folders:
        folder.mkdir(parents=True)
    for index, file in enumerate(data.files):
        target = folders[index % ways] / file.name
        try:
            os.link(file, target)
        except OSError:
            shutil.copyfile(file, target)
    marker.write_text("ok\n")
    return folders


@dataclass(frozen=True)
class LargeDataSet:
    warm: DataSet
    measured: DataSet
    frames: int


def large_data_set(count: int, frames: int, rows: int, columns: int, warm_count: int) -> LargeDataSet:
    params: dict[str, object] = {
        "kind": "enhanced-ct",
        "version": DATA_FORMAT_VERSION,
        "count": count,
        "warm": warm_count,
        "frames": frames,
        "rows": rows,
        "columns": columns,
    }
    root = BENCH_OUT / f"large-{rows}x{columns}x{frames}-n{count}-w{warm_count}"
    warm_root, data_root = root / "warm", root / "data"
    warm = _load_cached(warm_root, params)
    measured = _load_cached(data_root, params)
    if warm is not None and measured is not None:
        print(f"data: using cached {count}+{warm_count} large instances in {root.relative_to(REPO_ROOT)}")
        return LargeDataSet(warm=warm, measured=measured, frames=frames)
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    phantom = body_phantom(rows, columns)
    rng = np.random.default_rng(4711)
    sets: list[DataSet] = []
    for folder, n in ((warm_root, warm_count), (data_root, count)):
        folder.mkdir(parents=True)
        study_uid, series_uid = generate_uid(), generate_uid()
        files: list[Path] = []
        for index in range(n):
            header = make_enhanced_ct_header(
                study_uid=study_uid,
                series_uid=series_uid,
                number=index + 1,
                rows=rows,
                columns=columns,
                frames=frames,
            )
            path = folder / f"ect{index:04d}.dcm"
            write_enhanced_ct_streaming(path, header, phantom, frames, rng)
            files.append(path)
        sets.append(_save_manifest(folder, params, files))
    total = sum(s.total_bytes for s in sets)
    print(
        f"data: generated {count}+{warm_count} Enhanced CT x {frames} frames "
        f"({total / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s"
    )
    return LargeDataSet(warm=sets[0], measured=sets[1], frames=frames)


def warm_page_cache(files: Sequence[Path]) -> None:
    for file in files:
        with file.open("rb") as f:
            while f.read(8 << 20):
                pass


# ----------------------------------------------------------------------------------------------
# /proc sampling
# ----------------------------------------------------------------------------------------------


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    children = _parent_map()
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, ()))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/<pid>/statm (pages; same figure as VmRSS, cheaper to read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime (children reaped by `pid` included)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    return sum(cpu_seconds(pid) for pid in process_tree(root))


class TreeSampler(threading.Thread):
    """Summed RSS of a process tree every 20 ms; `peak` since start or since `reset_peak`."""

    def __init__(self, root: int, interval: float = SAMPLE_SECONDS) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._root = root
        self._interval = interval
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self.samples: list[tuple[float, int]] = []
        self.peak = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            total = sum(rss_bytes(pid) for pid in process_tree(self._root))
            with self._lock:
                self.samples.append((time.monotonic(), total))
                self.peak = max(self.peak, total)
            self._stop_event.wait(self._interval)

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = 0

    def level(self, seconds: float) -> float:
        """Mean summed RSS over the last `seconds`."""
        with self._lock:
            cutoff = time.monotonic() - seconds
            recent = [rss for t, rss in self.samples if t >= cutoff] or [self.samples[-1][1]]
        return statistics.fmean(recent)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# ----------------------------------------------------------------------------------------------
# Receivers and senders
# ----------------------------------------------------------------------------------------------


class RunFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(suffix) and parts[3] == "0A":
                        return True
        except (OSError, StopIteration):
            continue
    return False


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def node_env(data_dir: Path, processes: int | None, max_associations: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env.update(
        DICOM_NODE_DATA_DIR=str(data_dir),
        DICOM_NODE_DICOM_HOST="127.0.0.1",
        DICOM_NODE_DICOM_PORT="0",
        DICOM_NODE_API_PORT="0",
        DICOM_NODE_WORKERS="0",  # ingest only: no de-identification competing for the cores
        DICOM_NODE_LOG_LEVEL="WARNING",
    )
    if processes is not None:
        env["DICOM_NODE_SCP_PROCESSES"] = str(processes)
    if max_associations is not None:
        env["DICOM_NODE_MAX_ASSOCIATIONS"] = str(max_associations)
    return env


def describe_tree(root: int) -> list[str]:
    """One line per live process of the tree: pid, state, kernel wait channel, threads, command."""
    lines = []
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read().strip()
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        lines.append(
            f"pid {pid} {status.get('State', '?').strip()} wchan={wchan or '-'} "
            f"threads={status.get('Threads', '?').strip()} {command[-90:]}"
        )
    return lines


def _stop_group(
    proc: subprocess.Popen[bytes], grace: float, survivors: list[str] | None = None
) -> int | None:
    """SIGTERM the process group we created for `proc`, then SIGKILL it after `grace` seconds.

    When it had to be killed, the processes still alive at that moment are appended to `survivors`.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            if survivors is not None:
                survivors.extend(describe_tree(proc.pid))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            return None
    # Children of a forking receiver may still linger in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


@dataclass
class Receiver:
    kind: ReceiverKind
    proc: subprocess.Popen[bytes]
    port: int
    ae_title: str
    workdir: Path
    stderr_path: Path
    stderr_file: IO[bytes]
    stdout_lines: list[str] = field(default_factory=list)
    stop_seconds: float = 0.0
    survivors: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stored(self) -> int:
        if self.kind == "storescp":
            return sum(1 for p in (self.workdir / "out").rglob("*") if p.is_file())
        if self.kind == "pynetdicom":
            return sum(1 for p in (self.workdir / "out").glob("*.dcm") if p.is_file())
        database = self.workdir / "data" / "dicom-node.db"
        last_error: Exception | None = None
        for _ in range(20):
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
                ) as connection:
                    return int(connection.execute("select count(*) from instances").fetchone()[0])
            except sqlite3.Error as exc:
                last_error = exc
                time.sleep(0.25)
        raise RunFailed(f"cannot count rows in {database}: {last_error}")

    def stop(self) -> int | None:
        """Stop the receiver; its exit status, or None when it had to be killed."""
        started = time.perf_counter()
        try:
            return _stop_group(self.proc, 40.0 if self.kind == "node" else 5.0, self.survivors)
        finally:
            self.stop_seconds = time.perf_counter() - started
            self.stderr_file.close()

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


def _start_listener(
    kind: ReceiverKind, ae_title: str, workdir: Path, command: Callable[[Path, int], list[str]], **popen: Any
) -> Receiver:
    """Start a receiver that writes files into `workdir/out` and wait until it listens on a free port."""
    out = workdir / "out"
    out.mkdir(parents=True)
    port = free_port()
    stderr_path = workdir / "receiver.stderr"
    stderr_file = stderr_path.open("wb")
    proc = subprocess.Popen(
        command(out, port),
        stdin=subprocess.DEVNULL,
        stdout=stderr_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **popen,
    )
    receiver = Receiver(kind, proc, port, ae_title, workdir, stderr_path, stderr_file)
    deadline = time.monotonic() + 30
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            receiver.stop()
            raise RunFailed(f"{kind} did not listen on {port}: {receiver.stderr_text()[-500:]}")
        time.sleep(0.01)
    return receiver


def start_storescp(workdir: Path, *, fork: bool) -> Receiver:
    def command(out: Path, port: int) -> list[str]:
        return [
            "storescp",
            "-aet",
            STORESCP_AE,
            "-od",
            str(out),
            "-dhl",
            *(["--fork"] if fork else []),
            str(port),
        ]

    return _start_listener("storescp", STORESCP_AE, workdir, command, env=dcmtk_env())


def start_pynetdicom_anchor(workdir: Path) -> Receiver:
    anchor = str(Path(__file__).with_name("pynetdicom_anchor.py"))
    return _start_listener(
        "pynetdicom", NODE_AE, workdir, lambda out, port: [sys.executable, anchor, str(out), str(port)]
    )


_LISTENING = re.compile(r"^dicom-node listening: .* on \S+:(\d+) \(")


def start_node(
    workdir: Path, node_command: Sequence[str], *, processes: int | None, max_associations: int | None
) -> Receiver:
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True)
    stderr_path = workdir / "node.stderr"
    stderr_file = stderr_path.open("wb")
    proc = subprocess.Popen(
        [*node_command, "serve"],
        env=node_env(data_dir, processes, max_associations),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        start_new_session=True,
    )
    receiver = Receiver("node", proc, 0, NODE_AE, workdir, stderr_path, stderr_file)
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            receiver.stdout_lines.append(line)
            match = _LISTENING.match(line)
            if match:
                receiver.port = int(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=drain, name="node-stdout", daemon=True).start()
    ready.wait(timeout=90)
    if receiver.port == 0:
        receiver.stop()
        detail = " | ".join(receiver.stdout_lines[-3:]) + " " + receiver.stderr_text()[-800:]
        raise RunFailed(f"dicom-node did not start: {detail}")
    return receiver


def storescu_command(ae_title: str, port: int, folder: Path) -> list[str]:
    return [
        "storescu",
        "-aet",
        "STORESCU",
        "-aec",
        ae_title,
        "+sd",
        "+r",
        "+sp",
        "*.dcm",
        "127.0.0.1",
        str(port),
        str(folder),
    ]


@dataclass
class SendResult:
    seconds: float
    exit_codes: list[int | None]
    stderr: list[str]

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.exit_codes)


def send(receiver: Receiver, folders: Sequence[Path], timeout: float, logdir: Path) -> SendResult:
    """Start one storescu per folder at once; wall clock until the last exits (killed at `timeout`)."""
    logs = [(logdir / f"storescu-{k:02d}.log").open("wb") for k in range(len(folders))]
    env = dcmtk_env()
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            storescu_command(receiver.ae_title, receiver.port, folder),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for folder, log in zip(folders, logs, strict=True)
    ]
    deadline = started + timeout
    codes: list[int | None] = []
    for sender in senders:
        try:
            codes.append(sender.wait(timeout=max(0.1, deadline - time.perf_counter())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    elapsed = time.perf_counter() - started
    for sender in senders:
        if sender.poll() is None:
            _stop_group(sender, grace=2)
    texts = []
    for log in logs:
        log.close()
        texts.append(Path(log.name).read_text(errors="replace"))
    return SendResult(elapsed, codes, texts)


# ----------------------------------------------------------------------------------------------
# Cases and runs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    kind: ReceiverKind
    associations: int
    fork: bool = False
    processes: int | None = None  # None: the node's default (CPU count)
    baseline: str | None = None  # key of the case this one is compared with
    target: float | None = None


@dataclass
class RunResult:
    case: Case
    round: int
    ok: bool
    seconds: float
    stored: int
    expected: int
    peak_rss: int
    cpu: float
    problems: list[str]
    sender_codes: list[int | None]


@dataclass
class Notes:
    """Anything odd seen in the receivers' or senders' output, per case."""

    lines: dict[str, list[str]] = field(default_factory=dict)

    def add(self, case: str, line: str) -> None:
        entries = self.lines.setdefault(case, [])
        if line not in entries and len(entries) < 12:
            entries.append(line)


_STORESCU_TROUBLE = re.compile(
    r"(^[EF]: .*|^W: .*|Association Rejected.*|Association Request Failed.*|Store Failed.*)", re.M
)


def sender_trouble(texts: Sequence[str]) -> list[str]:
    found: list[str] = []
    for text in texts:
        found.extend(m.group(1).strip() for m in _STORESCU_TROUBLE.finditer(text))
    return found


def node_trouble(stderr: str) -> list[str]:
    """WARNING/ERROR log records (minus the known start-up warning) and anything that is not JSON."""
    found: list[str] = []
    traceback: list[str] = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            traceback.append(line.strip())
            continue
        if not isinstance(record, dict):
            continue
        if record.get("event") in KNOWN_NODE_WARNINGS:
            continue
        level = str(record.get("level", ""))
        if level in ("WARNING", "ERROR", "CRITICAL"):
            detail = {k: v for k, v in record.items() if k not in ("ts", "correlation_id", "assoc_id")}
            found.append(json.dumps(detail)[:400])
    if traceback:
        found.append("non-JSON stderr: " + " / ".join(traceback[-6:])[:600])
    return found


def note_node_stop(receiver: Receiver, code: int | None, label: str, notes: Notes) -> list[str]:
    """Note a slow or unclean stop and the node's warnings/errors; returns the latter."""
    if code != 0:
        killed = " (did not exit within the grace period: killed)" if code is None else ""
        notes.add(label, f"node exit status after SIGTERM: {code}{killed}")
        for line in receiver.survivors:
            notes.add(label, f"still alive before SIGKILL: {line}")
    if receiver.stop_seconds > 10:
        notes.add(label, f"node took {receiver.stop_seconds:.0f} s to stop after SIGTERM")
    lines = node_trouble(receiver.stderr_text())
    for line in lines:
        notes.add(label, f"node stderr: {line}")
    return lines


def receiver_died(receiver: Receiver) -> str | None:
    """A receiver that exited on its own during a run (the bench only stops it afterwards)."""
    code = receiver.proc.poll()
    if code is None:
        return None
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
    return f"{receiver.kind} (pid {receiver.pid}) exited during the run by {how}, not stopped by the bench"


def keep_logs(workdir: Path, *, failed: bool) -> None:
    """Delete a run's folder; for a failed run keep its logs under bench/out/failed/ first."""
    if failed:
        target = BENCH_OUT / "failed" / f"{workdir.name}-{time.strftime('%H%M%S')}"
        target.mkdir(parents=True, exist_ok=True)
        for log in [*workdir.glob("*.log"), *workdir.glob("*.stderr")]:
            shutil.copy2(log, target / log.name)
        print(f"  logs of the failed run kept in {target.relative_to(REPO_ROOT)}")
    shutil.rmtree(workdir, ignore_errors=True)


def run_once(
    case: Case,
    folders: Sequence[Path],
    expected: int,
    round_index: int,
    args: argparse.Namespace,
    notes: Notes,
) -> RunResult:
    workdir = BENCH_OUT / "runs" / f"{case.key}-r{round_index}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.sync()
    problems: list[str] = []
    seconds, stored, peak, cpu, codes = 0.0, 0, 0, 0.0, []
    receiver: Receiver | None = None
    sampler: TreeSampler | None = None
    try:
        if case.kind == "storescp":
            receiver = start_storescp(workdir, fork=case.fork)
        elif case.kind == "pynetdicom":
            receiver = start_pynetdicom_anchor(workdir)
        else:
            receiver = start_node(
                workdir, args.node_command, processes=case.processes, max_associations=args.max_associations
            )
        sampler = TreeSampler(receiver.pid)
        sampler.start()
        time.sleep(0.1)
        cpu_before = tree_cpu_seconds(receiver.pid)
        result = send(receiver, folders, args.run_timeout, workdir)
        cpu = tree_cpu_seconds(receiver.pid) - cpu_before
        seconds, codes = result.seconds, result.exit_codes
        stored = receiver.stored()
        if not result.ok:
            problems.append(f"sender exit codes {result.exit_codes}")
        if stored != expected:
            problems.append(f"stored {stored} of {expected}")
        died = receiver_died(receiver)
        if died:
            problems.append(died)
        for line in sender_trouble(result.stderr):
            notes.add(case.label, f"storescu: {line}")
    except RunFailed as exc:
        problems.append(str(exc))
    finally:
        if sampler is not None:
            sampler.stop()
            peak = sampler.peak
        if receiver is not None:
            code = receiver.stop()
            if receiver.kind == "node":
                note_node_stop(receiver, code, case.label, notes)
        keep_logs(workdir, failed=bool(problems))
    ok = not problems
    if not ok:
        notes.add(case.label, f"round {round_index}: FAILED: {'; '.join(problems)}")
    return RunResult(case, round_index, ok, seconds, stored, expected, peak, cpu, problems, codes)


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ingest_table(
    cases: Sequence[Case], results: dict[str, list[RunResult]], data: DataSet, processes: str
) -> str:
    lines = [
        f"Data: {data.count} x CT 512x512 16-bit, {data.total_bytes / 1e6:.1f} MB; "
        f"node SCP_PROCESSES default = {processes}; sender storescu, TCP_NODELAY=1.",
        "",
        "| Receiver | assocs | ok/failed | median s | inst/s | MB/s | min-max s | ratio (min-max) "
        "| vs | target | PASS/MISS | peak RSS MB | CPU s (ms/inst) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        runs = results.get(case.key, [])
        good = [r for r in runs if r.ok]
        failed = len(runs) - len(good)
        if not good:
            lines.append(
                f"| {case.label} | {case.associations} | 0/{failed} | - | - | - | - | - | - | - | - | - | - |"
            )
            continue
        times = [r.seconds for r in good]
        median = statistics.median(times)
        ratio_text, versus, target_text, verdict = "1.00", "-", "-", "-"
        if case.baseline is not None:
            baseline_by_round = {r.round: r for r in results.get(case.baseline, []) if r.ok}
            ratios = [
                baseline_by_round[r.round].seconds / r.seconds for r in good if r.round in baseline_by_round
            ]
            versus = next(c.label for c in cases if c.key == case.baseline)
            if ratios:
                ratio = statistics.median(ratios)
                ratio_text = f"**{ratio:.2f}** ({min(ratios):.2f}-{max(ratios):.2f})"
                if case.target is not None:
                    target_text = f"≥ {case.target:.2f}"
                    verdict = "PASS" if ratio >= case.target else "MISS"
            else:
                ratio_text = "no baseline"
        peak = statistics.median(r.peak_rss for r in good) / 1e6
        peak_max = max(r.peak_rss for r in good) / 1e6
        cpu = statistics.median(r.cpu for r in good)
        lines.append(
            f"| {case.label} | {case.associations} | {len(good)}/{failed} | {median:.2f} "
            f"| {data.count / median:.0f} | {data.total_bytes / 1e6 / median:.0f} "
            f"| {min(times):.2f}-{max(times):.2f} | {ratio_text} | {versus} | {target_text} | {verdict} "
            f"| {peak:.0f} (max {peak_max:.0f}) | {cpu:.2f} ({cpu * 1000 / data.count:.1f}) |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The three parts
# ----------------------------------------------------------------------------------------------


def ingest_cases(processes_label: str) -> list[Case]:
    return [
        Case("storescp", "DCMTK storescp", "storescp", 1),
        Case("storescp-fork", "DCMTK storescp --fork", "storescp", 4, fork=True),
        Case("pynetdicom-a1", "pynetdicom anchor (chunked + fsync)", "pynetdicom", 1, baseline="storescp"),
        Case(
            "pynetdicom-a4", "pynetdicom anchor (chunked + fsync)", "pynetdicom", 4, baseline="storescp-fork"
        ),
        Case(
            "node-p1-a1",
            "dicom-node SCP_PROCESSES=1",
            "node",
            1,
            processes=1,
            baseline="storescp",
            target=TARGET_ONE_ASSOC,
        ),
        Case(
            "node-pd-a1",
            f"dicom-node SCP_PROCESSES={processes_label}",
            "node",
            1,
            baseline="storescp",
            target=TARGET_ONE_ASSOC,
        ),
        Case(
            "node-pd-a4",
            f"dicom-node SCP_PROCESSES={processes_label}",
            "node",
            4,
            baseline="storescp-fork",
            target=TARGET_FOUR_ASSOC,
        ),
    ]


def part_ingest(args: argparse.Namespace, data: DataSet, notes: Notes, processes_label: str) -> bool:
    cases = ingest_cases(processes_label)
    all_folder = data.root / "all"
    four = sorted(p for p in all_folder.iterdir() if p.is_dir())
    results: dict[str, list[RunResult]] = {}
    shuffle = random.Random(args.seed)
    for round_index in range(args.rounds):
        order = list(cases)
        shuffle.shuffle(order)
        print(f"round {round_index + 1}/{args.rounds}: {', '.join(c.key for c in order)}")
        for case in order:
            folders = [all_folder] if case.associations == 1 else four
            result = run_once(case, folders, data.count, round_index, args, notes)
            results.setdefault(case.key, []).append(result)
            status = "ok" if result.ok else "FAILED " + "; ".join(result.problems)
            print(
                f"  {case.key:14s} {result.seconds:7.2f} s"
                f"  {data.count / max(result.seconds, 1e-9):6.0f} inst/s"
                f"  peak {result.peak_rss / 1e6:5.0f} MB  cpu {result.cpu:5.2f} s  {status}"
            )
    print()
    print("### Ingest, small instances")
    print()
    print(ingest_table(cases, results, data, processes_label))
    print()
    return all(r.ok for runs in results.values() for r in runs)


def _count_refusals(texts: Sequence[str]) -> int:
    pattern = re.compile(r"Association (Rejected|Request Failed|Aborted)")
    return sum(1 for text in texts if pattern.search(text))


def part_concurrency(args: argparse.Namespace, data: DataSet, notes: Notes, processes_label: str) -> bool:
    ways = args.concurrency_associations
    folders = split_folders(data, ways)
    label = f"dicom-node SCP_PROCESSES={processes_label}, {ways} concurrent associations"
    workdir = BENCH_OUT / "runs" / "concurrency"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.sync()
    receiver: Receiver | None = None
    sampler: TreeSampler | None = None
    result: SendResult | None = None
    stored, problems, node_lines = 0, [], []
    try:
        receiver = start_node(
            workdir, args.node_command, processes=None, max_associations=args.max_associations
        )
        sampler = TreeSampler(receiver.pid)
        sampler.start()
        result = send(receiver, folders, args.run_timeout, workdir)
        stored = receiver.stored()
        died = receiver_died(receiver)
        if died:
            problems.append(died)
    except RunFailed as exc:
        problems.append(str(exc))
    finally:
        if sampler is not None:
            sampler.stop()
        if receiver is not None:
            code = receiver.stop()
            node_lines = note_node_stop(receiver, code, label, notes)
        failed = bool(problems) or result is None or not result.ok or stored != data.count
        keep_logs(workdir, failed=failed)
    refused = failed_senders = failed_stores = 0
    seconds = 0.0
    if result is not None:
        seconds = result.seconds
        refused = _count_refusals(result.stderr)
        failed_senders = sum(1 for code in result.exit_codes if code != 0)
        failed_stores = sum(1 for text in result.stderr for _ in re.finditer(r"Store Failed", text))
        for line in sender_trouble(result.stderr):
            notes.add(label, f"storescu: {line}")
    node_rejections = sum(1 for line in node_lines if "association_rejected" in line)
    ok = not problems and failed_senders == 0 and stored == data.count and refused == 0
    verdict = "PASS" if ok and node_rejections == 0 and failed_stores == 0 else "MISS"
    print(f"### Concurrency: {ways} storescu at once into dicom-node")
    print()
    print(
        "| Receiver | assocs | seconds | inst/s | refused/aborted assocs | senders exit≠0 | failed stores "
        "| node 'association rejected' | rows / files | peak RSS MB | PASS/MISS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rate = data.count / seconds if seconds else 0.0
    peak = (sampler.peak if sampler else 0) / 1e6
    print(
        f"| {label} | {ways} | {seconds:.2f} | {rate:.0f} | {refused} | {failed_senders} | {failed_stores} "
        f"| {node_rejections} | {stored} / {data.count} | {peak:.0f} | {verdict} |"
    )
    if problems:
        print(f"\nFAILED: {'; '.join(problems)}")
    print()
    return ok


def part_large(args: argparse.Namespace, notes: Notes, processes_label: str) -> bool:
    large = large_data_set(args.large_instances, args.large_frames, 512, 512, args.large_warmup)
    warm_page_cache([*large.warm.files, *large.measured.files])
    mb = large.measured.total_bytes / 1e6
    timeout = max(args.run_timeout, mb / 5.0)  # never slower than 5 MB/s
    rows: list[str] = []
    all_ok = True
    baseline_seconds: float | None = None

    if args.large_baseline:
        case = Case("large-storescp", "DCMTK storescp (large)", "storescp", 1)
        result = run_once(
            case, [large.measured.root], large.measured.count, 0, _with_timeout(args, timeout), notes
        )
        if result.ok:
            baseline_seconds = result.seconds
            rows.append(
                f"| DCMTK storescp | {large.measured.count} x {large.frames} | {mb:.0f} "
                f"| {result.seconds:.2f} "
                f"| {mb / result.seconds:.0f} | 1.00 | - | {result.peak_rss / 1e6:.0f} | - | - | - |"
            )
        else:
            all_ok = False
            rows.append(f"| DCMTK storescp | FAILED: {'; '.join(result.problems)} |")

    label = f"dicom-node SCP_PROCESSES={processes_label} (large)"
    workdir = BENCH_OUT / "runs" / "large-node"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.sync()
    receiver: Receiver | None = None
    sampler: TreeSampler | None = None
    problems: list[str] = []
    level = peak = 0.0
    seconds = warm_seconds = 0.0
    expected = large.warm.count + large.measured.count
    stored = 0
    try:
        receiver = start_node(
            workdir, args.node_command, processes=None, max_associations=args.max_associations
        )
        sampler = TreeSampler(receiver.pid)
        sampler.start()
        time.sleep(0.5)
        idle = sampler.level(0.4)
        warm = send(receiver, [large.warm.root], timeout, workdir)
        warm_seconds = warm.seconds
        if not warm.ok:
            problems.append(f"warm-up sender exit codes {warm.exit_codes}")
        time.sleep(1.0)
        level = sampler.level(0.5)
        warm_peak = sampler.peak
        sampler.reset_peak()
        cpu_before = tree_cpu_seconds(receiver.pid)
        result = send(receiver, [large.measured.root], timeout, workdir)
        cpu = tree_cpu_seconds(receiver.pid) - cpu_before
        seconds = result.seconds
        peak = sampler.peak
        stored = receiver.stored()
        if not result.ok:
            problems.append(f"sender exit codes {result.exit_codes}")
        if stored != expected:
            problems.append(f"stored {stored} of {expected} (warm-up included)")
        died = receiver_died(receiver)
        if died:
            problems.append(died)
        for line in sender_trouble([*warm.stderr, *result.stderr]):
            notes.add(label, f"storescu: {line}")
        print(
            f"large: node idle {idle / 1e6:.0f} MB, warm-up ({large.warm.count} inst, {warm_seconds:.1f} s) "
            f"peak {warm_peak / 1e6:.0f} MB, level after warm-up {level / 1e6:.0f} MB, "
            f"measured peak {peak / 1e6:.0f} MB, cpu {cpu:.1f} s"
        )
    except RunFailed as exc:
        problems.append(str(exc))
    finally:
        if sampler is not None:
            sampler.stop()
        if receiver is not None:
            code = receiver.stop()
            note_node_stop(receiver, code, label, notes)
        keep_logs(workdir, failed=bool(problems))
    if problems:
        all_ok = False
        notes.add(label, f"FAILED: {'; '.join(problems)}")
        rows.append(f"| dicom-node | FAILED: {'; '.join(problems)} |")
    else:
        growth = (peak - level) / 1e6
        ratio = _fmt(baseline_seconds / seconds if baseline_seconds else None)
        verdict = "PASS" if growth < TARGET_LARGE_GROWTH_MB else "MISS"
        rows.append(
            f"| dicom-node SCP_PROCESSES={processes_label} | {large.measured.count} x {large.frames} "
            f"| {mb:.0f} "
            f"| {seconds:.2f} | {mb / seconds:.0f} | {ratio} | {level / 1e6:.0f} | {peak / 1e6:.0f} "
            f"| **{growth:.0f}** | < {TARGET_LARGE_GROWTH_MB:.0f} | {verdict} |"
        )
    print(f"### Large instances: Enhanced CT 512x512x{large.frames}, 1 association")
    print()
    print(
        "| Receiver | instances x frames | MB | seconds | MB/s | ratio vs storescp | RSS after warm-up MB "
        "| peak RSS MB | growth MB | target | PASS/MISS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print()
    return all_ok


def _with_timeout(args: argparse.Namespace, timeout: float) -> argparse.Namespace:
    copy = argparse.Namespace(**vars(args))
    copy.run_timeout = timeout
    return copy


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=300, help="CT instances (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the ingest cases (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 instances, 1 round, 4x8 large")
    parser.add_argument(
        "--concurrency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="16 concurrent associations into the node (default on)",
    )
    parser.add_argument("--concurrency-associations", type=int, default=16)
    parser.add_argument(
        "--large",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="large multi-frame instances on 1 association (default on)",
    )
    parser.add_argument("--large-instances", type=int, default=64)
    parser.add_argument("--large-frames", type=int, default=64)
    parser.add_argument("--large-warmup", type=int, default=2, help="large instances sent before measuring")
    parser.add_argument(
        "--large-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also send the large set to storescp once, for a ratio (default on)",
    )
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds a run may take")
    parser.add_argument("--max-associations", type=int, default=None, help="DICOM_NODE_MAX_ASSOCIATIONS")
    parser.add_argument("--seed", type=int, default=None, help="seed of the per-round shuffle")
    parser.add_argument(
        "--node-command",
        default=str(REPO_ROOT / ".venv" / "bin" / "dicom-node"),
        help="the node's executable (split on spaces; `serve` is appended)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.rounds = 40, 1
        args.large_instances, args.large_frames = 4, 8
    args.node_command = args.node_command.split()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


@contextlib.contextmanager
def _timed(name: str, timings: list[tuple[str, float]]) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings.append((name, time.perf_counter() - started))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("storescp", "storescu") if shutil.which(tool) is None]
    if missing or shutil.which(args.node_command[0]) is None:
        print(f"missing tools: {', '.join(missing or args.node_command[:1])}", file=sys.stderr)
        return 2
    processes_label = f"default({os.cpu_count()})"
    print(
        f"dicom-node ingest bench: {args.instances} instances, {args.rounds} round(s), seed {args.seed}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    timings: list[tuple[str, float]] = []
    notes = Notes()
    ok = True
    BENCH_OUT.mkdir(parents=True, exist_ok=True)
    with _timed("data", timings):
        data = ct_data_set(args.instances, 512, 512, 4)
        warm_page_cache(data.files)
    with _timed("ingest", timings):
        ok &= part_ingest(args, data, notes, processes_label)
    if args.concurrency:
        with _timed("concurrency", timings):
            ok &= part_concurrency(args, data, notes, processes_label)
    if args.large:
        with _timed("large", timings):
            ok &= part_large(args, notes, processes_label)
    if notes.lines:
        print("### Notes (receivers' and senders' output)")
        print()
        for case, lines in notes.lines.items():
            print(f"- {case}:")
            for line in lines:
                print(f"  - {line}")
        print()
    print("Timings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings))
    print(f"Load average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    print("Result: " + ("all runs succeeded" if ok else "SOME RUNS FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
