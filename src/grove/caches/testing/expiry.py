"""The expiry ability: entries that remove themselves, and the clocks that move them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar

import pytest

from grove.caches import BaseCache, CacheEntry
from grove.caches.atomic import ExpiringCache
from grove.caches.testing.base import HandlerFixtures, SharedStoreFixtures
from grove.caches.testing.contention import run_in_processes
from grove.caches.testing.support import (
    fresh_pk,
)
from grove.exceptions import DataFormatException, NotFoundException


class ManualClock:
    """A clock that the suite moves by hand.

    For handlers on which the caller's clock decides expiry: pass it to the handler,
    then :meth:`advance` it.

    :param start: The time it shows first, in seconds since the epoch; now by default.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward.

        :param seconds: How far.
        """
        self.now += seconds


class ServerClock:
    """Real time, for handlers on which the server's clock decides expiry.

    :meth:`advance` sleeps.
    """

    def __call__(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> None:
        """Let time pass.

        :param seconds: How long to sleep.
        """
        time.sleep(seconds)


class ExpiryConformance(HandlerFixtures):
    """The optional expiry ability (``set(..., ttl=...)``).

    Mix it into the test class of a handler that has the ability, beside
    :class:`CacheConformance`. Where the caller's clock decides, the ``cache`` fixture
    builds the handler with the ``clock`` fixture (a :class:`ManualClock`), and the
    tests move it; where the server's clock decides, override ``clock`` to return a
    :class:`ServerClock`, set :attr:`expiry_ttl` small and :attr:`expiry_wait` a little
    above it: eight tests let an entry expire, so the section sleeps ``8 * expiry_wait``.
    """

    expiry_ttl: ClassVar[float] = 30.0
    """The time to live of entries that the tests let expire, in seconds."""

    expiry_wait: ClassVar[float | None] = None
    """How far the tests advance the clock to let an entry expire; twice
    :attr:`expiry_ttl` when ``None``."""

    live_ttl: ClassVar[float] = 3600.0
    """The time to live of entries that must not expire during a test."""

    sweep_counts_expired: ClassVar[bool] = True
    """Whether :meth:`~grove.caches.atomic.ExpiringCache.sweep_expired` finds expired
    entries to remove; ``False`` where the server removes them by itself."""

    @pytest.fixture
    def clock(self) -> ManualClock | ServerClock:
        """The clock the handler under test uses; see the class docstring."""
        return ManualClock()

    @pytest.fixture
    def pk(self) -> str:
        """A partition key no other test uses."""
        return fresh_pk("expiry")

    def _expire(self, clock: ManualClock | ServerClock) -> None:
        clock.advance(self.expiry_ttl * 2 if self.expiry_wait is None else self.expiry_wait)

    def test_handler_says_it_can_expire(self, cache: ExpiringCache) -> None:
        assert cache.supports_expiry()
        assert isinstance(cache, ExpiringCache)

    def test_entry_is_there_until_it_expires(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "sk", "v", ttl=self.live_ttl)
        assert cache.get(pk, "sk") == "v"
        moment = cache.expires_at(pk, "sk")
        assert moment is not None and moment.tzinfo is not None
        assert abs(moment.timestamp() - (clock() + self.live_ttl)) < 60

    def test_expired_entry_is_absent_for_get(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "sk", "v", ttl=self.expiry_ttl)
        self._expire(clock)
        with pytest.raises(NotFoundException):
            cache.get(pk, "sk")
        with pytest.raises(NotFoundException):
            cache.expires_at(pk, "sk")

    def test_not_set_succeeds_over_an_expired_entry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "lock", "old", ttl=self.expiry_ttl)
        with pytest.raises(DataFormatException):
            cache.set(pk, "lock", "new", not_set=True)
        self._expire(clock)
        cache.set(pk, "lock", "new", not_set=True)
        assert cache.get(pk, "lock") == "new"
        assert cache.expires_at(pk, "lock") is None

    def test_constraint_never_matches_an_expired_entry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "sk", "old", ttl=self.expiry_ttl)
        self._expire(clock)
        with pytest.raises(DataFormatException):
            cache.set(pk, "sk", "new", constraint="old")
        with pytest.raises(DataFormatException):
            cache.set(pk, "sk", "new", constraint="old", ttl=self.live_ttl)
        with pytest.raises(NotFoundException):
            cache.get(pk, "sk")

    def test_deleting_an_expired_entry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "a", "v", ttl=self.expiry_ttl)
        cache.set(pk, "b", "v", ttl=self.expiry_ttl)
        self._expire(clock)
        with pytest.raises(DataFormatException):
            cache.delete(pk, "a", constraint="v")
        cache.delete(pk, "b")
        with pytest.raises(NotFoundException):
            cache.get(pk, "a")
        with pytest.raises(NotFoundException):
            cache.get(pk, "b")

    def test_listing_skips_expired_entries(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        if not cache.supports_listing():
            pytest.skip(f"{type(cache).__module__} cannot list entries")
        cache.set(pk, "gone", "v", ttl=self.expiry_ttl)
        cache.set(pk, "kept", "w", ttl=self.live_ttl)
        cache.set(pk, "plain", "x")
        self._expire(clock)
        assert sorted(cache.entries(pk)) == [
            CacheEntry(pk, "kept", "w"),
            CacheEntry(pk, "plain", "x"),
        ]
        assert CacheEntry(pk, "gone", "v") not in set(cache.entries(prefix=pk))

    def test_set_without_ttl_clears_the_expiry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "plain", "v", ttl=self.expiry_ttl)
        cache.set(pk, "plain", "w")
        cache.set(pk, "cas", "v", ttl=self.expiry_ttl)
        cache.set(pk, "cas", "w", constraint="v")
        assert cache.expires_at(pk, "plain") is None
        assert cache.expires_at(pk, "cas") is None
        self._expire(clock)
        assert cache.get(pk, "plain") == "w"
        assert cache.get(pk, "cas") == "w"

    def test_compare_and_set_with_ttl_replaces_value_and_expiry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "sk", "v")
        cache.set(pk, "sk", "w", constraint="v", ttl=self.expiry_ttl)
        assert cache.get(pk, "sk") == "w"
        assert cache.expires_at(pk, "sk") is not None
        cache.set(pk, "renewed", "a", ttl=self.expiry_ttl)
        cache.set(pk, "renewed", "b", constraint="a", ttl=self.live_ttl)
        self._expire(clock)
        with pytest.raises(NotFoundException):
            cache.get(pk, "sk")
        assert cache.get(pk, "renewed") == "b"

    def test_ttl_as_a_timedelta(self, cache: ExpiringCache, pk: str) -> None:
        cache.set(pk, "sk", "v", ttl=timedelta(seconds=self.live_ttl))
        moment = cache.expires_at(pk, "sk")
        assert moment is not None
        assert abs(moment.timestamp() - (time.time() + self.live_ttl)) < 120

    @pytest.mark.parametrize(
        ("ttl", "error"),
        [
            (0, ValueError),
            (-1, ValueError),
            (float("nan"), ValueError),
            (float("inf"), ValueError),
            (timedelta(days=3700), ValueError),
            (timedelta(0), ValueError),
            (True, TypeError),
            ("60", TypeError),
        ],
        ids=repr,
    )
    def test_invalid_ttl_changes_nothing(
        self, cache: ExpiringCache, pk: str, ttl: Any, error: type[Exception]
    ) -> None:
        cache.set(pk, "sk", "v")
        with pytest.raises(error):
            cache.set(pk, "sk", "w", ttl=ttl)
        with pytest.raises(error):
            cache.set(pk, "new", "w", not_set=True, ttl=ttl)
        assert cache.get(pk, "sk") == "v"
        assert cache.expires_at(pk, "sk") is None
        with pytest.raises(NotFoundException):
            cache.get(pk, "new")

    def test_sweep_removes_expired_entries_in_batches(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        for index in range(5):
            cache.set(pk, f"gone{index}", "v", ttl=self.expiry_ttl)
        cache.set(pk, "kept", "w", ttl=self.live_ttl)
        cache.set(pk, "plain", "x")
        cache.set(pk, "rewritten", "old", ttl=self.expiry_ttl)
        self._expire(clock)
        cache.set(pk, "rewritten", "new")
        batches: list[int] = []
        removed = cache.sweep_expired(batch_size=2, progress=batches.append)
        assert removed == sum(batches)
        assert all(count <= 2 for count in batches)
        if self.sweep_counts_expired:
            assert removed >= 5
            assert len(batches) >= 3
        assert cache.get(pk, "kept") == "w"
        assert cache.get(pk, "plain") == "x"
        assert cache.get(pk, "rewritten") == "new"
        for index in range(5):
            with pytest.raises(NotFoundException):
                cache.get(pk, f"gone{index}")
        with pytest.raises(ValueError):
            cache.sweep_expired(batch_size=0)


def _process_not_set_over_expiring_entry(
    factory: Callable[[], BaseCache],
    pk: str,
    sk: str,
    token: str,
    deadline: float,
    barrier: Any,
    results: Any,
) -> None:
    """Try ``not_set`` until this process wins or another racer's value is stored."""
    cache = factory()
    barrier.wait()
    while time.time() < deadline:
        try:
            cache.set(pk, sk, token, not_set=True)
        except DataFormatException:
            try:
                if cache.get(pk, sk).startswith("racer-"):
                    results.put(("lost", token))
                    return
            except NotFoundException:
                pass
        else:
            results.put(("won", token))
            return
        time.sleep(0.005)
    results.put(("timeout", token))


