"""The floor of local_memory: a dict behind a lock, in a method call.

Nothing but the standard library, so that :mod:`benchmarks.upstream` can load it by
path in upstream Grove's environment and measure it there beside upstream's handler.
"""

from __future__ import annotations

import threading


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
