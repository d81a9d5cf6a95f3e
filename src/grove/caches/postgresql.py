"""Grove PostgreSQL cache handler: durable state shared by every host that reaches the database.

Layout: one table (``GROVE_CACHE_POSTGRESQL_TABLE``, default ``grove_cache``)::

    CREATE TABLE grove_cache (
        pk bytea NOT NULL,
        sk bytea NOT NULL,
        value bytea NOT NULL,
        expires_at timestamptz,
        PRIMARY KEY (pk, sk)
    );
    CREATE INDEX grove_cache_expires_at ON grove_cache (expires_at)
        WHERE expires_at IS NOT NULL;
    COMMENT ON TABLE grove_cache IS 'grove.caches postgresql schema 1';

Keys and values are the UTF-8 bytes of the strings: ``text`` cannot hold NUL, which keys
and values may contain, and ``bytea`` compares byte by byte whatever the database's
collation, so the primary key orders partition keys as their UTF-8 bytes and a prefix is a
range of it. The table comment records the schema version; :meth:`Handler.create_storage`
(``grove-cache init``) creates table, index and comment idempotently, and a table of any
other shape, or of a newer version, is refused with
:class:`~grove.exceptions.ConfigurationException`. The handler never creates the table by
itself, so a mistyped table name fails instead of starting an empty cache.

Atomicity: every call is one SQL statement, in its own transaction (the connection is in
autocommit mode, at READ COMMITTED), with its condition inside it and its success read from
the row count; nothing is read before a write.

- ``get``: ``SELECT value ... WHERE pk = $1 AND sk = $2`` and unexpired.
- plain ``set``: ``INSERT ... ON CONFLICT (pk, sk) DO UPDATE`` (an upsert).
- ``not_set``: ``INSERT ... ON CONFLICT (pk, sk) DO UPDATE ... WHERE`` the stored row has
  expired, so it is ``INSERT ... ON CONFLICT DO NOTHING`` for every live row.
- ``constraint``: ``UPDATE ... WHERE pk = $ AND sk = $ AND value = $`` and unexpired.
- ``delete``: ``DELETE ... WHERE pk = $ AND sk = $`` (``AND value = $`` and unexpired
  with a constraint).

At READ COMMITTED a writer that finds the row locked waits for the other transaction and
then evaluates its condition again on the row as committed, so two writers of one key never
both pass a condition that only one of them can meet. ``INSERT ... ON CONFLICT`` either
inserts or finds the committed conflicting row, never both. The first use of a handler
checks that the session's ``default_transaction_isolation`` is ``read committed``.

Expiry: the server's clock decides. ``set(..., ttl=)`` stores ``expires_at = now() +
ttl``; every statement treats a row whose ``expires_at <= now()`` as absent, inside the
same statement, and :meth:`~grove.caches.atomic.ExpiringCache.sweep_expired` removes
expired rows in bounded batches (``DELETE`` of at most ``batch_size`` rows, chosen
through the partial index and locked with ``SKIP LOCKED``; a row written again meanwhile
fails the repeated condition and stays). ``now()`` is the start of the statement's
transaction, which is the statement itself.

Listing: keyset pagination over the primary key, one statement per page, each page at most
:data:`PAGE_ROWS` rows and about :data:`PAGE_BYTES` bytes of values (always at least one
row), so a listing of a million entries holds one page in memory and no transaction or
connection between pages.

Connections: one :class:`psycopg_pool.ConnectionPool` per handler, of up to
``GROVE_CACHE_POSTGRESQL_POOL_SIZE`` connections shared by the threads of the process,
opened on first use. Before a pooled connection is used its socket is read without
waiting, so a connection that the server closed (a restart, ``pg_terminate_backend``, an
idle timeout) is discarded instead of failing the call. The first use connects once
directly, so an unreachable server, a refused login or a missing table is reported at
once and precisely; later, a call that gets no connection within
``GROVE_CACHE_POSTGRESQL_CONNECT_TIMEOUT`` seconds tries one direct connection to say
why. A process forked from one that used the handler opens its own pool.

Failures: a server down, restarting or shutting down, a read-only session (a standby,
``default_transaction_read_only``), a statement timeout and a terminated backend raise
:class:`~grove.exceptions.AccessException`; a refused login, a missing role or database
and a table of another shape raise :class:`~grove.exceptions.ConfigurationException`.
Messages name the table and the connection parameters with the password masked.

Prepared statements: psycopg prepares a statement on a connection after it has run
``GROVE_CACHE_POSTGRESQL_PREPARE_THRESHOLD`` times (default 5). The handler uses a handful
of statements, never more than psycopg's ``prepared_max``, so it never deallocates one.
Behind PgBouncer in transaction mode, 1.21 or newer with ``max_prepared_statements`` above
zero tracks them; with an older PgBouncer, or ``max_prepared_statements = 0``, set the
threshold to ``none`` to send every statement unprepared.
"""

