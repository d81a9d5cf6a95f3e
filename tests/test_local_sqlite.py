"""local_sqlite: the conformance suite, plus what only a SQLite file has."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from grove.caches import BaseCache
from grove.caches.local_sqlite import Configuration, Handler
from grove.caches.testing import ListingConformance, SharedCacheConformance


class TestLocalSqliteConformance(SharedCacheConformance, ListingConformance):
    @pytest.fixture
    def database(self, tmp_path: Path) -> str:
        return str(tmp_path / "cache.db")

    @pytest.fixture
    def cache(self, database: str) -> Handler:
        return Handler(Configuration(path=database))

    @pytest.fixture
    def cache_factory(self, database: str) -> Callable[[], BaseCache]:
        return functools.partial(Handler, Configuration(path=database))
