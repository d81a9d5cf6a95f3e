"""local_memory against a bare dict wrapped in a method call with a threading.Lock.

The table is followed by the price of expiry (:mod:`benchmarks.expiry`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from benchmarks.expiry import expiry_report
from benchmarks.suite import Suite
from grove.caches.benchmark import Workload
from grove.caches.local_memory import Handler


class LockedDict:
    """The floor: a dict behind a lock, no validation, no partitions."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def get(self, pk: str, sk: str) -> str:
        with self._lock:
            return self._data[(pk, sk)]

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        with self._lock:
            if constraint is not None and self._data.get((pk, sk)) != constraint:
                raise KeyError((pk, sk))
            if not_set and (pk, sk) in self._data:
                raise KeyError((pk, sk))
            self._data[(pk, sk)] = value

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        with self._lock:
            self._data.pop((pk, sk), None)


def suites(keys: int) -> Iterator[Suite]:
    """The local_memory table at one store size.

    :param keys: Entries in the store while measuring.
    :return: One suite.
    """
    workload = Workload(keys=keys, calls=50_000)
    yield Suite(
        title=f"local_memory, {keys:,} keys",
        subject=Handler,
        floor=LockedDict,
        workload=workload,
        targets={"get hit": 0.5, "set new": 0.5, "overwrite": 0.5},
        report=lambda: expiry_report(Handler, workload, "local_memory"),
    )
