"""local_memory: the conformance suite, plus what only an in-process dict has."""

import pytest

from grove.caches.local_memory import Handler
from grove.caches.testing import (
    CacheConformance,
    ExpiryConformance,
    ListingConformance,
    ManualClock,
)
from grove.exceptions import DataFormatException


class TestLocalMemoryConformance(CacheConformance, ListingConformance, ExpiryConformance):
    @pytest.fixture
    def cache(self, clock: ManualClock) -> Handler:
        return Handler(clock=clock)


class LyingStr(str):
    """A str whose comparisons always say "equal"."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


def test_a_lying_str_subclass_neither_passes_a_condition_nor_is_stored() -> None:
    cache = Handler()
    cache.set("pk", "lock", "ours")
    with pytest.raises(DataFormatException):
        cache.set("pk", "lock", "theirs", constraint=LyingStr("guess"))
    with pytest.raises(DataFormatException):
        cache.delete("pk", "lock", constraint=LyingStr("guess"))
    cache.set("pk", "stored", LyingStr("value"))
    assert type(cache.get("pk", "stored")) is str
    with pytest.raises(DataFormatException):
        cache.set("pk", "stored", "other", constraint="not the value")


def test_expired_entries_leave_nothing_behind() -> None:
    clock = ManualClock()
    cache = Handler(clock=clock)
    for index in range(100):
        cache.set(f"pk{index}", "a", "1", ttl=10)
    cache.set("kept", "a", "1", ttl=100)
    clock.advance(20)
    assert cache.sweep_expired(batch_size=30) == 100
    assert cache._partitions == {"kept": {"a": "1"}}
    assert cache._expiry == {("kept", "a"): clock() + 80}


def test_instances_do_not_share_entries() -> None:
    first, second = Handler(), Handler()
    first.set("pk", "sk", "v")
    with pytest.raises(Exception, match="no value"):
        second.get("pk", "sk")


def test_deleted_partitions_do_not_linger() -> None:
    cache = Handler()
    for index in range(100):
        cache.set(f"pk{index}", "a", "1")
        cache.set(f"pk{index}", "b", "2")
    for index in range(100):
        cache.delete(f"pk{index}", "a")
        cache.delete(f"pk{index}", "b", constraint="2")
    assert cache._partitions == {}
