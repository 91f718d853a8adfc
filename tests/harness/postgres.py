"""A throwaway PostgreSQL cluster for the test session: initdb + pg_ctl on a free port in a temp dir.

Each test gets `CREATE DATABASE … TEMPLATE tmpl` of a database migrated once, and it is dropped
afterwards. PostgreSQL refuses to run as root, so under root the cluster runs as `postgres`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg2

from tests.harness.ports import free_port
from tests.harness.waiting import wait_until

TEMPLATE_DB = "tmpl"


def _bin_dir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL binaries not found: run `make install` as root (apt-get install postgresql)"
    )


class PostgresCluster:
    def __init__(self) -> None:
        self.bin_dir = _bin_dir()
        self.port = free_port()
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.superuser = "postgres"
        # Not tempfile.gettempdir(): the node points that at its spool directory.
        self.base = Path(tempfile.mkdtemp(prefix="dicom-node-pg-", dir="/tmp"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.socket_dir.mkdir()
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            for path in (self.base, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.base, timeout=120)

    def start(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-F -p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=64MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.base / "log"), "-w", "start"
        )
        wait_until(self._accepts_connections, timeout=30, what="PostgreSQL accepting connections")

    def _accepts_connections(self) -> bool:
        try:
            psycopg2.connect(self.dsn("postgres")).close()
        except psycopg2.OperationalError:
            return False
        return True

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.superuser} dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        connection = psycopg2.connect(self.dsn("postgres"))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    def create_database(self, template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)
