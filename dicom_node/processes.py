"""Process management for `serve`, `scp` and `worker`: receivers behind one DICOM port, job workers.

pynetdicom is CPU-bound per process (GIL), so a burst from several modalities only uses every core
when several receiver processes share the work. The supervisor owns the listening socket and hands
each connection to the least-busy receiver (net/handoff.py); it restarts a receiver that dies, and
on SIGTERM stops accepting, lets in-flight stores finish and exits 0. Job workers (de-identification,
later inference) are processes too, for the same reason; the supervisor restarts them as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from dicom_node.bootstrap import (
    build_node,
    configure_file_tools,
    configure_libraries,
    deid_stage,
    describe_database,
    scp_config,
    upgrade_database,
    warn_about_open_defaults,
    worker_config,
)
from dicom_node.core.metrics_dir import clear_stale_files
from dicom_node.core.metrics_export import process_exited, serve_metrics
from dicom_node.core.observability import configure_logging
from dicom_node.core.settings import Settings
from dicom_node.net.handoff import Dispatcher, listen
from dicom_node.net.scp import ScpServer, start_scp
from dicom_node.services.node_state import NodeStateCollector
from dicom_node.services.recovery import discard_unreferenced_copies, quarantine_unreferenced_blobs
from dicom_node.services.studies import run_completion_sweeper
from dicom_node.services.worker import run_worker, stage_handlers

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from pathlib import Path
    from types import FrameType

    import uvicorn

logger = logging.getLogger(__name__)

_READY_TIMEOUT_SECONDS = 60.0
_MONITOR_SECONDS = 0.5
# Files changed this long before the previous start are also checked: clocks and mtimes are coarse.
_RECOVERY_SLACK_SECONDS = 60.0


class StartupFailed(Exception):
    """The node could not start listening."""


@dataclass
class _Child:
    """A child process of the supervisor (a receiver or a job worker) and its slot number."""

    index: int
    process: BaseProcess


def _lock_data_dir(data_dir: Path) -> int:
    """Hold `run/node.lock` for the supervisor's life: one node per data directory, or none starts.

    The kernel drops the lock when the process dies, however it dies.
    """
    run_dir = data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / "node.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StartupFailed(f"another dicom-node is running on data directory {data_dir}") from exc
    return fd


def _previous_start(data_dir: Path) -> float:
    """When the previous lifetime started (0 when unknown: then every file is checked); marks this one."""
    marker = data_dir / "run" / "last-start"
    try:
        previous = marker.stat().st_mtime
    except FileNotFoundError:
        previous = 0.0
    marker.touch()
    return previous


class _StopRequest:
    """What a SIGTERM/SIGINT handler records: one attribute, no lock.

    A handler that calls `Event.set()` takes the event's lock; a second signal arriving while the
    first handler holds it (a process-group SIGTERM followed by the supervisor's own, say) runs the
    handler again on the same thread, which then waits for that lock forever. The loops that watch
    for a stop poll this flag and set their Event themselves, outside signal context.
    """

    def __init__(self) -> None:
        self.requested = False

    def handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait up to `seconds` for a stop from either source; True once one was asked for."""
        if not self.requested:
            stop.wait(seconds)
        if self.requested:
            stop.set()
        return stop.is_set()


def _install_stop_handlers(request: _StopRequest, signals: tuple[signal.Signals, ...]) -> None:
    for signum in signals:
        signal.signal(signum, request.handle)


def _watch_supervisor(stop: threading.Event, supervisor_pid: int) -> None:
    """Drain and exit when the supervisor is gone (killed -9), so no orphan keeps the port."""
    while not stop.wait(_MONITOR_SECONDS):
        if os.getppid() != supervisor_pid:
            stop.set()


def _child_start(settings_data: dict[str, Any]) -> tuple[threading.Event, _StopRequest, Settings]:
    """What every child process does first: SIGTERM asks it to stop, Ctrl-C is the supervisor's to
    turn into SIGTERM, it stops when the supervisor is gone, and it logs as the supervisor does."""
    stop = threading.Event()
    request = _StopRequest()
    _install_stop_handlers(request, (signal.SIGTERM,))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_watch_supervisor, args=(stop, os.getppid()), name="supervisor-watch", daemon=True
    ).start()
    settings = Settings(**settings_data)
    configure_logging(settings.log_level)
    return stop, request, settings


