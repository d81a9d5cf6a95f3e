"""The listing ability: :meth:`~grove.caches.BaseCache.entries` by partition and prefix."""

from __future__ import annotations

import pytest

from grove.caches import BaseCache, CacheEntry
from grove.caches.testing.base import HandlerFixtures
from grove.caches.testing.support import (
    HOSTILE_KEYS,
    fresh_pk,
    random_text,
)


class ListingConformance(HandlerFixtures):
    """The optional listing ability (:meth:`~grove.caches.BaseCache.entries`).

    Mix it into the test class of a handler that can list its entries, beside
    :class:`CacheConformance`; it uses the same ``cache`` fixture.
    """

    @pytest.fixture
    def pk(self) -> str:
        """A partition key no other test uses."""
        return fresh_pk("listing")

    def test_handler_says_it_can_list(self, cache: BaseCache) -> None:
        assert cache.supports_listing()

    def test_entries_of_one_partition(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "a", "1")
        cache.set(pk, "b", "")
        cache.set(pk, "c", "3")
        cache.delete(pk, "c")
        cache.set(pk + "x", "a", "other partition")
        assert sorted(cache.entries(pk)) == [
            CacheEntry(pk, "a", "1"),
            CacheEntry(pk, "b", ""),
        ]

    def test_entries_of_an_absent_partition(self, cache: BaseCache, pk: str) -> None:
        assert list(cache.entries(pk)) == []

    def test_entries_by_prefix(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk + ".a", "sk", "1")
        cache.set(pk + ".ab", "sk", "2")
        cache.set(pk + ".b", "sk", "3")
        assert sorted(cache.entries(prefix=pk + ".a")) == [
            CacheEntry(pk + ".a", "sk", "1"),
            CacheEntry(pk + ".ab", "sk", "2"),
        ]

    def test_all_entries_include_every_partition(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk + ".1", "sk", "1")
        cache.set(pk + ".2", "sk", "2")
        mine = [entry for entry in cache.entries() if entry.pk.startswith(pk)]
        assert sorted(mine) == [
            CacheEntry(pk + ".1", "sk", "1"),
            CacheEntry(pk + ".2", "sk", "2"),
        ]

    def test_hostile_keys_are_listed_as_written(self, cache: BaseCache, pk: str) -> None:
        expected = []
        for key in HOSTILE_KEYS:
            cache.set(pk + key, key, key + "\n")
            cache.set(pk, key, key)
            expected += [CacheEntry(pk + key, key, key + "\n"), CacheEntry(pk, key, key)]
        assert sorted(cache.entries(prefix=pk)) == sorted(expected)
        assert sorted(cache.entries(pk)) == sorted(CacheEntry(pk, k, k) for k in HOSTILE_KEYS)

    def test_large_value_is_listed_whole(self, cache: BaseCache, pk: str) -> None:
        value = random_text(300_000, seed=3)
        cache.set(pk, "big", value)
        assert list(cache.entries(pk)) == [CacheEntry(pk, "big", value)]

    def test_bad_listing_arguments(self, cache: BaseCache, pk: str) -> None:
        with pytest.raises(ValueError, match="not both"):
            cache.entries(pk, prefix=pk)
        with pytest.raises(ValueError):
            cache.entries("")
        with pytest.raises(TypeError):
            cache.entries(1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            cache.entries(prefix=b"x")  # type: ignore[arg-type]
