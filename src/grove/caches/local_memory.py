"""Grove in memory cache handler.

Entries live in a dict of partitions (``{pk: {sk: value}}``) owned by one handler
instance; they vanish with it. Reads take no lock: a single dict lookup is atomic in
CPython. Every write takes the instance's lock, so the check and the write of a
conditional call are one step for all threads that share the instance. A partition is
dropped when its last entry goes, so deleted keys leave nothing behind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from typing_extensions import override

from grove.caches import CacheEntry
from grove.caches.atomic import ABSENT, ANY, AtomicCache, Expected, ExpectedToRemove, Stored


class Handler(AtomicCache):
    """A volatile in-memory backed cache for pointers and other Grove data."""

    def __init__(self) -> None:
        self._partitions: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    @override
    def location(self) -> str:
        return "local_memory cache"

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: two dict lookups, no lock.

        A partition read while its last entry is being removed is simply found empty.
        """
        partition = self._partitions.get(pk)
        if partition is None:
            return ABSENT
        return partition.get(sk, ABSENT)

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: the check and the write happen under the instance lock."""
        with self._lock:
            partition = self._partitions.get(pk)
            if partition is None:
                if expected is not ANY and expected is not ABSENT:
                    return False
                self._partitions[pk] = {sk: value}
                return True
            if expected is not ANY and partition.get(sk, ABSENT) != expected:
                return False
            partition[sk] = value
            return True

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: the check and the removal happen under the instance lock."""
        with self._lock:
            partition = self._partitions.get(pk)
            if partition is None or sk not in partition:
                return expected is ANY
            if expected is not ANY and partition[sk] != expected:
                return False
            del partition[sk]
            if not partition:
                del self._partitions[pk]
            return True

    @override
    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """Each partition is copied under the lock, then yielded without it."""
        with self._lock:
            if pk is not None:
                names = [pk] if pk in self._partitions else []
            else:
                names = [name for name in self._partitions if name.startswith(prefix or "")]
        for name in names:
            with self._lock:
                items = list(self._partitions.get(name, {}).items())
            for sk, value in items:
                yield CacheEntry(name, sk, value)
