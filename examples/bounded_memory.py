"""An example third-party Grove cache handler: entries in a dict, with a size limit.

It is complete: registered under the ``grove.caches`` entry-point group it is found by
``grove.caches.load("bounded_memory")`` and by ``grove-cache --handler bounded_memory``,
and it passes the shipped conformance suite (``examples/test_bounded_memory.py``).

It builds on :class:`grove.caches.atomic.AtomicCache`, which implements the public
``get``, ``set`` and ``delete`` once: argument checks, the key and value rules, what
``not_set`` and ``constraint`` mean, and turning the storage's own errors into
``AccessException``. A handler implements three primitives, each one atomic step:

- ``_read``: the stored value, or ``ABSENT``;
- ``_write``: store a value if the entry is as expected (``ANY``, ``ABSENT`` or a value);
- ``_remove``: remove an entry if it is as expected (``ANY`` or a value).

Here every step holds one lock, so a conditional call is atomic for every thread that
shares the handler. The store lives in one process, so it is tested with
``CacheConformance`` (threads), not ``SharedCacheConformance`` (processes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from grove.caches import CacheEntry, Listing
from grove.caches.atomic import (
    ABSENT,
    ANY,
    AtomicCache,
    Expected,
    ExpectedToRemove,
    Outcome,
    Refused,
    Stored,
)
from grove.caches.configuration import HandlerConfiguration


class StoreFullError(Exception):
    """The store holds ``max_entries`` entries: the storage's own failure."""


class Configuration(HandlerConfiguration):
    """Settings of the bounded_memory handler, from ``GROVE_CACHE_BOUNDED_MEMORY_*``.

    For example ``max_entries`` is set by ``GROVE_CACHE_BOUNDED_MEMORY_MAX_ENTRIES``.
    """

    model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_BOUNDED_MEMORY_")

    max_entries: int = Field(
        default=100_000, ge=1, description="The most entries stored; a write beyond fails."
    )


class Handler(AtomicCache, Listing):
    """Entries in a dict owned by this instance, at most ``max_entries`` of them.

    :param config: The settings; read from the environment when ``None``, as
        ``load()`` does.
    """

    configuration = Configuration  # what load(), --config and doctor read
    config: Configuration
    driver_errors = (StoreFullError,)  # become AccessException, with this as the cause
    reports_current = True  # every refusal says what was stored (Refused)

    def __init__(self, config: Configuration | None = None) -> None:
        super().__init__(config)  # reads the environment when config is None
        self._store: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def location(self) -> str:
        """Say where the entries are, for messages.

        :return: The handler's name and limit.
        """
        return f"bounded_memory cache (max {self.config.max_entries} entries)"

    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one dict lookup."""
        return self._store.get((pk, sk), ABSENT)

    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> Outcome:
        """Atomic: the check and the write happen under the lock."""
        with self._lock:
            current: Stored = self._store.get((pk, sk), ABSENT)
            if expected is not ANY and current != expected:
                return Refused(current)
            if current is ABSENT and len(self._store) >= self.config.max_entries:
                raise StoreFullError(f"{self.config.max_entries} entries stored")
            self._store[(pk, sk)] = value
            return True

    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> Outcome:
        """Atomic: the check and the removal happen under the lock."""
        with self._lock:
            current: Stored = self._store.get((pk, sk), ABSENT)
            if current is ABSENT:
                return True if expected is ANY else Refused(ABSENT)
            if expected is not ANY and current != expected:
                return Refused(current)
            del self._store[(pk, sk)]
            return True

    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """The listing ability: a copy taken under the lock, yielded without it."""
        with self._lock:
            found = [
                CacheEntry(entry_pk, sk, value)
                for (entry_pk, sk), value in self._store.items()
                if entry_pk == pk or (pk is None and entry_pk.startswith(prefix or ""))
            ]
        yield from found