def _receiver_main(settings_data: dict[str, Any], ready: Any, index: int, channel: socket.socket) -> None:
    """Body of one receiver process: serve what the supervisor hands over until SIGTERM, then drain."""
    stop, request, settings = _child_start(settings_data)
    node = build_node(settings)
    configure_libraries(node.blobs.tmp_dir)
    try:
        server = start_scp(node, scp_config(settings), channel=channel)
    except OSError as exc:
        ready.put(("error", index, exc.strerror or type(exc).__name__))
        return
    ready.put(("ready", index, server.port))
    while not request.wait(stop, _MONITOR_SECONDS):
        pass
    server.stop(settings.shutdown_grace_seconds)
    node.engine.dispose()


def _worker_main(settings_data: dict[str, Any]) -> None:
    """Body of one job worker process: run jobs until SIGTERM, finishing the job in hand."""
    stop, request, settings = _child_start(settings_data)
    configure_file_tools()
    node = build_node(settings)
    config = worker_config(settings)
    handlers = stage_handlers(deid_stage(settings), config)
    loop = threading.Thread(
        target=run_worker, args=(node, handlers, stop), kwargs={"config": config}, name="job-worker"
    )
    loop.start()
    while not request.wait(stop, _MONITOR_SECONDS):
        if not loop.is_alive():
            break
    stop.set()
    loop.join()
    node.engine.dispose()