def _process_increments_with_ttl(
    factory: Callable[[], BaseCache],
    pk: str,
    sk: str,
    count: int,
    ttl: float,
    barrier: Any,
    results: Any,
) -> None:
    cache = factory()
    assert isinstance(cache, ExpiringCache)
    barrier.wait()
    done = 0
    while done < count:
        current = cache.get(pk, sk)
        try:
            cache.set(pk, sk, str(int(current) + 1), constraint=current, ttl=ttl)
        except DataFormatException:
            continue
        done += 1
    results.put("done")


class SharedExpiryConformance(SharedStoreFixtures):
    """Expiry under contention between processes, for shared stores with expiry.

    Mix it in beside :class:`SharedCacheConformance` and :class:`ExpiryConformance`;
    it uses their ``cache`` and ``cache_factory`` fixtures. The handlers that
    ``cache_factory`` makes use the real clock.
    """

    expiry_race_ttl: ClassVar[float] = 0.5
    """Real seconds until the entry that the racers wait for expires."""

    expiry_process_increments: ClassVar[int] = 100
    """Increments each of 4 processes makes with ``ttl``."""

    process_timeout: ClassVar[float] = 300.0

    def test_processes_racing_not_set_over_an_expiring_entry_have_one_winner(
        self, shared_cache_factory: Callable[[], BaseCache]
    ) -> None:
        pk = fresh_pk("expiry-race")
        cache = shared_cache_factory()
        assert isinstance(cache, ExpiringCache)
        cache.set(pk, "lock", "held", ttl=self.expiry_race_ttl)
        deadline = time.time() + 60
        outcomes = run_in_processes(
            _process_not_set_over_expiring_entry,
            [(shared_cache_factory, pk, "lock", f"racer-{i}", deadline) for i in range(8)],
            timeout=self.process_timeout,
        )
        winners = [token for outcome, token in outcomes if outcome == "won"]
        assert len(winners) == 1, outcomes
        assert all(outcome != "timeout" for outcome, _ in outcomes), outcomes
        assert cache.get(pk, "lock") == winners[0]
        cache.delete(pk, "lock")

    def test_processes_compare_and_set_with_ttl_lose_no_update(
        self, shared_cache_factory: Callable[[], BaseCache]
    ) -> None:
        pk = fresh_pk("expiry-race")
        cache = shared_cache_factory()
        assert isinstance(cache, ExpiringCache)
        cache.set(pk, "counter", "0", ttl=3600)
        run_in_processes(
            _process_increments_with_ttl,
            [(shared_cache_factory, pk, "counter", self.expiry_process_increments, 3600.0)] * 4,
            timeout=self.process_timeout,
        )
        assert int(cache.get(pk, "counter")) == 4 * self.expiry_process_increments
        assert cache.expires_at(pk, "counter") is not None
        cache.delete(pk, "counter")
