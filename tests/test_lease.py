"""Leases: the conformance section on every shared handler, and what the lease does alone.

Also the refusal path that leases rely on: a refused condition says what was stored.
"""

from __future__ import annotations

import functools
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from grove.caches import BaseCache, local_file, local_sqlite
from grove.caches.atomic import Expected, Outcome
from grove.caches.lease import FENCE_SUFFIX, Lease, LeaseValue, default_owner, parse_value
from grove.caches.local_memory import Handler as Memory
from grove.caches.testing import (
    FencedResource,
    Hold,
    LeaseConformance,
    ManualClock,
    lease_violations,
)
from grove.exceptions import AccessException, DataFormatException
from tests.moto_server import make_handler
from tests.test_atomic import DictCache

# -- the conformance section on every handler -------------------------------------------


class TestLocalMemoryLease(LeaseConformance):
    lease_workers = "threads"

    @pytest.fixture
    def cache(self, lease_clock: ManualClock) -> Memory:
        return Memory(clock=lease_clock)


class TestLocalFileLease(LeaseConformance):
    @pytest.fixture
    def cache(self, tmp_path: Path, lease_clock: ManualClock) -> local_file.Handler:
        config = local_file.Configuration(path=str(tmp_path))
        handler = local_file.Handler(config, clock=lease_clock)
        handler.setup()
        return handler

    @pytest.fixture
    def cache_factory(self, tmp_path: Path) -> Callable[[], BaseCache]:
        return functools.partial(local_file.Handler, local_file.Configuration(path=str(tmp_path)))


class TestLocalSqliteLease(LeaseConformance):
    @pytest.fixture
    def cache(self, tmp_path: Path) -> local_sqlite.Handler:
        return local_sqlite.Handler(local_sqlite.Configuration(path=str(tmp_path / "cache.db")))

    @pytest.fixture
    def cache_factory(self, tmp_path: Path) -> Callable[[], BaseCache]:
        config = local_sqlite.Configuration(path=str(tmp_path / "cache.db"))
        return functools.partial(local_sqlite.Handler, config)


@pytest.fixture(scope="module")
def lease_table(moto_endpoint: str) -> str:
    make_handler(moto_endpoint, "grove-leases").create_table()
    return "grove-leases"


class TestDynamoDBLease(LeaseConformance):
    @pytest.fixture
    def cache(self, moto_endpoint: str, lease_table: str) -> BaseCache:
        handler = make_handler(moto_endpoint, lease_table)
        handler.setup()
        return handler

    @pytest.fixture
    def cache_factory(self, moto_endpoint: str, lease_table: str) -> Callable[[], BaseCache]:
        return functools.partial(make_handler, moto_endpoint, lease_table)


# -- refusals report what was stored ---------------------------------------------------


def refusal(call: object) -> DataFormatException:
    assert callable(call)
    with pytest.raises(DataFormatException) as info:
        call()
    return info.value


def test_local_memory_refusals_say_what_was_stored() -> None:
    cache = Memory()
    cache.set("pk", "lock", "theirs")
    for call in (
        lambda: cache.set("pk", "lock", "mine", not_set=True),
        lambda: cache.set("pk", "lock", "mine", constraint="guess"),
        lambda: cache.set("pk", "lock", "mine", constraint="guess", ttl=60),
        lambda: cache.delete("pk", "lock", constraint="guess"),
    ):
        error = refusal(call)
        assert (error.current_known, error.current) == (True, "theirs")
    cache.set("pk", "empty", "")
    error = refusal(lambda: cache.set("pk", "empty", "x", not_set=True))
    assert (error.current_known, error.current) == (True, "")


def test_local_memory_refusals_over_nothing_say_nothing_is_stored() -> None:
    cache = Memory()
    for call in (
        lambda: cache.set("pk", "absent", "mine", constraint="guess"),
        lambda: cache.delete("pk", "absent", constraint="guess"),
    ):
        error = refusal(call)
        assert (error.current_known, error.current) == (True, None)


def test_a_primitive_returning_false_reports_nothing() -> None:
    """The richer refusal is optional: a primitive returning plain False still works."""
    cache = DictCache()
    cache.set("pk", "lock", "theirs")
    for call in (
        lambda: cache.set("pk", "lock", "mine", not_set=True),
        lambda: cache.set("pk", "lock", "mine", constraint="guess"),
        lambda: cache.delete("pk", "lock", constraint="guess"),
        lambda: cache.delete("pk", "absent", constraint="guess"),
    ):
        error = refusal(call)
        assert (error.current_known, error.current) == (False, None)
    assert not DictCache.reports_current and Memory.reports_current


