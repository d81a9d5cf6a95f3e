"""The rule layer for handlers built on AtomicCache without the expiry ability."""

import threading
from collections.abc import Callable, Iterator

import pytest

from grove.caches import BaseCache, CacheEntry, Listing
from grove.caches.atomic import ABSENT, ANY, AtomicCache, Expected, ExpectedToRemove, Stored
from grove.caches.testing import CacheConformance
from grove.exceptions import AccessException, ConfigurationException, GroveException


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


class StorageDownError(Exception):
    """A driver's error."""


class MissingShelfError(StorageDownError):
    """The driver's way of saying that the configured storage does not exist."""


class FailingCache(DictCache, Listing):
    """Every primitive fails with the driver error it is given."""

    driver_errors = (StorageDownError,)

    def __init__(self, error: StorageDownError) -> None:
        super().__init__()
        self.error = error

    def location(self) -> str:
        return "failing cache at /srv/x"

    def _classify(self, operation: str, exc: Exception) -> tuple[type[GroveException], str]:
        if isinstance(exc, MissingShelfError):
            return ConfigurationException, "no shelf; create it with grove-cache init"
        return super()._classify(operation, exc)

    def _read(self, pk: str, sk: str) -> Stored:
        raise self.error

    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        raise self.error

    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        raise self.error

    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        raise self.error


CALLS: dict[str, Callable[[BaseCache], object]] = {
    "get of pk='pk' sk='sk'": lambda cache: cache.get("pk", "sk"),
    "set of pk='pk' sk='sk'": lambda cache: cache.set("pk", "sk", "secret", constraint="old"),
    "delete of pk='pk' sk='sk'": lambda cache: cache.delete("pk", "sk", constraint="old"),
    "listing of prefix='pk'": lambda cache: list(cache.entries(prefix="pk")),
    "listing of all entries": lambda cache: list(cache.entries()),
}


@pytest.mark.parametrize("subject", CALLS)
def test_driver_errors_become_one_message_format(subject: str) -> None:
    error = StorageDownError("timed out")
    with pytest.raises(AccessException) as caught:
        CALLS[subject](FailingCache(error))
    detail = "StorageDownError: timed out"
    assert str(caught.value) == f"{subject} failed in failing cache at /srv/x: {detail}"
    assert caught.value.__cause__ is error


@pytest.mark.parametrize("subject", CALLS)
def test_a_handler_declares_what_its_driver_errors_mean(subject: str) -> None:
    with pytest.raises(ConfigurationException) as caught:
        CALLS[subject](FailingCache(MissingShelfError("404")))
    assert str(caught.value) == (
        f"{subject} failed in failing cache at /srv/x: no shelf; create it with grove-cache init"
    )
