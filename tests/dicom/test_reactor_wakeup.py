"""net.reactor_wakeup: pynetdicom's reactors wake on work, leak nothing, and are left alone when unknown."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import dul

from dicom_node.net import reactor_wakeup
from dicom_node.net.scp import ScpServer
from tests.harness import datasets, dicom_tools


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_installed_by_the_composition_root_and_idempotent(scp: ScpServer) -> None:
    assert isinstance(dul.time, reactor_wakeup._ReactorClock)  # type: ignore[attr-defined]
    patched = dul.DULServiceProvider.run_reactor
    assert reactor_wakeup.install() is True
    assert dul.DULServiceProvider.run_reactor is patched, "a second install must not wrap twice"


def test_another_pynetdicom_version_is_left_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    assert reactor_wakeup.install() is False


def test_many_associations_leave_no_wakeup_descriptor_behind(scp: ScpServer, tmp_path: Path) -> None:
    paths = [datasets.write(datasets.make_ct(instance_number=i), tmp_path / f"{i}.dcm") for i in range(3)]
    assert dicom_tools.storescu(scp.port, paths).returncode == 0  # warm-up: lazily opened files
    before = _open_descriptors()
    for _ in range(20):
        assert dicom_tools.echoscu(scp.port).returncode == 0
    assert dicom_tools.storescu(scp.port, paths).returncode == 0
    # Association threads end just after the peer's release: allow them a moment to close.
    for _ in range(100):
        if _open_descriptors() <= before:
            break
        time.sleep(0.05)
    assert _open_descriptors() <= before


def test_a_wakeup_set_after_close_writes_nowhere() -> None:
    wakeup = reactor_wakeup._Wakeup()
    read_fd = wakeup.fileno
    wakeup.set()
    wakeup.close()
    wakeup.set()  # must not raise nor write to a reused descriptor number
    with pytest.raises(OSError):
        os.fstat(read_fd)
