"""Leases: the conformance section on every shared handler, and what the lease does alone.

Also the refusal path that leases rely on: a refused condition says what was stored.
"""

from __future__ import annotations

import pickle

import pytest
from test_atomic import DictCache

from grove.caches.local_memory import Handler as Memory
from grove.exceptions import DataFormatException

# -- refusals report what was stored ---------------------------------------------------


def refusal(call: object) -> DataFormatException:
    assert callable(call)
    with pytest.raises(DataFormatException) as info:
        call()
    return info.value


def test_local_memory_refusals_say_what_was_stored() -> None:
    cache = Memory()
    cache.set("pk", "lock", "theirs")
    for call in (
        lambda: cache.set("pk", "lock", "mine", not_set=True),
        lambda: cache.set("pk", "lock", "mine", constraint="guess"),
        lambda: cache.set("pk", "lock", "mine", constraint="guess", ttl=60),
        lambda: cache.delete("pk", "lock", constraint="guess"),
    ):
        error = refusal(call)
        assert (error.current_known, error.current) == (True, "theirs")
    cache.set("pk", "empty", "")
    error = refusal(lambda: cache.set("pk", "empty", "x", not_set=True))
    assert (error.current_known, error.current) == (True, "")


def test_local_memory_refusals_over_nothing_say_nothing_is_stored() -> None:
    cache = Memory()
    for call in (
        lambda: cache.set("pk", "absent", "mine", constraint="guess"),
        lambda: cache.delete("pk", "absent", constraint="guess"),
    ):
        error = refusal(call)
        assert (error.current_known, error.current) == (True, None)


def test_a_primitive_returning_false_reports_nothing() -> None:
    """The richer refusal is optional: a primitive returning plain False still works."""
    cache = DictCache()
    cache.set("pk", "lock", "theirs")
    for call in (
        lambda: cache.set("pk", "lock", "mine", not_set=True),
        lambda: cache.set("pk", "lock", "mine", constraint="guess"),
        lambda: cache.delete("pk", "lock", constraint="guess"),
        lambda: cache.delete("pk", "absent", constraint="guess"),
    ):
        error = refusal(call)
        assert (error.current_known, error.current) == (False, None)
    assert not DictCache.reports_current and Memory.reports_current


def test_the_reported_value_stays_out_of_messages_and_survives_pickling() -> None:
    cache = Memory()
    cache.set("pk", "lock", "secret-token-1234")
    error = refusal(lambda: cache.set("pk", "lock", "mine", not_set=True))
    assert "secret-token-1234" not in str(error) and "secret-token-1234" not in repr(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.current_known, copy.current, str(copy)) == (True, "secret-token-1234", str(error))


def test_upstream_style_construction_still_works() -> None:
    error = DataFormatException("set refused")
    assert (str(error), error.current, error.current_known) == ("set refused", None, False)
    assert DataFormatException("x", current="v").current_known
