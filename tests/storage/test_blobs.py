"""FileBlobStore: durable adopt and write, opaque keys, and failures that leave nothing behind."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from storage.blobs import FileBlobStore, digest_file
from storage.errors import BlobNotFound, BlobStoreFailed

_KEY = re.compile(r"^(store|quarantine|deid)/[0-9a-f]{32}$")
PAYLOAD = b"DICM" + b"1.2.826.0.1.3680043.8.498.4711 CANARYMRN4711 " * 100


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    blobs = FileBlobStore(tmp_path / "blobs")
    blobs.prepare()
    return blobs


SOURCE_NAME = "1.2.826.0.1.3680043.8.498.4711.dcm"


def _spool(store: FileBlobStore, name: str = SOURCE_NAME, data: bytes = PAYLOAD) -> Path:
    path = store.tmp_dir / name
    path.write_bytes(data)
    return path


def _blob_files(store: FileBlobStore) -> list[Path]:
    return sorted(p for ns in FileBlobStore.NAMESPACES for p in (store.root / ns).rglob("*") if p.is_file())


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if not p.is_dir())


def test_prepare_creates_the_spool_and_every_namespace(store: FileBlobStore) -> None:
    assert store.tmp_dir.is_dir()
    for namespace in FileBlobStore.NAMESPACES:
        assert (store.root / namespace).is_dir()
    store.prepare()  # idempotent


@pytest.mark.parametrize("namespace", sorted(FileBlobStore.NAMESPACES))
def test_adopt_moves_the_source_and_keeps_its_bytes(store: FileBlobStore, namespace: str) -> None:
    source = _spool(store)
    key = store.adopt(source, namespace=namespace)
    assert _KEY.match(key)
    assert key.startswith(f"{namespace}/")
    assert not source.exists()
    path = store.path_of(key)
    assert path.read_bytes() == PAYLOAD
    assert digest_file(path).sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert digest_file(path).size_bytes == len(PAYLOAD)
    assert _all_files(store.tmp_dir) == []
    assert _blob_files(store) == [path]


def test_adopt_is_a_rename_not_a_copy(store: FileBlobStore) -> None:
    source = _spool(store)
    inode = source.stat().st_ino
    key = store.adopt(source, namespace="store")
    assert store.path_of(key).stat().st_ino == inode


@pytest.mark.parametrize("namespace", sorted(FileBlobStore.NAMESPACES))
def test_write_bytes_stores_exactly_the_bytes_and_leaves_no_temp_file(
    store: FileBlobStore, namespace: str
) -> None:
    key = store.write_bytes(PAYLOAD, namespace=namespace)
    assert _KEY.match(key)
    assert store.path_of(key).read_bytes() == PAYLOAD
    assert _all_files(store.tmp_dir) == []


def test_write_bytes_creates_missing_directories(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "fresh")  # prepare() never called
    key = store.write_bytes(b"abc", namespace="store")
    assert store.path_of(key).read_bytes() == b"abc"


def test_keys_embed_nothing_from_the_data_or_the_source_name(store: FileBlobStore) -> None:
    first = store.adopt(_spool(store), namespace="store")
    second = store.adopt(_spool(store), namespace="store")
    third = store.write_bytes(PAYLOAD, namespace="store")
    keys = {first, second, third}
    assert len(keys) == 3, "the same bytes must get distinct keys"
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    for key in keys:
        name = key.partition("/")[2]
        assert "4711" not in key
        assert "3680043" not in key
        assert "CANARY" not in key
        assert name not in digest  # not content-addressed
        # the file name on disk is the key's name: nothing from the source either
        assert store.path_of(key).name == f"{name}.dcm"


def test_path_of_refuses_malformed_and_unknown_keys(store: FileBlobStore) -> None:
    key = store.write_bytes(b"x", namespace="store")
    name = key.partition("/")[2]
    bad = [
        "",
        "store",
        "store/",
        f"tmp/{name}",
        f"other/{name}",
        f"store/{name[:-1]}",
        f"store/{name}0",
        f"store/../{name[3:]}",
        "store/../../../../etc/passwd",
        f"store/{'0' * 32}",  # well formed, but no such blob
        f"quarantine/{name}",  # exists in the other namespace only
    ]
    for candidate in bad:
        with pytest.raises(BlobNotFound):
            store.path_of(candidate)


def test_discard_removes_the_blob_and_is_idempotent(store: FileBlobStore) -> None:
    key = store.write_bytes(PAYLOAD, namespace="quarantine")
    other = store.write_bytes(PAYLOAD, namespace="quarantine")
    store.discard(key)
    with pytest.raises(BlobNotFound):
        store.path_of(key)
    store.discard(key)
    store.discard("store/not-a-key")
    assert store.path_of(other).read_bytes() == PAYLOAD


def test_unknown_namespace_is_a_programming_error(store: FileBlobStore) -> None:
    with pytest.raises(ValueError):
        store.write_bytes(b"x", namespace="tmp")
    source = _spool(store)
    with pytest.raises(ValueError):
        store.adopt(source, namespace="../escape")
    assert source.read_bytes() == PAYLOAD


def _break_namespace(store: FileBlobStore, namespace: str) -> None:
    """Replace the namespace directory by a regular file: root ignores permission bits, not this."""
    directory = store.root / namespace
    for path in sorted(directory.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    directory.rmdir()
    directory.write_bytes(b"not a directory")


def test_adopt_failure_raises_blob_store_failed_and_stores_nothing(store: FileBlobStore) -> None:
    _break_namespace(store, "store")
    source = _spool(store)
    with pytest.raises(BlobStoreFailed) as raised:
        store.adopt(source, namespace="store")
    assert raised.value.code == "storage.blob_write_failed"
    assert "4711" not in str(raised.value)
    assert (store.root / "store").read_bytes() == b"not a directory"
    assert _blob_files(store) == []
    # The sender was not acknowledged: its bytes are still where they were, intact.
    assert source.read_bytes() == PAYLOAD


def test_adopt_of_a_missing_source_raises_blob_store_failed(store: FileBlobStore) -> None:
    with pytest.raises(BlobStoreFailed):
        store.adopt(store.tmp_dir / "gone.dcm", namespace="store")
    assert _blob_files(store) == []


def test_write_bytes_failure_raises_blob_store_failed_and_leaves_nothing(store: FileBlobStore) -> None:
    _break_namespace(store, "quarantine")
    with pytest.raises(BlobStoreFailed):
        store.write_bytes(PAYLOAD, namespace="quarantine")
    assert _blob_files(store) == []
    assert _all_files(store.tmp_dir) == [], "the temp file of a failed write must be removed"


def test_write_bytes_failure_when_the_spool_is_unusable(store: FileBlobStore) -> None:
    store.tmp_dir.rmdir()
    store.tmp_dir.write_bytes(b"not a directory")
    with pytest.raises(BlobStoreFailed):
        store.write_bytes(PAYLOAD, namespace="store")
    assert _blob_files(store) == []


def test_a_failure_in_one_namespace_does_not_affect_the_other(store: FileBlobStore) -> None:
    _break_namespace(store, "store")
    with pytest.raises(BlobStoreFailed):
        store.write_bytes(PAYLOAD, namespace="store")
    key = store.adopt(_spool(store), namespace="quarantine")
    assert store.path_of(key).read_bytes() == PAYLOAD


def test_purge_spool_removes_only_idle_spool_files(store: FileBlobStore) -> None:
    stale = _spool(store, "stale.part")
    fresh = _spool(store, "fresh.part")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    key = store.write_bytes(PAYLOAD, namespace="store")
    blob = store.path_of(key)
    os.utime(blob, (an_hour_ago, an_hour_ago))

    assert store.purge_spool(idle_seconds=600) == 1
    assert not stale.exists()
    assert fresh.read_bytes() == PAYLOAD
    assert blob.read_bytes() == PAYLOAD  # stored blobs are never purged
