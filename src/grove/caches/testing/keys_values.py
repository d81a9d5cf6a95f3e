"""The key and value rules: hostile keys, limits, argument types, messages."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from grove.caches import BaseCache
from grove.caches.testing.base import HandlerFixtures
from grove.caches.testing.support import (
    CONTRACT_VALUE_BYTES,
    HOSTILE_KEYS,
    declared_limits,
    limit_report,
    random_text,
)
from grove.caches.validation import MAX_KEY_BYTES
from grove.exceptions import DataFormatException, NotFoundException


class KeyAndValueTests(HandlerFixtures):
    """The key and value rules: hostile keys, limits, argument types, messages."""

    # -- keys ------------------------------------------------------------------------

    @pytest.mark.parametrize("key", HOSTILE_KEYS)
    def test_hostile_key_round_trips(self, cache: BaseCache, pk: str, key: str) -> None:
        cache.set(pk + key, key, f"pk-suffix={key}")
        cache.set(pk, key, f"sk={key}")
        assert cache.get(pk + key, key) == f"pk-suffix={key}"
        assert cache.get(pk, key) == f"sk={key}"
        cache.set(pk, key, "next", constraint=f"sk={key}")
        cache.delete(pk, key, constraint="next")
        with pytest.raises(NotFoundException):
            cache.get(pk, key)
        assert cache.get(pk + key, key) == f"pk-suffix={key}"

    def test_hostile_keys_never_collide(self, cache: BaseCache, pk: str) -> None:
        for index, key in enumerate(HOSTILE_KEYS):
            cache.set(pk, key, str(index))
        for index, key in enumerate(HOSTILE_KEYS):
            assert cache.get(pk, key) == str(index), key

    @pytest.mark.parametrize(
        ("left", "right"),
        [
            (("a/b", "c"), ("a", "b/c")),
            (("x", "a.cache"), ("x", "a")),
            (("x", "%2F"), ("x", "/")),
            (("x", "%252F"), ("x", "%2F")),
            (("p", "Key"), ("p", "key")),
            (("p", "\u00e9"), ("p", "e\u0301")),
        ],
        ids=["slash-shift", "suffix", "escape", "double-escape", "case", "nfc"],
    )
    def test_similar_keys_are_distinct(
        self,
        cache: BaseCache,
        pk: str,
        left: tuple[str, str],
        right: tuple[str, str],
    ) -> None:
        entries = [(pk + left[0], left[1]), (pk + right[0], right[1])]
        for index, (entry_pk, entry_sk) in enumerate(entries):
            cache.set(entry_pk, entry_sk, str(index))
        for index, (entry_pk, entry_sk) in enumerate(entries):
            assert cache.get(entry_pk, entry_sk) == str(index)

    @pytest.mark.parametrize(
        "unit",
        ["k", "\u00e9", "\u20ac", "\U0001f332"],
        ids=["1-byte", "2-byte", "3-byte", "4-byte"],
    )
    def test_longest_keys_round_trip(self, cache: BaseCache, unit: str) -> None:
        def exactly_max_bytes(start: str) -> str:
            units = (MAX_KEY_BYTES - len(start)) // len(unit.encode("utf-8"))
            key = start + unit * units
            return key + "k" * (MAX_KEY_BYTES - len(key.encode("utf-8")))

        longest = exactly_max_bytes("")
        # The sort key makes the entry unique; it is at the limit too.
        sort_key = exactly_max_bytes(uuid.uuid4().hex)
        assert len(longest.encode()) == len(sort_key.encode()) == MAX_KEY_BYTES
        cache.set(longest, sort_key, "v")
        assert cache.get(longest, sort_key) == "v"
        cache.delete(longest, sort_key)
        with pytest.raises(NotFoundException):
            cache.get(longest, sort_key)

    @pytest.mark.parametrize(
        "bad_key",
        ["", "k" * (MAX_KEY_BYTES + 1), "\U0001f332" * 256 + "k", "lone\ud800surrogate"],
        ids=["empty", "1025-ascii", "1025-utf8", "surrogate"],
    )
    def test_invalid_key_is_a_value_error(self, cache: BaseCache, pk: str, bad_key: str) -> None:
        for call in (
            lambda: cache.get(pk, bad_key),
            lambda: cache.get(bad_key, "sk"),
            lambda: cache.set(pk, bad_key, "v"),
            lambda: cache.set(bad_key, "sk", "v", not_set=True),
            lambda: cache.delete(pk, bad_key),
            lambda: cache.delete(bad_key, "sk", constraint="v"),
        ):
            with pytest.raises(ValueError):
                call()

    @pytest.mark.parametrize("bad", [None, 1, b"bytes", ["list"]], ids=repr)
    def test_non_string_arguments_are_type_errors(
        self, cache: BaseCache, pk: str, bad: Any
    ) -> None:
        cache.set(pk, "sk", "v")
        for call in (
            lambda: cache.get(bad, "sk"),
            lambda: cache.get(pk, bad),
            lambda: cache.set(bad, "sk", "v"),
            lambda: cache.set(pk, bad, "v"),
            lambda: cache.delete(bad, "sk"),
            lambda: cache.delete(pk, bad),
        ):
            with pytest.raises(TypeError):
                call()
        if bad is not None:  # None is a valid (absent) constraint
            with pytest.raises(TypeError):
                cache.set(pk, "sk", "w", constraint=bad)
            with pytest.raises(TypeError):
                cache.delete(pk, "sk", constraint=bad)
            with pytest.raises(TypeError):
                cache.set(pk, "sk", bad)
        assert cache.get(pk, "sk") == "v"

    def test_value_error_changes_nothing(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "sk", "v")
        with pytest.raises(ValueError):
            cache.set(pk, "sk", "bad\udc80value")
        assert cache.get(pk, "sk") == "v"

    def test_messages_never_contain_values_or_constraints(self, cache: BaseCache, pk: str) -> None:
        """Values and constraints hold tokens and pointers: no message may show them."""
        secret = f"secret-value-{uuid.uuid4().hex}"
        other = f"secret-constraint-{uuid.uuid4().hex}"
        cache.set(pk, "sk", secret)
        calls: list[Callable[[], object]] = [
            lambda: cache.set(pk, "sk", other, not_set=True),
            lambda: cache.set(pk, "sk", other, constraint=other),
            lambda: cache.set(pk, "absent", secret, constraint=other),
            lambda: cache.delete(pk, "sk", constraint=other),
            lambda: cache.delete(pk, "absent", constraint=secret),
            lambda: cache.get(pk, "absent"),
            lambda: cache.set(pk, "sk", other, not_set=True, constraint=secret),
            lambda: cache.set(pk, "sk", secret + "\udc80" + other),
            lambda: cache.set(pk, "sk", other, constraint=secret + "\udc80"),
        ]
        limit = type(cache).max_value_bytes
        if limit is not None:
            calls.append(lambda: cache.set(pk, "sk", secret + "x" * limit))
        provoked: list[BaseException] = []
        expected_errors = (DataFormatException, NotFoundException, ValueError)
        for call in calls:
            with pytest.raises(expected_errors) as info:
                call()
            provoked.append(info.value)
        assert cache.get(pk, "sk") == secret
        for exc in provoked:
            chain: BaseException | None = exc
            assert secret not in repr(exc) and other not in repr(exc), repr(exc)
            while chain is not None:  # as a traceback prints the chain
                assert secret not in str(chain) and other not in str(chain), str(chain)
                chain = chain.__cause__ or chain.__context__

    # -- values ----------------------------------------------------------------------

    @pytest.mark.parametrize(
        "value",
        [
            "",
            " ",
            "line\nbreak",
            "crlf\r\nline",
            "lone\rreturn",
            "nul\x00inside",
            "trailing newline\n",
            "\ufeffbyte order mark",
            "\u00e9t\u00e9 \u20ac \U0001f332 \u4e2d\u6587",
            "e\u0301",
            '{"json": ["list", 1, null]}',
            "\\x00 not an escape",
        ],
        ids=repr,
    )
    def test_value_round_trips_exactly(self, cache: BaseCache, pk: str, value: str) -> None:
        cache.set(pk, "sk", value)
        assert cache.get(pk, "sk") == value
        cache.set(pk, "sk", value + "!", constraint=value)
        assert cache.get(pk, "sk") == value + "!"

    def test_large_values_round_trip_or_are_refused(self, cache: BaseCache, pk: str) -> None:
        limit = type(cache).max_value_bytes
        if limit is not None and limit < CONTRACT_VALUE_BYTES:
            report = limit_report(type(cache), limit)
            declared_limits[f"{type(cache).__module__}.{type(cache).__qualname__}"] = limit
            print(report)
            cache.set(pk, "big", "small")
            for too_big in ("x" * (limit + 1), "\u00e9" * (limit // 2 + 1)):
                with pytest.raises(ValueError, match=str(limit)):
                    cache.set(pk, "big", too_big)
                with pytest.raises(ValueError):
                    cache.set(pk, "new", too_big, not_set=True)
            assert cache.get(pk, "big") == "small"
            with pytest.raises(NotFoundException):
                cache.get(pk, "new")
            sizes = [limit]
        else:
            sizes = [CONTRACT_VALUE_BYTES]
        for size in sizes:
            for value in (
                random_text(size, seed=size),
                "\u00e9" * (size // 2),
                "\U0001f332" * (size // 4),
            ):
                cache.set(pk, "big", value)
                assert cache.get(pk, "big") == value
                cache.set(pk, "big", "after", constraint=value)
                assert cache.get(pk, "big") == "after"
                cache.set(pk, "big", value)
                cache.delete(pk, "big", constraint=value)
