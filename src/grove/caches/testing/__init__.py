"""The conformance suite: every handler must pass it, built-in or third-party.

It checks the contract of ``DESIGN.md`` on a real handler: every row of the semantics
table, the key and value rules, the error types, a property-based comparison with a dict
model, and contention between threads (and, for stores shared between processes,
between processes). It needs ``pytest`` and ``hypothesis`` (the ``testing`` extra).

Use it from a handler's own tests by subclassing and providing a ``cache`` fixture that
yields a ready handler::

    import pytest
    from grove.caches.testing import CacheConformance

    class TestMyHandler(CacheConformance):
        @pytest.fixture
        def cache(self, tmp_path):
            return MyHandler(MyConfiguration(path=str(tmp_path)))

A handler whose store is shared between processes subclasses
:class:`SharedCacheConformance` instead and also provides ``cache_factory``: a picklable
callable (a module-level function or a :func:`functools.partial` of one) that returns a
ready handler on the same store, called once in every worker process.

Every test writes under a fresh partition key, so the fixture may return a handler on a
store that other tests share. Class attributes scale the contention tests to a slow
backend. A handler that declares :attr:`~grove.caches.BaseCache.max_value_bytes` below
the contract's 4 MiB is checked to refuse larger values; the gap is printed, and listed
at the end of the run when ``pytest_plugins = ["grove.caches.testing"]`` is in a
``conftest.py``.

The suite is a package with one module per concern, each usable alone:

- :mod:`~grove.caches.testing.base`: the fixtures every part declares, and the check
  that ``cache`` and ``cache_factory`` share a store;
- :mod:`~grove.caches.testing.contract`: the semantics table;
- :mod:`~grove.caches.testing.keys_values`: the key and value rules;
- :mod:`~grove.caches.testing.model`: the property-based comparison with a dict;
- :mod:`~grove.caches.testing.contention`: threads and processes racing, and
  :func:`run_in_processes` for races of a handler's own;
- :mod:`~grove.caches.testing.conformance`: all of the above as
  :class:`CacheConformance` and :class:`SharedCacheConformance`;
- :mod:`~grove.caches.testing.listing`, :mod:`~grove.caches.testing.expiry`,
  :mod:`~grove.caches.testing.leases` (with :mod:`~grove.caches.testing.fencing`): the
  optional abilities.
"""

from grove.caches.testing.base import HandlerFixtures, SharedStoreFixtures, check_shared_store
from grove.caches.testing.conformance import CacheConformance, SharedCacheConformance
from grove.caches.testing.contention import increment_until, run_in_processes
from grove.caches.testing.expiry import (
    ExpiryConformance,
    ManualClock,
    ServerClock,
    SharedExpiryConformance,
)
from grove.caches.testing.fencing import CallCounter, FencedResource, Hold, lease_violations
from grove.caches.testing.leases import LeaseConformance
from grove.caches.testing.listing import ListingConformance
from grove.caches.testing.support import (
    CONTRACT_VALUE_BYTES,
    HOSTILE_KEYS,
    fresh_pk,
    pytest_terminal_summary,
    random_text,
)

__all__ = [
    "CONTRACT_VALUE_BYTES",
    "HOSTILE_KEYS",
    "CacheConformance",
    "CallCounter",
    "ExpiryConformance",
    "FencedResource",
    "HandlerFixtures",
    "Hold",
    "LeaseConformance",
    "ListingConformance",
    "ManualClock",
    "ServerClock",
    "SharedCacheConformance",
    "SharedExpiryConformance",
    "SharedStoreFixtures",
    "check_shared_store",
    "fresh_pk",
    "increment_until",
    "lease_violations",
    "pytest_terminal_summary",
    "random_text",
    "run_in_processes",
]
