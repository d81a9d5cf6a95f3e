"""local_memory: the conformance suite, plus what only an in-process dict has."""

import pytest

from grove.caches.local_memory import Handler
from grove.caches.testing import CacheConformance, ListingConformance


class TestLocalMemoryConformance(CacheConformance, ListingConformance):
    @pytest.fixture
    def cache(self) -> Handler:
        return Handler()


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
