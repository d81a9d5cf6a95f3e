"""A property-based comparison of the handler with a dict (hypothesis' stateful testing)."""

from __future__ import annotations

from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from grove.caches import BaseCache
from grove.caches.testing.base import HandlerFixtures
from grove.caches.testing.support import (
    fresh_pk,
)
from grove.exceptions import DataFormatException, NotFoundException


class ModelTests(HandlerFixtures):
    """A property-based comparison of the handler with a dict (hypothesis' stateful testing)."""

    stateful_examples: ClassVar[int] = 40
    """Hypothesis examples (runs of up to 30 steps) compared against the dict model."""

    # -- against a model -------------------------------------------------------------

    def test_behaves_like_a_dict(self, cache: BaseCache) -> None:
        run_state_machine_as_test(
            type("DictModelOfHandler", (_DictModel,), {"cache": cache}),
            settings=settings(
                max_examples=self.stateful_examples,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )


_KEY_POOL = ("a", "b", "a/b", "..", "\U0001f332", "A")
_VALUES = st.sampled_from(["", "0", "1", "x\n", "\u00e9"]) | st.text(
    st.characters(codec="utf-8"), max_size=20
)


class _DictModel(RuleBasedStateMachine):
    """Drives a handler and a dict with the same calls and compares every outcome."""

    cache: ClassVar[BaseCache]
    """The handler under test, set on a subclass made for each test."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix = fresh_pk("model") + "."
        self.model: dict[tuple[str, str], str] = {}

    def _key(self, pk: str, sk: str) -> tuple[str, str]:
        return (self.prefix + pk, sk)

    @rule(pk=st.sampled_from(_KEY_POOL), sk=st.sampled_from(_KEY_POOL))
    def get(self, pk: str, sk: str) -> None:
        key = self._key(pk, sk)
        if key in self.model:
            assert self.cache.get(*key) == self.model[key]
        else:
            with pytest.raises(NotFoundException):
                self.cache.get(*key)

    @rule(pk=st.sampled_from(_KEY_POOL), sk=st.sampled_from(_KEY_POOL), value=_VALUES)
    def set(self, pk: str, sk: str, value: str) -> None:
        key = self._key(pk, sk)
        self.cache.set(*key, value)
        self.model[key] = value

    @rule(pk=st.sampled_from(_KEY_POOL), sk=st.sampled_from(_KEY_POOL), value=_VALUES)
    def set_not_set(self, pk: str, sk: str, value: str) -> None:
        key = self._key(pk, sk)
        if key in self.model:
            with pytest.raises(DataFormatException):
                self.cache.set(*key, value, not_set=True)
        else:
            self.cache.set(*key, value, not_set=True)
            self.model[key] = value

    @rule(
        pk=st.sampled_from(_KEY_POOL),
        sk=st.sampled_from(_KEY_POOL),
        value=_VALUES,
        guess=_VALUES,
        use_current=st.booleans(),
    )
    def set_constraint(self, pk: str, sk: str, value: str, guess: str, use_current: bool) -> None:
        key = self._key(pk, sk)
        constraint = self.model.get(key, guess) if use_current else guess
        if self.model.get(key) == constraint:
            self.cache.set(*key, value, constraint=constraint)
            self.model[key] = value
        else:
            with pytest.raises(DataFormatException):
                self.cache.set(*key, value, constraint=constraint)

    @rule(pk=st.sampled_from(_KEY_POOL), sk=st.sampled_from(_KEY_POOL))
    def delete(self, pk: str, sk: str) -> None:
        key = self._key(pk, sk)
        self.cache.delete(*key)
        self.model.pop(key, None)

    @rule(
        pk=st.sampled_from(_KEY_POOL),
        sk=st.sampled_from(_KEY_POOL),
        guess=_VALUES,
        use_current=st.booleans(),
    )
    def delete_constraint(self, pk: str, sk: str, guess: str, use_current: bool) -> None:
        key = self._key(pk, sk)
        constraint = self.model.get(key, guess) if use_current else guess
        if self.model.get(key) == constraint:
            self.cache.delete(*key, constraint=constraint)
            del self.model[key]
        else:
            with pytest.raises(DataFormatException):
                self.cache.delete(*key, constraint=constraint)

    def teardown(self) -> None:
        for key in self.model:
            self.cache.delete(*key)
