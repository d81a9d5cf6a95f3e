"""Grove SQLite cache handler: one durable file, shared by the threads and processes of a host.

Layout: one table, ``entries (pk TEXT, sk TEXT, value TEXT, PRIMARY KEY (pk, sk)) WITHOUT
ROWID``, so an entry is one row of the primary-key B-tree, found and changed in place. The
file is in WAL mode: readers never wait for writers, and a writer appends to the
``-wal`` file. It is created on first use, 0600 (its directory 0700 when the handler makes
it); SQLite gives the ``-wal`` and ``-shm`` files the database's mode. ``PRAGMA
application_id`` marks the file as a Grove cache and ``PRAGMA user_version`` records the
schema version, so a later version can migrate it; a file of a newer, unknown version is
refused.

Atomicity: every call is one SQL statement in its own transaction, with its condition in
the statement (``INSERT ... ON CONFLICT DO NOTHING``, ``UPDATE ... WHERE value = ?``,
``DELETE ... WHERE value = ?``) and its success read from the count of changed rows. A
write statement takes SQLite's write lock before it reads, so the check and the write are
one step for every connection to the file, in any process. There is no read before a
write. A busy file is waited for up to ``busy_timeout`` seconds, then the call raises
:class:`~grove.exceptions.AccessException`.

Durability: a transaction is committed by appending its pages and a commit record to the
WAL. A ``kill -9`` at any moment leaves either the whole transaction or none of it: a
torn tail of the WAL fails its checksum and is ignored when the file is next opened. With
``synchronous=full`` (the default) the WAL is fsynced before a call returns, so what a
caller was told was written survives a power loss too; ``normal`` fsyncs only at
checkpoints, faster, and may lose the last writes (never corrupt the file) on power loss.

Connections: each thread gets its own connection, opened on its first call and closed
when the thread ends, when the handler is closed, or when it is garbage-collected. A
process forked from one that used the handler opens its own connections; the parent's
are never touched in the child.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Final, Literal

import pydantic
from pydantic_settings import SettingsConfigDict
from typing_extensions import override

from grove.caches import CacheEntry
from grove.caches.atomic import ABSENT, ANY, AtomicCache, Expected, ExpectedToRemove, Stored
from grove.caches.configuration import ExpandedPath, HandlerConfiguration
from grove.exceptions import AccessException, ConfigurationException

SCHEMA_VERSION: Final = 1
"""The layout this module writes, recorded in the file's ``PRAGMA user_version``."""

APPLICATION_ID: Final = 0x67726F76
"""``PRAGMA application_id`` of a Grove cache file (``grov`` in ASCII)."""

_CREATE = (
    "CREATE TABLE IF NOT EXISTS entries ("
    "pk TEXT NOT NULL, sk TEXT NOT NULL, value TEXT NOT NULL, "
    "PRIMARY KEY (pk, sk)) WITHOUT ROWID"
)
_SCHEMA = (
    "SELECT application_id, user_version, EXISTS (SELECT 1 FROM sqlite_master) "
    "FROM pragma_application_id(), pragma_user_version()"
)
_SELECT = "SELECT value FROM entries WHERE pk = ? AND sk = ?"
_UPSERT = (
    "INSERT INTO entries (pk, sk, value) VALUES (?, ?, ?) "
    "ON CONFLICT (pk, sk) DO UPDATE SET value = excluded.value"
)
_INSERT_IF_ABSENT = (
    "INSERT INTO entries (pk, sk, value) VALUES (?, ?, ?) ON CONFLICT (pk, sk) DO NOTHING"
)
_UPDATE_IF_EQUAL = "UPDATE entries SET value = ? WHERE pk = ? AND sk = ? AND value = ?"
_DELETE = "DELETE FROM entries WHERE pk = ? AND sk = ?"
_DELETE_IF_EQUAL = "DELETE FROM entries WHERE pk = ? AND sk = ? AND value = ?"
_SCAN_ALL = "SELECT pk, sk, value FROM entries"
_SCAN_PK = "SELECT pk, sk, value FROM entries WHERE pk = ?"
_SCAN_FROM = "SELECT pk, sk, value FROM entries WHERE pk >= ?"
_SCAN_RANGE = "SELECT pk, sk, value FROM entries WHERE pk >= ? AND pk < ?"

_MAX_CHAR: Final = 0x10FFFF
_SURROGATES: Final = range(0xD800, 0xE000)


