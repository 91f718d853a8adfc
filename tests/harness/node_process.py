"""`dicom-node serve` as a real subprocess: start it, wait for its listening line, stop or kill it.

The node runs in its own session (process group), so a SIGKILL can take the supervisor and every
receiver process at once, as a power cut or the OOM killer would. stdout is read by a thread (the
listening line is waited for with a deadline, never a fixed sleep); stderr, the JSON logs, goes to
a file so a chatty node can never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness.waiting import wait_until

LISTENING_PREFIX = "dicom-node listening:"
_LISTENING_PORT = re.compile(r" on (?P<host>\S+):(?P<port>\d+) \(")
_API_PORT = re.compile(r"admin API on http://(?P<host>[^:\s]+):(?P<port>\d+)")


def dicom_node_executable() -> str:
    """The console script of the interpreter running the tests (the project's venv)."""
    candidate = Path(sys.executable).parent / "dicom-node"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("dicom-node")
    if found is None:
        raise RuntimeError("the dicom-node console script is not installed: pip install -e .")
    return found


def node_env(**settings: object) -> dict[str, str]:
    """The test process's environment without DICOM_NODE_*, plus `settings` as DICOM_NODE_<FIELD>."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DICOM_NODE_")}
    env["PYTHONUNBUFFERED"] = "1"
    for field, value in settings.items():
        env[f"DICOM_NODE_{field.upper()}"] = str(value)
    if "data_dir" in settings:  # the node's metric files beside its data, not one folder per test in /tmp
        metrics_dir = Path(str(settings["data_dir"])).parent / "metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def _process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class NodeProcess:
    """One `dicom-node <command>` subprocess; use as a context manager so it never outlives a test."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, *, command: str = "serve", name: str = "node"
    ) -> None:
        self.env = env
        self.command = command
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self.stdout_lines: list[str] = []
        self.port: int | None = None
        self.api_port: int | None = None
        self._listening = threading.Event()
        self._stdout_closed = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> NodeProcess:
        stderr = self.stderr_path.open("a", encoding="utf-8")
        try:
            self._process = subprocess.Popen(
                [dicom_node_executable(), self.command],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        finally:
            stderr.close()
        self._reader = threading.Thread(target=self._read_stdout, name="node-stdout", daemon=True)
        self._reader.start()
        return self

    def wait_listening(self, timeout: float = 60.0) -> int:
        """Block until the listening line is printed; fail early if the node exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._listening.wait(0.05):
                assert self.port is not None
                return self.port
            if self.process.poll() is not None and self._stdout_closed.is_set():
                raise AssertionError(
                    f"dicom-node exited with {self.process.returncode} before listening\n"
                    f"stdout: {self.stdout_text()}\nstderr: {self.stderr_text()[-4000:]}"
                )
        raise TimeoutError(
            f"dicom-node did not print {LISTENING_PREFIX!r} within {timeout}s\n"
            f"stdout: {self.stdout_text()}\nstderr: {self.stderr_text()[-4000:]}"
        )

    def start_and_wait(self, timeout: float = 60.0) -> int:
        self.start()
        return self.wait_listening(timeout)

    @property
    def process(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise RuntimeError("not started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the supervisor only: it stops its receivers itself."""
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        rc = self.process.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return rc

    def kill_group(self, timeout: float = 30.0) -> None:
        """SIGKILL the supervisor and every receiver, and wait until none of them is alive."""
        pgid = self.pid  # start_new_session: the supervisor leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=timeout)
        wait_until(
            lambda: not _process_group_members(pgid),
            timeout=timeout,
            what=f"every process of group {pgid} to die",
        )
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self, timeout: float = 60.0) -> int | None:
        """Clean up: SIGTERM, then SIGKILL the group if it does not exit in time."""
        if self._process is None:
            return None
        if self.is_running():
            self.terminate()
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if _process_group_members(self.pid) or self.is_running():
            self.kill_group()
        return self._process.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop(timeout=30.0)

    # -- output ----------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                line = line.rstrip("\n")
                self.stdout_lines.append(line)
                if line.startswith(LISTENING_PREFIX) and not self._listening.is_set():
                    match = _LISTENING_PORT.search(line)
                    if match:
                        self.port = int(match.group("port"))
                    api = _API_PORT.search(line)
                    if api:
                        self.api_port = int(api.group("port"))
                    self._listening.set()
        finally:
            self._process.stdout.close()
            self._stdout_closed.set()

    def stdout_text(self) -> str:
        return "\n".join(self.stdout_lines)

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log records on stderr (lines that are not JSON, e.g. a traceback, are skipped)."""
        records: list[dict[str, Any]] = []
        for line in self.stderr_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def events(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.logs() if record.get("event") == event]
