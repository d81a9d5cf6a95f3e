"""postgresql beside the same SQL statements on one raw psycopg connection, on one server.

The server is ``GROVE_TEST_POSTGRESQL_DSN`` (default the machine's shared server at
``postgresql://postgres@127.0.0.1:5432/test``). Every subject gets a table of its own,
dropped when the suite is done. The floor runs the handler's own statements (imported
from the module, composed for its table) on one autocommit connection with psycopg's
default preparation, binary parameters and results, and no checks, so the ratio is the
cost of the handler's layer: argument rules, the pool, the connection check, encoding.
After the table it prints 1, 8 and 50 threads sharing one handler beside the same threads
sharing a raw ``psycopg_pool`` pool of the same size, 4 MiB values, a full listing, and
the price of expiry (:mod:`benchmarks.expiry`).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pydantic
from psycopg import sql
from psycopg_pool import ConnectionPool

from benchmarks.expiry import expiry_report
from benchmarks.suite import Suite, threaded_rate
from grove.caches.benchmark import KeyValue, Workload
from grove.caches.postgresql import Configuration, Handler, _Statements

DSN_VARIABLE = "GROVE_TEST_POSTGRESQL_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
THREADS = (1, 8, 50)
"""Thread counts for the shared-handler throughput."""

Entries = list[tuple[str, str, str]]


def _copy(dsn: str, table: str, entries: Entries) -> None:
    """Fill a table in one COPY."""
    statement = sql.SQL("COPY {} (pk, sk, value) FROM STDIN").format(sql.Identifier(table))
    with (
        psycopg.connect(dsn, autocommit=True) as connection,
        connection.cursor() as cursor,
        cursor.copy(statement.as_string()) as copy,
    ):
        for pk, sk, value in entries:
            copy.write_row((pk.encode(), sk.encode(), value.encode()))


class Tables:
    """The tables a benchmark run made, each created through the handler."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.names: list[str] = []

    def new(self) -> str:
        name = f"grove_bench_{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        Handler(Configuration(dsn=pydantic.SecretStr(self.dsn), table=name)).create_storage()
        return name

    def drop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            for name in self.names:
                connection.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)).as_string()
                )
        self.names.clear()


class BulkLoadedHandler(Handler):
    """The handler under test, on a new table, with a bulk fill for the benchmark."""

    def __init__(self, tables: Tables, **settings: Any) -> None:
        self.dsn = tables.dsn
        super().__init__(
            Configuration(dsn=pydantic.SecretStr(tables.dsn), table=tables.new(), **settings)
        )

    def populate(self, entries: Entries) -> None:
        _copy(self.dsn, self.config.table, entries)


