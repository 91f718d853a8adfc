"""net.handoff: the supervisor's dispatcher spreads connections by load, skips dead receivers, stops cleanly.

Real sockets throughout: a loopback listener, TCP clients, and Unix socket pairs whose far ends play
the receivers (they take the passed descriptors with recv_fds, as HandedOffServer does).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from dicom_node.net.handoff import Dispatcher, listen
from tests.harness.waiting import wait_until


class FakeReceiver:
    """The receiving end of one channel: collects handed-off sockets."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.sockets: list[socket.socket] = []

    def take(self, count: int) -> None:
        for _ in range(count):
            _msg, fds, _flags, _addr = socket.recv_fds(self.channel, 256, 1)
            self.sockets.append(socket.socket(fileno=fds[0]))

    def report(self, open_associations: int) -> None:
        self.channel.send(f"{len(self.sockets)} {open_associations}\n".encode())

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        self.channel.close()


_OPEN: list[FakeReceiver | socket.socket] = []


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    dispatcher = Dispatcher(listen("127.0.0.1", 0))
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    yield dispatcher
    while _OPEN:  # whatever a test opened, closed even when it failed half-way
        _OPEN.pop().close()
    dispatcher.close()
    thread.join(5)


def _connect(dispatcher: Dispatcher) -> socket.socket:
    client = socket.create_connection(dispatcher.listener.getsockname()[:2], timeout=5)
    _OPEN.append(client)
    return client


def _receivers(dispatcher: Dispatcher, count: int) -> list[FakeReceiver]:
    receivers = [FakeReceiver(dispatcher.new_channel(index)) for index in range(count)]
    _OPEN.extend(receivers)
    return receivers


def test_connections_alternate_between_equally_loaded_receivers(dispatcher: Dispatcher) -> None:
    a, b = _receivers(dispatcher, 2)
    clients = [_connect(dispatcher) for _ in range(4)]
    a.take(2)
    b.take(2)
    assert dispatcher.open_connections() == {0: 2, 1: 2}
    for client in clients:
        client.close()
    a.close()
    b.close()


def test_a_receivers_report_steers_the_next_connection_to_it(dispatcher: Dispatcher) -> None:
    a, b = _receivers(dispatcher, 2)
    clients = [_connect(dispatcher) for _ in range(2)]
    a.take(1)
    b.take(1)
    b.report(0)  # b took one connection and it has ended; a's is still open
    wait_until(lambda: dispatcher.open_connections() == {0: 1, 1: 0}, timeout=5, what="b's report")
    clients.append(_connect(dispatcher))
    b.take(1)
    assert dispatcher.open_connections() == {0: 1, 1: 1}
    for sock in clients:
        sock.close()
    a.close()
    b.close()


def test_a_report_that_predates_a_hand_off_does_not_hide_it(dispatcher: Dispatcher) -> None:
    a, b = _receivers(dispatcher, 2)
    clients = [_connect(dispatcher)]
    a.take(1)
    a.channel.send(b"0 7\n")  # counted before it took the connection (open 7: to see it arrive)
    wait_until(lambda: dispatcher.open_connections()[0] == 8, timeout=5, what="a's stale report")
    a.channel.send(b"0 0\n")
    wait_until(lambda: dispatcher.open_connections()[0] == 1, timeout=5, what="a's next report")
    clients.append(_connect(dispatcher))
    b.take(1)
    for sock in clients:
        sock.close()
    a.close()
    b.close()


def test_a_dead_receiver_is_skipped(dispatcher: Dispatcher) -> None:
    dead, alive = _receivers(dispatcher, 2)
    dead.close()
    clients = [_connect(dispatcher) for _ in range(3)]
    alive.take(3)
    assert len(alive.sockets) == 3
    for sock in clients:
        sock.close()
    alive.close()


def test_the_handed_off_socket_is_the_clients_connection(dispatcher: Dispatcher) -> None:
    (receiver,) = _receivers(dispatcher, 1)
    client = _connect(dispatcher)
    receiver.take(1)
    client.sendall(b"ping")
    assert receiver.sockets[0].recv(4) == b"ping"
    client.close()
    receiver.close()


def test_after_stop_new_connections_are_refused(dispatcher: Dispatcher) -> None:
    (receiver,) = _receivers(dispatcher, 1)
    address = dispatcher.listener.getsockname()[:2]
    dispatcher.stop()
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()
    receiver.close()
