"""The conformance suite must catch broken handlers, not only pass good ones.

Each broken handler below has one classic fault; the suite is run on it in a nested
pytest session and must fail exactly the tests that probe that fault.
"""

import textwrap

import pytest

BROKEN_HANDLERS = textwrap.dedent(
    '''
    import threading
    import time

    import pytest

    from grove.caches import BaseCache
    from grove.caches.atomic import ABSENT, ANY, AtomicCache
    from grove.caches.local_memory import Handler as Memory
    from grove.caches.testing import CacheConformance, ExpiryConformance
    from grove.exceptions import DataFormatException, NotFoundException


    class CheckOutsideTheLock(Memory):
        """Reads the current value, then takes the lock to write: a lost update."""

        def _write(self, pk, sk, value, expected):
            if expected is not ANY and self._read(pk, sk) != expected:
                return False
            time.sleep(0.02)  # the I/O a real backend does between check and write
            return super()._write(pk, sk, value, ANY)

        def _remove(self, pk, sk, expected):
            if expected is not ANY and self._read(pk, sk) != expected:
                return False
            time.sleep(0.02)
            return super()._remove(pk, sk, ANY)


    class EmptyIsAbsent(BaseCache):
        """Upstream Grove's fault: `if current and not_set` treats "" as absent."""

        def __init__(self):
            self.data = {}
            self.lock = threading.Lock()

        def get(self, pk, sk):
            try:
                return self.data[(pk, sk)]
            except KeyError:
                raise NotFoundException("absent") from None

        def set(self, pk, sk, value, not_set=False, constraint=None):
            if not_set and constraint is not None:
                raise ValueError("not_set with constraint")
            with self.lock:
                current = self.data.get((pk, sk))
                if current and not_set:
                    raise DataFormatException("set")
                if constraint is not None and current != constraint:
                    raise DataFormatException("set")
                self.data[(pk, sk)] = value

        def delete(self, pk, sk, constraint=None):
            with self.lock:
                current = self.data.get((pk, sk))
                if constraint is not None and current != constraint:
                    raise DataFormatException("delete")
                self.data.pop((pk, sk), None)


    class JoinsKeysWithSlash(Memory):
        """Builds one flat key as pk/sk, as a naive file layout does: keys collide."""

        def _read(self, pk, sk):
            return super()._read(pk + "/" + sk, "-")

        def _write(self, pk, sk, value, expected):
            return super()._write(pk + "/" + sk, "-", value, expected)

        def _remove(self, pk, sk, expected):
            return super()._remove(pk + "/" + sk, "-", expected)


    class ShowsTheConstraint(Memory):
        """Puts the constraint it compared into its refusal: a token in the logs."""

        def set(self, pk, sk, value, not_set=False, constraint=None, **kwargs):
            try:
                super().set(pk, sk, value, not_set, constraint, **kwargs)
            except DataFormatException:
                raise DataFormatException(f"{pk}/{sk} is not {constraint!r}") from None


    class ExpiredStillCounts(Memory):
        """Checks conditions against the stored value whether or not it has expired."""

        def _live(self, pk, sk):
            return self._partitions.get(pk, {}).get(sk, ABSENT)


    class TestShowsTheConstraint(CacheConformance):
        @pytest.fixture
        def cache(self):
            return ShowsTheConstraint()


    class TestExpiredStillCounts(ExpiryConformance):
        @pytest.fixture
        def cache(self, clock):
            return ExpiredStillCounts(clock=clock)


    class TestCheckOutsideTheLock(CacheConformance):
        thread_increments = 40

        @pytest.fixture
        def cache(self):
            return CheckOutsideTheLock()


    class TestEmptyIsAbsent(CacheConformance):
        @pytest.fixture
        def cache(self):
            return EmptyIsAbsent()


    class TestJoinsKeysWithSlash(CacheConformance):
        @pytest.fixture
        def cache(self):
            return JoinsKeysWithSlash()
    '''
)


@pytest.mark.slow
def test_suite_fails_each_broken_handler_on_its_fault(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=BROKEN_HANDLERS)
    result = pytester.inline_run("-p", "no:cacheprovider", "-W", "error")
    failures: dict[str, set[str]] = {}
    for report in result.getfailures():
        _, test_class, test_name = report.nodeid.split("::")
        failures.setdefault(test_class, set()).add(test_name.split("[")[0])

    races = {
        "test_threads_compare_and_set_lose_no_update",
        "test_threads_racing_not_set_have_one_winner",
        "test_threads_racing_conditional_delete_have_one_winner",
    }
    assert races <= failures["TestCheckOutsideTheLock"]
    # Its single-threaded behaviour is right, so nothing else may fail.
    assert failures["TestCheckOutsideTheLock"] <= races | {"test_lock_protocol_serialises_threads"}

    assert {
        "test_not_set_refuses_when_empty_string_stored",
        "test_behaves_like_a_dict",
    } <= failures["TestEmptyIsAbsent"]

    assert failures["TestJoinsKeysWithSlash"] == {"test_similar_keys_are_distinct"}

    assert failures["TestShowsTheConstraint"] == {
        "test_messages_never_contain_values_or_constraints"
    }

    assert {
        "test_not_set_succeeds_over_an_expired_entry",
        "test_constraint_never_matches_an_expired_entry",
        "test_deleting_an_expired_entry",
    } <= failures["TestExpiredStillCounts"]


TWO_STORES = textwrap.dedent(
    """
    import functools

    import pytest

    from grove.caches.local_sqlite import Configuration, Handler
    from grove.caches.testing import SharedCacheConformance


    def handler_on(path):
        return Handler(Configuration(path=path))


    class TestFactoryOnAnotherStore(SharedCacheConformance):
        process_timeout = 600.0

        @pytest.fixture
        def cache(self, tmp_path):
            return handler_on(str(tmp_path / "one.db"))

        @pytest.fixture
        def cache_factory(self, tmp_path):
            return functools.partial(handler_on, str(tmp_path / "two.db"))
    """
)


def test_a_factory_on_another_store_fails_before_any_process_starts(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_two_stores=TWO_STORES)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-W", "error", "-k", "processes"
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*cache_factory*makes handlers on another store*not found*"])
    assert result.duration < 60
