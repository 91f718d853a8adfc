"""`dicom-node deidentify IN OUT`: de-identify a file or a directory tree of the user's own files.

Runs the same engine as the pipeline (`dicom.deid.deidentify_dataset`). Each output is written to a
hidden temporary file beside its target, fsync'd and renamed, so a file that fails or a run that is
interrupted never leaves a partial output under a real name. A file that fails gets a stable error
code and the rest continue; no message from pydicom or the engine (they can quote values) is shown.
Files are processed in parallel worker processes, since the engine is CPU-bound pure Python.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_node.core.errors import DicomNodeError
from dicom_node.dicom.deid import DeidPolicy, DeidRejected, DeidResult, deidentify_dataset
from dicom_node.dicom.deid_keys import DeidKeys
from dicom_node.dicom.validation import TruncatedInstance, UnreadableInstance, read_file

UNREADABLE = "deid.unreadable"
TRUNCATED = "deid.truncated"
WRITE_FAILED = "deid.write_failed"
ENGINE_FAILED = "deid.internal_error"


class DeidPathsInvalid(DicomNodeError):
    """IN must exist, and OUT must not be IN or lie inside it."""

    code = "deid.paths_invalid"


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """One input file: where its output went, or the code of why there is none."""

    source: Path
    target: Path | None
    code: str | None

    @property
    def ok(self) -> bool:
        return self.code is None


def plan(source: Path, destination: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: a file goes to OUT (or into OUT when it is a directory); a tree keeps
    its relative layout under OUT. Hidden files (our own temporaries included) are skipped."""
    source, destination = source.resolve(), destination.resolve()
    if not source.exists():
        raise DeidPathsInvalid("IN does not exist")
    if source.is_file():
        target = destination / source.name if destination.is_dir() else destination
        if target == source:
            raise DeidPathsInvalid("OUT would overwrite IN")
        return [(source, target)]
    if destination == source or source in destination.parents:
        raise DeidPathsInvalid("OUT must not be IN or lie inside it")
    pairs: list[tuple[Path, Path]] = []
    for directory, subdirectories, files in os.walk(source):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(directory) / name
            pairs.append((path, destination / path.relative_to(source)))
    return pairs


def deidentify_source(source: Path, policy: DeidPolicy, keys: DeidKeys) -> DeidResult | str:
    """De-identify the DICOM file at `source`: the result, or the stable code of why there is none.

    The one read-and-de-identify step of the CLI and the pipeline stage.
    """
    try:
        dataset = read_file(source)
    except TruncatedInstance:
        return TRUNCATED
    except UnreadableInstance:
        return UNREADABLE
    try:
        return deidentify_dataset(dataset, policy, keys)
    except DeidRejected as rejected:
        return rejected.code
    except Exception:  # the engine fails closed: nothing is written, no message is shown
        return ENGINE_FAILED


def encode(result: DeidResult) -> bytes:
    """The de-identified instance as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, result.dataset, enforce_file_format=True)
    return buffer.getvalue()


def deidentify_file(source: Path, target: Path, policy: DeidPolicy, keys: DeidKeys) -> str | None:
    """De-identify one file into `target`; None on success, else a stable error code."""
    result = deidentify_source(source, policy, keys)
    if isinstance(result, str):
        return result
    temporary = target.parent / f".{uuid.uuid4().hex}.part"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as handle:
            handle.write(encode(result))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except Exception:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        return WRITE_FAILED
    return None


def _run_one(job: tuple[Path, Path, DeidPolicy, DeidKeys]) -> str | None:
    return deidentify_file(*job)


def deidentify_tree(
    source: Path,
    destination: Path,
    policy: DeidPolicy,
    keys: DeidKeys,
    *,
    jobs: int,
    initializer: Callable[[], None] | None = None,
) -> Iterator[FileOutcome]:
    """De-identify every file of `plan(source, destination)`, yielding outcomes in input order."""
    pairs = plan(source, destination)
    root = source.resolve() if source.is_dir() else source.resolve().parent
    out_root = destination.resolve() if source.is_dir() or destination.is_dir() else destination.parent
    work = [(src, dst, policy, keys) for src, dst in pairs]
    if jobs <= 1 or len(work) <= 1:
        codes: Iterator[str | None] = map(_run_one, work)
        yield from _outcomes(pairs, codes, root, out_root.resolve())
        return
    with ProcessPoolExecutor(max_workers=jobs, initializer=initializer) as pool:
        yield from _outcomes(pairs, pool.map(_run_one, work, chunksize=8), root, out_root.resolve())


def _outcomes(
    pairs: list[tuple[Path, Path]], codes: Iterator[str | None], root: Path, out_root: Path
) -> Iterator[FileOutcome]:
    for (src, dst), code in zip(pairs, codes, strict=True):
        relative_source = src.relative_to(root)
        yield FileOutcome(relative_source, None if code else _relative(dst, out_root), code)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path
