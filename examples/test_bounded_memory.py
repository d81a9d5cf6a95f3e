"""The bounded_memory handler's own tests: the shipped conformance suite, plus its limit.

Run them with ``pytest examples/test_bounded_memory.py`` (``pip install
'grove-caches[testing]'`` brings pytest and hypothesis). The repository's suite runs them
too (``tests/test_example_handler.py``), so the example cannot rot.
"""

from __future__ import annotations

import pytest

from examples.bounded_memory import Configuration, Handler
from grove.caches.testing import CacheConformance, ListingConformance
from grove.exceptions import AccessException


class TestBoundedMemory(CacheConformance, ListingConformance):
    """Every test of the contract and of the listing ability, on a fresh handler."""

    @pytest.fixture
    def cache(self) -> Handler:
        """A ready handler (the suite calls it once per test)."""
        return Handler(Configuration(max_entries=100_000))


def test_a_write_beyond_the_limit_is_an_access_error_naming_the_store() -> None:
    """A full store refuses a new entry with AccessException; overwrites still work."""
    cache = Handler(Configuration(max_entries=2))
    cache.set("pointer.example.1", "all", "a")
    cache.set("pointer.example.2", "all", "b")
    cache.set("pointer.example.2", "all", "c")  # an overwrite adds no entry
    with pytest.raises(AccessException, match=r"bounded_memory cache \(max 2 entries\)"):
        cache.set("pointer.example.3", "all", "d")
    assert cache.get("pointer.example.2", "all") == "c"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Handler()`` reads its settings from the environment, as ``load()`` builds it."""
    monkeypatch.setenv("GROVE_CACHE_BOUNDED_MEMORY_MAX_ENTRIES", "7")
    assert Handler().config.max_entries == 7
