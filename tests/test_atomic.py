"""The rule layer for handlers built on AtomicCache without the expiry ability."""

import threading
from collections.abc import Iterator

import pytest

from grove.caches.atomic import ABSENT, ANY, AtomicCache, Expected, ExpectedToRemove, Stored
from grove.caches.testing import CacheConformance


class DictCache(AtomicCache):
    """A third-party-style handler: the three primitives, nothing more."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()

    def _read(self, pk: str, sk: str) -> Stored:
        return self.data.get((pk, sk), ABSENT)

    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        with self.lock:
            if expected is not ANY and self.data.get((pk, sk), ABSENT) != expected:
                return False
            self.data[(pk, sk)] = value
            return True

    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        with self.lock:
            current = self.data.get((pk, sk), ABSENT)
            if current is ABSENT:
                return expected is ANY
            if expected is not ANY and current != expected:
                return False
            del self.data[(pk, sk)]
            return True


class TestHandlerWithoutExpiry(CacheConformance):
    @pytest.fixture
    def cache(self) -> Iterator[DictCache]:
        yield DictCache()


def test_ttl_on_a_handler_without_expiry_is_not_implemented() -> None:
    cache = DictCache()
    assert not cache.supports_expiry()
    with pytest.raises(NotImplementedError, match="cannot expire entries"):
        cache.set("pk", "sk", "v", ttl=60)
    with pytest.raises(ValueError, match="ttl"):
        cache.set("pk", "sk", "v", ttl=-1)
    assert cache.data == {}
