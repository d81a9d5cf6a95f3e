"""Grove SQLite cache handler: one durable file, shared by the threads and processes of a host.

Layout: one table, ``entries (pk TEXT, sk TEXT, value TEXT, expires_at REAL, PRIMARY KEY
(pk, sk)) WITHOUT ROWID``, so an entry is one row of the primary-key B-tree, found and
changed in place, its expiry beside its value (``NULL`` for an entry that never expires). The
file is in WAL mode: readers never wait for writers, and a writer appends to the
``-wal`` file. It is created by the first write, or by :meth:`Handler.setup`, 0600 (its
directory 0700 when the handler makes it); SQLite gives the ``-wal`` and ``-shm`` files
the database's mode. A read never creates anything: reading a path where there is no
database (or an empty file) finds no entries. ``PRAGMA application_id`` marks the file as
a Grove cache and ``PRAGMA user_version`` records the schema version: a file of an
earlier version (1, before expiry) is upgraded in place when it is opened, by one
``ALTER TABLE`` that adds the column (constant time, whatever the size); a file of a
newer, unknown version is refused.

Atomicity: every call is one SQL statement in its own transaction, with its condition in
the statement (``INSERT ... ON CONFLICT DO NOTHING``, ``UPDATE ... WHERE value = ?``,
``DELETE ... WHERE value = ?``) and its success read from the count of changed rows. A
write statement takes SQLite's write lock before it reads, so the check and the write are
one step for every connection to the file, in any process. There is no read before a
write. A busy file is waited for up to ``busy_timeout`` seconds, then the call raises
:class:`~grove.exceptions.AccessException`.

Expiry: a write with ``ttl`` stores ``expires_at``, in seconds since the epoch by the
caller's clock (see :class:`Handler`), in the same statement as the value; a write
without ``ttl`` stores ``NULL``. Every statement takes the caller's current time as a
parameter and treats a row that has expired as absent, within the statement: a read
does not see it, ``not_set`` is an upsert that replaces only an expired row, a condition
on the value does not match it, and a listing skips it. Expired rows stay in the file
until an unconditional write or delete of their key, or
:meth:`~grove.caches.atomic.ExpiringCache.sweep_expired`, which removes them in batches:
each batch is found by a read, which locks nothing however many live rows it passes, and
deleted in one short transaction that checks each row's expiry again.

Durability: a transaction is committed by appending its pages and a commit record to the
WAL. A ``kill -9`` at any moment leaves either the whole transaction or none of it: a
torn tail of the WAL fails its checksum and is ignored when the file is next opened. With
``synchronous=full`` (the default) the WAL is fsynced before a call returns, so what a
caller was told was written survives a power loss too; ``normal`` fsyncs only at
checkpoints, faster, and may lose the last writes (never corrupt the file) on power loss.

A removed or replaced file: SQLite goes on writing into a database, ``-wal`` or ``-shm``
file that was unlinked or renamed while it had it open, where no other connection will
ever see the writes. So after every write statement the handler checks that the three
files it has open are still the ones at their paths (device and inode), and otherwise
raises :class:`~grove.exceptions.AccessException` instead of reporting success. The check
costs one ``stat`` of the directory: while the directory's inode, modification and change
times are those seen at the last full check, no entry in it was created, removed or
renamed, so the files cannot have changed either; when they differ (or were too recent to
be told apart from a change in the same clock tick), the three files are compared one by
one. After such a finding every connection of the handler is dropped and the path is
opened again by the next call, but only when it holds a store: a database removed while in
use is not silently created anew (:meth:`Handler.setup` does that). The dropped connections
are never closed while the process runs: closing one whose ``-wal`` file was removed would
copy that file's refused writes into the database. When only the ``-wal``/``-shm`` files
were removed, SQLite in this process would keep using the removed ``-shm`` for every new
connection to the same database, so the handler refuses the file until the process is
restarted. Reads are not checked (a ``stat`` would cost a third of a read): a thread
reads from the removed file until a write of this handler, in any thread, finds out.

Rows written by other programs: SQLite lets a TEXT column hold a BLOB. A value stored as
a BLOB reads as its UTF-8 text, and the conditions compare ``CAST(value AS TEXT)``, so a
constraint equal to what ``get`` returns matches it (a compare-and-set then stores TEXT).
A value that is not valid UTF-8, as a BLOB or as TEXT, raises ``AccessException`` naming
the key (never the value); no constraint matches it, and a plain ``set`` or ``delete``
replaces it. A key stored as a BLOB is a different key from the TEXT one (SQLite never
finds one by the other), so no call can name it: listing it raises ``AccessException``.

Connections: each thread gets its own connection, opened on its first call and closed
when the thread ends, when the handler is closed, or when it is garbage-collected. A
process forked from one that used the handler opens its own connections; the parent's
are never touched in the child.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from typing import Any, Final, Literal

import pydantic
from pydantic_settings import SettingsConfigDict
from typing_extensions import override

from grove.caches import CacheEntry, Closing, CreatingStorage, Listing
from grove.caches.atomic import (
    ABSENT,
    ANY,
    Clock,
    Expected,
    ExpectedToRemove,
    ExpiringCache,
    Sentinel,
    Stored,
    describe_key,
)
from grove.caches.configuration import ExpandedPath, HandlerConfiguration
from grove.exceptions import AccessException, ConfigurationException

SCHEMA_VERSION: Final = 2
"""The layout this module writes, recorded in the file's ``PRAGMA user_version``.

