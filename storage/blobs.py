"""Durable blobs under DATA_DIR, addressed by internal keys that embed nothing from the data.

A blob becomes visible only by an atomic rename of a file that was fsync'd first, followed by an
fsync of the directory that holds it (and of any directory created for it), so after a crash a key
either names the complete bytes or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from storage.errors import BlobNotFound, BlobStoreFailed

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BlobDigest:
    size_bytes: int
    sha256: str


class BlobStore(Protocol):
    """Where instance bytes live; a file store now, an object store later."""

    def iter_keys(self, namespace: str, *, modified_after: float) -> Iterator[str]: ...

    def adopt(self, source: Path, *, namespace: str) -> str: ...

    def write_bytes(self, data: bytes, *, namespace: str) -> str: ...

    def path_of(self, key: str) -> Path: ...

    def discard(self, key: str) -> None: ...


def digest_file(path: Path) -> BlobDigest:
    """Size and SHA-256 of a file, read in chunks so memory stays flat for large instances."""
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return BlobDigest(size_bytes=size, sha256=sha.hexdigest())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Blobs as files: `<root>/<namespace>/<aa>/<hex>.dcm`."""

    NAMESPACES = frozenset({"store", "quarantine", "deid"})

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def prepare(self) -> None:
        """Create every directory a blob can land in, durably, once at start-up.

        With the 256 fan-out directories in place, storing a blob costs two fsyncs (file, directory)
        and never a mkdir on the C-STORE path.
        """
        self._make_dirs(self.tmp_dir)
        for namespace in self.NAMESPACES:
            for prefix in range(256):
                self._make_dirs(self.root / namespace / f"{prefix:02x}")

    def purge_spool(self, *, idle_seconds: float) -> int:
        """Delete spool files nobody has written to for `idle_seconds` (left by aborted associations).

        A spool file that is still being received is written to at least every network timeout, so
        an idle one belongs to no live association, even when several hosts share the volume.
        """
        cutoff = time.time() - idle_seconds
        removed = 0
        for path in self.tmp_dir.glob("*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def iter_keys(self, namespace: str, *, modified_after: float) -> Iterator[str]:
        """Keys of the blobs in `namespace` whose file changed after `modified_after` (epoch seconds)."""
        if namespace not in self.NAMESPACES:
            raise ValueError(f"unknown blob namespace {namespace!r}")
        for prefix in range(256):
            directory = self.root / namespace / f"{prefix:02x}"
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                name, _, suffix = entry.name.partition(".")
                if suffix != "dcm" or len(name) != 32:
                    continue
                try:
                    if entry.is_file() and entry.stat().st_mtime > modified_after:
                        yield f"{namespace}/{name}"
                except FileNotFoundError:
                    continue

    def adopt(self, source: Path, *, namespace: str) -> str:
        """Move an existing file into the store durably and return its key.

        `source` must be on the store's filesystem (the receive spool is `tmp_dir`), so this is a
        rename, never a copy.
        """
        key, target = self._new_key(namespace)
        try:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._make_dirs(target.parent)
            os.replace(source, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise BlobStoreFailed() from exc
        return key

    def write_bytes(self, data: bytes, *, namespace: str) -> str:
        """Write bytes durably (temp file, fsync, rename, fsync dir) and return the key."""
        self._make_dirs(self.tmp_dir)
        temp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            with temp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise BlobStoreFailed() from exc
        try:
            return self.adopt(temp, namespace=namespace)
        except BlobStoreFailed:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise

    def move(self, key: str, *, namespace: str) -> str:
        """Move a blob to another namespace durably (e.g. into quarantine); returns the new key."""
        return self.adopt(self.path_of(key), namespace=namespace)

    def path_of(self, key: str) -> Path:
        namespace, _, name = key.partition("/")
        if namespace not in self.NAMESPACES or len(name) != 32 or not name.isalnum():
            raise BlobNotFound()
        path = self.root / namespace / name[:2] / f"{name}.dcm"
        if not path.is_file():
            raise BlobNotFound()
        return path

    def discard(self, key: str) -> None:
        """Remove a blob that no row references (an orphan of a failed transaction)."""
        try:
            self.path_of(key).unlink()
        except (BlobNotFound, FileNotFoundError):
            return

    def _new_key(self, namespace: str) -> tuple[str, Path]:
        if namespace not in self.NAMESPACES:
            raise ValueError(f"unknown blob namespace {namespace!r}")
        name = uuid.uuid4().hex
        return f"{namespace}/{name}", self.root / namespace / name[:2] / f"{name}.dcm"

    def _make_dirs(self, directory: Path) -> None:
        """mkdir -p, fsyncing each parent whose entries changed, so new directories survive a crash."""
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        try:
            for path in reversed(missing):
                try:
                    path.mkdir()
                except FileExistsError:
                    continue
                _fsync_dir(path.parent)
        except OSError as exc:
            raise BlobStoreFailed() from exc