from __future__ import annotations

import os
import re
import select
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Final, Literal, TypeVar

import pydantic
from pydantic_settings import SettingsConfigDict
from typing_extensions import override

try:
    import psycopg
    from psycopg import conninfo, pq, sql
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # without the postgresql extra
    raise ImportError(
        f"grove.caches.postgresql needs psycopg and psycopg_pool ({exc}): "
        "pip install 'grove-caches[postgresql]'"
    ) from exc

from grove.caches import CacheEntry, Closing, CreatingStorage, Listing
from grove.caches.atomic import (
    ABSENT,
    ANY,
    Expected,
    ExpectedToRemove,
    ExpiringCache,
    Sentinel,
    Stored,
    describe_key,
)
from grove.caches.configuration import HandlerConfiguration
from grove.exceptions import AccessException, ConfigurationException, GroveException

__all__ = ["PAGE_BYTES", "PAGE_ROWS", "SCHEMA_VERSION", "Configuration", "Handler"]

SCHEMA_VERSION: Final = 1
"""The layout this module writes, recorded in the table's comment."""

PAGE_ROWS: Final = 500
"""The most rows one page of a listing fetches."""

PAGE_BYTES: Final = 16 * 1024 * 1024
"""Bytes of values after which a page of a listing ends (it holds at least one row)."""

APPLICATION_NAME: Final = "grove.caches"
"""The ``application_name`` of the handler's sessions, unless the DSN sets one."""

_Result = TypeVar("_Result")

_COMMENT_PREFIX: Final = "grove.caches postgresql schema "
_COLUMNS: Final = (
    "pk bytea not null",
    "sk bytea not null",
    "value bytea not null",
    "expires_at timestamp with time zone",
)
_PRIMARY_KEY: Final = ("pk", "sk")
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_LIVE: Final = "(expires_at IS NULL OR expires_at > now())"
_EXPIRES: Final = "now() + make_interval(secs => %b)"
_KEY_END: Final = b"\xff"
"""A byte above every UTF-8 string: UTF-8 never contains 0xFF."""

# libpq's messages for a login that the server refuses; they come without an SQLSTATE.
_REFUSED_LOGIN = re.compile(
    r"authentication failed|password authentication|no password supplied"
    r"|role \".*\" does not exist|database \".*\" does not exist|no pg_hba\.conf entry"
    r"|pg_hba\.conf rejects|not permitted to log in|permission denied for database"
    r"|does not support SSL|SSL .*required|certificate|unsupported startup parameter",
    re.IGNORECASE,
)


def _secrets(dsn: str) -> list[str]:
    """The password in a DSN, as written and as libpq reads it, to scrub from messages."""
    found = [match.group(1) for match in re.finditer(r"password\s*=\s*'?([^'\s]+)", dsn)]
    found += [match.group(1) for match in re.finditer(r"://[^:/@?]*:([^@/?]+)@", dsn)]
    try:
        password = conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password:
        found.append(str(password))
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def mask_dsn(dsn: str) -> str:
    """Return a DSN as key/value parameters with the password replaced by ``***``.

    :param dsn: A libpq connection string or URL.
    :return: For example ``user=grove password=*** dbname=grove host=db.example``.
    """
    if not dsn.strip():
        return "libpq defaults (PG* environment variables)"
    try:
        parameters = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an invalid connection string"
    if "password" in parameters:
        parameters["password"] = "***"
    return conninfo.make_conninfo("", **parameters)


