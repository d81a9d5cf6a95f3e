"""The benchmarks' own subjects and harness measure what they say and leave stores as found.

These live beside the benchmarks, not in ``tests/``: the tests of the library never
import the benchmarks.
"""

import psycopg
import pytest
from psycopg import sql

from benchmarks import lease
from benchmarks import postgresql as postgresql_benchmark
from benchmarks.expiry import OPERATIONS as EXPIRY_OPERATIONS
from benchmarks.expiry import expiry_report
from benchmarks.local_memory import LockedDict
from benchmarks.local_sqlite import BulkLoadedHandler, DiskCache, ExpiringHandler, RawSqlite
from grove.caches.benchmark import OPERATIONS, Workload, compare, format_table, measure
from grove.caches.local_memory import Handler


def test_measure_reports_every_operation_and_restores_the_store() -> None:
    handler = Handler()
    results = measure(
        {"handler": handler, "floor": LockedDict()},
        Workload(keys=50, calls=200, repeats=2),
    )
    for name in ("handler", "floor"):
        assert list(results[name]) == list(OPERATIONS)
        for measurement in results[name].values():
            assert measurement.ops_per_second > 0
            assert 0 < measurement.p50_us <= measurement.p99_us
    # Only the populated keys remain: fresh keys were cleaned up after each run.
    assert sum(len(partition) for partition in handler._partitions.values()) == 50
    ratios = compare("handler", "floor", results)
    assert set(ratios) == set(OPERATIONS)
    table = format_table("handler", "floor", results)
    assert "compare-and-set" in table
    assert "ratio" in table


def test_remove_after_leaves_a_live_store_as_it_was() -> None:
    handler = Handler()
    handler.set("pointer.production", "all", "keep me")
    measure(
        {"handler": handler},
        Workload(keys=20, calls=50, repeats=1, namespace="cli-1234", remove_after=True),
        operations=["set new", "compare-and-set", "delete"],
    )
    assert handler._partitions == {"pointer.production": {"all": "keep me"}}


def test_a_subject_with_populate_is_filled_in_bulk() -> None:
    class BulkLoaded(LockedDict):
        def __init__(self) -> None:
            super().__init__()
            self.loaded: list[tuple[str, str, str]] = []

        def populate(self, entries: list[tuple[str, str, str]]) -> None:
            self.loaded = entries
            self._data.update(((pk, sk), value) for pk, sk, value in entries)

    store = BulkLoaded()
    measure({"bulk": store}, Workload(keys=40, calls=100, repeats=1), ["get hit"])
    assert len({(pk, sk) for pk, sk, _ in store.loaded}) == 40
    assert len(store._data) == 40


def test_local_sqlite_subjects_measure_and_keep_their_keys() -> None:
    handler, raw, peer = BulkLoadedHandler("normal"), RawSqlite("normal"), DiskCache("normal")
    results = measure(
        {"handler": handler, "floor": raw, "diskcache": peer},
        Workload(keys=30, calls=60, repeats=1),
    )
    assert all(list(result) == list(OPERATIONS) for result in results.values())
    assert len(list(handler.entries())) == 30
    assert raw._db.execute("SELECT count(*) FROM entries").fetchone() == (30,)
    assert len(peer._cache) == 30


def test_the_benchmarks_ttl_subject_writes_only_expiring_entries() -> None:
    with_ttl, without = ExpiringHandler("normal"), BulkLoadedHandler("normal")
    measure({"with ttl": with_ttl, "without": without}, Workload(keys=30, calls=60, repeats=1))
    expiring = [with_ttl.handler.expires_at(pk, sk) for pk, sk, _ in with_ttl.handler.entries()]
    assert len(expiring) == 30 and None not in expiring
    assert {without.expires_at(pk, sk) for pk, sk, _ in without.entries()} == {None}


# -- the benchmark ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opener", "acquire_calls"),
    [(lease.memory, {"set": 2}), (lease.files, {"get": 1, "set": 1})],
    ids=["local_memory", "local_file"],
)
def test_the_benchmark_counts_the_calls_of_each_operation(
    opener: lease.Opener, acquire_calls: dict[str, int]
) -> None:
    rows = lease.measure(opener, cycles=10, repeats=1)
    assert [row.operation for row in rows] == ["acquire", "renew", "release"]
    assert [dict(row.calls) for row in rows] == [acquire_calls, {"set": 1}, {"set": 1}]
    assert all(row.ops_per_second > 0 and row.raw_ops_per_second > 0 for row in rows)
    table = lease.format_rows("title", rows)
    assert "acquire" in table and "ratio" in table


# -- the benchmark's subjects --------------------------------------------------------


def test_benchmark_subjects_measure_keep_their_keys_and_drop_their_tables(
    postgresql_dsn: str,
) -> None:
    tables = postgresql_benchmark.Tables(postgresql_dsn)
    handler = postgresql_benchmark.BulkLoadedHandler(tables)
    raw = postgresql_benchmark.RawStatements(tables)
    try:
        workload = Workload(keys=30, calls=40, repeats=1)
        results = measure({"handler": handler, "floor": raw}, workload)
        assert all(list(result) == list(OPERATIONS) for result in results.values())
        assert len(list(handler.entries())) == 30
        count = raw.connection.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(raw.table)).as_string()
        ).fetchone()
        assert count == (30,)
    finally:
        handler.close()
        raw.connection.close()
        names = list(tables.names)
        tables.drop()
    with psycopg.connect(postgresql_dsn, autocommit=True) as connection:
        for name in names:
            assert connection.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)


def test_the_expiry_report_fills_and_writes_only_expiring_entries() -> None:
    made: list[Handler] = []

    def make() -> Handler:
        made.append(Handler())
        return made[-1]

    report = expiry_report(make, Workload(keys=20, calls=50, repeats=1), "memory")
    assert report.startswith("expiry of memory: with ttl vs without")
    assert report.count("target ") == len(EXPIRY_OPERATIONS)
    with_ttl, without = made
    for handler, expiring in ((with_ttl, True), (without, False)):
        stored = [(pk, sk) for pk, partition in handler._partitions.items() for sk in partition]
        assert len(stored) == 20
        moments = {handler.expires_at(pk, sk) is not None for pk, sk in stored}
        assert moments == {expiring}