1: ``entries (pk, sk, value)``. 2: adds ``expires_at``, upgraded in place from 1.
"""

APPLICATION_ID: Final = 0x67726F76
"""``PRAGMA application_id`` of a Grove cache file (``grov`` in ASCII)."""

_CREATE = (
    "CREATE TABLE IF NOT EXISTS entries ("
    "pk TEXT NOT NULL, sk TEXT NOT NULL, value TEXT NOT NULL, expires_at REAL, "
    "PRIMARY KEY (pk, sk)) WITHOUT ROWID"
)
_UPGRADES: Final = {1: ("ALTER TABLE entries ADD COLUMN expires_at REAL",)}
"""The statements that take a file from a schema version to the next one."""

_SCHEMA = (
    "SELECT application_id, user_version, EXISTS (SELECT 1 FROM sqlite_master) "
    "FROM pragma_application_id(), pragma_user_version()"
)
# Every statement takes the caller's "now" and treats a row whose expires_at is not
# after it as absent, within the statement. Text is read as bytes and decoded here, so
# that a row written by another program that is not UTF-8 gives an error of ours, which
# names the key and not the text.
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_SELECT = f"SELECT CAST(value AS BLOB) FROM entries WHERE pk = ? AND sk = ? AND {_LIVE}"
_SELECT_EXPIRY = f"SELECT expires_at FROM entries WHERE pk = ? AND sk = ? AND {_LIVE}"
_UPSERT = (
    "INSERT INTO entries (pk, sk, value) VALUES (?, ?, ?) "
    "ON CONFLICT (pk, sk) DO UPDATE SET value = excluded.value, expires_at = NULL"
)
_UPSERT_EXPIRING = (
    "INSERT INTO entries (pk, sk, value, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (pk, sk) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
_INSERT_IF_ABSENT = (
    "INSERT INTO entries (pk, sk, value, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (pk, sk) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at "
    "WHERE entries.expires_at <= ?"
)
_UPDATE_IF_EQUAL = (
    "UPDATE entries SET value = ?, expires_at = ? "
    f"WHERE pk = ? AND sk = ? AND CAST(value AS TEXT) = ? AND {_LIVE}"
)
_DELETE = "DELETE FROM entries WHERE pk = ? AND sk = ?"
_DELETE_IF_EQUAL = (
    f"DELETE FROM entries WHERE pk = ? AND sk = ? AND CAST(value AS TEXT) = ? AND {_LIVE}"
)
_SCAN = (
    "SELECT CAST(pk AS BLOB), CAST(sk AS BLOB), CAST(value AS BLOB), "
    f"typeof(pk) = 'text' AND typeof(sk) = 'text' FROM entries WHERE {_LIVE}"
)
_SCAN_ALL = _SCAN
_SCAN_PK = _SCAN + " AND pk = ?"
_SCAN_FROM = _SCAN + " AND pk >= ?"
_SCAN_RANGE = _SCAN + " AND pk >= ? AND pk < ?"
_EXPIRED = "SELECT pk, sk FROM entries WHERE expires_at <= ? ORDER BY pk, sk LIMIT ?"
_EXPIRED_AFTER = (
    "SELECT pk, sk FROM entries WHERE (pk, sk) > (?, ?) AND expires_at <= ? ORDER BY pk, sk LIMIT ?"
)
_DELETE_IF_EXPIRED = "DELETE FROM entries WHERE pk = ? AND sk = ? AND expires_at <= ?"

_MAX_CHAR: Final = 0x10FFFF
_SURROGATES: Final = range(0xD800, 0xE000)

_SETTLED_NS: Final = 50_000_000
"""How old a directory's timestamps must be before they are trusted to change with the
next change in it: file systems stamp times from a clock that ticks every few ms."""

_SETTLED_WHOLE_SECONDS_NS: Final = 2_000_000_000
"""The same for timestamps in whole seconds, which come from file systems (FAT) whose
clock ticks every one or two seconds."""


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
    """The database file (``~`` is the home directory); created with its missing
    directories by the first write."""

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


_FileId = tuple[int, int]
"""A file's device and inode numbers."""

