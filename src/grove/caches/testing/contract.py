"""The semantics table of the contract: one test per row, and then some."""

from __future__ import annotations

import pytest

from grove.caches import BaseCache
from grove.caches.testing.base import HandlerFixtures
from grove.exceptions import DataFormatException, NotFoundException


class ContractTableTests(HandlerFixtures):
    """The semantics table of the contract: one test per row, and then some."""

    # -- get -------------------------------------------------------------------------

    def test_get_absent_raises_not_found(self, cache: BaseCache, pk: str) -> None:
        with pytest.raises(NotFoundException):
            cache.get(pk, "absent")

    def test_set_then_get_returns_the_value(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "sk", "2024-01-01T00:00:00Z")
        assert cache.get(pk, "sk") == "2024-01-01T00:00:00Z"

    def test_empty_string_is_a_stored_value(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "sk", "")
        assert cache.get(pk, "sk") == ""

    def test_set_overwrites(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "sk", "old")
        cache.set(pk, "sk", "new")
        assert cache.get(pk, "sk") == "new"

    def test_sort_keys_of_one_partition_are_separate(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "a", "1")
        cache.set(pk, "b", "2")
        cache.delete(pk, "a")
        assert cache.get(pk, "b") == "2"
        with pytest.raises(NotFoundException):
            cache.get(pk, "a")

    # -- not_set ---------------------------------------------------------------------

    def test_not_set_stores_when_absent(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "lock", "mine", not_set=True)
        assert cache.get(pk, "lock") == "mine"

    def test_not_set_refuses_when_present(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "lock", "theirs")
        with pytest.raises(DataFormatException):
            cache.set(pk, "lock", "mine", not_set=True)
        assert cache.get(pk, "lock") == "theirs"

    def test_not_set_refuses_when_empty_string_stored(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "lock", "")
        with pytest.raises(DataFormatException):
            cache.set(pk, "lock", "mine", not_set=True)
        assert cache.get(pk, "lock") == ""

    def test_not_set_after_delete_stores(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "lock", "old", not_set=True)
        cache.delete(pk, "lock")
        cache.set(pk, "lock", "new", not_set=True)
        assert cache.get(pk, "lock") == "new"

    # -- constraint ------------------------------------------------------------------

    def test_constraint_stores_when_equal(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "pointer", "1")
        cache.set(pk, "pointer", "2", constraint="1")
        assert cache.get(pk, "pointer") == "2"

    def test_constraint_refuses_when_different(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "pointer", "1")
        with pytest.raises(DataFormatException):
            cache.set(pk, "pointer", "2", constraint="0")
        assert cache.get(pk, "pointer") == "1"

    def test_constraint_refuses_when_absent(self, cache: BaseCache, pk: str) -> None:
        with pytest.raises(DataFormatException):
            cache.set(pk, "pointer", "2", constraint="1")
        with pytest.raises(NotFoundException):
            cache.get(pk, "pointer")

    def test_empty_constraint_matches_only_empty_value(self, cache: BaseCache, pk: str) -> None:
        with pytest.raises(DataFormatException):
            cache.set(pk, "pointer", "x", constraint="")
        cache.set(pk, "pointer", "")
        cache.set(pk, "pointer", "x", constraint="")
        assert cache.get(pk, "pointer") == "x"
        with pytest.raises(DataFormatException):
            cache.set(pk, "pointer", "y", constraint="")

    def test_constraint_compares_exactly(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "pointer", "Value\n")
        for near_miss in ("Value", "value\n", "Value\r\n", " Value\n", "Value\n "):
            with pytest.raises(DataFormatException):
                cache.set(pk, "pointer", "other", constraint=near_miss)
        assert cache.get(pk, "pointer") == "Value\n"

    @pytest.mark.parametrize("stored", [None, "", "1"], ids=["absent", "empty", "value"])
    def test_not_set_with_constraint_is_a_value_error(
        self, cache: BaseCache, pk: str, stored: str | None
    ) -> None:
        if stored is not None:
            cache.set(pk, "sk", stored)
        with pytest.raises(ValueError, match="not_set"):
            cache.set(pk, "sk", "2", not_set=True, constraint=stored or "1")
        if stored is None:
            with pytest.raises(NotFoundException):
                cache.get(pk, "sk")
        else:
            assert cache.get(pk, "sk") == stored

    # -- delete ----------------------------------------------------------------------

    def test_delete_absent_is_not_an_error(self, cache: BaseCache, pk: str) -> None:
        cache.delete(pk, "absent")
        with pytest.raises(NotFoundException):
            cache.get(pk, "absent")

    def test_delete_removes(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "sk", "v")
        cache.delete(pk, "sk")
        with pytest.raises(NotFoundException):
            cache.get(pk, "sk")

    def test_delete_with_constraint_removes_when_equal(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "lock", "mine")
        cache.delete(pk, "lock", constraint="mine")
        with pytest.raises(NotFoundException):
            cache.get(pk, "lock")

    def test_delete_with_constraint_refuses_when_different(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "lock", "theirs")
        with pytest.raises(DataFormatException):
            cache.delete(pk, "lock", constraint="mine")
        assert cache.get(pk, "lock") == "theirs"

    def test_delete_with_constraint_refuses_when_absent(self, cache: BaseCache, pk: str) -> None:
        with pytest.raises(DataFormatException):
            cache.delete(pk, "lock", constraint="mine")
        with pytest.raises(NotFoundException):
            cache.get(pk, "lock")

    def test_delete_with_empty_constraint(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "lock", "x")
        with pytest.raises(DataFormatException):
            cache.delete(pk, "lock", constraint="")
        cache.set(pk, "lock", "")
        cache.delete(pk, "lock", constraint="")
        with pytest.raises(NotFoundException):
            cache.get(pk, "lock")