class RawStatements:
    """The floor: the handler's statements on one raw psycopg connection, no checks."""

    def __init__(self, tables: Tables) -> None:
        self.dsn = tables.dsn
        self.table = tables.new()
        self.sql = _Statements(self.table)
        self.connection = psycopg.connect(self.dsn, autocommit=True)

    def populate(self, entries: Entries) -> None:
        _copy(self.dsn, self.table, entries)

    def _execute(self, statement: str, parameters: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        return self.connection.execute(statement, parameters, binary=True)

    def get(self, pk: str, sk: str) -> str:
        row = self._execute(self.sql.select, (pk.encode(), sk.encode())).fetchone()
        if row is None:
            raise KeyError((pk, sk))
        return bytes(row[0]).decode()

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        key = (pk.encode(), sk.encode())
        parameters: tuple[bytes, ...]
        if constraint is not None:
            statement, parameters = (
                self.sql.update_if_equal,
                (value.encode(), *key, constraint.encode()),
            )
        elif not_set:
            statement, parameters = self.sql.insert_if_absent, (*key, value.encode())
        else:
            statement, parameters = self.sql.upsert, (*key, value.encode())
        if self._execute(statement, parameters).rowcount != 1:
            raise KeyError((pk, sk))

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self._execute(self.sql.delete, (pk.encode(), sk.encode()))


class RawPool(RawStatements):
    """The threaded floor: the same statements through a raw pool of the handler's size."""

    def __init__(self, tables: Tables, size: int) -> None:
        super().__init__(tables)
        self.connection.close()
        self.pool: ConnectionPool[Any] = ConnectionPool(
            self.dsn, kwargs={"autocommit": True}, min_size=1, max_size=size, open=False
        )
        self.pool.open(wait=True)

    def _execute(self, statement: str, parameters: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        # The rows are fetched into the cursor: it is read after the connection is back.
        connection: psycopg.Connection[Any] = self.pool.getconn()
        try:
            return connection.execute(statement, parameters, binary=True)
        finally:
            self.pool.putconn(connection)


def thread_throughput(tables: Tables, calls: int = 2_000) -> str:
    """Measure 1, 8 and 50 threads sharing one handler, beside a raw pool of its size.

    :param tables: Where to make the tables.
    :param calls: Calls per operation and thread count, split between the threads.
    :return: The report lines.
    """
    handler = BulkLoadedHandler(tables)
    size = handler.config.pool_size
    raw = RawPool(tables, size)
    lines = [
        f"  threads sharing one handler (pool of {size}) beside a raw pool of {size} "
        "(ops/s handler, raw, ratio):"
    ]
    for threads in THREADS:
        for operation in ("get", "overwrite"):
            per_thread = max(20, calls // threads)
            mine, _ = threaded_rate(handler, threads, per_thread, operation)
            floor, _ = threaded_rate(raw, threads, per_thread, operation)
            lines.append(
                f"    {threads:>2} thread{'s' if threads > 1 else ' '} {operation:<10}"
                f"{mine:>10,.0f}{floor:>10,.0f}{mine / floor:>8.2f}"
            )
    handler.close()
    raw.pool.close()
    return "\n".join(lines)


PAIRED_OPERATIONS = ("get", "set", "compare-and-set", "not_set", "delete")
"""The operations of the paired measurement, each one statement per call."""


def _chunk(store: KeyValue, operation: str, keys: list[tuple[str, str]], tag: str) -> float:
    """Time one chunk of calls of ``operation`` over ``keys``; return the seconds."""
    if operation == "delete":
        for pk, sk in keys:
            store.set(pk + tag, sk, "x" * 64)
    started = time.perf_counter()
    for pk, sk in keys:
        if operation == "get":
            store.get(pk, sk)
        elif operation == "set":
            store.set(pk, sk, "v" * 64)  # PostgreSQL writes a new row version all the same
        elif operation == "compare-and-set":
            store.set(pk, sk, "c" * 64, constraint="v" * 64)
            store.set(pk, sk, "v" * 64, constraint="c" * 64)
        elif operation == "not_set":
            store.set(pk + tag, sk, "x" * 64, not_set=True)
        else:
            store.delete(pk + tag, sk)
    elapsed = time.perf_counter() - started
    if operation == "not_set":
        for pk, sk in keys:
            store.delete(pk + tag, sk)
    return elapsed / (2 if operation == "compare-and-set" else 1)


def paired(tables: Tables, rounds: int = 60, calls: int = 40) -> str:
    """Compare handler and floor in short alternating chunks, as paired ratios.

    On a machine shared with other work the load drifts within seconds; chunks of the two
    subjects that run back to back see the same load, so the median of their ratios
    says what the handler's layer costs better than two separate best runs.

    :param tables: Where to make the tables.
    :param rounds: Chunk pairs per operation.
    :param calls: Calls per chunk.
    :return: The report lines.
    """
    handler, raw = BulkLoadedHandler(tables), RawStatements(tables)
    keys = [(f"paired.{index // 8}", f"operation-{index % 8}") for index in range(calls)]
    for store in (handler, raw):
        store.populate([(pk, sk, "v" * 64) for pk, sk in keys])
    lines = [
        f"  paired chunks ({rounds} x {calls} calls each, alternating; ratio = floor time / "
        "handler time, median and quartiles):"
    ]
    for operation in PAIRED_OPERATIONS:
        ratios = []
        for index in range(rounds):
            order: list[tuple[KeyValue, str]] = [(handler, "h"), (raw, "r")]
            if index % 2:
                order.reverse()
            times = {
                name: _chunk(store, operation, keys, f".{index}{name}") for store, name in order
            }
            ratios.append(times["r"] / times["h"])
        quartiles = statistics.quantiles(ratios, n=4)
        lines.append(
            f"    {operation:<18}{statistics.median(ratios):>6.2f}"
            f"   ({quartiles[0]:.2f} to {quartiles[2]:.2f})"
        )
    handler.close()
    return "\n".join(lines)


def large_values(tables: Tables, calls: int = 10) -> str:
    """Measure set, compare-and-set and get of 4 MiB values, beside the raw statements.

    :param tables: Where to make the tables.
    :param calls: Calls per operation.
    :return: The report lines.
    """
    size = 4 * 1024 * 1024
    values = [("0123456789abcdef" * (size // 16 + 1))[:size], ("fedcba9876543210" * size)[:size]]
    lines = ["  4 MiB values, one thread (ops/s handler, raw, ratio; p50 ms handler):"]
    handler, raw = BulkLoadedHandler(tables), RawStatements(tables)
    for operation in ("set", "compare-and-set", "get"):
        rates, medians = [], []
        for store in (handler, raw):
            store.set("large", "sk", values[1])
            samples = []
            for index in range(calls):
                started = time.perf_counter()
                if operation == "set":
                    store.set("large", "sk", values[index % 2])
                elif operation == "compare-and-set":
                    store.set("large", "sk", values[index % 2], constraint=values[1 - index % 2])
                else:
                    store.get("large", "sk")
                samples.append(time.perf_counter() - started)
            rates.append(calls / sum(samples))
            medians.append(statistics.median(samples) * 1000)
        lines.append(
            f"    {operation:<18}{rates[0]:>8.1f}{rates[1]:>8.1f}{rates[0] / rates[1]:>8.2f}"
            f"{medians[0]:>8.1f}"
        )
    handler.close()
    return "\n".join(lines)


def listing(tables: Tables, keys: int) -> str:
    """Measure a full listing of ``keys`` entries: rate and peak Python memory.

    :param tables: Where to make the table.
    :param keys: Entries to list.
    :return: The report line.
    """
    handler = BulkLoadedHandler(tables)
    handler.populate(
        [(f"pointer.{index // 8:08x}", str(index % 8), "v" * 64) for index in range(keys)]
    )
    tracemalloc.start()
    started = time.perf_counter()
    try:
        count = sum(1 for _ in handler.entries())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    handler.close()
    return (
        f"  listing all {count:,} entries (64-byte values): {count / elapsed:,.0f} entries/s, "
        f"peak Python memory {peak / 1024 / 1024:.1f} MiB (traced, so slower than untraced)"
    )


def _reachable(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.Error as exc:
        print(f"postgresql: no server at {DSN_VARIABLE}={dsn} ({exc}); skipped")
        return False
    return True


def suites(keys: int) -> Iterator[Suite]:
    """The postgresql table at one store size, on the server of ``GROVE_TEST_POSTGRESQL_DSN``.

    :param keys: Entries in the store while measuring.
    :return: One suite, or none when the server is not reachable; the tables are dropped
        when the generator is done.
    """
    dsn = os.environ.get(DSN_VARIABLE) or DEFAULT_DSN
    if not _reachable(dsn):
        return
    tables = Tables(dsn)
    workload = Workload(keys=keys, calls=2_000, repeats=3)
    try:
        yield Suite(
            title=f"postgresql on the local server, {keys:,} keys",
            subject=functools.partial(BulkLoadedHandler, tables),
            floor=lambda: RawStatements(tables),
            workload=workload,
            targets={
                "get hit": 0.8,
                "get miss": 0.8,
                "set new": 0.8,
                "overwrite": 0.8,
                "compare-and-set": 0.8,
                "not_set": 0.8,
                "delete": 0.8,
            },
            report=lambda: "\n".join(
                [
                    paired(tables),
                    thread_throughput(tables),
                    large_values(tables),
                    listing(tables, keys),
                    expiry_report(
                        functools.partial(BulkLoadedHandler, tables), workload, "postgresql"
                    ),
                ]
            ),
        )
    finally:
        tables.drop()
