"""The pynetdicom servers the SCP runs: TLS handshakes off the accept loop, and connections handed off.

pynetdicom 3.0 does the server side of the TLS handshake inside its accept loop, with no deadline:
one peer that connects and sends nothing (a port scanner, a load-balancer probe, a stalled client)
stops every other peer from being accepted, and `shutdown()` from returning (dcm4che #939 and
fo-dicom #1766 had the same bug). Here the accept loop only wraps the socket; the handshake runs
in the connection's own thread under the network timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any, cast

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

if TYPE_CHECKING:
    from pynetdicom.association import Association

_MAX_ADDRESS_BYTES = 256
_REPORT_SECONDS = 0.1


class ListeningServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved into the connection's thread."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = cast(socket.socket, self.socket).accept()
        return self._wrap(client), address

    def _wrap(self, client: socket.socket) -> socket.socket:
        if self.ssl_context is None:
            return client
        client.settimeout(self.ae.network_timeout)  # accepted sockets do not inherit the listener's
        return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError):
                self.shutdown_request(request)
                return
            request.settimeout(None)
        super().process_request_thread(request, client_address)


class _TrackingRequestHandler(RequestHandler):
    """pynetdicom's handler, telling the server which association serves the connection."""

    server: HandedOffServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        self.server.track(assoc)
        return assoc


class HandedOffServer(ListeningServer):
    """A pynetdicom server whose connections arrive over `channel` instead of from its own listener.

    socketserver's loop waits for its socket to be readable and then calls `get_request`, so the
    channel takes the listening socket's place; nothing is bound or listening in this process.

    Its load is the connections it took and has not finished: counted from `get_request`, so one
    whose association thread has not started yet already counts, and ended when that thread ends.
    """

    channel: socket.socket
    _taken: int = 0
    _ended: int = 0
    _tracked: list[Association]
    _tracked_lock: threading.Lock

    def server_bind(self) -> None:
        """Nothing to bind: connections come from the supervisor."""

    def server_activate(self) -> None:
        """Nothing to listen on."""

    def adopt_channel(self, channel: socket.socket, port: int) -> None:
        cast(socket.socket, self.socket).close()  # the unused TCP socket socketserver created
        self.socket = channel
        self.channel = channel
        self.server_address = (self.server_address[0], port)
        self.RequestHandlerClass = _TrackingRequestHandler
        self._tracked = []
        self._tracked_lock = threading.Lock()

    def track(self, assoc: Association) -> None:
        with self._tracked_lock:
            self._tracked.append(assoc)

    def shutdown_request(self, request: object) -> None:
        # pynetdicom calls this only when handling a connection failed before its association ran.
        with self._tracked_lock:
            self._ended += 1
        super().shutdown_request(request)  # type: ignore[arg-type]

    def load(self) -> tuple[int, int]:
        """(connections taken so far, of those still open)."""
        with self._tracked_lock:
            alive = [assoc for assoc in self._tracked if assoc.is_alive() or not assoc.ident]
            self._ended += len(self._tracked) - len(alive)
            self._tracked = alive
            return self._taken, self._taken - self._ended

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        message, fds, _flags, _address = socket.recv_fds(self.channel, _MAX_ADDRESS_BYTES, 1)
        if not fds:
            raise OSError("supervisor channel closed")
        client = socket.socket(fileno=fds[0])
        with self._tracked_lock:
            self._taken += 1
        host, _, port = message.decode("ascii", errors="replace").rpartition(":")
        return self._wrap(client), (host, int(port) if port.isdigit() else 0)

    def report_load(self, stop: threading.Event) -> None:
        """Send `taken open` to the supervisor whenever it changes (a thread body)."""
        last = (-1, -1)
        while not stop.wait(_REPORT_SECONDS):
            load = self.load()
            if load == last:
                continue
            try:
                self.channel.send(f"{load[0]} {load[1]}\n".encode("ascii"))
            except OSError:
                return  # the supervisor is gone; the receiver's own watch stops it
            last = load
