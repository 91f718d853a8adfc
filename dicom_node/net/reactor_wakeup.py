"""Wake pynetdicom's reactor threads when there is work, instead of after a blind 1 ms sleep.

Why: pynetdicom 3.0 polls. Its DUL thread sleeps 1 ms whenever its queues and socket are idle, and
the association thread sleeps 1 ms before every look at its DIMSE message queue. Every C-STORE pays
those sleeps several times (request seen, response sent), and on one association that is a
measured 15 % of throughput (bench/ingest.py; PERFORMANCE.md "one small, documented module").

How: pynetdicom's reactors call `time.sleep(delay)` through the `time` name of their own modules.
`install()` points that name at `_ReactorClock`, which is the `time` module except for `sleep`: when
the caller is a DUL thread, it waits in `select` on the association socket and a wake-up pipe that
`send_pdu` writes to; when the caller is an association thread, it waits on its DIMSE message
queue. Both waits are bounded by the original delay, so every check pynetdicom makes still runs at
least as often as before: the change is only ever an earlier wake-up, never a missed one.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from typing import Any

import pynetdicom
from pynetdicom import association, dul

_SUPPORTED_MAJOR_MINOR = "3.0."
_WAKEUP_ATTRIBUTE = "_dicom_node_wakeup"


class _Wakeup:
    """A non-blocking pipe that one thread writes to and the DUL thread waits on; safe to close."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def fileno(self) -> int:
        return self._read_fd

    def set(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError):  # already signalled, not yet drained
                os.write(self._write_fd, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass

    def close(self) -> None:
        # Under the lock, so that a late set() never writes to a descriptor number reused elsewhere.
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read_fd)
                os.close(self._write_fd)


class _ReactorClock:
    """The `time` module as pynetdicom's reactors see it, with a sleep that wakes on work."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, dul.DULServiceProvider):
            _dul_idle_wait(thread, seconds)
        elif isinstance(thread, association.Association) and thread.is_acceptor:
            _association_idle_wait(thread, seconds)
        else:
            time.sleep(seconds)


def _dul_idle_wait(provider: dul.DULServiceProvider, seconds: float) -> None:
    wakeup: _Wakeup | None = getattr(provider, _WAKEUP_ATTRIBUTE, None)
    transport = provider.socket
    raw_socket = getattr(transport, "socket", None) if transport is not None else None
    if wakeup is None or raw_socket is None:
        time.sleep(seconds)
        return
    try:
        select.select([raw_socket, wakeup.fileno], [], [], seconds)
    except (OSError, ValueError):
        time.sleep(seconds)  # the socket closed under us: pynetdicom notices on its next check
        return
    wakeup.drain()


def _association_idle_wait(assoc: association.Association, seconds: float) -> None:
    messages = assoc.dimse.msg_queue
    # `not_empty` holds the queue's own (non-reentrant) mutex: look at the deque, not qsize().
    with messages.not_empty:
        if not messages.queue:
            messages.not_empty.wait(seconds)


def install() -> bool:
    """Install the wake-ups once per process; False (and pynetdicom untouched) on another version."""
    if not pynetdicom.__version__.startswith(_SUPPORTED_MAJOR_MINOR):
        return False
    if isinstance(getattr(dul, "time", None), _ReactorClock):
        return True
    original_run_reactor = dul.DULServiceProvider.run_reactor
    original_send_pdu = dul.DULServiceProvider.send_pdu

    def run_reactor(self: dul.DULServiceProvider) -> None:
        wakeup = _Wakeup()
        setattr(self, _WAKEUP_ATTRIBUTE, wakeup)
        try:
            original_run_reactor(self)
        finally:
            wakeup.close()

    def send_pdu(self: dul.DULServiceProvider, primitive: Any) -> None:
        original_send_pdu(self, primitive)
        wakeup: _Wakeup | None = getattr(self, _WAKEUP_ATTRIBUTE, None)
        if wakeup is not None:
            wakeup.set()

    dul.DULServiceProvider.run_reactor = run_reactor  # type: ignore[method-assign]
    dul.DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
    setattr(dul, "time", _ReactorClock())  # noqa: B010 (the module's private import, by name)
    setattr(association, "time", _ReactorClock())  # noqa: B010
    return True
