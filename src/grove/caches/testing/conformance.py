"""The whole contract in two classes, composed from the parts of the suite.

:class:`CacheConformance` is every test that one handle on a store can run;
:class:`SharedCacheConformance` adds processes racing on a store they share. The parts
live in their own modules (one concern each) and can be mixed in alone, which is how the
optional abilities (:mod:`~grove.caches.testing.listing`,
:mod:`~grove.caches.testing.expiry`, :mod:`~grove.caches.testing.leases`) are added.
"""

from __future__ import annotations

from grove.caches.testing.contention import ProcessContentionTests, ThreadContentionTests
from grove.caches.testing.contract import ContractTableTests
from grove.caches.testing.keys_values import KeyAndValueTests
from grove.caches.testing.model import ModelTests


class CacheConformance(ContractTableTests, KeyAndValueTests, ModelTests, ThreadContentionTests):
    """The contract, as tests. Subclass it and provide a ``cache`` fixture."""


class SharedCacheConformance(CacheConformance, ProcessContentionTests):
    """The contract for stores shared between processes: adds process contention.

    Provide ``cache_factory`` besides ``cache``: a picklable callable that returns a
    ready handler on the same store as ``cache``. The suite checks that the two share a
    store before it starts any process.
    """
