"""The key and value rules that every built-in handler shares.

Keys (``pk`` and ``sk``) are non-empty ``str`` of at most :data:`MAX_KEY_BYTES` bytes of
UTF-8. Values and constraints are ``str``. Every string must be encodable as UTF-8, so a
lone surrogate (which no backend can store byte for byte) is refused. A key or value that
breaks a rule raises before any storage is touched: ``TypeError`` for a wrong type,
``ValueError`` for a wrong content.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast

MAX_KEY_BYTES = 1024
"""The largest key, in bytes of UTF-8, that every handler accepts."""

# A str of at most this many characters is at most MAX_KEY_BYTES bytes of UTF-8 (a code
# point takes at most four bytes), so short keys skip the encoding on the hot path.
_SHORT_KEY_CHARS = MAX_KEY_BYTES // 4


def utf8_size(text: str, *, what: str) -> int:
    """Return the size of ``text`` in bytes of UTF-8.

    :param text: The string to measure.
    :param what: How to name the string in an error message (``"pk"``, ``"value"``).
    :raises ValueError: The string holds a lone surrogate, which UTF-8 cannot encode.
    :return: The number of bytes.
    """
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is not valid Unicode (lone surrogate at index {exc.start})"
        ) from exc


def check_key(pk: object, sk: object) -> None:
    """Check a partition key and a sort key against the key rules.

    :param pk: The partition key.
    :param sk: The sort key.
    :raises TypeError: A key is not a ``str``.
    :raises ValueError: A key is empty, longer than :data:`MAX_KEY_BYTES` bytes of UTF-8,
        or not valid Unicode.
    """
    check_one_key(pk, what="pk")
    check_one_key(sk, what="sk")


KNOWN_KEYS: set[str] = set()
"""Keys, each an exact ``str``, that passed the key rules: the hot path's plain-key
check is ``type(key) is str and key in KNOWN_KEYS``, one set lookup on a hash the string
already holds. :func:`checked_key` fills it; it is emptied when it reaches
:data:`KNOWN_KEYS_LIMIT` keys, so it never holds more than a few megabytes."""

KNOWN_KEYS_LIMIT = 4096
"""The most keys :data:`KNOWN_KEYS` holds before it starts again from empty."""


def checked_key(pk: object, sk: object) -> tuple[str, str]:
    """Check both keys against the key rules, and return them as exact ``str`` objects.

    The slow path of the plain-key check: a ``str`` subclass (whose ``__eq__`` could
    lie) is copied to a plain ``str``, and the checked keys join :data:`KNOWN_KEYS`.

    :param pk: The partition key.
    :param sk: The sort key.
    :raises TypeError: A key is not a ``str``.
    :raises ValueError: A key breaks the key rules.
    :return: The keys, as exact ``str`` objects.
    """
    if key_is_plain(pk, sk):
        exact_pk, exact_sk = cast(str, pk), cast(str, sk)
    else:
        check_key(pk, sk)
        exact_pk, exact_sk = str.__str__(cast(str, pk)), str.__str__(cast(str, sk))
    if len(KNOWN_KEYS) >= KNOWN_KEYS_LIMIT:
        KNOWN_KEYS.clear()
    KNOWN_KEYS.add(exact_pk)
    KNOWN_KEYS.add(exact_sk)
    return exact_pk, exact_sk


def check_one_key(key: object, *, what: str) -> None:
    """Check one key against the key rules.

    :param key: The key.
    :param what: How to name the key in an error message.
    :raises TypeError: The key is not a ``str``.
    :raises ValueError: The key is empty, longer than :data:`MAX_KEY_BYTES` bytes of
        UTF-8, or not valid Unicode.
    """
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError(f"{what} must not be empty")
    if len(key) > _SHORT_KEY_CHARS or not key.isascii():
        size = utf8_size(key, what=what)
        if size > MAX_KEY_BYTES:
            raise ValueError(f"{what} is {size} bytes of UTF-8; the limit is {MAX_KEY_BYTES}")


def key_is_plain(pk: object, sk: object) -> bool:
    """Tell whether both keys pass the rules without a closer look.

    This is the hot-path test: ASCII keys of 1 to 256 characters, the keys Grove itself
    writes. Any other key goes through :func:`check_key`.

    :param pk: The partition key, known to be a ``str`` or not.
    :param sk: The sort key, likewise.
    :return: ``True`` when the keys are certainly valid.
    """
    return (
        type(pk) is str
        and type(sk) is str
        and 0 < len(pk) <= _SHORT_KEY_CHARS
        and 0 < len(sk) <= _SHORT_KEY_CHARS
        and pk.isascii()
        and sk.isascii()
    )


def check_value(value: object, *, max_bytes: int | None, what: str = "value") -> None:
    """Check a value (or a constraint) against the value rules.

    :param value: The value to check.
    :param max_bytes: The largest value the handler stores, in bytes of UTF-8, or
        ``None`` when it sets no limit.
    :param what: How to name the value in an error message.
    :raises TypeError: The value is not a ``str``.
    :raises ValueError: The value is not valid Unicode, or larger than ``max_bytes``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    size = utf8_size(value, what=what)
    if max_bytes is not None and size > max_bytes:
        raise ValueError(
            f"{what} is {size} bytes of UTF-8; this handler stores at most {max_bytes}"
        )


MAX_TTL_SECONDS = 10 * 366 * 24 * 3600.0
"""The longest time to live a handler accepts: ten years (of 366 days)."""


def check_ttl(ttl: object) -> float:
    """Check a time to live and return it in seconds.

    :param ttl: Seconds as an ``int`` or ``float``, or a :class:`datetime.timedelta`.
    :raises TypeError: ``ttl`` is of another type (``bool`` included).
    :raises ValueError: ``ttl`` is not a finite number above zero and at most ten years.
    :return: The time to live in seconds.
    """
    if type(ttl) is float or type(ttl) is int:  # the common case first: set() is hot
        seconds = float(ttl)
    elif isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"ttl must be seconds or a timedelta, not {type(ttl).__name__}")
    if not 0 < seconds <= MAX_TTL_SECONDS:  # NaN fails both comparisons
        raise ValueError(f"ttl must be above 0 and at most 10 years, not {seconds!r} seconds")
    return seconds