_Stamp = tuple[int, int, int, int]
"""A directory's device and inode numbers and its modification and change times."""


def _file_ids(path: str) -> tuple[_FileId, _FileId, _FileId]:
    """Return the identities of a database file and of its ``-wal`` and ``-shm`` files.

    :raises FileNotFoundError: One of them is missing.
    """
    database, wal, shm = os.stat(path), os.stat(f"{path}-wal"), os.stat(f"{path}-shm")
    return (
        (database.st_dev, database.st_ino),
        (wal.st_dev, wal.st_ino),
        (shm.st_dev, shm.st_ino),
    )


def _settled_stamp(directory: str) -> _Stamp | None:
    """Return a directory's stamp if any later change in it is sure to change the stamp.

    A change stamps the directory with the file system's clock, which ticks coarsely: a
    second change within the same tick leaves the stamp as it was. A stamp older than
    the tick when it was read is different from that of every later change.

    :raises FileNotFoundError: The directory is missing.
    :return: The stamp, or ``None`` while it is too recent to be trusted.
    """
    now = time.time_ns()
    found = os.stat(directory)
    newest = max(found.st_mtime_ns, found.st_ctime_ns)
    whole_seconds = found.st_mtime_ns % 1_000_000_000 == 0
    if newest > now - (_SETTLED_WHOLE_SECONDS_NS if whole_seconds else _SETTLED_NS):
        return None
    return (found.st_dev, found.st_ino, found.st_mtime_ns, found.st_ctime_ns)


