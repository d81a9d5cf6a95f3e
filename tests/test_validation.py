"""The shared key and value rules, including their hot-path shortcuts."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grove.caches.validation import (
    KNOWN_KEYS,
    MAX_KEY_BYTES,
    check_key,
    check_one_key,
    check_value,
    checked_key,
    key_is_plain,
)


def _accepted(key: str) -> bool:
    try:
        check_one_key(key, what="key")
    except ValueError:
        return False
    return True


@given(st.text(max_size=400), st.text(max_size=400))
def test_shortcuts_never_accept_what_the_full_check_refuses(pk: str, sk: str) -> None:
    valid = _accepted(pk) and _accepted(sk)
    if key_is_plain(pk, sk):
        assert valid
    if valid:
        assert checked_key(pk, sk) == (pk, sk)
        assert pk in KNOWN_KEYS
        assert sk in KNOWN_KEYS
    else:
        with pytest.raises(ValueError):
            checked_key(pk, sk)
    # A key known to the hot path is one the full check accepts.
    for key in (pk, sk):
        assert key not in KNOWN_KEYS or _accepted(key)


def test_known_keys_are_exact_strings_and_bounded() -> None:
    class Lying(str):
        __slots__ = ()

    exact_pk, _ = checked_key(Lying("pointer.x"), "op")
    assert type(exact_pk) is str
    assert all(type(key) is str for key in KNOWN_KEYS)
    for index in range(5000):
        checked_key(f"pk{index}", "sk")
    assert len(KNOWN_KEYS) <= 4096


def test_limit_is_in_bytes_not_characters() -> None:
    check_key("\u00e9" * (MAX_KEY_BYTES // 2), "sk")
    with pytest.raises(ValueError, match="1026 bytes"):
        check_key("\u00e9" * (MAX_KEY_BYTES // 2 + 1), "sk")


def test_value_limit_is_in_bytes() -> None:
    check_value("\u00e9" * 5, max_bytes=10)
    with pytest.raises(ValueError, match=r"12 bytes.*at most 10"):
        check_value("\u00e9" * 6, max_bytes=10)


def test_errors_name_the_argument() -> None:
    with pytest.raises(TypeError, match="sk must be a str, not int"):
        check_key("pk", 1)
    with pytest.raises(ValueError, match="pk must not be empty"):
        check_key("", "sk")
    with pytest.raises(ValueError, match="constraint is not valid Unicode"):
        check_value("\ud800", max_bytes=None, what="constraint")