def prefix_end(prefix: str) -> str | None:
    """Return the least string above every string that starts with ``prefix``.

    SQLite compares TEXT as UTF-8 bytes (the ``BINARY`` collation), which orders strings
    as their code points, so ``prefix <= pk < prefix_end(prefix)`` selects exactly the
    partition keys that start with ``prefix``, through the primary-key index. Trailing
    U+10FFFF characters cannot be incremented and are dropped; surrogates, which no
    stored key holds, are skipped.

    :param prefix: A non-empty prefix.
    :return: The exclusive upper bound, or ``None`` when there is none (the prefix is
        made only of U+10FFFF).
    """
    stem = prefix.rstrip(chr(_MAX_CHAR))
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if following in _SURROGATES:
        following = _SURROGATES.stop
    return stem[:-1] + chr(following)


class Configuration(HandlerConfiguration):
    """Settings of the SQLite handler, from ``GROVE_CACHE_LOCAL_SQLITE_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_LOCAL_SQLITE_")

    path: ExpandedPath = pydantic.Field(min_length=1)
    """The database file; created with its missing directories on first use."""

    synchronous: Literal["full", "normal"] = "full"
    """``full``: fsync the WAL at every commit; ``normal``: only at checkpoints."""

    busy_timeout: float = pydantic.Field(default=30.0, ge=0)
    """Seconds a call waits for a file locked by another connection before it fails."""

    @pydantic.field_validator("synchronous", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @pydantic.field_validator("path")
    @classmethod
    def _a_file(cls, value: str) -> str:
        if value == ":memory:" or value.startswith("file:"):
            raise ValueError(
                "must be the path of a database file (an in-memory database is not shared "
                "between connections; use local_memory)"
            )
        return value


class _Connection:
    """One thread's connection and its reusable cursor; closed when dropped."""

    __slots__ = ("__weakref__", "connection", "cursor", "pid")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.pid = os.getpid()

    def close(self) -> None:
        self.connection.close()

    def __del__(self) -> None:
        if os.getpid() == self.pid:
            self.connection.close()
        else:
            # A child of fork() must neither use nor close its parent's connections
            # (SQLite's locks belong to the parent): it keeps them, unused, for its life.
            _inherited.append(self.connection)


