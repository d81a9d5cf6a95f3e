"""The item layout of the table and the expressions over it.

An item of the key holds the value as the string ``data`` (upstream Grove's shape) up to
:data:`INLINE_VALUE_BYTES`, else it is a *head*: ``packed`` bytes with their ``digest``,
or ``version`` and ``parts`` of chunk items, with the ``digest``. The expiry is the
number attribute the configuration names (``#ttl``). Invariants: an item with neither
``data`` nor ``digest`` holds no value; every condition that tests a value also tests
that it has not expired by ``:now``, the caller's clock, so expiry is decided inside the
same single request; ``constraint`` is compared by digest when the value may be larger
than one item.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from grove.caches.atomic import ABSENT, ANY, Expected

INLINE_VALUE_BYTES = 400_000
"""The largest value, in bytes of UTF-8, stored as the string ``data`` of one item.

DynamoDB's item limit is 400 KB including attribute names and the keys; this leaves room
for two keys of the largest allowed size (1024 bytes each)."""

MAX_VALUE_BYTES = 16 * 1024 * 1024
"""The largest value, in bytes of UTF-8, that the handler stores (compressed and split
when it must be)."""

WRITE_DEADLINE = 600.0
"""Seconds after which a writer that is still writing chunks gives up instead of
switching the head to them; :meth:`Handler.maintain` only removes older chunks."""

GARBAGE_AGE = 3600.0
"""Seconds after which :meth:`Handler.maintain` deletes chunks that no value names, by
default: well above :data:`WRITE_DEADLINE`, so a write in flight keeps its chunks."""

_UPSTREAM_DATA_BYTES = 409_600
"""The largest ``data`` string any writer (upstream Grove) can have stored in one item."""

_LARGE_ATTRIBUTES = ["#packed", "#digest", "#version", "#parts"]
_NAMES = {
    "#data": "data",
    "#packed": "packed",
    "#digest": "digest",
    "#version": "version",
    "#parts": "parts",
}
_PRESENT = "(attribute_exists(#data) OR attribute_exists(#digest))"
_ABSENT = "attribute_not_exists(#data) AND attribute_not_exists(#digest)"
_NOT_LARGE = "attribute_not_exists(#digest)"
_ALIVE = "(attribute_not_exists(#ttl) OR #ttl > :now)"
_EXPIRED = "#ttl <= :now"
_OWN_ATTRIBUTES = frozenset({"pk", "sk", *_NAMES.values(), "part", "of_pk", "of_sk", "at"})
_CHUNK_EXPIRY_MARGIN = 86_400.0
"""Chunks of an expiring value expire this much later than their head, so DynamoDB's
own TTL never removes a chunk while a clock that lags by less than a day still reads
its head."""


def _seconds(moment: float) -> str:
    """A moment as a DynamoDB number: seconds since the epoch, to the millisecond."""
    return f"{moment:.3f}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def condition_for(
    expected: Expected, values: dict[str, Any], clock: Callable[[], float]
) -> tuple[str | None, bool]:
    """The condition for ``expected``, and whether the stored value may be chunked.

    An expired entry is absent inside the condition itself: ``not_set`` passes over
    it, and no value matches it (``:now`` is the caller's clock, read only when needed).

    :param values: The request's attribute values, to which this adds its own.
    """
    if expected is ANY:
        return None, True
    values[":now"] = {"N": _seconds(clock())}
    if expected is ABSENT:
        # What is there may be an expired large value, whose chunks must then go.
        return f"({_ABSENT}) OR {_EXPIRED}", True
    if expected.isascii() and len(expected) <= INLINE_VALUE_BYTES:
        values[":expected"] = {"S": expected}
        return f"#data = :expected AND {_ALIVE}", False
    data = expected.encode("utf-8")
    if len(data) <= INLINE_VALUE_BYTES:
        values[":expected"] = {"S": expected}
        return f"#data = :expected AND {_ALIVE}", False
    values[":digest_expected"] = {"S": _digest(data)}
    if len(data) > _UPSTREAM_DATA_BYTES:
        return f"#digest = :digest_expected AND {_ALIVE}", True
    values[":expected"] = {"S": expected}
    return f"(#data = :expected OR #digest = :digest_expected) AND {_ALIVE}", True


def attribute_names(ttl_attribute: str, *expressions: str) -> dict[str, str]:
    """The attribute names the expressions use; DynamoDB refuses unused ones."""
    text = " ".join(expressions)
    names = {token: name for token, name in _NAMES.items() if token in text}
    if "#ttl" in text:
        names["#ttl"] = ttl_attribute
    return names


def update_expression(
    sets: list[str], removes: list[str], expires: float | None, values: dict[str, Any]
) -> str:
    """An update expression that also sets the expiry, or removes it when ``None``."""
    if expires is None:
        removes = [*removes, "#ttl"]
    else:
        sets = [*sets, "#ttl = :expires"]
        values[":expires"] = {"N": _seconds(expires)}
    return "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
