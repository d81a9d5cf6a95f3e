"""The fixtures every part of the suite declares: the handler under test, and more of it.

A test class provides ``cache`` (a ready handler). A class testing a store shared
between processes also provides ``cache_factory``: a picklable callable (a module-level
function or a :func:`functools.partial` of one) that returns a ready handler on the same
store, called once in every worker process. The suite checks that the two really share
a store before it starts any process, so a factory pointing elsewhere fails at once with
a message saying so, not minutes later with a bare
:class:`~grove.exceptions.NotFoundException`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from grove.caches import BaseCache
from grove.caches.testing.support import fresh_pk
from grove.exceptions import NotFoundException


class HandlerFixtures:
    """Declares ``cache``, the handler under test, and ``pk``, a fresh partition key."""

    @pytest.fixture
    def cache(self) -> BaseCache:
        """A ready handler. Override this fixture in the subclass."""
        raise NotImplementedError("define a `cache` fixture that returns a ready handler")

    @pytest.fixture
    def pk(self) -> str:
        """A partition key no other test uses."""
        return fresh_pk()


class SharedStoreFixtures(HandlerFixtures):
    """Adds ``cache_factory``, and ``shared_cache_factory``: the same, checked."""

    @pytest.fixture
    def cache_factory(self) -> Callable[[], BaseCache]:
        """A picklable callable that returns a ready handler. Override in the subclass."""
        raise NotImplementedError("define a `cache_factory` fixture")

    @pytest.fixture
    def shared_cache_factory(
        self, cache: BaseCache, cache_factory: Callable[[], BaseCache]
    ) -> Callable[[], BaseCache]:
        """``cache_factory``, once a handler it makes has read what ``cache`` wrote.

        :raises pytest.fail.Exception: When the two handlers do not share a store.
        """
        check_shared_store(cache, cache_factory)
        return cache_factory


def check_shared_store(cache: BaseCache, cache_factory: Callable[[], BaseCache]) -> None:
    """Fail the test unless a handler from ``cache_factory`` sees what ``cache`` writes.

    :param cache: The handler of the ``cache`` fixture.
    :param cache_factory: The factory of the ``cache_factory`` fixture.
    """
    pk = fresh_pk("shared-store-check")
    cache.set(pk, "probe", pk)
    try:
        seen: str | None = cache_factory().get(pk, "probe")
    except NotFoundException:
        seen = None
    finally:
        cache.delete(pk, "probe")
    if seen != pk:
        pytest.fail(
            "the `cache_factory` fixture makes handlers on another store than the `cache` "
            f"fixture: a value written through {type(cache).__qualname__} was "
            f"{'not found' if seen is None else 'read back different'} through the factory; "
            "point both at the same store",
            pytrace=False,
        )