class Supervisor:
    """Runs the receivers (in-process for one, child processes for more), the completion sweeper and
    the job workers; `receivers=False` is the `worker` role: job workers only."""

    def __init__(
        self, settings: Settings, out: TextIO, *, receivers: bool = True, workers: int = 0, api: bool = False
    ) -> None:
        self._settings = settings
        self._out = out
        self._with_api = api
        self._api: uvicorn.Server | None = None
        self._api_thread: threading.Thread | None = None
        self._with_receivers = receivers
        self._worker_count = workers
        self._workers: list[_Child] = []
        self._stop = threading.Event()
        self._stop_request = _StopRequest()
        self._context = multiprocessing.get_context("spawn")
        self._ready: Any = self._context.Queue()
        self._receivers: list[_Child] = []
        self._local: ScpServer | None = None
        self._dispatcher: Dispatcher | None = None

    def run(self) -> int:
        settings = self._settings
        configure_logging(settings.log_level)
        _install_stop_handlers(self._stop_request, (signal.SIGTERM, signal.SIGINT))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._with_receivers:
            return self._run_workers_only()
        try:
            lock_fd = _lock_data_dir(settings.data_dir)
        except StartupFailed as exc:
            logger.error("start-up failed", extra={"event": "startup_failed", "reason": "data_dir_locked"})
            self._out.write(f"dicom-node: {exc}\n")
            return 2
        try:
            clear_stale_files()  # ours alone: the data directory's lock is held
            return self._run_locked()
        finally:
            os.close(lock_fd)

    def _run_workers_only(self) -> int:
        settings = self._settings
        upgrade_database(settings)
        deid_stage(settings)  # a bad secret stops here, before any process starts
        for index in range(self._worker_count):
            self._spawn_worker(index)
        self._serve_metrics(build_node(settings))
        self._out.write(
            f"dicom-node worker: {self._worker_count} process{'es' if self._worker_count != 1 else ''}; "
            f"database {describe_database(settings)}\n"
        )
        self._out.flush()
        while not self._stop_request.wait(self._stop, _MONITOR_SECONDS):
            self._restart_dead_workers()
        self._stop_workers()
        return 0

    def _run_locked(self) -> int:
        settings = self._settings
        upgrade_database(settings)
        warn_about_open_defaults(settings)
        deid_stage(settings)  # creates the secret once, before any worker could race to
        node = build_node(settings)
        configure_libraries(node.blobs.tmp_dir)
        purged = node.blobs.purge_spool(idle_seconds=2 * settings.network_timeout_seconds)
        if purged:
            logger.info("stale spool files removed", extra={"event": "spool_purged", "count": purged})
        previous_start = _previous_start(settings.data_dir)
        quarantine_unreferenced_blobs(node, modified_after=previous_start - _RECOVERY_SLACK_SECONDS)
        discard_unreferenced_copies(node, modified_after=previous_start - _RECOVERY_SLACK_SECONDS)
        try:
            port = self._start_receivers(node)
        except StartupFailed as exc:
            logger.error("start-up failed", extra={"event": "startup_failed", "reason": str(exc)})
            self._stop_receivers()
            self._out.write(f"dicom-node: {exc}\n")
            return 2
        try:
            api_address = self._start_api(node) if self._with_api else self._serve_metrics(node)
        except StartupFailed as exc:
            logger.error("start-up failed", extra={"event": "startup_failed", "reason": "api_port"})
            self._stop_receivers()
            self._out.write(f"dicom-node: {exc}\n")
            return 2
        processes = settings.scp_processes
        self._out.write(
            f"dicom-node listening: DICOM AE {settings.ae_title} on {settings.dicom_host}:{port} "
            f"({processes} receiver process{'es' if processes > 1 else ''}); "
            f"{api_address}; data {settings.data_dir}; database {describe_database(settings)}\n"
        )
        self._out.flush()
        logger.info("node started", extra={"event": "node_started", "port": port, "processes": processes})
        sweeper = threading.Thread(
            target=run_completion_sweeper,
            args=(node, self._stop),
            kwargs={"poll_seconds": settings.completion_poll_seconds},
            name="completion-sweeper",
            daemon=True,
        )
        sweeper.start()
        for index in range(self._worker_count):
            self._spawn_worker(index)
        while not self._stop_request.wait(self._stop, _MONITOR_SECONDS):
            self._restart_dead_receivers(port)
            self._restart_dead_workers()
        logger.info("node stopping", extra={"event": "node_stopping"})
        self._stop_api()
        self._stop_receivers()
        self._stop_workers()
        sweeper.join(timeout=settings.completion_poll_seconds + 5)
        node.engine.dispose()
        logger.info("node stopped", extra={"event": "node_stopped"})
        return 0

    def _start_receivers(self, node: Any) -> int:
        settings = self._settings
        if settings.scp_processes == 1:
            try:
                self._local = start_scp(node, scp_config(settings))
            except OSError as exc:
                raise StartupFailed(
                    f"cannot listen on {settings.dicom_host}:{settings.dicom_port}: {exc.strerror}"
                ) from exc
            return self._local.port
        try:
            listener = listen(settings.dicom_host, settings.dicom_port)
        except OSError as exc:
            raise StartupFailed(
                f"cannot listen on {settings.dicom_host}:{settings.dicom_port}: {exc.strerror}"
            ) from exc
        self._dispatcher = Dispatcher(listener)
        port = int(listener.getsockname()[1])
        self._settings = settings = settings.model_copy(update={"dicom_port": port})
        for index in range(settings.scp_processes):
            self._spawn(index)
        for _ in range(settings.scp_processes):
            self._await_ready()
        threading.Thread(target=self._dispatcher.run, name="dicom-node-dispatch", daemon=True).start()
        return port

    def _spawn(self, index: int) -> None:
        assert self._dispatcher is not None
        channel = self._dispatcher.new_channel(index)
        process = self._context.Process(
            target=_receiver_main,
            args=(self._settings.model_dump(), self._ready, index, channel),
            name=f"dicom-node-receiver-{index}",
        )
        process.start()
        channel.close()  # the child has its own copy
        self._receivers.append(_Child(index=index, process=process))

    def _start_api(self, node: Any) -> str:
        """The admin API in a thread of the supervisor; its address for the start-up line."""
        from dicom_node.api_root import api_context, api_server  # children never need it: see there

        settings = self._settings
        server = api_server(settings, api_context(settings, node, scp_listening=self._receivers_listening))
        thread = threading.Thread(target=server.run, name="admin-api", daemon=True)
        thread.start()
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            server.should_exit = True
            raise StartupFailed(f"cannot serve the admin API on {settings.api_host}:{settings.api_port}")
        self._api, self._api_thread = server, thread
        bound_port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.api_port
        return f"admin API on http://{settings.api_host}:{bound_port}"

    def _stop_api(self) -> None:
        if self._api is not None and self._api_thread is not None:
            self._api.should_exit = True
            self._api_thread.join(timeout=10)

    def _serve_metrics(self, node: Any) -> str:
        settings = self._settings
        if not settings.metrics_port:
            return "no metrics port"
        try:
            serve_metrics(settings.api_host, settings.metrics_port, (NodeStateCollector(node),))
        except OSError as exc:
            raise StartupFailed(
                f"cannot serve /metrics on {settings.api_host}:{settings.metrics_port}"
            ) from exc
        return f"metrics on http://{settings.api_host}:{settings.metrics_port}/metrics"

    def _receivers_listening(self) -> bool:
        if self._local is not None:
            return True
        return bool(self._receivers) and all(r.process.is_alive() for r in self._receivers)

    def _spawn_worker(self, index: int) -> None:
        process = self._context.Process(
            target=_worker_main, args=(self._settings.model_dump(),), name=f"dicom-node-worker-{index}"
        )
        process.start()
        self._workers.append(_Child(index=index, process=process))

    def _restart_dead_workers(self) -> None:
        for worker in _reap(self._workers, "worker"):
            self._spawn_worker(worker.index)

    def _stop_workers(self) -> None:
        _terminate(self._workers, grace=self._settings.shutdown_grace_seconds)

    def _await_ready(self) -> None:
        try:
            kind, index, detail = self._ready.get(timeout=_READY_TIMEOUT_SECONDS)
        except queue.Empty as exc:
            raise StartupFailed("a receiver process did not start in time") from exc
        if kind != "ready":
            raise StartupFailed(
                f"receiver {index} cannot listen on port {self._settings.dicom_port}: {detail}"
            )

    def _restart_dead_receivers(self, port: int) -> None:
        for receiver in _reap(self._receivers, "receiver"):
            self._spawn(receiver.index)
            with contextlib.suppress(StartupFailed):
                self._await_ready()

    def _stop_receivers(self) -> None:
        grace = self._settings.shutdown_grace_seconds
        if self._dispatcher is not None:
            self._dispatcher.stop()
        if self._local is not None:
            self._local.stop(grace)
        _terminate(self._receivers, grace=grace)
        if self._dispatcher is not None:
            self._dispatcher.close()


def _reap(children: list[_Child], role: str) -> list[_Child]:
    """Take the children that died out of `children`, logged and their live metrics dropped."""
    dead = [child for child in children if not child.process.is_alive()]
    for child in dead:
        logger.error(
            f"{role} process exited; restarting it",
            extra={
                "event": f"{role}_restarted",
                "pid": child.process.pid,
                "reason": str(child.process.exitcode),
            },
        )
        children.remove(child)
        if child.process.pid is not None:
            process_exited(child.process.pid)
    return dead


def _terminate(children: list[_Child], *, grace: float) -> None:
    """SIGTERM every child, wait for each to drain, SIGKILL what outlives the grace period."""
    for child in children:
        if child.process.is_alive() and child.process.pid is not None:
            child.process.terminate()
    for child in children:
        child.process.join(timeout=grace + 10)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(timeout=5)


def run_node(settings: Settings, out: TextIO, *, receivers: bool, workers: int, api: bool = False) -> int:
    return Supervisor(settings, out, receivers=receivers, workers=workers, api=api).run()
