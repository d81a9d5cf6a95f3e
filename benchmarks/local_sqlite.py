"""local_sqlite beside the raw sqlite3 statements (the floor) and diskcache (a peer).

Every subject gets its own new file in a temporary directory, removed when it is dropped.
The floor runs the handler's statements on one connection with the same pragmas and no
checks. diskcache is the best-known embedded Python cache on SQLite, measured with its
default settings except ``sqlite_synchronous``, which follows the table's setting; its
keys are ``pk + "\\x00" + sk`` strings (stored as TEXT, its cheapest key form). Its
conditional set is ``add``, its compare-and-set a read and a write in ``transact()``
(``BEGIN IMMEDIATE``), as its documentation composes atomic operations. Each subject is
filled in one transaction before measuring.

Each table is followed by the price of expiry: the handler with ``ttl`` on every write
(and its filled entries expiring in a day) beside the same handler without, on files of
their own, as ratios.
"""

from __future__ import annotations

import functools
import shutil
import sqlite3
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import closing
from typing import Literal

import diskcache

from benchmarks.suite import Suite
from grove.caches.benchmark import KeyValue, Workload, compare, format_table, measure

# The floor runs the handler's own statements, so the ratio is the handler's own cost.
from grove.caches.local_sqlite import (
    _CREATE,
    _DELETE,
    _INSERT_IF_ABSENT,
    _SELECT,
    _UPDATE_IF_EQUAL,
    _UPSERT,
    _UPSERT_EXPIRING,
    Configuration,
    Handler,
)

Synchronous = Literal["full", "normal"]
Entries = list[tuple[str, str, str]]

_DAY = 86_400.0
_EXPIRY_OPERATIONS = ("set new", "get hit", "overwrite", "compare-and-set", "not_set")
_EXPIRY_TARGET = 0.9


def _scratch_directory(owner: object) -> str:
    directory = tempfile.mkdtemp(prefix="grove-bench-sqlite-")
    weakref.finalize(owner, shutil.rmtree, directory, ignore_errors=True)
    return directory


class BulkLoadedHandler(Handler):
    """The handler under test, on a new file, with a bulk fill for the benchmark."""

    def __init__(self, synchronous: Synchronous) -> None:
        path = f"{_scratch_directory(self)}/cache.db"
        super().__init__(Configuration(path=path, synchronous=synchronous))

    def populate(self, entries: Entries, expires_at: float | None = None) -> None:
        self.setup()
        with closing(sqlite3.connect(self.path)) as raw, raw:
            raw.executemany(_UPSERT_EXPIRING, [(*entry, expires_at) for entry in entries])


class ExpiringHandler:
    """The handler with a ``ttl`` on every write; the filled entries expire in a day."""

    def __init__(self, synchronous: Synchronous) -> None:
        self.handler = BulkLoadedHandler(synchronous)

    def populate(self, entries: Entries) -> None:
        self.handler.populate(entries, expires_at=time.time() + _DAY)

    def get(self, pk: str, sk: str) -> str:
        return self.handler.get(pk, sk)

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        self.handler.set(pk, sk, value, not_set, constraint, ttl=_DAY)

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self.handler.delete(pk, sk, constraint)


def expiry_report(synchronous: Synchronous, workload: Workload) -> str:
    """Measure the handler with ``ttl`` on every write beside the handler without.

    :param synchronous: The setting of both handlers.
    :param workload: Sizes and counts.
    :return: The table, with a target line per operation.
    """
    subjects: dict[str, KeyValue] = {
        "with ttl": ExpiringHandler(synchronous),
        "without": BulkLoadedHandler(synchronous),
    }
    results = measure(subjects, workload, _EXPIRY_OPERATIONS)
    lines = [format_table("with ttl", "without", results)]
    for operation, ratio in compare("with ttl", "without", results).items():
        verdict = "meets" if ratio >= _EXPIRY_TARGET else "BELOW"
        lines.append(
            f"  target {operation} with ttl >= {_EXPIRY_TARGET:.2f}x without: {verdict} "
            f"({ratio:.2f})"
        )
    return "\n".join(lines)


class RawSqlite:
    """The floor: the handler's SQL on one connection, same pragmas, no checks."""

    def __init__(self, synchronous: Synchronous) -> None:
        path = f"{_scratch_directory(self)}/raw.db"
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self._db.execute(_CREATE)
        weakref.finalize(self, self._db.close)

    def populate(self, entries: Entries) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(_UPSERT, entries)
        self._db.execute("COMMIT")

    def get(self, pk: str, sk: str) -> str:
        row = self._db.execute(_SELECT, (pk, sk, time.time())).fetchone()
        if row is None:
            raise KeyError((pk, sk))
        return str(row[0])

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        if constraint is not None:
            changed = self._db.execute(
                _UPDATE_IF_EQUAL, (value, None, pk, sk, constraint, time.time())
            ).rowcount
        elif not_set:
            changed = self._db.execute(
                _INSERT_IF_ABSENT, (pk, sk, value, None, time.time())
            ).rowcount
        else:
            changed = self._db.execute(_UPSERT, (pk, sk, value)).rowcount
        if changed != 1:
            raise KeyError((pk, sk))

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self._db.execute(_DELETE, (pk, sk))


_MISSING = object()


class DiskCache:
    """The peer: ``diskcache.Cache`` with its defaults, adapted to get/set/delete."""

    def __init__(self, synchronous: Synchronous) -> None:
        self._cache = diskcache.Cache(
            _scratch_directory(self),
            sqlite_synchronous=2 if synchronous == "full" else 1,
        )
        weakref.finalize(self, self._cache.close)

    def populate(self, entries: Entries) -> None:
        cache = self._cache
        with cache.transact():
            for pk, sk, value in entries:
                cache.set(f"{pk}\x00{sk}", value)

    def get(self, pk: str, sk: str) -> str:
        value = self._cache.get(f"{pk}\x00{sk}", _MISSING)
        if value is _MISSING:
            raise KeyError((pk, sk))
        return str(value)

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        cache, key = self._cache, f"{pk}\x00{sk}"
        if constraint is not None:
            with cache.transact():
                if cache.get(key, _MISSING) != constraint:
                    raise KeyError((pk, sk))
                cache.set(key, value)
        elif not_set:
            if not cache.add(key, value):
                raise KeyError((pk, sk))
        else:
            cache.set(key, value)

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self._cache.delete(f"{pk}\x00{sk}")


def suites(keys: int) -> Iterator[Suite]:
    """The local_sqlite tables at one store size: synchronous normal, then full.

    :param keys: Entries in the store while measuring.
    :return: Two suites.
    """
    settings: tuple[tuple[Synchronous, int], ...] = (("normal", 20_000), ("full", 1_000))
    for synchronous, calls in settings:
        workload = Workload(keys=keys, calls=calls)
        yield Suite(
            title=f"local_sqlite synchronous={synchronous}, {keys:,} keys",
            subject=functools.partial(BulkLoadedHandler, synchronous),
            floor=functools.partial(RawSqlite, synchronous),
            workload=workload,
            targets={"get hit": 0.7, "get miss": 0.7, "set new": 0.7, "overwrite": 0.7},
            extra_floors={"diskcache": functools.partial(DiskCache, synchronous)},
            report=functools.partial(expiry_report, synchronous, workload),
        )
