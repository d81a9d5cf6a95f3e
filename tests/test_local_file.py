"""local_file: the conformance suite, plus what only a directory of files has."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from grove.caches.local_file import Configuration, Handler
from grove.caches.testing import ListingConformance, SharedCacheConformance


class TestLocalFileConformance(SharedCacheConformance, ListingConformance):
    process_workers = 4
    process_increments = 500
    process_racers = 8

    @pytest.fixture
    def cache(self, tmp_path: Path) -> Handler:
        handler = Handler(Configuration(path=str(tmp_path)))
        handler.setup()
        return handler

    @pytest.fixture
    def cache_factory(self, tmp_path: Path) -> Callable[[], Handler]:
        return functools.partial(Handler, Configuration(path=str(tmp_path)))