def test_the_reported_value_stays_out_of_messages_and_survives_pickling() -> None:
    cache = Memory()
    cache.set("pk", "lock", "secret-token-1234")
    error = refusal(lambda: cache.set("pk", "lock", "mine", not_set=True))
    assert "secret-token-1234" not in str(error) and "secret-token-1234" not in repr(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.current_known, copy.current, str(copy)) == (True, "secret-token-1234", str(error))


def test_upstream_style_construction_still_works() -> None:
    error = DataFormatException("set refused")
    assert (str(error), error.current, error.current_known) == ("set refused", None, False)
    assert DataFormatException("x", current="v").current_known


# -- the lease alone --------------------------------------------------------------------


class FailsAfterWriting(Memory):
    """local_memory whose next write is stored and then reported as failed (a timeout)."""

    driver_errors = (TimeoutError,)

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.armed = False

    def _write_expiring(
        self, pk: str, sk: str, value: str, expected: Expected, ttl: float
    ) -> Outcome:
        outcome = super()._write_expiring(pk, sk, value, expected, ttl)
        if self.armed and outcome:
            self.armed = False
            raise TimeoutError("the answer was lost")
        return outcome


def minutes(count: float) -> timedelta:
    return timedelta(minutes=count)


def test_a_renewal_that_raised_but_was_written_is_not_a_loss() -> None:
    clock = ManualClock()
    cache = FailsAfterWriting(clock)
    lease = Lease(cache, "execution_lock.x", "all", duration=minutes(5), clock=clock)
    assert lease.acquire()
    cache.armed = True
    with pytest.raises(AccessException):
        lease.renew()
    assert lease.held
    lease.renew()  # compares with the value the failed call wrote
    lease.release()
    stored = parse_value(cache.get("execution_lock.x", "all"))
    assert stored is not None and stored.state == "released"


def test_an_acquisition_that_raised_but_was_written_is_taken_again_at_once() -> None:
    clock = ManualClock()
    cache = FailsAfterWriting(clock)
    lease = Lease(cache, "execution_lock.x", "all", duration=minutes(5), clock=clock)
    assert lease.acquire()
    lease.release()
    cache.armed = True
    with pytest.raises(AccessException):
        lease.acquire()
    assert not lease.held
    assert lease.acquire()  # its own unconfirmed value: no need to wait for the expiry
    assert lease.token == 3
    other = Lease(cache, "execution_lock.x", "all", duration=minutes(5), clock=clock)
    assert not other.acquire()


def test_the_background_renewer_keeps_the_lease_and_survives_storage_failures() -> None:
    clock = ManualClock()
    cache = FailsAfterWriting(clock)
    lease = Lease(
        cache, "pk", "sk", duration=minutes(5), renew_every=timedelta(seconds=0.01), clock=clock
    )
    with lease:
        first = lease.expires_at
        assert first is not None
        cache.armed = True
        clock.advance(60)
        while lease.expires_at == first or cache.armed:
            time.sleep(0.01)
        clock.advance(60)
        later = lease.expires_at
        while lease.expires_at == later:
            time.sleep(0.01)
        assert lease.held and not lease.lost.is_set()
    stored = parse_value(cache.get("pk", "sk"))
    assert stored is not None and stored.state == "released"


def test_a_renewer_that_finds_the_lease_released_by_the_body_stops_quietly() -> None:
    cache = Memory()
    lease = Lease(cache, "pk", "sk", duration=minutes(5), renew_every=timedelta(seconds=0.01))
    with lease:
        lease.release()
        time.sleep(0.05)
    assert not lease.lost.is_set()


