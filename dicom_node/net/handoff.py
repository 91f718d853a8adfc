"""Connection hand-off: the supervisor accepts DICOM connections and passes each to the least-busy receiver.

Why not SO_REUSEPORT alone: the kernel spreads connections between processes by a hash of the
addresses, so four modalities land 3:1 or 4:0 on two receivers as often as 2:2, and one process
(one GIL) ends up doing most of the work. Measured on two cores, four associations: ~100 inst/s
shared by hash, ~155 split evenly (bench/ingest.py). Here the supervisor owns the listening socket,
and sends each accepted socket over a Unix socket pair (SCM_RIGHTS) to the receiver with the
fewest open associations; each receiver reports its count whenever it changes.

The counts steer, they do not limit: each receiver still enforces `MAX_ASSOCIATIONS` itself.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class _Route:
    index: int
    channel: socket.socket
    handed_off: int = 0
    reported_taken: int = 0
    reported_open: int = 0
    alive: bool = True
    pending: bytes = b""

    @property
    def open_connections(self) -> int:
        """What the receiver reported open, plus what was handed off since it counted."""
        return self.reported_open + max(0, self.handed_off - self.reported_taken)


@dataclass
class Dispatcher:
    """Accepts on `listener` and hands each connection to the receiver with the fewest open ones."""

    listener: socket.socket
    _routes: dict[int, _Route] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def new_channel(self, index: int) -> socket.socket:
        """A fresh channel for receiver `index` (at start or restart); returns the receiver's end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            old = self._routes.get(index)
            if old is not None:
                old.channel.close()
            self._routes[index] = _Route(index, ours)
        return theirs

    def open_connections(self) -> dict[int, int]:
        with self._lock:
            return {route.index: route.open_connections for route in self._routes.values()}

    def run(self) -> None:
        """The dispatch loop; returns after `stop()`."""
        while not self._stop.is_set():
            with self._lock:
                channels = {route.channel: route for route in self._routes.values() if route.alive}
            try:
                readable, _, _ = select.select([self.listener, *channels], [], [], 0.5)
            except (OSError, ValueError):
                continue  # a channel closed by a restart between snapshot and select
            for ready in readable:
                if ready is self.listener:
                    self._accept()
                else:
                    self._read_reports(channels[ready])

    def stop(self) -> None:
        """Stop accepting: new connections are refused from here on; handed-off ones carry on."""
        self._stop.set()
        # shutdown() stops listening at once, even while the loop's select() still holds the socket;
        # close() alone would leave it accepting until that select() returns.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.listener.close()

    def close(self) -> None:
        self.stop()
        with self._lock:
            for route in self._routes.values():
                route.channel.close()

    def _accept(self) -> None:
        try:
            connection, address = self.listener.accept()
        except OSError:
            return
        with connection:
            label = f"{address[0]}:{address[1]}".encode("ascii", errors="replace")
            for route in self._by_load():
                # Counted before the send, so the count never lags a connection the receiver has.
                with self._lock:
                    route.handed_off += 1
                try:
                    socket.send_fds(route.channel, [label], [connection.fileno()])
                except OSError:
                    with self._lock:
                        route.handed_off -= 1
                        route.alive = False  # a receiver that died; the supervisor restarts it
                    continue
                return
        logger.error("no receiver took a connection", extra={"event": "handoff_failed"})

    def _by_load(self) -> list[_Route]:
        with self._lock:
            return sorted(
                (route for route in self._routes.values() if route.alive),
                key=lambda route: (route.open_connections, route.index),
            )

    def _read_reports(self, route: _Route) -> None:
        """Take the receiver's latest `taken open` line; what it has not taken yet is added on top."""
        try:
            data = route.channel.recv(4096)
        except OSError:
            data = b""
        with self._lock:
            if not data:
                route.alive = False
                return
            *complete, route.pending = (route.pending + data).split(b"\n")
            if complete:
                taken, _, open_now = complete[-1].partition(b" ")
                if taken.isdigit() and open_now.isdigit():
                    route.reported_taken, route.reported_open = int(taken), int(open_now)


def listen(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """The node's DICOM listening socket (no SO_REUSEPORT: a port already held fails here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog, reuse_port=False)