class _Connection:
    """One open connection, its reusable cursor, and the files it has open.

    :param connection: The connection, on a file already prepared.
    :param path: The database file's absolute path.
    """

    __slots__ = (
        "__weakref__",
        "closed",
        "connection",
        "cursor",
        "directory",
        "files",
        "path",
        "pid",
        "retired",
        "stamp",
    )

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.path = path
        self.directory = os.path.dirname(path)
        self.pid = os.getpid()
        self.retired = False
        self.closed = False
        # Read the stamp before the files: a change in between then shows in the stamp.
        self.stamp = _settled_stamp(self.directory)
        self.files = _file_ids(path)

    def unmoved(self) -> bool:
        """Say whether the three files are still the ones at their paths.

        Compares them one by one, and remembers the directory's stamp for the quick check
        of :meth:`Handler._verify` when it can be trusted.

        :raises OSError: The paths cannot be examined (other than being missing).
        :return: ``False`` when one of them was removed or replaced.
        """
        try:
            stamp = _settled_stamp(self.directory)
            files = _file_ids(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if files != self.files:
            return False
        self.stamp = stamp
        return True

    def retire(self) -> None:
        """Stop using the connection, and keep it open until the process ends."""
        self.retired = True
        _retired_databases.add(self.files[0])
        _unused.append(self.connection)

    def release(self) -> None:
        """Close the connection, unless its files were removed (then retire it)."""
        if self.retired or self.closed:
            return
        try:
            unmoved = self.unmoved()
        except OSError:
            unmoved = False
        if unmoved:
            self.closed = True
            self.connection.close()
        else:
            self.retire()

    def __del__(self) -> None:
        if os.getpid() == self.pid:
            # At interpreter exit os.stat may be gone: then dropping the connection closes it.
            with contextlib.suppress(Exception):
                self.release()
        else:
            # A child of fork() must neither use nor close its parent's connections
            # (SQLite's locks belong to the parent): it keeps them, unused, for its life.
            _unused.append(self.connection)


_unused: list[sqlite3.Connection] = []
"""Connections this process must neither use nor close."""

_retired_databases: set[_FileId] = set()
"""Database files of retired connections: SQLite in this process keeps their ``-shm``."""

_open_handlers: weakref.WeakSet[Handler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_open_handlers):
        handler.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Handler(ExpiringCache, Listing, CreatingStorage, Closing):
    """A SQLite backed cache: durable, shared by the threads and processes of one host.

    Expiry: the caller's clock decides. A write with ``ttl`` stores ``clock() + ttl`` in
    the row, and every statement compares the row with the ``clock()`` of the process
    making the call. The processes sharing a file share one host and so one system clock:
    they agree, and there is no skew between them. A step of that clock (set by hand, or
    by NTP when it was far off) moves every expiry at once: forward expires entries early,
    backward keeps them longer. A process given another ``clock`` sees expiry by that
    clock, and differs from the others by as much as its clock does.
    """

    configuration = Configuration
    config: Configuration

    driver_errors = (sqlite3.Error, OSError)
    clock_owner = "caller"

    def __init__(self, config: Configuration | None = None, *, clock: Clock | None = None) -> None:
        """Create the handler; the file is opened on first use (or by :meth:`setup`).

        :param config: The settings; read from the environment when ``None``.
        :param clock: The clock that decides expiry, in seconds since the epoch;
            ``time.time`` when ``None``.
        :raises ConfigurationException: A setting is missing or invalid.
        """
        self._clock = clock or time.time
        self._sweep_after: tuple[str, str] | None = None
        self.config = config if config is not None else Configuration.from_environment()
        self.path = os.path.abspath(self.config.path)
        self._directory = os.path.dirname(self.path)
        self._uri = f"file:{urllib.parse.quote(self.path)}?mode=rw"
        self._location = f"local_sqlite cache at {self.path}"
        self._synchronous = self.config.synchronous.upper()
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lost = False
        _open_handlers.add(self)

    @override
    def location(self) -> str:
        return self._location

    @override
    def setup(self) -> None:
        """Open the file now, creating it and its table when missing.

        This also creates a database that was removed while the handler used it.

        :raises ConfigurationException: The file is not a Grove cache, or was written by a
            newer version.
        :raises AccessException: The file cannot be opened, or is not a SQLite database.
        """
        self._lost = False
        self._writable()

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

    def after_fork_in_child(self) -> None:
        """Forget the parent's connections in a forked child, neither using nor closing them.

        Called for every handler of the process by :func:`os.register_at_fork`; the
        child opens its own connections on first use.
        """
        self._local = threading.local()
        self._connections = weakref.WeakSet()

    def close(self) -> None:
        """Close the connections this handler opened, in every thread.

        Call it when no thread is using the handler any more; a later call opens new
        connections.
        """
        connections = list(self._connections)
        self._local = threading.local()
        self._connections = weakref.WeakSet()
        for connection in connections:
            connection.release()

    # -- connections -------------------------------------------------------------------

    def _cursor(self) -> sqlite3.Cursor:
        """Return this thread's cursor, opening its connection (and the file) when needed."""
        return self._writable().cursor

    def _writable(self) -> _Connection:
        """Return this thread's connection, creating the file when it is missing."""
        opened = self._connection(create=True)
        assert opened is not None  # create=True opens the file or raises
        return opened

    def _connection(self, *, create: bool) -> _Connection | None:
        """Return this thread's connection, opening it on first use.

        :param create: Create the file and its table when they are missing.
        :return: The connection, or ``None`` when there is no store and ``create`` is
            false.
        """
        try:
            opened: _Connection = self._local.connection
        except AttributeError:
            found = self._open(create=create)
            if found is None:
                return None
            opened = found
            self._local.connection = opened
            self._local.cursor = opened.cursor
            self._connections.add(opened)
        return opened

    def _open(self, *, create: bool) -> _Connection | None:
        """Open a connection to the store at the path.

        :param create: Create the file (and missing directories) and its table when
            missing, unless the store was removed while in use.
        :raises ConfigurationException: The file is not a Grove cache, or is newer.
        :raises AccessException: The file cannot be opened or is not a SQLite database,
            or it was removed while in use and nothing valid is there now.
        :return: The connection, or ``None`` when there is no store and none is created.
        """
        create = create and not self._lost
        try:
            if create:
                self._create_file()
            elif not self._exists():
                self._no_store()
                return None
            # Autocommit: each statement is its own transaction. The connection is used
            # by one thread at a time; other threads only close it. The file exists now,
            # and mode=rw never creates one.
            connection = sqlite3.connect(
                self._uri,
                uri=True,
                timeout=self.config.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._failure("open", exc) from exc
        try:
            if not self._prepare(connection, create=create):
                connection.close()
                self._no_store()
                return None
            database = os.stat(self.path)
            if (database.st_dev, database.st_ino) in _retired_databases:
                raise AccessException(
                    f"cannot open {self.location()}: its -wal or -shm file was removed while "
                    "this process used it, and SQLite in this process keeps using the "
                    "removed one; restart the process"
                )
            opened = _Connection(connection, self.path)
        except (OSError, sqlite3.Error) as exc:
            connection.close()
            raise self._failure("open", exc) from exc
        except BaseException:
            connection.close()
            raise
        self._lost = False
        return opened

    def _exists(self) -> bool:
        """Say whether the database file exists.

        :raises OSError: The path cannot be examined (a parent is not a directory, a
            directory cannot be searched).
        """
        try:
            os.stat(self.path)
        except FileNotFoundError:
            return False
        return True

    def _no_store(self) -> None:
        """Say there is no store at the path, unless one was removed while in use."""
        if self._lost:
            raise AccessException(
                f"{self.location()} was removed while in use; setup() ('grove-cache init') "
                "creates a new one"
            )

    def _create_file(self) -> None:
        """Create the file 0600 (and missing directories 0700), whatever the umask."""
        if os.path.exists(self.path):
            return
        directory = self._directory
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

    def _prepare(self, connection: sqlite3.Connection, *, create: bool) -> bool:
        """Set the pragmas and check the schema, creating it in a new file if asked.

        A file of an earlier schema version is upgraded in place.

        :return: ``False`` when the file holds no store yet and ``create`` is false; then
            nothing was written.
        """
        version = self._schema_version(connection)
        if version == 0 and not create:
            return False
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._enable_wal(connection)
        if version != SCHEMA_VERSION:
            self._create_or_upgrade(connection)
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        return True

    def _create_or_upgrade(self, connection: sqlite3.Connection) -> None:
        """Create the table in a new file, or upgrade an older schema to this one.

        Under the write lock, so that processes opening the file at once create or
        upgrade it once, and see it complete.
        """
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = self._schema_version(connection)
            if version == 0:
                connection.execute(_CREATE)
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            else:
                for step in range(version, SCHEMA_VERSION):
                    for statement in _UPGRADES[step]:
                        connection.execute(statement)
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

    # -- checks ----------------------------------------------------------------------

    def _verify(self, opened: _Connection, operation: str, pk: str, sk: str) -> None:
        """Raise unless the files the write went to are still the ones at their paths.

        :raises AccessException: One was removed or replaced; every connection of the
            handler is dropped, and the next call opens the path again.
        """
        try:
            found = os.stat(self._directory)
        except (FileNotFoundError, NotADirectoryError):
            pass
        else:
            stamp = (found.st_dev, found.st_ino, found.st_mtime_ns, found.st_ctime_ns)
            if stamp == opened.stamp:
                return
        if opened.unmoved():
            return
        if not opened.retired:
            self._retire_connections()
        raise AccessException(
            f"{operation} of {describe_key(pk, sk)} failed in {self.location()}: the "
            "database file, or its -wal or -shm file, was removed or replaced while open; "
            "the write is not in the database at that path"
        )

    def _retire_connections(self) -> None:
        """Make every thread open the path again, never closing the old connections."""
        connections = list(self._connections)
        self._local = threading.local()
        self._connections = weakref.WeakSet()
        self._lost = True
        for connection in connections:
            connection.retire()

    def _text(self, stored: bytes, operation: str, pk: str, sk: str) -> str:
        """Decode a stored value, naming the key (never the value) when it is not text."""
        try:
            return stored.decode()
        except UnicodeDecodeError:
            # Without the cause: a UnicodeDecodeError holds the bytes it could not decode.
            raise AccessException(
                f"{operation} of {describe_key(pk, sk)} failed in {self.location()}: the "
                "stored value is not UTF-8 text (written by another program?)"
            ) from None

    # -- primitives --------------------------------------------------------------------

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one SELECT by primary key, of the latest committed state."""
        try:
            cursor: sqlite3.Cursor = self._local.cursor
        except AttributeError:
            opened = self._connection(create=False)
            if opened is None:
                return ABSENT
            cursor = opened.cursor
        row = cursor.execute(_SELECT, (pk, sk, self._clock())).fetchone()
        if row is None:
            return ABSENT
        stored: bytes = row[0]
        try:
            return stored.decode()
        except UnicodeDecodeError:
            return self._text(stored, "get", pk, sk)

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: one statement with its condition, under SQLite's write lock.

        Plain: an upsert. ``ABSENT``: an insert that, on conflict, replaces only an
        expired row. A value: ``UPDATE ... WHERE value = ?`` of an unexpired row. The
        entry does not expire. Success is one changed row, once the file is known to be
        the one at the path.
        """
        return self._store(pk, sk, value, expected, None)

    @override
    def _write_expiring(self, pk: str, sk: str, value: str, expected: Expected, ttl: float) -> bool:
        """Atomic: as :meth:`_write`, with ``expires_at`` set in the same statement."""
        return self._store(pk, sk, value, expected, ttl)

    def _store(self, pk: str, sk: str, value: str, expected: Expected, ttl: float | None) -> bool:
        try:
            opened: _Connection = self._local.connection
        except AttributeError:
            opened = self._writable()
        cursor = opened.cursor
        if expected is ANY:
            if ttl is None:
                cursor.execute(_UPSERT, (pk, sk, value))
            else:
                cursor.execute(_UPSERT_EXPIRING, (pk, sk, value, self._clock() + ttl))
            written = True
        else:
            now = self._clock()
            expires = None if ttl is None else now + ttl
            if expected is ABSENT:
                changed = cursor.execute(_INSERT_IF_ABSENT, (pk, sk, value, expires, now))
            else:
                changed = cursor.execute(_UPDATE_IF_EQUAL, (value, expires, pk, sk, expected, now))
            written = changed.rowcount == 1
        self._verify(opened, "set", pk, sk)
        return written

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: one DELETE, with ``WHERE value = ?`` when a value is expected.

        A conditional DELETE matches only an unexpired row; an unconditional one removes
        an expired row too, which is absent either way.
        """
        try:
            opened: _Connection = self._local.connection
        except AttributeError:
            found = self._connection(create=False)
            if found is None:
                return expected is ANY
            opened = found
        if expected is ANY:
            opened.cursor.execute(_DELETE, (pk, sk))
            removed = True
        else:
            removed = (
                opened.cursor.execute(_DELETE_IF_EQUAL, (pk, sk, expected, self._clock())).rowcount
                == 1
            )
        self._verify(opened, "delete", pk, sk)
        return removed

    @override
    def _read_expiry(self, pk: str, sk: str) -> float | Literal[Sentinel.ABSENT] | None:
        """Atomic: one SELECT of ``expires_at`` by primary key."""
        opened = self._connection(create=False)
        if opened is None:
            return ABSENT
        row = opened.cursor.execute(_SELECT_EXPIRY, (pk, sk, self._clock())).fetchone()
        if row is None:
            return ABSENT
        expires: float | None = row[0]
        return expires

    @override
    def _sweep_expired(self, limit: int) -> int:
        """Find up to ``limit`` expired rows, then delete them in one short transaction.

        The search is a read (it holds no lock, however many live rows it passes); each
        DELETE checks ``expires_at`` again, so a row written again meanwhile stays. The
        search goes on from where the previous batch stopped, in primary-key order, so
        a sweep reads the table once, and wraps around to the start when it reaches the
        end.
        """
        opened = self._connection(create=False)
        if opened is None:
            return 0
        now = self._clock()
        after = self._sweep_after
        if after is None:
            found = opened.cursor.execute(_EXPIRED, (now, limit)).fetchall()
        else:
            found = opened.cursor.execute(_EXPIRED_AFTER, (*after, now, limit)).fetchall()
            if len(found) < limit:
                # The end of the table: look again from the start, up to where this began.
                found += [
                    key
                    for key in opened.cursor.execute(_EXPIRED, (now, limit)).fetchall()
                    if tuple(key) <= after
                ][: limit - len(found)]
        self._sweep_after = tuple(found[-1]) if len(found) == limit else None
        if not found:
            return 0
        cursor = opened.cursor
        cursor.execute("BEGIN IMMEDIATE")
        try:
            removed = cursor.executemany(
                _DELETE_IF_EXPIRED, [(pk, sk, now) for pk, sk in found]
            ).rowcount
            cursor.execute("COMMIT")
        except BaseException:
            if opened.connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        pk, sk = found[0]
        self._verify(opened, "sweep", pk, sk)
        return int(removed)

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
        opened = self._open(create=False)
        if opened is None:
            return
        try:
            for row in opened.connection.execute(query, (self._clock(), *parameters)):
                yield self._listed(*row)
        finally:
            opened.release()

    def _listed(self, pk: bytes, sk: bytes, value: bytes, keys_are_text: int) -> CacheEntry:
        """Turn a row of a listing into an entry, refusing rows no call could name."""
        try:
            key = (pk.decode(), sk.decode())
        except UnicodeDecodeError:
            key = (pk.decode(errors="backslashreplace"), sk.decode(errors="backslashreplace"))
            problem = "is not UTF-8 text"
        else:
            if keys_are_text:
                return CacheEntry(*key, self._text(value, "listing", *key))
            problem = "is stored as a BLOB, not TEXT, so get, set and delete cannot reach it"
        raise AccessException(
            f"listing failed in {self.location()}: the key {describe_key(*key)} {problem} "
            "(written by another program?)"
        )
