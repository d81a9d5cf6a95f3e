"""local_sqlite beside the raw sqlite3 statements (the floor) and diskcache (a peer).

Every subject gets its own new file in a temporary directory, removed when it is dropped.
The floor runs the handler's statements on one connection with the same pragmas and no
checks. diskcache is the best-known embedded Python cache on SQLite, measured with its
default settings except ``sqlite_synchronous``, which follows the table's setting; its
keys are ``pk + "\\x00" + sk`` strings (stored as TEXT, its cheapest key form). Its
conditional set is ``add``, its compare-and-set a read and a write in ``transact()``
(``BEGIN IMMEDIATE``), as its documentation composes atomic operations. Each subject is
filled in one transaction before measuring.
"""

from __future__ import annotations

import functools
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import closing
from typing import Literal

import diskcache

from benchmarks.suite import Suite
from grove.caches.benchmark import Workload

# The floor runs the handler's own statements, so the ratio is the handler's own cost.
from grove.caches.local_sqlite import (
    _DELETE,
    _INSERT_IF_ABSENT,
    _SELECT,
    _UPDATE_IF_EQUAL,
    _UPSERT,
    Configuration,
    Handler,
)

Synchronous = Literal["full", "normal"]
Entries = list[tuple[str, str, str]]


def _scratch_directory(owner: object) -> str:
    directory = tempfile.mkdtemp(prefix="grove-bench-sqlite-")
    weakref.finalize(owner, shutil.rmtree, directory, ignore_errors=True)
    return directory


class BulkLoadedHandler(Handler):
    """The handler under test, on a new file, with a bulk fill for the benchmark."""

    def __init__(self, synchronous: Synchronous) -> None:
        path = f"{_scratch_directory(self)}/cache.db"
        super().__init__(Configuration(path=path, synchronous=synchronous))

    def populate(self, entries: Entries) -> None:
        self.setup()
        with closing(sqlite3.connect(self.path)) as raw, raw:
            raw.executemany(_UPSERT, entries)


class RawSqlite:
    """The floor: the handler's SQL on one connection, same pragmas, no checks."""

    def __init__(self, synchronous: Synchronous) -> None:
        path = f"{_scratch_directory(self)}/raw.db"
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self._db.execute(
            "CREATE TABLE entries (pk TEXT NOT NULL, sk TEXT NOT NULL, value TEXT NOT NULL, "
            "PRIMARY KEY (pk, sk)) WITHOUT ROWID"
        )
        weakref.finalize(self, self._db.close)

    def populate(self, entries: Entries) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(_UPSERT, entries)
        self._db.execute("COMMIT")

    def get(self, pk: str, sk: str) -> str:
        row = self._db.execute(_SELECT, (pk, sk)).fetchone()
        if row is None:
            raise KeyError((pk, sk))
        return str(row[0])

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        if constraint is not None:
            changed = self._db.execute(_UPDATE_IF_EQUAL, (value, pk, sk, constraint)).rowcount
        elif not_set:
            changed = self._db.execute(_INSERT_IF_ABSENT, (pk, sk, value)).rowcount
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
        yield Suite(
            title=f"local_sqlite synchronous={synchronous}, {keys:,} keys",
            subject=functools.partial(BulkLoadedHandler, synchronous),
            floor=functools.partial(RawSqlite, synchronous),
            workload=Workload(keys=keys, calls=calls),
            targets={"get hit": 0.7, "get miss": 0.7, "set new": 0.7, "overwrite": 0.7},
            extra_floors={"diskcache": functools.partial(DiskCache, synchronous)},
        )