_inherited: list[sqlite3.Connection] = []
_open_handlers: weakref.WeakSet[Handler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_open_handlers):
        handler._local = threading.local()
        handler._connections = weakref.WeakSet()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Handler(AtomicCache):
    """A SQLite backed cache: durable, shared by the threads and processes of one host."""

    driver_errors = (sqlite3.Error,)

    def __init__(self, config: Configuration | None = None) -> None:
        """Create the handler; the file is opened on first use (or by :meth:`setup`).

        :param config: The settings; read from the environment when ``None``.
        :raises ConfigurationException: A setting is missing or invalid.
        """
        self.config = config if config is not None else Configuration.from_environment()
        self.path = os.path.abspath(self.config.path)
        self._location = f"local_sqlite cache at {self.path}"
        self._synchronous = self.config.synchronous.upper()
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        _open_handlers.add(self)

    @override
    def location(self) -> str:
        return self._location

    @override
    def setup(self) -> None:
        """Open the file now, creating it and its table when missing.

        :raises ConfigurationException: The file is not a Grove cache, or was written by a
            newer version.
        :raises AccessException: The file cannot be opened, or is not a SQLite database.
        """
        self._cursor()

    @override
    def create_storage(self) -> str:
        """Create the database file and its table if they are missing; see :meth:`setup`.

        :raises ConfigurationException: The file is not a Grove cache, or is newer.
        :raises AccessException: The file cannot be created or opened.
        :return: What was done, in one line.
        """
        existed = os.path.exists(self.path)
        self.setup()
        return f"{'found' if existed else 'created'} {self.location()}"

    def close(self) -> None:
        """Close the connections this handler opened, in every thread.

        Call it when no thread is using the handler any more; a later call opens new
        connections.
        """
        connections = list(self._connections)
        self._local = threading.local()
        self._connections = weakref.WeakSet()
        for connection in connections:
            connection.close()

    # -- connections -------------------------------------------------------------------

    def _cursor(self) -> sqlite3.Cursor:
        """Return this thread's cursor, opening its connection on first use."""
        try:
            cursor: sqlite3.Cursor = self._local.cursor
        except AttributeError:
            opened = _Connection(self._open())
            self._local.cursor = opened.cursor
            self._local.connection = opened
            self._connections.add(opened)
            return opened.cursor
        return cursor

    def _open(self) -> sqlite3.Connection:
        """Open a connection, creating and initialising the file when it is new.

        :raises ConfigurationException: The file is not a Grove cache, or is newer.
        :raises AccessException: The file cannot be opened or is not a SQLite database.
        """
        try:
            self._create_file()
            # Autocommit: each statement is its own transaction. The connection is used
            # by one thread at a time; other threads only close it.
            connection = sqlite3.connect(
                self.path,
                timeout=self.config.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise AccessException(
                f"cannot open {self.location()}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            self._prepare(connection)
        except sqlite3.Error as exc:
            connection.close()
            raise AccessException(
                f"cannot open {self.location()}: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def _create_file(self) -> None:
        """Create the file 0600 (and missing directories 0700), whatever the umask."""
        if os.path.exists(self.path):
            return
        directory = os.path.dirname(self.path)
        missing = []
        while not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                continue
            os.chmod(directory, 0o700)
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        try:
            os.fchmod(descriptor, 0o600)
        finally:
            os.close(descriptor)

    def _prepare(self, connection: sqlite3.Connection) -> None:
        """Set the pragmas, then check the schema, creating it in a new file."""
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._enable_wal(connection)
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        if self._schema_version(connection) == SCHEMA_VERSION:
            return
        # A new file: create the table under the write lock, so that processes opening
        # the file at once create it once, and see it complete.
        connection.execute("BEGIN IMMEDIATE")
        try:
            if self._schema_version(connection) == 0:
                connection.execute(_CREATE)
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        """Switch a new file to WAL mode, which then stays with the file.

        The switch needs the file to itself, and SQLite reports a file busy with another
        connection at once instead of calling its busy handler; so this waits up to
        ``busy_timeout`` itself, as every other statement does.
        """
        deadline = time.monotonic() + self.config.busy_timeout
        while True:
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        if mode != "wal":
            raise AccessException(
                f"{self.location()} cannot use write-ahead logging (journal mode {mode})"
            )

    def _schema_version(self, connection: sqlite3.Connection) -> int:
        """Return the file's schema version: 0 for an empty file, else a known one.

        :raises ConfigurationException: The file holds something else, or a newer schema.
        """
        # One statement, so one snapshot: another process may be creating the table.
        application, version, tables = connection.execute(_SCHEMA).fetchone()
        variable = Configuration.env_name("path")
        if application == 0 and version == 0:
            if tables:
                raise ConfigurationException(
                    f"{variable}: {self.path} is a SQLite database of another application, "
                    "not a Grove cache"
                )
            return 0
        if application != APPLICATION_ID:
            raise ConfigurationException(
                f"{variable}: {self.path} is a SQLite database of another application "
                f"(application_id {application}), not a Grove cache"
            )
        if version > SCHEMA_VERSION:
            raise ConfigurationException(
                f"{variable}: {self.path} has schema version {version}, written by a newer "
                f"grove-caches; this one reads version {SCHEMA_VERSION}"
            )
        return int(version)

    # -- primitives --------------------------------------------------------------------

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one SELECT by primary key, a read of the latest committed state."""
        try:
            cursor: sqlite3.Cursor = self._local.cursor
        except AttributeError:
            cursor = self._cursor()
        row = cursor.execute(_SELECT, (pk, sk)).fetchone()
        return ABSENT if row is None else row[0]

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: one statement with its condition, under SQLite's write lock.

        Plain: an upsert. ``ABSENT``: ``INSERT ... ON CONFLICT DO NOTHING``. A value:
        ``UPDATE ... WHERE value = ?``. Success is one changed row.
        """
        try:
            cursor: sqlite3.Cursor = self._local.cursor
        except AttributeError:
            cursor = self._cursor()
        if expected is ANY:
            cursor.execute(_UPSERT, (pk, sk, value))
            return True
        if expected is ABSENT:
            return cursor.execute(_INSERT_IF_ABSENT, (pk, sk, value)).rowcount == 1
        return cursor.execute(_UPDATE_IF_EQUAL, (value, pk, sk, expected)).rowcount == 1

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: one DELETE, with ``WHERE value = ?`` when a value is expected."""
        try:
            cursor: sqlite3.Cursor = self._local.cursor
        except AttributeError:
            cursor = self._cursor()
        if expected is ANY:
            cursor.execute(_DELETE, (pk, sk))
            return True
        return cursor.execute(_DELETE_IF_EQUAL, (pk, sk, expected)).rowcount == 1

    @override
    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """One SELECT over the primary key, read row by row on a connection of its own.

        The listing is one read transaction: a snapshot of the file as it was when the
        first entry was read, unaffected by writes made meanwhile (by the caller too).
        The snapshot is held until the iterator is exhausted or closed.
        """
        parameters: tuple[str, ...]
        if pk is not None:
            query, parameters = _SCAN_PK, (pk,)
        elif prefix:
            end = prefix_end(prefix)
            query, parameters = (
                (_SCAN_FROM, (prefix,)) if end is None else (_SCAN_RANGE, (prefix, end))
            )
        else:
            query, parameters = _SCAN_ALL, ()
        connection = self._open()
        try:
            for row in connection.execute(query, parameters):
                yield CacheEntry._make(row)
        finally:
            connection.close()
