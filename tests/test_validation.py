"""The shared key and value rules, including their hot-path shortcuts."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grove.caches.validation import (
    MAX_KEY_BYTES,
    check_key,
    check_value,
    entry_is_plain,
    key_is_plain,
)


@given(st.text(max_size=400), st.text(max_size=400), st.text(max_size=50))
def test_shortcuts_never_accept_what_the_full_check_refuses(pk: str, sk: str, value: str) -> None:
    def full_check_accepts() -> bool:
        try:
            check_key(pk, sk)
            check_value(value, max_bytes=20)
        except ValueError:
            return False
        return True

    if entry_is_plain(pk, sk, value, 20):
        assert full_check_accepts()
    if key_is_plain(pk, sk):
        check_key(pk, sk)


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
