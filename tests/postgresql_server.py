"""PostgreSQL for the tests: the machine's shared server, and throwaway clusters of our own.

The shared server is found at ``GROVE_TEST_POSTGRESQL_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each test run works in a table of its own
and drops only that. When the server is absent the tests skip, saying how to start it,
except under ``CI=true``, where they fail.

Tests that stop, restart or reconfigure a server run a :class:`Cluster` of their own:
``initdb`` into a temporary directory, ``postgres`` on a free loopback port, stopped by its
PID. ``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres``
user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import psycopg
import pydantic
import pytest

from grove.caches.postgresql import Configuration, Handler

DSN_VARIABLE = "GROVE_TEST_POSTGRESQL_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
START_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    f"(or point {DSN_VARIABLE} at another server)"
)
PASSWORD = "cluster-password-" + uuid.uuid4().hex[:8]
"""The password of the ``postgres`` role in every cluster started here."""


def absent(reason: str) -> None:
    """Skip the test for a missing server, or fail it under ``CI=true``.

    :param reason: What is missing and how to get it.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def shared_dsn() -> str:
    """The DSN of the shared server, after checking that it answers.

    :return: The DSN.
    """
    dsn = os.environ.get(DSN_VARIABLE) or DEFAULT_DSN
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.Error as exc:
        absent(f"PostgreSQL is not reachable at {DSN_VARIABLE}={dsn} ({exc}); {START_HINT}")
    return dsn


def drop_table(dsn: str, table: str) -> None:
    """Drop one table made by the tests.

    :param dsn: The server.
    :param table: The table's name.
    """
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            psycopg.sql.SQL("DROP TABLE IF EXISTS {}").format(psycopg.sql.Identifier(table))
        )


def fresh_table_name(label: str = "test") -> str:
    """A table name no other run uses.

    :param label: A word in the name.
    :return: For example ``grove_test_1a2b3c4d``.
    """
    return f"grove_{label}_{uuid.uuid4().hex[:10]}"


def make_handler(dsn: str, table: str, **settings: Any) -> Handler:
    """Build a handler for a table; picklable through :func:`functools.partial`.

    :param dsn: The server.
    :param table: The table.
    :param settings: More fields of :class:`Configuration`.
    :return: The handler, not yet connected.
    """
    return Handler(Configuration(dsn=pydantic.SecretStr(dsn), table=table, **settings))


@pytest.fixture(scope="session")
def postgresql_dsn() -> str:
    """The shared server's DSN; skips (or fails under CI) when it is absent."""
    return shared_dsn()


@pytest.fixture(scope="session")
def postgresql_table(postgresql_dsn: str) -> Iterator[str]:
    """A table of this test run on the shared server, created once and dropped at the end."""
    table = fresh_table_name()
    make_handler(postgresql_dsn, table).create_storage()
    yield table
    drop_table(postgresql_dsn, table)


# -- clusters of our own -------------------------------------------------------------


def _bindir() -> Path | None:
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists():
            return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    return None


def free_port() -> int:
    """A loopback port that nothing listened on a moment ago.

    :return: The port.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """A PostgreSQL cluster in a temporary directory, on a free loopback port.

    The ``postgres`` role logs in with :data:`PASSWORD` (SCRAM). The server process is
    the test's child; :meth:`stop` signals it by PID.

    :param settings: ``name=value`` server settings for every start.
    :param primary: Make this cluster a streaming standby of that running one (a base
        backup) instead of a new one.
    """

    def __init__(self, *settings: str, primary: Cluster | None = None) -> None:
        bindir = _bindir()
        if bindir is None:
            absent("the PostgreSQL server binaries (initdb, postgres) are not installed")
        assert bindir is not None
        self.bindir = bindir
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                absent("running as root, and there is no 'postgres' user to run initdb as")
            self.user = "postgres"
        self.root = Path(tempfile.mkdtemp(prefix="grove-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, password_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if primary is not None:
            self._run(
                str(bindir / "pg_basebackup"),
                "--pgdata",
                str(self.data),
                "--write-recovery-conf",
                "--wal-method",
                "stream",
                "--dbname",
                primary.dsn(),
            )
            return
        self._run(
            str(bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "scram-sha-256",
            "--pwfile",
            str(password_file),
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )

    def _run(self, *command: str) -> None:
        completed = subprocess.run(
            command, user=self.user, capture_output=True, text=True, check=False, cwd=self.root
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {completed.stdout}{completed.stderr}")

    def dsn(self, database: str = "postgres", password: str = PASSWORD) -> str:
        """A DSN for this cluster.

        :param database: The database.
        :param password: The password to log in with.
        :return: The DSN.
        """
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def start(self, *settings: str) -> None:
        """Start the server and wait until it accepts connections.

        :param settings: More ``name=value`` settings for this start.
        """
        assert self.process is None, "already running"
        options = [
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            "max_connections=100",
            "log_line_prefix=%a|",
            *self.settings,
            *settings,
        ]
        command = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        for option in options:
            command += ["-c", option]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, user=self.user, stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {self.log.read_text()}") from exc
                time.sleep(0.1)

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server by its PID: fast (clean) or immediate (like a crash).

        :param mode: ``fast`` sends SIGINT, ``immediate`` SIGQUIT.
        """
        process = self.process
        if process is None:
            return
        process.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.process = None

    def execute(self, statement: str) -> None:
        """Run one statement as ``postgres`` in the ``postgres`` database.

        :param statement: The SQL.
        """
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(statement.encode())

    def remove(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgresql_cluster() -> Iterator[Cluster]:
    """A running cluster of this test module, removed at its end."""
    own = Cluster()
    try:
        own.start()
        yield own
    finally:
        own.remove()
