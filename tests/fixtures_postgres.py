"""A real, throwaway PostgreSQL server for tests: initdb into a temp dir, pg_ctl on a loopback port.

Register with ``pytest_plugins = ["tests.fixtures_postgres"]``. The server is started once per
session (initdb costs seconds); each test gets its own fresh database, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
PG_USER = "postgres"


def pg_binary(name: str) -> str:
    for directory in PG_BIN_DIRS:
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL binary {name!r} not found (install Debian 'postgresql')")
    return found


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_server_user(command: list[str]) -> list[str]:
    # initdb refuses to run as root; drop to the postgres account when we are root.
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *command]
    return command


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    _names: Iterator[int]
    data: Path | None = None
    options: str = ""
    logfile: Path | None = None

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), as an outage would."""
        assert self.data is not None
        subprocess.run(as_server_user([pg_binary("pg_ctl"), "-D", str(self.data), "-m", "fast",
                                       "-w", "stop"]), check=True, capture_output=True)

    def start(self) -> None:
        assert self.data is not None and self.logfile is not None
        subprocess.run(as_server_user([pg_binary("pg_ctl"), "-D", str(self.data), "-l",
                                       str(self.logfile), "-o", self.options, "-w", "-t", "60",
                                       "start"]), check=True, capture_output=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def admin_execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(sql)

    def create_database(self) -> str:
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.admin_execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_postgres(extra_options: str = "") -> Iterator[PostgresServer]:
    """Start a private PostgreSQL on a free loopback port; stop it and delete it on exit."""
    root = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
    data, sockets, logfile = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        account = pwd.getpwnam(PG_USER)
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
        user = PG_USER
    else:
        user = pwd.getpwuid(os.geteuid()).pw_name
    port = free_loopback_port()
    started = False
    try:
        subprocess.run(
            as_server_user(
                [pg_binary("initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8",
                 "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} {extra_options}".strip()
        subprocess.run(
            as_server_user(
                [pg_binary("pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", options,
                 "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
        )
        started = True
        yield PostgresServer("127.0.0.1", port, user, itertools.count(1), data, options, logfile)
    finally:
        if started:
            subprocess.run(
                as_server_user([pg_binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                check=False,
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # fsync off: the tests check behaviour, not durability across power loss
    with running_postgres("-c fsync=off") as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, empty database on the session's server."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """The log's URL on each backend: a new SQLite file (in a folder LogStore must create) or a
    fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log' / 'dicomnode-log.db'}"
    return request.getfixturevalue("postgres_url")
