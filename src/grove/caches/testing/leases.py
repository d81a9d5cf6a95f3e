"""Leases on a handler: tokens, skew, upstream locks, costs, and frozen contenders."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from grove.caches import BaseCache
from grove.caches.atomic import ExpiringCache
from grove.caches.lease import (
    FENCE_SUFFIX,
    TOKEN_BLOCK,
    Lease,
    LeaseError,
    LeaseLost,
    LeaseUnavailable,
    parse_value,
)
from grove.caches.testing.base import SharedStoreFixtures
from grove.caches.testing.contention import run_in_processes
from grove.caches.testing.expiry import ManualClock
from grove.caches.testing.fencing import (
    CallCounter,
    FencedResource,
    Hold,
    UnfencedLease,
    contend_for_lease,
    lease_violations,
    resume_frozen,
)
from grove.caches.testing.support import (
    fresh_pk,
)
from grove.exceptions import DataFormatException


class LeaseConformance(SharedStoreFixtures):
    """Leases (:mod:`grove.caches.lease`) on the handler, frozen holders included.

    Tokens, skew, upstream locks, costs, and contention. Mix it in beside
    :class:`CacheConformance`; it uses the ``cache`` fixture. The contention tests run
    :attr:`lease_contenders` processes that each build a handler with ``cache_factory``
    (see :class:`SharedCacheConformance`) and freeze themselves with SIGSTOP; for a store
    that lives in one process, set :attr:`lease_workers` to ``"threads"`` (a freeze is
    then a sleep). The other tests move a :class:`ManualClock` that only the leases use
    (``lease_clock``); a handler whose caller's clock decides expiry may share it.
    """

    lease_workers: ClassVar[Literal["processes", "threads"]] = "processes"
    """How the contenders run: processes sharing the store, or threads sharing ``cache``."""

    lease_contenders: ClassVar[int] = 8
    """Contenders for the one lease."""

    lease_duration: ClassVar[float] = 1.0
    """Seconds each acquisition or renewal of the contention test lasts."""

    lease_skew: ClassVar[float] = 0.2
    """The skew margin of the contention test, in seconds."""

    lease_contention_seconds: ClassVar[float] = 10.0
    """How long the contenders contend."""

    lease_control_seconds: ClassVar[float] = 6.0
    """How long they contend in the negative control (a lease without fencing)."""

    lease_timeout: ClassVar[float] = 300.0
    """Seconds to wait for the contenders' reports."""

    @pytest.fixture
    def lease_clock(self) -> ManualClock:
        """The wall clock of the leases under test."""
        return ManualClock()

    @pytest.fixture
    def lease_key(self) -> tuple[str, str]:
        """A lease key no other test uses."""
        return fresh_pk("execution_lock"), "all"

    @staticmethod
    def _lease(cache: BaseCache, key: tuple[str, str], clock: ManualClock, **options: Any) -> Lease:
        options.setdefault("duration", timedelta(minutes=5))
        options.setdefault("skew", timedelta(seconds=5))
        return Lease(cache, *key, clock=clock, **options)

    def test_acquire_renew_release(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        lease = self._lease(cache, lease_key, lease_clock)
        assert (lease.held, lease.token, lease.expires_at) == (False, None, None)
        assert lease.acquire()
        first, expires = lease.token, lease.expires_at
        assert lease.held and first is not None and expires is not None
        stored = parse_value(cache.get(*lease_key))
        assert stored is not None
        assert (stored.state, stored.owner, stored.token, stored.expires) == (
            "held",
            lease.owner,
            first,
            expires,
        )
        assert abs(expires.timestamp() - (lease_clock() + 300)) < 1
        lease_clock.advance(60)
        lease.renew()
        assert lease.held and lease.token == first
        assert lease.expires_at is not None and lease.expires_at > expires
        with pytest.raises(RuntimeError, match="already held"):
            lease.acquire()
        lease.release()
        assert not lease.held and lease.expires_at is None
        released = parse_value(cache.get(*lease_key))
        assert released is not None and (released.state, released.token) == ("released", first)
        with pytest.raises(RuntimeError, match="not held"):
            lease.renew()
        lease.release()  # releasing again does nothing
        assert lease.acquire()
        assert lease.token is not None and lease.token > first
        lease.release()

    def test_a_held_lease_is_busy_for_others(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        holder = self._lease(cache, lease_key, lease_clock)
        other = self._lease(cache, lease_key, lease_clock)
        assert holder.acquire()
        assert not other.acquire()
        assert not other.acquire(wait=0.05)
        assert not other.held and other.token is None
        with pytest.raises(LeaseUnavailable), other:
            pytest.fail("the with block ran without the lease")
        holder.release()
        assert other.acquire()
        assert holder.token is not None and other.token is not None
        assert other.token > holder.token
        other.release()

    def test_holders_stop_skew_before_expiry_and_takers_wait_skew_after(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        holder = self._lease(cache, lease_key, lease_clock)
        taker = self._lease(cache, lease_key, lease_clock)
        assert holder.acquire()
        lease_clock.advance(300 - 5 - 0.1)
        assert holder.held
        lease_clock.advance(0.2)
        assert not holder.held
        lease_clock.advance(5 * 2 - 0.2)
        assert not taker.acquire()
        lease_clock.advance(0.2)
        assert taker.acquire()
        with pytest.raises(LeaseLost, match="lapsed"):
            holder.renew()
        assert holder.lost.is_set()
        holder.release()  # not its entry any more: nothing to do, no error
        assert taker.held
        assert holder.token is not None and taker.token is not None
        assert taker.token > holder.token
        taker.release()

    def test_tokens_grow_across_releases_expiries_breaks_and_restarts(
        self,
        cache: BaseCache,
        lease_key: tuple[str, str],
        lease_clock: ManualClock,
        request: pytest.FixtureRequest,
    ) -> None:
        tokens: list[int] = []

        def take(on: BaseCache) -> Lease:
            lease = self._lease(on, lease_key, lease_clock)
            assert lease.acquire() and lease.token is not None
            tokens.append(lease.token)
            return lease

        take(cache).release()
        take(cache)  # abandoned: it expires
        lease_clock.advance(3600)
        take(cache)
        cache.delete(*lease_key)  # broken by an operator
        take(cache)
        lease_clock.advance(3600)
        if self.lease_workers == "processes":
            restarted = request.getfixturevalue("shared_cache_factory")()
            take(restarted).release()
        else:
            take(cache).release()
        assert tokens == sorted(set(tokens)), tokens
        assert int(cache.get(lease_key[0], lease_key[1] + FENCE_SUFFIX)) >= max(tokens)

    def test_token_blocks_are_reserved_in_the_counter(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        pk, sk = lease_key
        fence = sk + FENCE_SUFFIX
        last = '{"grove_lease":1,"state":"released","owner":"o","token":%d,"high":%d}'
        cache.set(pk, sk, last % (7, 7))
        cache.set(pk, fence, "7")
        lease = self._lease(cache, lease_key, lease_clock)
        assert lease.acquire()
        assert lease.token == 8
        assert cache.get(pk, fence) == str(7 + TOKEN_BLOCK)
        lease.release()
        cache.set(pk, sk, last % (20, 20))
        cache.set(pk, fence, "500")  # moved on by another taker: the block starts above it
        assert lease.acquire()
        assert lease.token == 21
        assert cache.get(pk, fence) == str(500 + TOKEN_BLOCK)
        lease.release()
        released = parse_value(cache.get(pk, sk))
        assert released is not None and released.high == 500 + TOKEN_BLOCK
        cache.set(pk, fence, "not a number")
        cache.delete(pk, sk)
        with pytest.raises(LeaseError, match="fencing counter"):
            lease.acquire()

    @pytest.mark.parametrize("offset", [3600.0, 1.0, -1.0], ids=["future", "ahead", "in-skew"])
    def test_an_upstream_lock_is_busy_until_its_time_plus_skew(
        self,
        cache: BaseCache,
        lease_key: tuple[str, str],
        lease_clock: ManualClock,
        offset: float,
    ) -> None:
        moment = datetime.fromtimestamp(lease_clock() + offset, UTC)
        upstream = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cache.set(*lease_key, upstream)
        lease = self._lease(cache, lease_key, lease_clock)
        assert not lease.acquire()
        assert cache.get(*lease_key) == upstream
        lease_clock.advance(offset + 5 - 0.1)
        assert not lease.acquire()
        lease_clock.advance(0.2)
        assert lease.acquire()
        stored = parse_value(cache.get(*lease_key))
        assert stored is not None and stored.state == "held" and stored.token == lease.token
        lease.release()

    def test_an_expired_upstream_lock_is_taken(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        moment = datetime.fromtimestamp(lease_clock() - 60, UTC)
        cache.set(*lease_key, moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        lease = self._lease(cache, lease_key, lease_clock)
        assert lease.acquire()
        assert lease.token is not None and lease.token >= 1
        lease.release()

    def test_a_value_that_is_not_a_lease_is_never_taken(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        for value in ("", "mine", '{"grove_lease":2}', "2024-01-01", '{"grove_lease":true}'):
            cache.set(*lease_key, value)
            lease = self._lease(cache, lease_key, lease_clock)
            lease_clock.advance(10**6)
            assert not lease.acquire()
            assert cache.get(*lease_key) == value

    def test_a_refused_renewal_raises_lease_lost(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        holder = self._lease(cache, lease_key, lease_clock)
        assert holder.acquire()
        cache.delete(*lease_key)  # an operator breaks it, and another collector takes it
        successor = self._lease(cache, lease_key, lease_clock)
        assert successor.acquire()
        with pytest.raises(LeaseLost, match="renewal was refused") as info:
            holder.renew()
        assert (info.value.pk, info.value.sk, info.value.token) == (*lease_key, holder.token)
        assert holder.lost.is_set() and not holder.held
        with pytest.raises(LeaseLost):
            holder.renew()
        holder.release()  # after a loss: nothing to do, no error
        stored = parse_value(cache.get(*lease_key))
        assert stored is not None and stored.token == successor.token
        cache.set(*lease_key, "overwritten by hand")
        with pytest.raises(LeaseLost, match="release was refused"):
            successor.release()
        assert cache.get(*lease_key) == "overwritten by hand"

    def test_a_with_block_whose_lease_is_lost_raises_on_exit(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        lease = self._lease(cache, lease_key, lease_clock, renew_every=timedelta(seconds=0.02))
        with pytest.raises(LeaseLost, match="while the with block ran"), lease:
            assert lease.held
            cache.set(*lease_key, "taken over by hand")
            assert lease.lost.wait(timeout=60), "the background renewer did not notice"
            assert not lease.held
        assert cache.get(*lease_key) == "taken over by hand"
        cache.delete(*lease_key)
        with lease:  # acquired again, the earlier loss is forgotten
            assert not lease.lost.is_set()

    def test_a_with_block_that_outlived_its_lease_raises_on_exit(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        lease = self._lease(cache, lease_key, lease_clock)
        with pytest.raises(LeaseLost), lease:
            lease_clock.advance(300)
        with lease:
            lease.renew()
        stored = parse_value(cache.get(*lease_key))
        assert stored is not None and stored.state == "released"

    def test_values_are_documented_json_and_never_repeat(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        seen: list[str] = []
        for _ in range(3):
            lease = self._lease(cache, lease_key, lease_clock, owner="collector-1")
            assert lease.acquire()
            seen.append(cache.get(*lease_key))
            lease.renew()  # at the same clock reading: still a new value
            seen.append(cache.get(*lease_key))
            lease.release()
            seen.append(cache.get(*lease_key))
        assert len(set(seen)) == len(seen)
        for value in seen:
            fields = json.loads(value)
            if fields["state"] == "held":
                assert list(fields) == ["grove_lease", "state", "owner", "token", "high", "expires"]
                assert fields["expires"].endswith("Z")
            else:
                assert list(fields) == ["grove_lease", "state", "owner", "token", "high"]
            assert fields["grove_lease"] == 1 and fields["owner"] == "collector-1"
        counter = cache.get(lease_key[0], lease_key[1] + FENCE_SUFFIX)
        assert counter.isdigit() and int(counter) >= 3

    def test_expiry_lets_an_abandoned_lease_disappear(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        if not isinstance(cache, ExpiringCache):
            pytest.skip(f"{type(cache).__module__} cannot expire entries")
        lease = self._lease(cache, lease_key, lease_clock)
        assert lease.acquire()
        entry_expires = cache.expires_at(*lease_key)
        assert lease.expires_at is not None and entry_expires is not None
        assert abs((entry_expires - lease.expires_at).total_seconds() - 5) < 60
        assert cache.expires_at(lease_key[0], lease_key[1] + FENCE_SUFFIX) is None
        lease.release()
        assert cache.expires_at(*lease_key) is None

    def test_refusals_report_what_was_stored_when_they_say_so(
        self, cache: BaseCache, lease_key: tuple[str, str]
    ) -> None:
        pk, _ = lease_key
        cache.set(pk, "stored", "value")
        calls: list[tuple[Callable[[], object], str | None]] = [
            (lambda: cache.set(pk, "stored", "x", not_set=True), "value"),
            (lambda: cache.set(pk, "stored", "x", constraint="other"), "value"),
            (lambda: cache.delete(pk, "stored", constraint="other"), "value"),
            (lambda: cache.set(pk, "absent", "x", constraint="other"), None),
            (lambda: cache.delete(pk, "absent", constraint="other"), None),
        ]
        for call, stored in calls:
            with pytest.raises(DataFormatException) as info:
                call()
            if getattr(cache, "reports_current", False):
                assert info.value.current_known
            if info.value.current_known:
                assert info.value.current == stored
            else:
                assert info.value.current is None

    def test_calls_per_operation(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        counted = CallCounter(cache)
        lease = self._lease(counted, lease_key, lease_clock)
        other = self._lease(counted, lease_key, lease_clock)
        costs = {}
        for name, call in (
            ("first acquire", lease.acquire),
            ("busy", other.acquire),
            ("renew", lease.renew),
            ("release", lease.release),
            ("acquire", lease.acquire),
            ("renew again", lease.renew),
            ("release again", lease.release),
        ):
            before = counted.total
            call()
            costs[name] = counted.total - before
        first = 3 if counted.reports_current else 4
        assert costs == {
            "first acquire": first,
            "busy": 1,
            "renew": 1,
            "release": 1,
            "acquire": 2,
            "renew again": 1,
            "release again": 1,
        }

    # -- contention ---------------------------------------------------------------------

    def _contend(
        self,
        lease_class: type[Lease],
        seconds: float,
        cache: BaseCache,
        request: pytest.FixtureRequest,
        directory: Path,
    ) -> tuple[list[Hold], FencedResource]:
        key = (fresh_pk("lease-race"), "all")
        resource = directory / "resource"
        resource.mkdir()
        timing = (self.lease_duration, self.lease_skew, seconds)
        if self.lease_workers == "threads":
            barrier = threading.Barrier(self.lease_contenders)
            results: queue.Queue[list[Hold]] = queue.Queue()
            with ThreadPoolExecutor(self.lease_contenders) as pool:
                futures = [
                    pool.submit(
                        contend_for_lease,
                        *(cache, lease_class, key, worker, timing, str(resource), None),
                        barrier,
                        results,
                    )
                    for worker in range(self.lease_contenders)
                ]
                for future in futures:
                    future.result(timeout=self.lease_timeout)
            reports = [results.get_nowait() for _ in futures]
        else:
            factory = request.getfixturevalue("shared_cache_factory")
            freezer = directory / "frozen"
            freezer.mkdir()
            done = threading.Event()
            resumer = threading.Thread(target=resume_frozen, args=(freezer, done))
            resumer.start()
            try:
                reports = run_in_processes(
                    contend_for_lease,
                    [
                        (factory, lease_class, key, worker, timing, str(resource), str(freezer))
                        for worker in range(self.lease_contenders)
                    ],
                    timeout=self.lease_timeout,
                )
            finally:
                done.set()
                resumer.join()
        return [hold for report in reports for hold in report], FencedResource(resource)

    def test_contenders_never_hold_at_once_nor_write_with_a_stale_token(
        self, cache: BaseCache, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """Contenders with random hold times, some frozen past their expiry mid-write."""
        holds, resource = self._contend(
            Lease, self.lease_contention_seconds, cache, request, tmp_path
        )
        assert lease_violations(holds, resource.accepted()) == []
        assert len({hold.writer.split(".")[0] for hold in holds}) >= 3, "too few took turns"
        assert any(hold.froze for hold in holds)
        assert resource.rejected(), (
            "no frozen holder came back after its successor wrote: fencing went untested"
        )

    def test_the_contention_check_catches_a_lease_without_fencing(
        self, cache: BaseCache, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """The negative control: the same run with a lease whose token never advances."""
        holds, resource = self._contend(
            UnfencedLease, self.lease_control_seconds, cache, request, tmp_path
        )
        violations = lease_violations(holds, resource.accepted())
        assert any("stale write" in violation for violation in violations), (
            "the contention check passed a lease without fencing tokens"
        )
