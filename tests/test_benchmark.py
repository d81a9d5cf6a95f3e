"""The benchmark harness measures what it says and leaves the store as it found it."""

from benchmarks.local_sqlite import BulkLoadedHandler, DiskCache, RawSqlite
from benchmarks.locked_dict import LockedDict
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
