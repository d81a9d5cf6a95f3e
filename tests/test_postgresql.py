"""postgresql: the conformance suite on the shared server, plus what only PostgreSQL has.

Tests on the shared server work in this run's own table (``postgresql_table``) or in
tables they make and drop. Tests that stop, restart or reconfigure a server use a
cluster of their own (``postgresql_cluster``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg import sql

from grove.caches import BaseCache, CacheEntry, load
from grove.caches import postgresql as module
from grove.caches.postgresql import SCHEMA_VERSION, Configuration, Handler, mask_dsn
from grove.caches.testing import (
    ExpiryConformance,
    LeaseConformance,
    ListingConformance,
    ServerClock,
    SharedCacheConformance,
    SharedExpiryConformance,
)
from grove.exceptions import (
    AccessException,
    ConfigurationException,
    DataFormatException,
    GroveException,
    NotFoundException,
)
from tests.postgresql_server import (
    Cluster,
    drop_table,
    free_port,
    fresh_table_name,
    make_handler,
)


class TestPostgresqlConformance(
    SharedCacheConformance, ListingConformance, ExpiryConformance, SharedExpiryConformance
):
    # The server's clock decides: the eight expiries of the section sleep 8 x 0.18 s. The
    # ttl leaves 150 ms for the calls a test makes before its entry must have expired.
    expiry_ttl = 0.15
    expiry_wait = 0.18

    @pytest.fixture
    def cache(self, postgresql_dsn: str, postgresql_table: str) -> Iterator[Handler]:
        handler = make_handler(postgresql_dsn, postgresql_table)
        yield handler
        handler.close()

    @pytest.fixture
    def cache_factory(self, postgresql_dsn: str, postgresql_table: str) -> Callable[[], BaseCache]:
        return functools.partial(make_handler, postgresql_dsn, postgresql_table)

    @pytest.fixture
    def clock(self) -> ServerClock:
        return ServerClock()


class TestPostgresqlLease(LeaseConformance):
    @pytest.fixture
    def cache(self, postgresql_dsn: str, postgresql_table: str) -> Iterator[Handler]:
        handler = make_handler(postgresql_dsn, postgresql_table)
        yield handler
        handler.close()

    @pytest.fixture
    def cache_factory(self, postgresql_dsn: str, postgresql_table: str) -> Callable[[], BaseCache]:
        return functools.partial(make_handler, postgresql_dsn, postgresql_table)


@pytest.fixture
def table(postgresql_dsn: str) -> Iterator[str]:
    """A table name of this test alone, dropped afterwards (created by the test)."""
    name = fresh_table_name()
    yield name
    drop_table(postgresql_dsn, name)


@pytest.fixture
def handler(postgresql_dsn: str, table: str) -> Iterator[Handler]:
    """A handler on a new table of this test alone."""
    created = make_handler(postgresql_dsn, table)
    created.create_storage()
    yield created
    created.close()


def _raw(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def _chain(exc: BaseException) -> str:
    """Everything a traceback of ``exc`` would print about it."""
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts += [repr(current), str(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


# -- the table -----------------------------------------------------------------------


def test_create_storage_makes_the_versioned_table_once(postgresql_dsn: str, table: str) -> None:
    cache = make_handler(postgresql_dsn, table)
    assert cache.create_storage().startswith(f'created postgresql table "{table}" at ')
    assert cache.create_storage().startswith(f'found postgresql table "{table}" at ')
    with _raw(postgresql_dsn) as raw:
        columns = raw.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        comment = raw.execute("SELECT obj_description(%s::regclass)", (table,)).fetchone()
        indexes = raw.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s ORDER BY indexname", (table,)
        ).fetchall()
    assert columns == [
        ("pk", "bytea", "NO"),
        ("sk", "bytea", "NO"),
        ("value", "bytea", "NO"),
        ("expires_at", "timestamp with time zone", "YES"),
    ]
    assert comment == (f"grove.caches postgresql schema {SCHEMA_VERSION}",)
    assert [definition for (definition,) in indexes] == [
        f"CREATE INDEX {table}_expires_at ON public.{table} USING btree (expires_at) "
        "WHERE (expires_at IS NOT NULL)",
        f"CREATE UNIQUE INDEX {table}_pkey ON public.{table} USING btree (pk, sk)",
    ]


def test_create_storage_from_many_threads_creates_once(postgresql_dsn: str, table: str) -> None:
    barrier = threading.Barrier(6)

    def create() -> str:
        cache = make_handler(postgresql_dsn, table)
        barrier.wait()
        return cache.create_storage().split()[0]

    with ThreadPoolExecutor(6) as pool:
        outcomes = sorted(pool.map(lambda _: create(), range(6)))
    assert outcomes == ["created"] + ["found"] * 5


def test_a_missing_table_is_a_configuration_error(postgresql_dsn: str, table: str) -> None:
    cache = make_handler(postgresql_dsn, table)
    with pytest.raises(
        ConfigurationException, match=r"GROVE_CACHE_POSTGRESQL_TABLE: .* does not exist.*init"
    ):
        cache.setup()
    with pytest.raises(ConfigurationException, match="does not exist"):
        cache.get("pk", "sk")
    with pytest.raises(ConfigurationException, match="does not exist"):
        cache.set("pk", "sk", "v")
    with _raw(postgresql_dsn) as raw:
        assert raw.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)


@pytest.mark.parametrize(
    "definition",
    [
        "(pk text, sk text, value text, PRIMARY KEY (pk, sk))",
        "(pk bytea NOT NULL, sk bytea NOT NULL, value bytea NOT NULL, "
        "expires_at timestamptz, PRIMARY KEY (sk, pk))",
        "(pk bytea NOT NULL, sk bytea NOT NULL, value bytea NOT NULL, "
        "expires_at timestamptz, PRIMARY KEY (pk, sk))",  # no schema comment
    ],
    ids=["text-columns", "key-order", "no-comment"],
)
def test_a_table_of_another_shape_is_refused(
    postgresql_dsn: str, table: str, definition: str
) -> None:
    with _raw(postgresql_dsn) as raw:
        raw.execute(
            sql.SQL("CREATE TABLE {} " + definition).format(sql.Identifier(table)).as_string()
        )
    cache = make_handler(postgresql_dsn, table)
    with pytest.raises(ConfigurationException, match=r"GROVE_CACHE_POSTGRESQL_TABLE: .*another"):
        cache.create_storage()
    with pytest.raises(ConfigurationException, match="another shape"):
        cache.set("pk", "sk", "v")
    with _raw(postgresql_dsn) as raw:
        count = raw.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)).as_string()
        ).fetchone()
    assert count == (0,)


def test_a_newer_schema_version_is_refused(postgresql_dsn: str, handler: Handler) -> None:
    table = handler.config.table
    with _raw(postgresql_dsn) as raw:
        raw.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}")
            .format(
                sql.Identifier(table),
                sql.Literal(f"grove.caches postgresql schema {SCHEMA_VERSION + 1}"),
            )
            .as_string()
        )
    with pytest.raises(ConfigurationException, match="schema version 2, written by a newer"):
        make_handler(postgresql_dsn, table).get("pk", "sk")


def test_a_schema_qualified_table(postgresql_dsn: str) -> None:
    schema = fresh_table_name("schema")
    with _raw(postgresql_dsn) as raw:
        raw.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)).as_string())
    try:
        cache = make_handler(postgresql_dsn, f"{schema}.Entries")
        assert f'"{schema}"."Entries"' in cache.create_storage()
        cache.set("pk", "sk", "v")
        assert cache.get("pk", "sk") == "v"
        cache.close()
    finally:
        with _raw(postgresql_dsn) as raw:
            raw.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)).as_string()
            )


def test_sessions_must_be_read_committed(postgresql_dsn: str, handler: Handler) -> None:
    dsn = postgresql_dsn + "?options=-c%20default_transaction_isolation%3Dserializable"
    cache = make_handler(dsn, handler.config.table)
    with pytest.raises(ConfigurationException, match=r"serializable isolation.*read committed"):
        cache.setup()


# -- values, keys and listing --------------------------------------------------------


def test_nul_is_stored_and_bounds_partitions_exactly(handler: Handler) -> None:
    # A partition is the byte range [pk, pk || 0x00): "k\x00a" is another partition.
    entries = [("k", "s", "v"), ("k\x00", "s\x00", "\x00"), ("k\x00a", "s", "v\x00w")]
    for pk, sk, value in entries:
        handler.set(pk, sk, value)
    assert [handler.get(pk, sk) for pk, sk, _ in entries] == ["v", "\x00", "v\x00w"]
    assert list(handler.entries("k")) == [CacheEntry("k", "s", "v")]
    assert list(handler.entries("k\x00")) == [CacheEntry("k\x00", "s\x00", "\x00")]
    assert list(handler.entries(prefix="k")) == [CacheEntry(*entry) for entry in entries]
    assert list(handler.entries(prefix="k\x00")) == [CacheEntry(*entry) for entry in entries[1:]]
    with pytest.raises(DataFormatException):
        handler.set("k\x00a", "s", "x", constraint="v")
    with pytest.raises(DataFormatException):
        handler.delete("k\x00", "s\x00", constraint="")
    handler.set("k\x00a", "s", "x", constraint="v\x00w")
    assert handler.get("k\x00a", "s") == "x"


def test_listing_by_prefix_at_unicode_edges(handler: Handler) -> None:
    keys = [
        "p",
        "p\x00",
        "p\x7f",
        "p\x80",
        "p\ud7ff",
        "p\ue000",
        "p\uffff",
        "p\U00010000",
        "p\U0010ffff",
        "p\U0010ffff\x00",
        "q",
        "o\U0010ffff",
        "\U0010ffff",
    ]
    for key in keys:
        handler.set(key, "sk", key)
    for prefix in ["p", "p\ud7ff", "p\U0010ffff", "\U0010ffff", "o", "p\x00", "p\x7f"]:
        listed = sorted(entry.pk for entry in handler.entries(prefix=prefix))
        assert listed == sorted(key for key in keys if key.startswith(prefix)), prefix
    for key in keys:
        assert [entry.value for entry in handler.entries(key)] == [key]
    assert sorted(entry.pk for entry in handler.entries()) == sorted(keys)


def test_listing_pages_by_rows_and_by_bytes(
    handler: Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "PAGE_ROWS", 7)
    monkeypatch.setattr(module, "PAGE_BYTES", 3000)
    values = {f"{index:03d}": "x" * (index * 37 % 1500) for index in range(60)}
    for sk, value in values.items():
        handler.set("paged", sk, value)
    handler.set("paged-other", "sk", "not in the partition")
    pages: list[int] = []
    fetch = handler._fetch_all

    def counting(statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        rows = fetch(statement, parameters)
        pages.append(len(rows))
        return rows

    monkeypatch.setattr(handler, "_fetch_all", counting)
    listed = list(handler.entries("paged"))
    assert listed == [CacheEntry("paged", sk, value) for sk, value in sorted(values.items())]
    assert max(pages) <= 7
    assert len(pages) > 60 // 7 + 1  # the byte budget cut some pages short
    assert pages[-1] == 0


def test_unchanged_entries_are_listed_once_while_others_change(handler: Handler) -> None:
    for index in range(1200):
        handler.set("moving", f"{index:05d}", str(index))
    seen = []
    deleted = set()
    for entry in handler.entries("moving"):
        seen.append(entry.sk)
        if entry.sk.isdigit() and int(entry.sk) % 3 == 0:
            # Delete one ahead, and add entries after this one and before it.
            deleted.add(f"{int(entry.sk) + 2:05d}")
            handler.delete("moving", f"{int(entry.sk) + 2:05d}")
            handler.set("moving", f"{entry.sk}-new", "x")
            handler.set("moving", f"0{entry.sk}", "x")
    assert len(seen) == len(set(seen))
    unchanged = {f"{index:05d}" for index in range(1200)} - deleted
    assert unchanged <= set(seen)


def test_listing_memory_stays_bounded(
    postgresql_dsn: str, handler: Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "PAGE_ROWS", 200)
    entries, value_bytes = 20_000, 1_000
    with _raw(postgresql_dsn) as raw, raw.cursor() as cursor:
        copy = sql.SQL("COPY {} (pk, sk, value) FROM STDIN").format(
            sql.Identifier(handler.config.table)
        )
        with cursor.copy(copy.as_string()) as writer:
            for index in range(entries):
                writer.write_row(
                    (b"bulk.%d" % (index // 10), b"%d" % index, b"%0*d" % (value_bytes, index))
                )
    tracemalloc.start()
    try:
        count = sum(1 for _ in handler.entries(prefix="bulk."))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == entries
    assert peak < entries * value_bytes / 10, peak  # a few pages, not 20 MB


def test_a_twenty_mebibyte_value(handler: Handler) -> None:
    value = "\u00e9\U0001f332" * (20 * 1024 * 1024 // 6)
    handler.set("large", "sk", value)
    assert handler.get("large", "sk") == value
    handler.set("large", "sk", "small", constraint=value)
    assert handler.get("large", "sk") == "small"


def test_a_value_that_is_not_utf8_is_an_access_error(postgresql_dsn: str, handler: Handler) -> None:
    with _raw(postgresql_dsn) as raw:
        raw.execute(
            sql.SQL("INSERT INTO {} (pk, sk, value) VALUES ('pk', 'sk', '\\xff00')")
            .format(sql.Identifier(handler.config.table))
            .as_string()
        )
    with pytest.raises(AccessException, match=r"value of pk='pk' sk='sk' .* not UTF-8"):
        handler.get("pk", "sk")
    with pytest.raises(AccessException, match="not UTF-8"):
        list(handler.entries("pk"))
    handler.set("pk", "sk", "repaired")
    assert handler.get("pk", "sk") == "repaired"


# -- expiry --------------------------------------------------------------------------


def test_the_server_clock_decides_expiry(postgresql_dsn: str, handler: Handler) -> None:
    assert Handler.clock_owner == "server"
    handler.set("pk", "sk", "v", ttl=3600)
    moment = handler.expires_at("pk", "sk")
    with _raw(postgresql_dsn) as raw:
        row = raw.execute(
            sql.SQL("SELECT expires_at - now() FROM {}")
            .format(sql.Identifier(handler.config.table))
            .as_string()
        ).fetchone()
    assert row is not None and 3590 < row[0].total_seconds() <= 3600
    assert moment is not None
    # Move the row's deadline into the past on the server: it is gone for every call.
    with _raw(postgresql_dsn) as raw:
        raw.execute(
            sql.SQL("UPDATE {} SET expires_at = now() - interval '1 second'")
            .format(sql.Identifier(handler.config.table))
            .as_string()
        )
    with pytest.raises(NotFoundException):
        handler.get("pk", "sk")
    assert list(handler.entries()) == []
    handler.set("pk", "sk", "new", not_set=True)
    assert handler.expires_at("pk", "sk") is None


def test_sweep_keeps_rows_written_again(postgresql_dsn: str, handler: Handler) -> None:
    for index in range(10):
        handler.set("sweep", str(index), "v", ttl=60)
    with _raw(postgresql_dsn) as raw:
        raw.execute(
            sql.SQL("UPDATE {} SET expires_at = now() - interval '1 second'")
            .format(sql.Identifier(handler.config.table))
            .as_string()
        )
    handler.set("sweep", "3", "rewritten")
    handler.set("sweep", "4", "renewed", ttl=60)
    assert handler.sweep_expired(batch_size=3) == 8
    assert sorted(handler.entries("sweep")) == [
        CacheEntry("sweep", "3", "rewritten"),
        CacheEntry("sweep", "4", "renewed"),
    ]


def test_sweep_skips_rows_being_written_instead_of_waiting(
    postgresql_dsn: str, handler: Handler
) -> None:
    handler.set("sweep", "locked", "v", ttl=60)
    handler.set("sweep", "free", "v", ttl=60)
    table = sql.Identifier(handler.config.table)
    with _raw(postgresql_dsn) as raw:
        raw.execute(
            sql.SQL("UPDATE {} SET expires_at = now() - interval '1 second'")
            .format(table)
            .as_string()
        )
    # A sweep that waited for the lock would fail with a statement timeout.
    sweeper = make_handler(postgresql_dsn, handler.config.table, statement_timeout=10)
    holder = _hold_row_lock(postgresql_dsn, handler.config.table, "sweep", "locked")
    try:
        assert sweeper.sweep_expired() == 1
        sweeper.close()
    finally:
        holder.rollback()
        holder.close()
    assert handler.sweep_expired() == 1
    assert handler.sweep_expired() == 0


# -- configuration -------------------------------------------------------------------


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, postgresql_dsn: str, handler: Handler
) -> None:
    monkeypatch.setenv("GROVE_CACHE_POSTGRESQL_DSN", postgresql_dsn)
    monkeypatch.setenv("GROVE_CACHE_POSTGRESQL_TABLE", handler.config.table)
    monkeypatch.setenv("GROVE_CACHE_POSTGRESQL_POOL_SIZE", "3")
    monkeypatch.setenv("GROVE_CACHE_POSTGRESQL_CONNECT_TIMEOUT", "7")
    monkeypatch.setenv("GROVE_CACHE_POSTGRESQL_STATEMENT_TIMEOUT", "2.5")
    monkeypatch.setenv("GROVE_CACHE_POSTGRESQL_PREPARE_THRESHOLD", "None")
    cache = Handler()
    assert (cache.config.pool_size, cache.config.connect_timeout) == (3, 7)
    assert cache.config.prepare_threshold is None
    cache.set("pk", "sk", "v")
    pool, connection = cache._acquire()
    try:
        assert connection.execute("SHOW statement_timeout").fetchone() == ("2500ms",)
        assert connection.execute("SHOW application_name").fetchone() == ("grove.caches",)
        assert connection.prepare_threshold is None
    finally:
        pool.putconn(connection)
    cache.close()


def test_the_dsn_own_parameters_win(postgresql_dsn: str, handler: Handler) -> None:
    dsn = postgresql_dsn + "?application_name=collector-7&options=-c%20work_mem%3D8MB"
    cache = make_handler(dsn, handler.config.table, statement_timeout=0)
    pool, connection = cache._acquire()
    try:
        assert connection.execute("SHOW application_name").fetchone() == ("collector-7",)
        assert connection.execute("SHOW work_mem").fetchone() == ("8MB",)
    finally:
        pool.putconn(connection)
    cache.close()


def test_load_by_entry_point_name(
    monkeypatch: pytest.MonkeyPatch, postgresql_dsn: str, handler: Handler
) -> None:
    monkeypatch.setenv("GROVE_CACHE_HANDLER", "postgresql")
    monkeypatch.setenv("GROVE_CACHE_POSTGRESQL_DSN", postgresql_dsn)
    monkeypatch.setenv("GROVE_CACHE_POSTGRESQL_TABLE", handler.config.table)
    cache = load()
    assert isinstance(cache, Handler)
    assert cache._pool is not None  # setup() connected
    cache.close()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TABLE", "grove-cache", "GROVE_CACHE_POSTGRESQL_TABLE: Value error, must be a table"),
        ("TABLE", "a.b.c", "GROVE_CACHE_POSTGRESQL_TABLE: Value error, must be a table"),
        ("TABLE", '"x"; DROP TABLE y', "GROVE_CACHE_POSTGRESQL_TABLE: Value error"),
        ("TABLE", "t" * 49, "GROVE_CACHE_POSTGRESQL_TABLE: Value error"),
        ("TABLE", "1st", "GROVE_CACHE_POSTGRESQL_TABLE: Value error"),
        ("POOL_SIZE", "0", "GROVE_CACHE_POSTGRESQL_POOL_SIZE: Input should be greater"),
        ("CONNECT_TIMEOUT", "1", "GROVE_CACHE_POSTGRESQL_CONNECT_TIMEOUT: Input should be"),
        ("STATEMENT_TIMEOUT", "-1", "GROVE_CACHE_POSTGRESQL_STATEMENT_TIMEOUT: Input should"),
        ("PREPARE_THRESHOLD", "sometimes", "GROVE_CACHE_POSTGRESQL_PREPARE_THRESHOLD: Input"),
        (
            "DSN",
            "host=db password=sw0rdfish port",
            "GROVE_CACHE_POSTGRESQL_DSN: Value error, not a",
        ),
        ("DSN", "postgresql://u:sw0rdfish@db/?bogus=1", 'query parameter: "bogus")'),
        ("DSN", "password='sw0rdfish", "unterminated quoted string"),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"GROVE_CACHE_POSTGRESQL_{variable}", value)
    with pytest.raises(ConfigurationException, match=re.escape(message)) as info:
        Handler()
    assert "sw0rdfish" not in _chain(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://grove:sw0rd%2Ffish@db.example:6432/grove?sslmode=verify-full",
        "host=db.example port=6432 user=grove password=sw0rd/fish dbname=grove",
        "host=db.example password='sw0rd/fish' dbname=grove",
    ],
)
def test_the_password_is_masked_in_repr_and_location(dsn: str) -> None:
    config = Configuration(dsn=pydantic.SecretStr(dsn))
    cache = Handler(config)
    for text in (repr(config), str(config), cache.location(), mask_dsn(dsn)):
        assert "sw0rd" not in text, text
    assert "password=***" in cache.location()
    assert "host=db.example" in cache.location()


# -- failures ------------------------------------------------------------------------


def test_a_server_that_is_down_is_an_access_error(postgresql_table: str) -> None:
    dsn = f"postgresql://postgres:sw0rdfish@127.0.0.1:{free_port()}/test"
    cache = make_handler(dsn, postgresql_table, connect_timeout=2)
    calls: list[Callable[[], object]] = [
        cache.setup,
        lambda: cache.get("pk", "sk"),
        lambda: cache.set("pk", "sk", "v"),
        lambda: cache.delete("pk", "sk"),
        lambda: list(cache.entries()),
        cache.create_storage,
        cache.sweep_expired,
    ]
    for call in calls:
        with pytest.raises(AccessException, match="cannot connect to postgresql table") as info:
            call()
        assert "refused" in str(info.value)
        assert "sw0rdfish" not in _chain(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"database": "grove_no_such_database"}, 'database "grove_no_such_database" does not'),
        ({"user": "grove_no_such_role"}, 'role "grove_no_such_role" does not exist'),
    ],
)
def test_a_refused_login_is_a_configuration_error(
    postgresql_dsn: str, postgresql_table: str, change: dict[str, str], message: str
) -> None:
    parameters = psycopg.conninfo.conninfo_to_dict(postgresql_dsn)
    if "database" in change:
        parameters["dbname"] = change["database"]
    else:
        parameters["user"] = change["user"]
    cache = make_handler(psycopg.conninfo.make_conninfo("", **parameters), postgresql_table)
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_POSTGRESQL_DSN: .*" + message):
        cache.setup()
    with pytest.raises(ConfigurationException, match=message):
        cache.set("pk", "sk", "v")


def _session_pid(cache: Handler) -> int:
    pool, connection = cache._acquire()
    try:
        return int(connection.info.backend_pid)
    finally:
        pool.putconn(connection)


def test_a_read_only_session_is_an_access_error(postgresql_dsn: str, handler: Handler) -> None:
    handler.set("pk", "sk", "v")
    dsn = postgresql_dsn + "?options=-c%20default_transaction_read_only%3Don"
    reader = make_handler(dsn, handler.config.table, pool_size=1)
    assert reader.get("pk", "sk") == "v"
    session = _session_pid(reader)
    calls: list[Callable[[], object]] = [
        lambda: reader.set("pk", "sk", "w"),
        lambda: reader.set("pk", "new", "w", not_set=True),
        lambda: reader.set("pk", "sk", "w", constraint="v"),
        lambda: reader.delete("pk", "sk"),
        lambda: reader.set("pk", "sk", "w", ttl=60),
    ]
    for call in calls:
        with pytest.raises(AccessException, match="read-only transaction"):
            call()
        # After a failover the server may be a standby: the next call reconnects.
        assert _session_pid(reader) != session
        session = _session_pid(reader)
    assert handler.get("pk", "sk") == "v"
    reader.close()


def _backends(dsn: str, application: str, state: str | None = None) -> list[int]:
    with _raw(dsn) as raw:
        rows = raw.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND (%s::text IS NULL OR state = %s)",
            (application, state, state),
        ).fetchall()
    return [pid for (pid,) in rows]


def _terminate(dsn: str, pids: list[int]) -> None:
    with _raw(dsn) as raw:
        for pid in pids:
            raw.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def named(postgresql_dsn: str, handler: Handler) -> Iterator[tuple[str, Handler]]:
    """A handler whose sessions carry an application_name of their own, and that name."""
    application = f"grove-test-{uuid.uuid4().hex[:8]}"
    dsn = f"{postgresql_dsn}?application_name={application}"
    cache = make_handler(dsn, handler.config.table, pool_size=4)
    yield application, cache
    cache.close()


def _hold_row_lock(dsn: str, table: str, pk: str, sk: str) -> psycopg.Connection[Any]:
    """Lock a row from another session until the returned connection commits."""
    holder = psycopg.connect(dsn)
    holder.execute(
        sql.SQL("SELECT 1 FROM {} WHERE pk = %s AND sk = %s FOR UPDATE")
        .format(sql.Identifier(table))
        .as_string(),
        (pk.encode(), sk.encode()),
    )
    return holder


def test_idle_connections_closed_by_the_server_are_replaced(
    postgresql_dsn: str, named: tuple[str, Handler]
) -> None:
    application, cache = named
    cache.set("pk", "sk", "0")
    with ThreadPoolExecutor(4) as pool:  # open all four connections
        list(pool.map(lambda _: cache.get("pk", "sk"), range(40)))
    idle = _backends(postgresql_dsn, application)
    assert idle
    _terminate(postgresql_dsn, idle)
    _wait_for(lambda: not set(idle) & set(_backends(postgresql_dsn, application)), "the kill")
    for index in range(10):  # not one call fails: dead connections are never used
        cache.set("pk", "sk", str(index + 1), constraint=str(index))
    assert cache.get("pk", "sk") == "10"


def test_a_backend_killed_mid_statement_fails_the_call_and_the_pool_recovers(
    postgresql_dsn: str, named: tuple[str, Handler]
) -> None:
    application, cache = named
    table = cache.config.table
    cache.set("pk", "lock", "held")
    holder = _hold_row_lock(postgresql_dsn, table, "pk", "lock")
    try:
        with ThreadPoolExecutor(1) as pool:
            blocked = pool.submit(cache.set, "pk", "lock", "mine", constraint="held")
            _wait_for(
                lambda: bool(_backends(postgresql_dsn, application, "active")), "the blocked call"
            )
            _terminate(postgresql_dsn, _backends(postgresql_dsn, application, "active"))
            with pytest.raises(AccessException, match=r"set of pk='pk' sk='lock' failed in"):
                blocked.result()
    finally:
        holder.rollback()
        holder.close()
    assert cache.get("pk", "lock") == "held"
    cache.set("pk", "lock", "mine", constraint="held")
    assert cache.get("pk", "lock") == "mine"


def test_a_statement_timeout_is_an_access_error(postgresql_dsn: str, handler: Handler) -> None:
    handler.set("pk", "lock", "held")
    cache = make_handler(postgresql_dsn, handler.config.table, statement_timeout=0.3)
    holder = _hold_row_lock(postgresql_dsn, handler.config.table, "pk", "lock")
    try:
        with pytest.raises(AccessException, match="statement timeout"):
            cache.set("pk", "lock", "mine", constraint="held")
        with pytest.raises(AccessException, match="statement timeout"):
            cache.delete("pk", "lock")
    finally:
        holder.rollback()
        holder.close()
    assert cache.get("pk", "lock") == "held"
    cache.delete("pk", "lock", constraint="held")
    cache.close()


def test_backends_terminated_during_a_run_lose_no_acknowledged_update(
    postgresql_dsn: str, named: tuple[str, Handler]
) -> None:
    application, cache = named
    cache.set("run", "counter", "0")
    stop = threading.Event()
    acknowledged = [0] * 6
    failures: list[BaseException] = []

    def increment(worker: int) -> None:
        while not stop.is_set():
            try:
                current = cache.get("run", "counter")
                cache.set("run", "counter", str(int(current) + 1), constraint=current)
            except DataFormatException:
                continue
            except GroveException as exc:
                failures.append(exc)
                continue
            acknowledged[worker] += 1

    killed: set[int] = set()

    def kill() -> None:
        chance = random.Random(15)
        while not stop.is_set():
            time.sleep(chance.uniform(0.01, 0.05))
            pids = _backends(postgresql_dsn, application)
            chosen = chance.sample(pids, k=min(len(pids), 2))
            _terminate(postgresql_dsn, chosen)
            killed.update(chosen)

    workers = [threading.Thread(target=increment, args=(index,)) for index in range(6)]
    killer = threading.Thread(target=kill)
    for thread in [*workers, killer]:
        thread.start()
    _wait_for(lambda: len(failures) >= 5 and sum(acknowledged) >= 300, "kills and progress")
    stop.set()
    for thread in [*workers, killer]:
        thread.join()
    assert all(isinstance(exc, AccessException) for exc in failures), failures
    # Once the last killed backends are gone, every call works again.
    _wait_for(lambda: not killed & set(_backends(postgresql_dsn, application)), "the kills")
    counter = int(cache.get("run", "counter"))
    # A call that failed may still have committed (its answer was lost), never more.
    assert sum(acknowledged) <= counter <= sum(acknowledged) + len(failures)
    for _ in range(20):
        current = cache.get("run", "counter")
        cache.set("run", "counter", str(int(current) + 1), constraint=current)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_child_opens_its_own_pool(handler: Handler) -> None:
    handler.set("pk", "parent", "1")
    parents = handler._pool
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which never returns
        code = 1
        try:
            handler.set("pk", "child", handler.get("pk", "parent") + "2")
            os.write(writer, b"fresh" if handler._pool is not parents else b"inherited")
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == b"fresh"
    assert handler._pool is parents
    assert handler.get("pk", "child") == "12"
    handler.set("pk", "parent", "3", constraint="1")


# -- a cluster of our own ------------------------------------------------------------


def test_a_wrong_password_is_a_configuration_error_and_stays_masked(
    postgresql_cluster: Cluster,
) -> None:
    cache = make_handler(postgresql_cluster.dsn(password="sw0rdfish-wrong"), "grove_cache")
    for call in (cache.setup, lambda: cache.get("pk", "sk"), cache.create_storage):
        with pytest.raises(ConfigurationException, match="password authentication failed") as info:
            call()
        assert "GROVE_CACHE_POSTGRESQL_DSN" in str(info.value)
        assert "sw0rdfish" not in _chain(info.value)
        assert "password=***" in str(info.value)


def test_each_call_is_one_statement(postgresql_cluster: Cluster) -> None:
    application = f"count{uuid.uuid4().hex[:8]}"
    dsn = (
        postgresql_cluster.dsn()
        + f"?application_name={application}&options=-c%20log_statement%3Dall"
    )
    cache = make_handler(dsn, "grove_cache", pool_size=1, prepare_threshold=0)
    cache.create_storage()
    cache.set("pk", "sk", "warm")
    calls: list[tuple[str, Callable[[], object]]] = [
        ("get", lambda: cache.get("pk", "sk")),
        ("get miss", lambda: cache.get("pk", "absent")),
        ("set", lambda: cache.set("pk", "sk", "1")),
        ("set not_set", lambda: cache.set("pk", "new", "1", not_set=True)),
        ("set not_set refused", lambda: cache.set("pk", "new", "1", not_set=True)),
        ("set constraint", lambda: cache.set("pk", "sk", "2", constraint="1")),
        ("set constraint refused", lambda: cache.set("pk", "sk", "3", constraint="1")),
        ("set ttl", lambda: cache.set("pk", "sk", "4", ttl=60)),
        ("expires_at", lambda: cache.expires_at("pk", "sk")),
        ("delete constraint", lambda: cache.delete("pk", "new", constraint="1")),
        ("delete", lambda: cache.delete("pk", "sk")),
        ("sweep", cache.sweep_expired),
    ]
    counted = {}
    for name, call in calls:
        # The backend writes the line before it answers, so it is there when call() returns.
        before = postgresql_cluster.log.read_text().count(f"\n{application}|LOG:")
        with contextlib.suppress(GroveException):
            call()
        counted[name] = postgresql_cluster.log.read_text().count(f"\n{application}|LOG:") - before
    assert counted == {name: 1 for name, _ in calls}
    logged = postgresql_cluster.log.read_text()
    assert re.search(rf"{application}\|LOG:  execute _pg3_\d+: SELECT value FROM", logged)
    cache.close()


def test_a_standby_refuses_writes_until_it_is_promoted(postgresql_cluster: Cluster) -> None:
    table = fresh_table_name("standby")
    primary = make_handler(postgresql_cluster.dsn(), table)
    primary.create_storage()
    primary.set("pk", "sk", "v")
    standby = Cluster(primary=postgresql_cluster)
    try:
        standby.start()
        cache = make_handler(standby.dsn(), table, pool_size=2)
        assert cache.get("pk", "sk") == "v"
        writes: list[Callable[[], object]] = [
            lambda: cache.set("pk", "sk", "w"),
            lambda: cache.set("pk", "sk", "w", constraint="v"),
            lambda: cache.set("pk", "new", "w", not_set=True, ttl=60),
            lambda: cache.delete("pk", "sk"),
            cache.sweep_expired,
        ]
        for write in writes:
            with pytest.raises(AccessException, match="read-only transaction"):
                write()
        standby.execute("SELECT pg_promote()")
        cache.set("pk", "sk", "w", constraint="v")
        assert cache.get("pk", "sk") == "w"
        cache.close()
    finally:
        standby.remove()
        primary.close()


def _writer(
    cache: Handler,
    name: str,
    stop: threading.Event,
    acknowledged: dict[str, str],
    failures: list[BaseException],
) -> None:
    index = 0
    while not stop.is_set():
        key = f"{name}-{index}"
        try:
            cache.set("restart", key, key, not_set=True)
        except DataFormatException:
            acknowledged[key] = key  # a retried write that had committed after all
        except GroveException as exc:
            failures.append(exc)
            time.sleep(0.05)
            continue
        else:
            acknowledged[key] = key
        index += 1


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_a_restart_under_load_keeps_every_acknowledged_write(
    postgresql_cluster: Cluster, mode: Any
) -> None:
    table = fresh_table_name("restart")
    cache = make_handler(postgresql_cluster.dsn(), table, pool_size=4, connect_timeout=2)
    cache.create_storage()
    stop = threading.Event()
    acknowledged: dict[str, str] = {}
    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=_writer, args=(cache, f"w{index}", stop, acknowledged, failures))
        for index in range(8)
    ]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: len(acknowledged) >= 200, "writes before the restart")
        postgresql_cluster.stop(mode)
        _wait_for(lambda: len(failures) >= 8, "calls failing while the server is down")
        before_restart = len(acknowledged)
        postgresql_cluster.start()
        _wait_for(lambda: len(acknowledged) >= before_restart + 200, "writes after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert all(isinstance(exc, AccessException) for exc in failures), failures[:3]
    stored = {entry.sk: entry.value for entry in cache.entries("restart")}
    missing = set(acknowledged) - set(stored)
    assert not missing, sorted(missing)[:10]
    assert all(stored[key] == value for key, value in acknowledged.items())
    cache.close()


def test_the_same_handler_works_again_when_the_server_is_back(postgresql_cluster: Cluster) -> None:
    cache = make_handler(postgresql_cluster.dsn(), "grove_cache", connect_timeout=2)
    cache.create_storage()
    cache.set("pk", "sk", "before")
    postgresql_cluster.stop()
    with pytest.raises(AccessException, match="cannot connect"):
        cache.get("pk", "sk")
    with pytest.raises(AccessException, match="cannot connect"):
        cache.set("pk", "sk", "while down")
    postgresql_cluster.start()
    assert cache.get("pk", "sk") == "before"
    cache.set("pk", "sk", "after", constraint="before")
    assert cache.get("pk", "sk") == "after"
    cache.close()