def test_acquire_waits_with_backoff_until_the_lease_is_released() -> None:
    cache = Memory()
    holder = Lease(cache, "pk", "sk", duration=minutes(5))
    waiter = Lease(cache, "pk", "sk", duration=minutes(5))
    assert holder.acquire()
    releaser = threading.Timer(0.2, holder.release)
    releaser.start()
    assert waiter.acquire(wait=60)
    releaser.join()
    assert waiter.token == 2


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"duration": minutes(1), "skew": minutes(1)}, ValueError, "longer than skew"),
        ({"duration": minutes(1), "skew": timedelta(seconds=-1)}, ValueError, "skew"),
        ({"duration": 60}, TypeError, "duration must be a timedelta"),
        ({"duration": minutes(1), "renew_every": minutes(1)}, ValueError, "renew_every"),
        ({"duration": minutes(1), "renew_every": timedelta(0)}, ValueError, "renew_every"),
        ({"duration": minutes(1), "wait": -1}, ValueError, "wait"),
        ({"duration": timedelta(days=4000)}, ValueError, "ttl"),
    ],
    ids=[
        "skew-too-long",
        "negative-skew",
        "seconds",
        "renew-too-rare",
        "renew-zero",
        "wait",
        "ttl",
    ],
)
def test_bad_options_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Lease(Memory(), "pk", "sk", **options)


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="#fence"):
        Lease(Memory(), "pk", "sk" + FENCE_SUFFIX, duration=minutes(1))
    with pytest.raises(ValueError):
        Lease(Memory(), "pk", "s" * 1020, duration=minutes(1))  # its counter's key is too long
    with pytest.raises(TypeError):
        Lease(Memory(), b"pk", "sk", duration=minutes(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait"):
        Lease(Memory(), "pk", "sk", duration=minutes(1)).acquire(wait=-1)


def test_the_default_owner_names_host_process_and_a_random_part() -> None:
    first, second = default_owner(), default_owner()
    host, pid, random_part = first.split(":")
    assert host == socket.gethostname() and pid == str(os.getpid()) and len(random_part) == 8
    assert first != second
    assert Lease(Memory(), "pk", "sk", duration=minutes(1)).owner.startswith(f"{host}:{pid}:")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            '{"grove_lease":1,"state":"held","owner":"o","token":3,"high":9,'
            '"expires":"2024-05-01T12:00:00.000001Z"}',
            LeaseValue("held", "o", 3, 9, datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)),
        ),
        (
            '{"grove_lease":1,"state":"released","owner":"o","token":3,"high":9}',
            LeaseValue("released", "o", 3, 9, None),
        ),
        (
            '{"grove_lease":1,"state":"claiming","owner":"o",'
            '"expires":"2024-05-01T12:00:00.000000Z","nonce":"ab"}',
            LeaseValue("claiming", "o", None, None, datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ),
        (
            "2024-05-01T12:00:00.000000Z",
            LeaseValue("upstream", None, None, None, datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ),
        ('{"grove_lease":1,"state":"held","owner":"o","token":3,"high":9}', None),
        ('{"grove_lease":1,"state":"held","owner":"o","token":0,"high":9,"expires":"x"}', None),
        ('{"grove_lease":1,"state":"released","owner":"o","token":true,"high":9}', None),
        (
            '{"grove_lease":1,"state":"claiming","owner":"o","expires":"2024-05-01T12:00:00.0Z"}',
            None,
        ),
        ('{"grove_lease":2,"state":"released","owner":"o","token":3,"high":9}', None),
        ('{"grove_lease":1,"state":"gone","owner":"o","token":3,"high":9}', None),
        ("[1]", None),
        ("{not json", None),
        ("2024-05-01 12:00:00", None),
        ("", None),
    ],
    ids=repr,
)
def test_parse_value(value: str, expected: LeaseValue | None) -> None:
    assert parse_value(value) == expected


def hold(writer: str, token: int, start: float, end: float) -> Hold:
    return Hold(writer, token, start, end, froze=False)


def test_the_contention_check_names_each_violation() -> None:
    sound = [hold("0.0", 1, 0, 1), hold("1.0", 2, 1.5, 2), hold("0.1", 5, 3, 4)]
    assert lease_violations(sound, [(1, "0.0"), (2, "1.0"), (1, "0.0"), (5, "0.1")][:2]) == []
    assert lease_violations(sound, [(1, "0.0"), (2, "1.0"), (5, "0.1")]) == []
    overlapping = [hold("0.0", 1, 0, 2), hold("1.0", 2, 1.5, 3)]
    assert lease_violations(overlapping, []) == ["holds 0.0 and 1.0 were valid at once for 0.500 s"]
    reused = [hold("0.0", 4, 0, 1), hold("1.0", 4, 2, 3)]
    assert lease_violations(reused, []) == [
        "token 4 was issued to 2 holds",
        "hold 1.0 got token 4 after hold 0.0 got 4",
    ]
    stale = lease_violations(sound, [(1, "0.0"), (2, "1.0"), (1, "0.0")])
    assert stale == [
        "the resource accepted a stale write (token 1) from hold 0.0 after hold 1.0 had written"
    ]


def test_the_fenced_resource_refuses_older_tokens(tmp_path: Path) -> None:
    resource = FencedResource(tmp_path)
    assert resource.write(3, "a") and resource.write(3, "a") and resource.write(5, "b")
    assert not resource.write(4, "a")
    assert resource.accepted() == [(3, "a"), (3, "a"), (5, "b")]
    assert resource.rejected() == [(4, "a")]
