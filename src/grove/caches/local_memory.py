"""Grove in memory cache handler.

Entries live in a dict of partitions (``{pk: {sk: value}}``) owned by one handler
instance; they vanish with it. Reads take no lock: a single dict lookup is atomic in
CPython. Every write takes the instance's lock, so the check and the write of a
conditional call are one step for all threads that share the instance. A partition is
dropped when its last entry goes, so deleted keys leave nothing behind. A refused
condition reports the value it saw under the lock (:class:`~grove.caches.atomic.Refused`).

Expiry: the moment an entry expires is kept beside it, in ``{(pk, sk): seconds}``, only
for entries written with ``ttl``, so a store without expiring entries pays one empty-dict
test per read. The caller's clock decides (``time.time`` unless a clock is given); all
callers share one process and so one clock, and skew cannot arise. An expired entry is
absent at once and removed by the next write of its key or by
:meth:`~grove.caches.atomic.ExpiringCache.sweep_expired`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Literal

from typing_extensions import override

from grove.caches import CacheEntry, Listing
from grove.caches.atomic import (
    ABSENT,
    ANY,
    Clock,
    Expected,
    ExpectedToRemove,
    ExpiringCache,
    Outcome,
    Refused,
    Sentinel,
    Stored,
)


class Handler(ExpiringCache, Listing):
    """A volatile in-memory backed cache for pointers and other Grove data.

    :param clock: The clock that decides expiry; ``time.time`` when ``None``.
    """

    clock_owner = "caller"
    reports_current = True

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._partitions: dict[str, dict[str, str]] = {}
        self._expiry: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._clock = clock or time.time

    @override
    def location(self) -> str:
        return "local_memory cache"

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: two dict lookups, no lock (plus one for an entry that expires).

        A partition read while its last entry is being removed is simply found empty.
        The expiry is looked at before the value: writers store the value first, so a
        value read after an unexpired deadline is one that is live.
        """
        partition = self._partitions.get(pk)
        if partition is None:
            return ABSENT
        expiry = self._expiry
        if expiry:  # inlined: a method call shows in the cost of this read
            deadline = expiry.get((pk, sk))
            if deadline is not None and deadline <= self._clock():
                return ABSENT
        return partition.get(sk, ABSENT)

    def _expired(self, pk: str, sk: str) -> bool:
        deadline = self._expiry.get((pk, sk))
        return deadline is not None and deadline <= self._clock()

    def _live(self, pk: str, sk: str) -> Stored:
        """The stored, unexpired value; called with the lock held."""
        partition = self._partitions.get(pk)
        if partition is None:
            return ABSENT
        if self._expiry and self._expired(pk, sk):
            return ABSENT
        return partition.get(sk, ABSENT)

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> Outcome:
        """Atomic: the check and the write happen under the instance lock.

        The lock is taken with ``acquire``/``release`` rather than ``with``: in CPython
        3.11 the context manager costs twice as much, more than the dict work.
        """
        lock = self._lock
        lock.acquire()
        try:
            partition = self._partitions.get(pk)
            if partition is None:
                if expected is not ANY and expected is not ABSENT:
                    return Refused(ABSENT)
                self._partitions[pk] = {sk: value}
            else:
                if expected is not ANY:
                    current: Stored = partition.get(sk, ABSENT)
                    if current is not ABSENT and self._expiry and self._expired(pk, sk):
                        current = ABSENT
                    if current != expected:
                        return Refused(current)
                partition[sk] = value
            if self._expiry:
                self._expiry.pop((pk, sk), None)
            return True
        finally:
            lock.release()

    @override
    def _write_expiring(
        self, pk: str, sk: str, value: str, expected: Expected, ttl: float
    ) -> Outcome:
        """Atomic: the check and the write of value and expiry happen under the lock."""
        deadline = self._clock() + ttl  # read before the lock: a clock may be slow
        lock = self._lock
        lock.acquire()
        try:
            if expected is not ANY and (current := self._live(pk, sk)) != expected:
                return Refused(current)
            partition = self._partitions.get(pk)
            if partition is None:
                self._partitions[pk] = {sk: value}
            else:
                partition[sk] = value
            self._expiry[(pk, sk)] = deadline
            return True
        finally:
            lock.release()

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> Outcome:
        """Atomic: the check and the removal happen under the instance lock."""
        lock = self._lock
        lock.acquire()
        try:
            partition = self._partitions.get(pk)
            current: Stored = ABSENT if partition is None else partition.get(sk, ABSENT)
            if current is not ABSENT and self._expiry and self._expired(pk, sk):
                current = ABSENT
            if current is ABSENT or partition is None:
                if self._expiry:
                    self._drop(pk, sk)  # an expired entry goes, as if already gone
                return True if expected is ANY else Refused(ABSENT)
            if expected is not ANY and current != expected:
                return Refused(current)
            del partition[sk]
            if not partition:
                del self._partitions[pk]
            if self._expiry:
                self._expiry.pop((pk, sk), None)
            return True
        finally:
            lock.release()

    def _drop(self, pk: str, sk: str) -> None:
        """Remove an entry and its expiry, and its partition if empty; lock held."""
        partition = self._partitions.get(pk)
        if partition is None:
            return
        partition.pop(sk, None)
        if not partition:
            del self._partitions[pk]
        if self._expiry:
            self._expiry.pop((pk, sk), None)

    @override
    def _read_expiry(self, pk: str, sk: str) -> float | Literal[Sentinel.ABSENT] | None:
        """Atomic: read under the lock, so value and expiry belong together."""
        with self._lock:
            if self._live(pk, sk) is ABSENT:
                return ABSENT
            return self._expiry.get((pk, sk))

    @override
    def _sweep_expired(self, limit: int) -> int:
        """Atomic per batch: up to ``limit`` expired entries go under the lock.

        Only the entries that expire are walked.
        """
        with self._lock:
            now = self._clock()
            expired = [key for key, deadline in self._expiry.items() if deadline <= now]
            for pk, sk in expired[:limit]:
                self._drop(pk, sk)
            return min(len(expired), limit)

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
                items = [
                    (sk, value)
                    for sk, value in self._partitions.get(name, {}).items()
                    if not (self._expiry and self._expired(name, sk))
                ]
            for sk, value in items:
                yield CacheEntry(name, sk, value)