class Configuration(HandlerConfiguration):
    """Settings of the PostgreSQL handler, from ``GROVE_CACHE_POSTGRESQL_*`` variables."""

    # The input of an invalid DSN may hold its password: validation errors never show it.
    model_config = SettingsConfigDict(
        env_prefix="GROVE_CACHE_POSTGRESQL_", hide_input_in_errors=True
    )

    dsn: pydantic.SecretStr = pydantic.Field(
        default=pydantic.SecretStr(""),
        description="A libpq connection string or URL (host, port, dbname, user, password, "
        "sslmode...); empty: libpq's defaults and PG* environment variables.",
    )
    table: str = pydantic.Field(
        default="grove_cache",
        description="The table, optionally schema-qualified (schema.table); quoted as "
        "written, so case matters.",
    )
    pool_size: int = pydantic.Field(
        default=10, ge=1, le=1000, description="The most connections the process opens."
    )
    connect_timeout: int = pydantic.Field(
        default=5,
        ge=2,
        description="Seconds to wait for a connection: a new one (libpq's connect_timeout) "
        "or a free one in the pool.",
    )
    statement_timeout: float = pydantic.Field(
        default=30.0,
        ge=0,
        description="Seconds after which the server cancels a statement; 0 sends no "
        "setting, so the server's or role's applies.",
    )
    prepare_threshold: int | None = pydantic.Field(
        default=5,
        ge=0,
        description="Executions of a statement on a connection before psycopg prepares it; "
        "none: never (PgBouncer before 1.21, or max_prepared_statements = 0).",
    )

    @pydantic.field_validator("prepare_threshold", mode="before")
    @classmethod
    def _none_disables(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @pydantic.field_validator("dsn")
    @classmethod
    def _a_connection_string(cls, value: pydantic.SecretStr) -> pydantic.SecretStr:
        dsn = value.get_secret_value()
        try:
            conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            detail = _scrub(str(exc).strip(), _secrets(dsn))
            raise ValueError(f"not a libpq connection string or URL ({detail})") from None
        return value

    @pydantic.field_validator("table")
    @classmethod
    def _an_identifier(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) > 2 or not all(_TABLE_NAME.fullmatch(part) for part in parts):
            raise ValueError(
                "must be a table name, optionally schema-qualified (schema.table): letters, "
                "digits and underscores, not starting with a digit, at most 48 characters each"
            )
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield (name, mask_dsn(self.dsn.get_secret_value()) if name == "dsn" else value)


class _Statements:
    """The handler's SQL, composed once for one table with :mod:`psycopg.sql`."""

    def __init__(self, table: str) -> None:
        *schema, name = table.split(".")
        self.name = name
        self.identifier = sql.Identifier(*schema, name)
        self.table = self.identifier.as_string()
        self._entry_statements()
        self._schema_statements()

    def compose(self, template: str) -> str:
        """Fill a template's ``{t}``, ``{index}``, ``{live}`` and ``{comment}``."""
        return (
            sql.SQL(template)
            .format(
                t=self.identifier,
                index=sql.Identifier(f"{self.name}_expires_at"),
                live=sql.SQL(_LIVE),
                comment=sql.Literal(f"{_COMMENT_PREFIX}{SCHEMA_VERSION}"),
            )
            .as_string()
        )

    def _writes(self, expires: str) -> tuple[str, str, str]:
        """The upsert, the insert over an absent or expired row, the compare-and-set."""
        compose = self.compose
        upsert = compose(
            "INSERT INTO {t} AS e (pk, sk, value, expires_at) VALUES (%b, %b, %b, "
            + expires
            + ") ON CONFLICT (pk, sk) DO UPDATE "
            "SET value = excluded.value, expires_at = excluded.expires_at"
        )
        return (
            upsert,
            upsert + " WHERE e.expires_at <= now()",
            compose(
                "UPDATE {t} SET value = %b, expires_at = "
                + expires
                + " WHERE pk = %b AND sk = %b AND value = %b AND {live}"
            ),
        )

    def _entry_statements(self) -> None:
        compose = self.compose
        self.select = compose("SELECT value FROM {t} WHERE pk = %b AND sk = %b AND {live}")
        self.select_expiry = compose(
            "SELECT date_part('epoch', expires_at) FROM {t} WHERE pk = %b AND sk = %b AND {live}"
        )
        self.upsert, self.insert_if_absent, self.update_if_equal = self._writes("NULL")
        self.upsert_expiring, self.insert_expiring_if_absent, self.update_expiring_if_equal = (
            self._writes(_EXPIRES)
        )
        self.delete = compose("DELETE FROM {t} WHERE pk = %b AND sk = %b")
        self.delete_if_equal = compose(
            "DELETE FROM {t} WHERE pk = %b AND sk = %b AND value = %b AND {live}"
        )
        self.sweep = compose(
            "DELETE FROM {t} WHERE (pk, sk) IN (SELECT pk, sk FROM {t} "
            "WHERE expires_at <= now() ORDER BY expires_at LIMIT %b FOR UPDATE SKIP LOCKED) "
            "AND expires_at <= now()"
        )
        # Rows after (pk, sk) and below an upper bound of pk, cut after PAGE_BYTES of values.
        self.page = compose(
            "SELECT pk, sk, value FROM (SELECT pk, sk, value, "
            "sum(octet_length(value)) OVER (ORDER BY pk, sk) - octet_length(value) AS before "
            "FROM {t} WHERE (pk, sk) > (%b, %b) AND pk < %b AND {live} "
            "ORDER BY pk, sk LIMIT %b) AS page WHERE before < %b ORDER BY pk, sk"
        )

    def _schema_statements(self) -> None:
        compose = self.compose
        self.create = [
            compose(
                "CREATE TABLE IF NOT EXISTS {t} (pk bytea NOT NULL, sk bytea NOT NULL, "
                "value bytea NOT NULL, expires_at timestamptz, PRIMARY KEY (pk, sk))"
            ),
            compose(
                "CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at) "
                "WHERE expires_at IS NOT NULL"
            ),
            compose("COMMENT ON TABLE {t} IS {comment}"),
        ]
        self.lock = compose("SELECT pg_advisory_xact_lock(hashtext('grove.caches ' || %s))")
        self.inspect = compose(
            "SELECT c.relkind::text, obj_description(c.oid, 'pg_class'), "
            "ARRAY(SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) "
            "|| CASE WHEN a.attnotnull THEN ' not null' ELSE '' END FROM pg_attribute a "
            "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum), "
            "ARRAY(SELECT a.attname::text FROM pg_index i, "
            "unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position), pg_attribute a "
            "WHERE i.indrelid = c.oid AND i.indisprimary AND a.attrelid = c.oid "
            "AND a.attnum = k.attnum ORDER BY k.position), "
            "current_setting('default_transaction_isolation') "
            "FROM (SELECT to_regclass(%s) AS oid) AS wanted LEFT JOIN pg_class c "
            "ON c.oid = wanted.oid"
        )


def _alive(connection: psycopg.Connection[Any]) -> bool:
    """Tell, without waiting, whether an idle connection can still be used.

    The server sends nothing unasked on an idle session of ours except to end it (an
    error such as "terminating connection due to administrator command", then end of
    file) or, rarely, to report a changed setting; so a connection with anything to read
    is not used again.
    """
    try:
        readable, _, _ = select.select([connection.pgconn.socket], [], [], 0)
    except (psycopg.OperationalError, OSError, ValueError):
        return False
    return not readable and connection.pgconn.status == pq.ConnStatus.OK


def _row_count(cursor: psycopg.Cursor[Any]) -> int:
    return cursor.rowcount


def _not_utf8(exc: UnicodeDecodeError, what: str) -> AccessException:
    return AccessException(f"{what} is not UTF-8 (byte {exc.start}); not written by Grove")


def _next_prefix(prefix: bytes) -> bytes:
    """The least byte string above every string that starts with ``prefix`` (UTF-8)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


_open_handlers: weakref.WeakSet[Handler] = weakref.WeakSet()
_inherited: list[ConnectionPool[Any]] = []


def _after_fork_in_child() -> None:
    # The parent's connections are the parent's: a child neither uses nor closes them
    # (closing would end the parent's sessions), and its pool's threads did not survive.
    for handler in list(_open_handlers):
        handler.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_pool(pool: ConnectionPool[Any], pid: int) -> None:
    if os.getpid() == pid:
        pool.close()


class Handler(ExpiringCache, Listing, CreatingStorage, Closing):
    """A PostgreSQL backed cache: durable, shared by every process and host using the table."""

    configuration = Configuration
    config: Configuration

    driver_errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)
    clock_owner: ClassVar[Literal["caller", "server"]] = "server"

    def __init__(self, config: Configuration | None = None) -> None:
        """Create the handler; nothing connects until the first call or :meth:`setup`.

        :param config: The settings; read from the environment when ``None``.
        :raises ConfigurationException: A setting is missing or invalid.
        """
        self.config = config if config is not None else Configuration.from_environment()
        dsn = self.config.dsn.get_secret_value()
        self._secrets = _secrets(dsn)
        self._sql = _Statements(self.config.table)
        self._location = f"postgresql table {self._sql.table} at {mask_dsn(dsn)}"
        self._conninfo = self._connection_string(dsn)
        self._pool: ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self._finalizer: weakref.finalize[Any, Any] | None = None
        _open_handlers.add(self)

    def _connection_string(self, dsn: str) -> str:
        """The DSN with the handler's connection parameters; the DSN's own ones win."""
        parameters = conninfo.conninfo_to_dict(dsn)
        settings: dict[str, Any] = {
            "connect_timeout": self.config.connect_timeout,
            "application_name": APPLICATION_NAME,
        }
        if self.config.statement_timeout:
            milliseconds = max(1, round(self.config.statement_timeout * 1000))
            own = f"-c statement_timeout={milliseconds}"
            parameters["options"] = f"{own} {parameters.get('options', '')}".strip()
        return conninfo.make_conninfo(dsn, **{**settings, **parameters})

    @override
    def location(self) -> str:
        return self._location

    def _scrubbed(self, exc: BaseException) -> str:
        return _scrub(f"{type(exc).__name__}: {exc}", self._secrets)

    @override
    def _classify(self, operation: str, exc: Exception) -> tuple[type[GroveException], str]:
        """Passwords are masked in every detail; a refused login is configuration."""
        if isinstance(exc, psycopg.OperationalError) and _REFUSED_LOGIN.search(str(exc)):
            return (
                ConfigurationException,
                f"{Configuration.env_name('dsn')}: the login was refused: {self._scrubbed(exc)}",
            )
        return AccessException, self._scrubbed(exc)

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """Open one connection directly, turning a failure into a Grove exception.

        :raises ConfigurationException: The server refused the login or has no such
            database.
        :raises AccessException: The server could not be reached.
        """
        try:
            return psycopg.Connection.connect(
                self._conninfo, autocommit=True, prepare_threshold=self.config.prepare_threshold
            )
        except psycopg.OperationalError as exc:
            raise self._connect_error(exc) from exc

    def _connect_error(self, exc: psycopg.OperationalError) -> GroveException:
        detail = self._scrubbed(exc)
        if _REFUSED_LOGIN.search(str(exc)):
            return ConfigurationException(
                f"{Configuration.env_name('dsn')}: {self.location()} refused the login: {detail}"
            )
        return AccessException(f"cannot connect to {self.location()}: {detail}")

    def _open_pool(self) -> ConnectionPool[Any]:
        """Check the storage on a direct connection, then open the pool (first use)."""
        with self._pool_lock:
            if self._pool is not None:
                return self._pool
            with self._connect() as connection:
                if not self._inspect(connection):
                    raise self._missing_table()
            pool: ConnectionPool[Any] = ConnectionPool(
                self._conninfo,
                kwargs={"autocommit": True, "prepare_threshold": self.config.prepare_threshold},
                min_size=1,
                max_size=self.config.pool_size,
                open=False,
                name=f"grove.caches {self._sql.table}",
                timeout=self.config.connect_timeout,
                # Failed background reconnections stop soon; a waiting call then starts a
                # new one at once, so the pool is back as soon as the server is.
                reconnect_timeout=self.config.connect_timeout,
                num_workers=2,
            )
            # Wait for the first connection, so a single thread keeps using that one
            # instead of a second one opened because it asked before the first was ready.
            try:
                pool.open(wait=True, timeout=self.config.connect_timeout)
            except PoolTimeout as exc:
                raise self._no_connection(exc) from exc
            self._finalizer = weakref.finalize(self, _close_pool, pool, os.getpid())
            self._pool = pool
            return pool

    def after_fork_in_child(self) -> None:
        """Drop the pool in a forked child without closing it: it belongs to the parent.

        Called for every handler of the process by :func:`os.register_at_fork`; the
        child opens its own pool on first use.
        """
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._pool is not None:
            _inherited.append(self._pool)
        self._pool, self._finalizer = None, None
        self._pool_lock = threading.Lock()

    def _acquire(self) -> tuple[ConnectionPool[Any], psycopg.Connection[Any]]:
        """Take a live connection from the pool, opening the pool on first use.

        :raises ConfigurationException: The login is refused, or the table is wrong.
        :raises AccessException: No connection could be had in time.
        """
        pool = self._pool or self._open_pool()
        for _ in range(self.config.pool_size + 1):
            try:
                connection = pool.getconn()
            except PoolTimeout as exc:
                raise self._no_connection(exc) from exc
            if _alive(connection):
                return pool, connection
            connection.close()
            pool.putconn(connection)  # the pool replaces a closed connection
        raise AccessException(f"every connection to {self.location()} was found closed")

    def _no_connection(self, exc: PoolTimeout) -> GroveException:
        """Say why the pool had no connection in time, trying one direct connection."""
        try:
            connection = self._connect()
        except GroveException as failure:
            return failure
        connection.close()
        return AccessException(
            f"no connection to {self.location()} became free within "
            f"{self.config.connect_timeout} s ({self.config.pool_size} in the pool, "
            f"{Configuration.env_name('pool_size')}): {self._scrubbed(exc)}"
        )

    def _run(
        self,
        statement: str,
        parameters: tuple[Any, ...],
        result: Callable[[psycopg.Cursor[Any]], _Result],
    ) -> _Result:
        """Run one statement on a pooled connection; return ``result`` of its cursor."""
        pool, connection = self._acquire()
        try:
            return result(connection.execute(statement, parameters, binary=True))
        except psycopg.errors.ReadOnlySqlTransaction:
            # The server may have become a standby (a failover): a new connection may
            # reach the new primary, so this one is not used again.
            connection.close()
            raise
        finally:
            pool.putconn(connection)

    def _execute(self, statement: str, parameters: tuple[Any, ...]) -> int:
        """Run one statement; return its row count."""
        return self._run(statement, parameters, _row_count)

    def _fetch_one(self, statement: str, parameters: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Run one query; return its first row."""
        return self._run(statement, parameters, psycopg.Cursor.fetchone)

    def _fetch_all(self, statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run one query; return all its rows."""
        return self._run(statement, parameters, psycopg.Cursor.fetchall)

    # -- storage -----------------------------------------------------------------------

    def _inspect(self, connection: psycopg.Connection[Any]) -> bool:
        """Check the table and the session; tell whether the table exists.

        :raises ConfigurationException: The table has another shape or a newer schema, or
            the session is not at READ COMMITTED.
        :raises AccessException: The check failed.
        """
        try:
            row = connection.execute(self._sql.inspect, (self._sql.table,)).fetchone()
        except psycopg.Error as exc:
            raise self._failure("inspection", exc) from exc
        assert row is not None  # the query always returns one row
        kind, comment, columns, primary_key, isolation = row
        variable = Configuration.env_name("table")
        if isolation != "read committed":
            raise ConfigurationException(
                f"{Configuration.env_name('dsn')}: sessions of {self.location()} default to "
                f"{isolation} isolation; the handler needs read committed (set "
                "default_transaction_isolation for the role, or in the DSN's options)"
            )
        if kind is None:
            return False
        version = (comment or "").removeprefix(_COMMENT_PREFIX)
        if comment and comment.startswith(_COMMENT_PREFIX) and version.isdigit():
            if int(version) > SCHEMA_VERSION:
                raise ConfigurationException(
                    f"{variable}: {self.location()} has schema version {version}, written by "
                    f"a newer grove-caches; this one reads version {SCHEMA_VERSION}"
                )
            if (
                int(version) == SCHEMA_VERSION
                and kind in ("r", "p")
                and tuple(columns) == _COLUMNS
                and tuple(primary_key) == _PRIMARY_KEY
            ):
                return True
        raise ConfigurationException(
            f"{variable}: {self.location()} is a table of another shape, not a Grove cache "
            f"of schema version {SCHEMA_VERSION} (columns: {', '.join(columns)}); choose "
            "another table"
        )

    def _missing_table(self) -> ConfigurationException:
        return ConfigurationException(
            f"{Configuration.env_name('table')}: {self.location()} does not exist; create it "
            "with 'grove-cache init' or Handler.create_storage() "
            "(the SQL is in the documentation, Handlers in depth: postgresql)"
        )

    @override
    def setup(self) -> None:
        """Connect, check the table, and open the pool.

        :raises ConfigurationException: The login is refused, the database or table is
            missing, or the table has another shape.
        :raises AccessException: The server could not be reached.
        """
        pool, connection = self._acquire()
        pool.putconn(connection)

    @override
    def create_storage(self) -> str:
        """Create the table, its index and its schema comment if the table is missing.

        Concurrent callers are serialised by an advisory lock; an existing table is
        checked, not changed.

        :raises ConfigurationException: The login is refused, or a table of another shape
            has the name.
        :raises AccessException: The server could not be reached, or refused the DDL.
        :return: What was done, in one line.
        """
        with self._connect() as connection:
            try:
                with connection.transaction():
                    connection.execute(self._sql.lock, (self._sql.table,))
                    if self._inspect(connection):
                        return f"found {self.location()}"
                    for statement in self._sql.create:
                        connection.execute(statement)
            except psycopg.Error as exc:
                raise self._failure("create_storage", exc) from exc
        return f"created {self.location()}"

    def close(self) -> None:
        """Close the pool's connections; a later call opens a new pool."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if pool is not None:
            pool.close()

    # -- primitives --------------------------------------------------------------------

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one SELECT by primary key of the unexpired row."""
        row = self._fetch_one(self._sql.select, (pk.encode(), sk.encode()))
        if row is None:
            return ABSENT
        try:
            return str(row[0].decode())
        except UnicodeDecodeError as exc:
            what = f"the value of {describe_key(pk, sk)} in {self.location()}"
            raise _not_utf8(exc, what) from exc

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: one statement with its condition; success is one affected row.

        Plain: an upsert. ``ABSENT``: an insert that replaces only an expired row. A
        value: ``UPDATE ... WHERE value = $`` of the unexpired row. Each clears the expiry.
        """
        statements = self._sql
        key = (pk.encode(), sk.encode())
        if expected is ANY:
            return self._execute(statements.upsert, (*key, value.encode())) == 1
        if expected is ABSENT:
            return self._execute(statements.insert_if_absent, (*key, value.encode())) == 1
        parameters = (value.encode(), *key, expected.encode())
        return self._execute(statements.update_if_equal, parameters) == 1

    @override
    def _write_expiring(self, pk: str, sk: str, value: str, expected: Expected, ttl: float) -> bool:
        """Atomic: as :meth:`_write`, with ``expires_at = now() + ttl`` in the statement."""
        statements = self._sql
        key = (pk.encode(), sk.encode())
        if expected is ANY:
            return self._execute(statements.upsert_expiring, (*key, value.encode(), ttl)) == 1
        if expected is ABSENT:
            parameters: tuple[Any, ...] = (*key, value.encode(), ttl)
            return self._execute(statements.insert_expiring_if_absent, parameters) == 1
        parameters = (value.encode(), ttl, *key, expected.encode())
        return self._execute(statements.update_expiring_if_equal, parameters) == 1

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: one DELETE, with ``AND value = $`` of the unexpired row when expected."""
        key = (pk.encode(), sk.encode())
        if expected is ANY:
            self._execute(self._sql.delete, key)
            return True
        return self._execute(self._sql.delete_if_equal, (*key, expected.encode())) == 1

    @override
    def _read_expiry(self, pk: str, sk: str) -> float | Literal[Sentinel.ABSENT] | None:
        """Atomic: one SELECT of the unexpired row's ``expires_at``."""
        row = self._fetch_one(self._sql.select_expiry, (pk.encode(), sk.encode()))
        if row is None:
            return ABSENT
        return None if row[0] is None else float(row[0])

    @override
    def _sweep_expired(self, limit: int) -> int:
        """One DELETE of at most ``limit`` expired rows, skipping rows being written."""
        return self._execute(self._sql.sweep, (limit,))

    @override
    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """Keyset pagination over the primary key: one SELECT per page, none held open.

        Partition ``pk`` is the range ``[pk, pk || 0x00)`` of byte strings, a prefix
        ``[prefix, next(prefix))``, and everything ``['', 0xFF)``.
        """
        if pk is not None:
            after, end = (pk.encode(), b""), pk.encode() + b"\x00"
        elif prefix:
            after, end = (prefix.encode(), b""), _next_prefix(prefix.encode())
        else:
            after, end = (b"", b""), _KEY_END
        while True:
            rows = self._fetch_all(self._sql.page, (*after, end, PAGE_ROWS, PAGE_BYTES))
            if not rows:
                return
            for row_pk, row_sk, value in rows:
                try:
                    entry = CacheEntry(row_pk.decode(), row_sk.decode(), value.decode())
                except UnicodeDecodeError as exc:
                    pk_text, sk_text = (part.decode(errors="replace") for part in (row_pk, row_sk))
                    key = describe_key(pk_text, sk_text)
                    raise _not_utf8(exc, f"the entry {key} in {self.location()}") from exc
                yield entry
            after = (rows[-1][0], rows[-1][1])
