"""The conformance suite: every handler must pass it, built-in or third-party.

It checks the contract of ``DESIGN.md`` on a real handler: every row of the semantics
table, the key and value rules, the error types, a property-based comparison with a dict
model, and contention between threads (and, for stores shared between processes,
between processes). It needs ``pytest`` and ``hypothesis`` (the ``test`` extra).

Use it from a handler's own tests by subclassing and providing a ``cache`` fixture that
yields a ready handler::

    import pytest
    from grove.caches.testing import CacheConformance

    class TestMyHandler(CacheConformance):
        @pytest.fixture
        def cache(self, tmp_path):
            return MyHandler(MyConfiguration(path=str(tmp_path)))

A handler whose store is shared between processes subclasses
:class:`SharedCacheConformance` instead and also provides ``cache_factory``: a picklable
callable (a module-level function or a :func:`functools.partial` of one) that returns a
ready handler on the same store, called once in every worker process.

Every test writes under a fresh partition key, so the fixture may return a handler on a
store that other tests share. Class attributes scale the contention tests to a slow
backend. A handler that declares :attr:`~grove.caches.BaseCache.max_value_bytes` below
the contract's 4 MiB is checked to refuse larger values; the gap is printed, and listed
at the end of the run when ``pytest_plugins = ["grove.caches.testing"]`` is in a
``conftest.py``.
"""

from __future__ import annotations

import base64
import multiprocessing
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from grove.caches import BaseCache, CacheEntry
from grove.caches.atomic import ExpiringCache
from grove.caches.validation import MAX_KEY_BYTES
from grove.exceptions import DataFormatException, NotFoundException

__all__ = [
    "CONTRACT_VALUE_BYTES",
    "HOSTILE_KEYS",
    "CacheConformance",
    "ExpiryConformance",
    "ListingConformance",
    "ManualClock",
    "ServerClock",
    "SharedCacheConformance",
    "SharedExpiryConformance",
    "run_in_processes",
]

CONTRACT_VALUE_BYTES = 4 * 1024 * 1024
"""The value size, in bytes of UTF-8, that every built-in handler stores."""

HOSTILE_KEYS: tuple[str, ...] = (
    "plain",
    "with space",
    "a/b",
    "/leading-slash",
    "trailing-slash/",
    "back\\slash",
    ".",
    "..",
    "../escape",
    "../../../../../../tmp/escape",
    ".hidden",
    "%2F",
    "%",
    "100%",
    "nul\x00byte",
    "new\nline",
    "tab\tand\rreturn",
    "CaseSensitive",
    "casesensitive",
    "emoji \U0001f332",
    "\u00e9t\u00e9",
    "e\u0301te\u0301",
    "CON",
    "aux.txt",
    "name.cache",
    "~",
    "*?<>|:\"'",
    "\u202eright-to-left",
)
"""Keys that break naive storage layouts: path separators, dots, escapes, control
characters, case-only differences, Unicode normalisation variants, reserved names."""

_declared_limits: dict[str, int] = {}


def _limit_report(handler_class: type[BaseCache], limit: int) -> str:
    return (
        f"{handler_class.__module__}.{handler_class.__qualname__} declares "
        f"max_value_bytes={limit}, below the contract's {CONTRACT_VALUE_BYTES}"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List the value limits that handlers declared below the contract.

    :param terminalreporter: pytest's terminal reporter.
    """
    if _declared_limits:
        terminalreporter.section("grove.caches conformance: declared limits")
        for name, limit in sorted(_declared_limits.items()):
            terminalreporter.write_line(f"{name}: max_value_bytes={limit} (contract: 4 MiB)")


def _fresh_pk(label: str = "conformance") -> str:
    return f"{label}.{uuid.uuid4().hex}"


def _random_text(size: int, seed: int) -> str:
    """Return incompressible ASCII text of exactly ``size`` characters."""
    raw = random.Random(seed).randbytes(size * 3 // 4 + 3)
    return base64.b64encode(raw).decode("ascii")[:size]


def _increment_until(cache: BaseCache, pk: str, sk: str, count: int) -> int:
    """Add one to the counter at pk/sk ``count`` times by compare-and-set.

    :return: How many attempts lost a race and were retried.
    """
    done = 0
    conflicts = 0
    while done < count:
        current = cache.get(pk, sk)
        try:
            cache.set(pk, sk, str(int(current) + 1), constraint=current)
        except DataFormatException:
            conflicts += 1
        else:
            done += 1
    return conflicts


def _process_increments(
    factory: Callable[[], BaseCache],
    pk: str,
    sk: str,
    count: int,
    barrier: Any,
    results: Any,
) -> None:
    cache = factory()
    barrier.wait()
    _increment_until(cache, pk, sk, count)
    results.put("done")


def _process_not_set_race(
    factory: Callable[[], BaseCache],
    pk: str,
    sk: str,
    token: str,
    barrier: Any,
    results: Any,
) -> None:
    cache = factory()
    barrier.wait()
    try:
        cache.set(pk, sk, token, not_set=True)
    except DataFormatException:
        results.put(("lost", token))
    else:
        results.put(("won", token))


def run_in_processes(
    target: Callable[..., None], argument_sets: list[tuple[Any, ...]], *, timeout: float
) -> list[Any]:
    """Run ``target`` in one spawned process per argument set, released together.

    Each process calls ``target(*arguments, barrier, results)``: it should wait on the
    barrier before its racing part and put exactly one result on the queue. The test
    fails when a process does not report within ``timeout`` seconds or exits non-zero.

    :param target: A picklable function (module level).
    :param argument_sets: The arguments of each process, before the barrier and queue.
    :param timeout: Seconds to wait for each result.
    :return: The results, in the order they arrived.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(argument_sets))
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*arguments, barrier, results), daemon=True)
        for arguments in argument_sets
    ]
    for process in processes:
        process.start()
    collected: list[Any] = []
    try:
        for _ in processes:
            collected.append(results.get(timeout=timeout))
    except queue.Empty:
        pytest.fail(f"only {len(collected)} of {len(processes)} worker processes reported")
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    assert [process.exitcode for process in processes] == [0] * len(processes)
    return collected


class CacheConformance:
    """The contract, as tests. Subclass it and provide a ``cache`` fixture."""

    thread_workers: ClassVar[int] = 8
    """Threads in the compare-and-set increment test."""

    thread_increments: ClassVar[int] = 200
    """Increments each of those threads makes."""

    thread_racers: ClassVar[int] = 50
    """Threads racing ``not_set=True`` for one key (Grove's default worker count)."""

    stateful_examples: ClassVar[int] = 40
    """Hypothesis examples (runs of up to 30 steps) compared against the dict model."""

    @pytest.fixture
    def cache(self) -> BaseCache:
        """A ready handler. Override this fixture in the subclass."""
        raise NotImplementedError("define a `cache` fixture that returns a ready handler")

    @pytest.fixture
    def pk(self) -> str:
        """A partition key no other test uses."""
        return _fresh_pk()

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
            report = _limit_report(type(cache), limit)
            _declared_limits[f"{type(cache).__module__}.{type(cache).__qualname__}"] = limit
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
                _random_text(size, seed=size),
                "\u00e9" * (size // 2),
                "\U0001f332" * (size // 4),
            ):
                cache.set(pk, "big", value)
                assert cache.get(pk, "big") == value
                cache.set(pk, "big", "after", constraint=value)
                assert cache.get(pk, "big") == "after"
                cache.set(pk, "big", value)
                cache.delete(pk, "big", constraint=value)

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

    # -- contention between threads --------------------------------------------------

    def test_threads_compare_and_set_lose_no_update(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "counter", "0")
        barrier = threading.Barrier(self.thread_workers)

        def work() -> int:
            barrier.wait()
            return _increment_until(cache, pk, "counter", self.thread_increments)

        with ThreadPoolExecutor(self.thread_workers) as pool:
            futures = [pool.submit(work) for _ in range(self.thread_workers)]
            for future in futures:
                future.result()
        assert int(cache.get(pk, "counter")) == self.thread_workers * self.thread_increments

    def test_threads_racing_not_set_have_one_winner(self, cache: BaseCache, pk: str) -> None:
        barrier = threading.Barrier(self.thread_racers)

        def race(token: str) -> bool:
            barrier.wait()
            try:
                cache.set(pk, "lock", token, not_set=True)
            except DataFormatException:
                return False
            return True

        with ThreadPoolExecutor(self.thread_racers) as pool:
            tokens = [f"worker-{index}" for index in range(self.thread_racers)]
            outcomes = dict(zip(tokens, pool.map(race, tokens), strict=True))
        winners = [token for token, won in outcomes.items() if won]
        assert len(winners) == 1, winners
        assert cache.get(pk, "lock") == winners[0]

    def test_threads_racing_conditional_delete_have_one_winner(
        self, cache: BaseCache, pk: str
    ) -> None:
        cache.set(pk, "lock", "held")
        barrier = threading.Barrier(self.thread_workers)

        def release() -> bool:
            barrier.wait()
            try:
                cache.delete(pk, "lock", constraint="held")
            except DataFormatException:
                return False
            return True

        with ThreadPoolExecutor(self.thread_workers) as pool:
            outcomes = [
                f.result() for f in [pool.submit(release) for _ in range(self.thread_workers)]
            ]
        assert outcomes.count(True) == 1
        with pytest.raises(NotFoundException):
            cache.get(pk, "lock")

    def test_lock_protocol_serialises_threads(self, cache: BaseCache, pk: str) -> None:
        """Grove's execution lock: take with not_set, work, release with constraint."""
        cache.set(pk, "pointer", "0")
        rounds = max(1, self.thread_increments // 10)

        def collector(name: str) -> None:
            taken = 0
            while taken < rounds:
                try:
                    cache.set(pk, "lock", name, not_set=True)
                except DataFormatException:
                    continue
                # Inside the lock a plain read-modify-write is safe.
                cache.set(pk, "pointer", str(int(cache.get(pk, "pointer")) + 1))
                cache.delete(pk, "lock", constraint=name)
                taken += 1

        with ThreadPoolExecutor(self.thread_workers) as pool:
            futures = [pool.submit(collector, f"c{i}") for i in range(self.thread_workers)]
            for future in futures:
                future.result()
        assert int(cache.get(pk, "pointer")) == self.thread_workers * rounds
        with pytest.raises(NotFoundException):
            cache.get(pk, "lock")


class SharedCacheConformance(CacheConformance):
    """The contract for stores shared between processes: adds process contention.

    Provide ``cache_factory`` besides ``cache``: a picklable callable that returns a
    ready handler on the same store as ``cache``.
    """

    process_workers: ClassVar[int] = 4
    """Processes in the compare-and-set increment test."""

    process_increments: ClassVar[int] = 500
    """Increments each of those processes makes."""

    process_racers: ClassVar[int] = 8
    """Processes racing ``not_set=True`` for one key."""

    process_timeout: ClassVar[float] = 300.0
    """Seconds the process tests wait for their workers before they fail."""

    @pytest.fixture
    def cache_factory(self) -> Callable[[], BaseCache]:
        """A picklable callable that returns a ready handler. Override in the subclass."""
        raise NotImplementedError("define a `cache_factory` fixture")

    def _run_processes(
        self, target: Callable[..., None], argument_sets: list[tuple[Any, ...]]
    ) -> list[Any]:
        return run_in_processes(target, argument_sets, timeout=self.process_timeout)

    def test_processes_compare_and_set_lose_no_update(
        self, cache: BaseCache, cache_factory: Callable[[], BaseCache], pk: str
    ) -> None:
        cache.set(pk, "counter", "0")
        self._run_processes(
            _process_increments,
            [(cache_factory, pk, "counter", self.process_increments)] * self.process_workers,
        )
        expected = self.process_workers * self.process_increments
        assert int(cache.get(pk, "counter")) == expected

    def test_processes_racing_not_set_have_one_winner(
        self, cache: BaseCache, cache_factory: Callable[[], BaseCache], pk: str
    ) -> None:
        outcomes = self._run_processes(
            _process_not_set_race,
            [(cache_factory, pk, "lock", f"process-{i}") for i in range(self.process_racers)],
        )
        winners = [token for outcome, token in outcomes if outcome == "won"]
        assert len(winners) == 1, outcomes
        assert cache.get(pk, "lock") == winners[0]


class ListingConformance:
    """The optional listing ability (:meth:`~grove.caches.BaseCache.entries`).

    Mix it into the test class of a handler that can list its entries, beside
    :class:`CacheConformance`; it uses the same ``cache`` fixture.
    """

    @pytest.fixture
    def pk(self) -> str:
        """A partition key no other test uses."""
        return _fresh_pk("listing")

    def test_handler_says_it_can_list(self, cache: BaseCache) -> None:
        assert cache.supports_listing()

    def test_entries_of_one_partition(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "a", "1")
        cache.set(pk, "b", "")
        cache.set(pk, "c", "3")
        cache.delete(pk, "c")
        cache.set(pk + "x", "a", "other partition")
        assert sorted(cache.entries(pk)) == [
            CacheEntry(pk, "a", "1"),
            CacheEntry(pk, "b", ""),
        ]

    def test_entries_of_an_absent_partition(self, cache: BaseCache, pk: str) -> None:
        assert list(cache.entries(pk)) == []

    def test_entries_by_prefix(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk + ".a", "sk", "1")
        cache.set(pk + ".ab", "sk", "2")
        cache.set(pk + ".b", "sk", "3")
        assert sorted(cache.entries(prefix=pk + ".a")) == [
            CacheEntry(pk + ".a", "sk", "1"),
            CacheEntry(pk + ".ab", "sk", "2"),
        ]

    def test_all_entries_include_every_partition(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk + ".1", "sk", "1")
        cache.set(pk + ".2", "sk", "2")
        mine = [entry for entry in cache.entries() if entry.pk.startswith(pk)]
        assert sorted(mine) == [
            CacheEntry(pk + ".1", "sk", "1"),
            CacheEntry(pk + ".2", "sk", "2"),
        ]

    def test_hostile_keys_are_listed_as_written(self, cache: BaseCache, pk: str) -> None:
        expected = []
        for key in HOSTILE_KEYS:
            cache.set(pk + key, key, key + "\n")
            cache.set(pk, key, key)
            expected += [CacheEntry(pk + key, key, key + "\n"), CacheEntry(pk, key, key)]
        assert sorted(cache.entries(prefix=pk)) == sorted(expected)
        assert sorted(cache.entries(pk)) == sorted(CacheEntry(pk, k, k) for k in HOSTILE_KEYS)

    def test_large_value_is_listed_whole(self, cache: BaseCache, pk: str) -> None:
        value = _random_text(300_000, seed=3)
        cache.set(pk, "big", value)
        assert list(cache.entries(pk)) == [CacheEntry(pk, "big", value)]

    def test_bad_listing_arguments(self, cache: BaseCache, pk: str) -> None:
        with pytest.raises(ValueError, match="not both"):
            cache.entries(pk, prefix=pk)
        with pytest.raises(ValueError):
            cache.entries("")
        with pytest.raises(TypeError):
            cache.entries(1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            cache.entries(prefix=b"x")  # type: ignore[arg-type]


class ManualClock:
    """A clock that the suite moves by hand.

    For handlers on which the caller's clock decides expiry: pass it to the handler,
    then :meth:`advance` it.

    :param start: The time it shows first, in seconds since the epoch; now by default.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward.

        :param seconds: How far.
        """
        self.now += seconds


class ServerClock:
    """Real time, for handlers on which the server's clock decides expiry.

    :meth:`advance` sleeps.
    """

    def __call__(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> None:
        """Let time pass.

        :param seconds: How long to sleep.
        """
        time.sleep(seconds)


class ExpiryConformance:
    """The optional expiry ability (``set(..., ttl=...)``).

    Mix it into the test class of a handler that has the ability, beside
    :class:`CacheConformance`. Where the caller's clock decides, the ``cache`` fixture
    builds the handler with the ``clock`` fixture (a :class:`ManualClock`), and the
    tests move it; where the server's clock decides, override ``clock`` to return a
    :class:`ServerClock` and set :attr:`expiry_ttl` small, so the whole section sleeps
    about ``14 * 2 * expiry_ttl`` seconds.
    """

    expiry_ttl: ClassVar[float] = 30.0
    """The time to live of entries that the tests let expire, in seconds. The tests
    advance the clock by twice this."""

    live_ttl: ClassVar[float] = 3600.0
    """The time to live of entries that must not expire during a test."""

    sweep_counts_expired: ClassVar[bool] = True
    """Whether :meth:`~grove.caches.atomic.ExpiringCache.sweep_expired` finds expired
    entries to remove; ``False`` where the server removes them by itself."""

    @pytest.fixture
    def clock(self) -> ManualClock | ServerClock:
        """The clock the handler under test uses; see the class docstring."""
        return ManualClock()

    @pytest.fixture
    def pk(self) -> str:
        """A partition key no other test uses."""
        return _fresh_pk("expiry")

    def _expire(self, clock: ManualClock | ServerClock) -> None:
        clock.advance(self.expiry_ttl * 2)

    def test_handler_says_it_can_expire(self, cache: ExpiringCache) -> None:
        assert cache.supports_expiry()
        assert isinstance(cache, ExpiringCache)

    def test_entry_is_there_until_it_expires(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "sk", "v", ttl=self.live_ttl)
        assert cache.get(pk, "sk") == "v"
        moment = cache.expires_at(pk, "sk")
        assert moment is not None and moment.tzinfo is not None
        assert abs(moment.timestamp() - (clock() + self.live_ttl)) < 60

    def test_expired_entry_is_absent_for_get(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "sk", "v", ttl=self.expiry_ttl)
        self._expire(clock)
        with pytest.raises(NotFoundException):
            cache.get(pk, "sk")
        with pytest.raises(NotFoundException):
            cache.expires_at(pk, "sk")

    def test_not_set_succeeds_over_an_expired_entry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "lock", "old", ttl=self.expiry_ttl)
        with pytest.raises(DataFormatException):
            cache.set(pk, "lock", "new", not_set=True)
        self._expire(clock)
        cache.set(pk, "lock", "new", not_set=True)
        assert cache.get(pk, "lock") == "new"
        assert cache.expires_at(pk, "lock") is None

    def test_constraint_never_matches_an_expired_entry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "sk", "old", ttl=self.expiry_ttl)
        self._expire(clock)
        with pytest.raises(DataFormatException):
            cache.set(pk, "sk", "new", constraint="old")
        with pytest.raises(DataFormatException):
            cache.set(pk, "sk", "new", constraint="old", ttl=self.live_ttl)
        with pytest.raises(NotFoundException):
            cache.get(pk, "sk")

    def test_deleting_an_expired_entry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "a", "v", ttl=self.expiry_ttl)
        cache.set(pk, "b", "v", ttl=self.expiry_ttl)
        self._expire(clock)
        with pytest.raises(DataFormatException):
            cache.delete(pk, "a", constraint="v")
        cache.delete(pk, "b")
        with pytest.raises(NotFoundException):
            cache.get(pk, "a")
        with pytest.raises(NotFoundException):
            cache.get(pk, "b")

    def test_listing_skips_expired_entries(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        if not cache.supports_listing():
            pytest.skip(f"{type(cache).__module__} cannot list entries")
        cache.set(pk, "gone", "v", ttl=self.expiry_ttl)
        cache.set(pk, "kept", "w", ttl=self.live_ttl)
        cache.set(pk, "plain", "x")
        self._expire(clock)
        assert sorted(cache.entries(pk)) == [
            CacheEntry(pk, "kept", "w"),
            CacheEntry(pk, "plain", "x"),
        ]
        assert CacheEntry(pk, "gone", "v") not in set(cache.entries(prefix=pk))

    def test_set_without_ttl_clears_the_expiry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "plain", "v", ttl=self.expiry_ttl)
        cache.set(pk, "plain", "w")
        cache.set(pk, "cas", "v", ttl=self.expiry_ttl)
        cache.set(pk, "cas", "w", constraint="v")
        assert cache.expires_at(pk, "plain") is None
        assert cache.expires_at(pk, "cas") is None
        self._expire(clock)
        assert cache.get(pk, "plain") == "w"
        assert cache.get(pk, "cas") == "w"

    def test_compare_and_set_with_ttl_replaces_value_and_expiry(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        cache.set(pk, "sk", "v")
        cache.set(pk, "sk", "w", constraint="v", ttl=self.expiry_ttl)
        assert cache.get(pk, "sk") == "w"
        assert cache.expires_at(pk, "sk") is not None
        cache.set(pk, "renewed", "a", ttl=self.expiry_ttl)
        cache.set(pk, "renewed", "b", constraint="a", ttl=self.live_ttl)
        self._expire(clock)
        with pytest.raises(NotFoundException):
            cache.get(pk, "sk")
        assert cache.get(pk, "renewed") == "b"

    def test_ttl_as_a_timedelta(self, cache: ExpiringCache, pk: str) -> None:
        cache.set(pk, "sk", "v", ttl=timedelta(seconds=self.live_ttl))
        moment = cache.expires_at(pk, "sk")
        assert moment is not None
        assert abs(moment.timestamp() - (time.time() + self.live_ttl)) < 120

    @pytest.mark.parametrize(
        ("ttl", "error"),
        [
            (0, ValueError),
            (-1, ValueError),
            (float("nan"), ValueError),
            (float("inf"), ValueError),
            (timedelta(days=3700), ValueError),
            (timedelta(0), ValueError),
            (True, TypeError),
            ("60", TypeError),
        ],
        ids=repr,
    )
    def test_invalid_ttl_changes_nothing(
        self, cache: ExpiringCache, pk: str, ttl: Any, error: type[Exception]
    ) -> None:
        cache.set(pk, "sk", "v")
        with pytest.raises(error):
            cache.set(pk, "sk", "w", ttl=ttl)
        with pytest.raises(error):
            cache.set(pk, "new", "w", not_set=True, ttl=ttl)
        assert cache.get(pk, "sk") == "v"
        assert cache.expires_at(pk, "sk") is None
        with pytest.raises(NotFoundException):
            cache.get(pk, "new")

    def test_sweep_removes_expired_entries_in_batches(
        self, cache: ExpiringCache, pk: str, clock: ManualClock | ServerClock
    ) -> None:
        for index in range(5):
            cache.set(pk, f"gone{index}", "v", ttl=self.expiry_ttl)
        cache.set(pk, "kept", "w", ttl=self.live_ttl)
        cache.set(pk, "plain", "x")
        cache.set(pk, "rewritten", "old", ttl=self.expiry_ttl)
        self._expire(clock)
        cache.set(pk, "rewritten", "new")
        batches: list[int] = []
        removed = cache.sweep_expired(batch_size=2, progress=batches.append)
        assert removed == sum(batches)
        assert all(count <= 2 for count in batches)
        if self.sweep_counts_expired:
            assert removed >= 5
            assert len(batches) >= 3
        assert cache.get(pk, "kept") == "w"
        assert cache.get(pk, "plain") == "x"
        assert cache.get(pk, "rewritten") == "new"
        for index in range(5):
            with pytest.raises(NotFoundException):
                cache.get(pk, f"gone{index}")
        with pytest.raises(ValueError):
            cache.sweep_expired(batch_size=0)


def _process_not_set_over_expiring_entry(
    factory: Callable[[], BaseCache],
    pk: str,
    sk: str,
    token: str,
    deadline: float,
    barrier: Any,
    results: Any,
) -> None:
    """Try ``not_set`` until this process wins or another racer's value is stored."""
    cache = factory()
    barrier.wait()
    while time.time() < deadline:
        try:
            cache.set(pk, sk, token, not_set=True)
        except DataFormatException:
            try:
                if cache.get(pk, sk).startswith("racer-"):
                    results.put(("lost", token))
                    return
            except NotFoundException:
                pass
        else:
            results.put(("won", token))
            return
        time.sleep(0.005)
    results.put(("timeout", token))


def _process_increments_with_ttl(
    factory: Callable[[], BaseCache],
    pk: str,
    sk: str,
    count: int,
    ttl: float,
    barrier: Any,
    results: Any,
) -> None:
    cache = factory()
    assert isinstance(cache, ExpiringCache)
    barrier.wait()
    done = 0
    while done < count:
        current = cache.get(pk, sk)
        try:
            cache.set(pk, sk, str(int(current) + 1), constraint=current, ttl=ttl)
        except DataFormatException:
            continue
        done += 1
    results.put("done")


class SharedExpiryConformance:
    """Expiry under contention between processes, for shared stores with expiry.

    Mix it in beside :class:`SharedCacheConformance` and :class:`ExpiryConformance`;
    it uses their ``cache`` and ``cache_factory`` fixtures. The handlers that
    ``cache_factory`` makes use the real clock.
    """

    expiry_race_ttl: ClassVar[float] = 0.5
    """Real seconds until the entry that the racers wait for expires."""

    expiry_process_increments: ClassVar[int] = 100
    """Increments each of 4 processes makes with ``ttl``."""

    process_timeout: ClassVar[float] = 300.0

    def test_processes_racing_not_set_over_an_expiring_entry_have_one_winner(
        self, cache_factory: Callable[[], BaseCache]
    ) -> None:
        pk = _fresh_pk("expiry-race")
        cache = cache_factory()
        assert isinstance(cache, ExpiringCache)
        cache.set(pk, "lock", "held", ttl=self.expiry_race_ttl)
        deadline = time.time() + 60
        outcomes = run_in_processes(
            _process_not_set_over_expiring_entry,
            [(cache_factory, pk, "lock", f"racer-{i}", deadline) for i in range(8)],
            timeout=self.process_timeout,
        )
        winners = [token for outcome, token in outcomes if outcome == "won"]
        assert len(winners) == 1, outcomes
        assert all(outcome != "timeout" for outcome, _ in outcomes), outcomes
        assert cache.get(pk, "lock") == winners[0]
        cache.delete(pk, "lock")

    def test_processes_compare_and_set_with_ttl_lose_no_update(
        self, cache_factory: Callable[[], BaseCache]
    ) -> None:
        pk = _fresh_pk("expiry-race")
        cache = cache_factory()
        assert isinstance(cache, ExpiringCache)
        cache.set(pk, "counter", "0", ttl=3600)
        run_in_processes(
            _process_increments_with_ttl,
            [(cache_factory, pk, "counter", self.expiry_process_increments, 3600.0)] * 4,
            timeout=self.process_timeout,
        )
        assert int(cache.get(pk, "counter")) == 4 * self.expiry_process_increments
        assert cache.expires_at(pk, "counter") is not None
        cache.delete(pk, "counter")


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
        self.prefix = _fresh_pk("model") + "."
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


# -- leases (issue 16) ------------------------------------------------------------------
# The section keeps its imports with it, so that it merges apart from the rest of the file.

import fcntl  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Literal, NamedTuple  # noqa: E402

from grove.caches.lease import (  # noqa: E402
    FENCE_SUFFIX,
    TOKEN_BLOCK,
    Lease,
    LeaseError,
    LeaseLost,
    LeaseUnavailable,
    parse_value,
)

__all__ += ["CallCounter", "FencedResource", "LeaseConformance", "lease_violations"]


class CallCounter(BaseCache):
    """A handler that passes every call to another one and counts them, by method.

    For measuring what a protocol on top of a cache costs (a lease's acquire, say); it
    has the wrapped handler's abilities.

    :param inner: The handler that does the work.
    """

    def __init__(self, inner: BaseCache) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.reports_current = bool(getattr(inner, "reports_current", False))

    def supports_expiry(self) -> bool:  # type: ignore[override]
        """Answer for the wrapped handler (an instance method, unlike the classmethod)."""
        return self.inner.supports_expiry()

    def get(self, pk: str, sk: str) -> str:
        self.calls["get"] += 1
        return self.inner.get(pk, sk)

    def set(
        self,
        pk: str,
        sk: str,
        value: str,
        not_set: bool = False,
        constraint: str | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> None:
        self.calls["set"] += 1
        store: Callable[..., None] = self.inner.set
        if ttl is None:
            store(pk, sk, value, not_set, constraint)
        else:
            store(pk, sk, value, not_set, constraint, ttl=ttl)

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self.calls["delete"] += 1
        self.inner.delete(pk, sk, constraint)

    @property
    def total(self) -> int:
        """Calls made so far, all methods together."""
        return sum(self.calls.values())


class FencedResource:
    """A protected resource that refuses writers with a token older than one it accepted.

    What fencing needs from a resource, in a directory: ``highest`` holds the largest
    token accepted, ``accepted`` one line per accepted write, ``rejected`` one per refused
    one; every write runs under an exclusive ``flock`` of ``lock`` (opened anew per
    write, so threads exclude each other too).

    :param directory: An existing directory, shared by every writer.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def write(self, token: int, writer: str) -> bool:
        """Accept a write under ``token`` unless a larger token was accepted before.

        :param token: The writer's fencing token.
        :param writer: Who writes, recorded with the write.
        :return: Whether the write was accepted.
        """
        descriptor = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            highest_file = self.directory / "highest"
            highest = int(highest_file.read_text()) if highest_file.exists() else 0
            accepted = token >= highest
            if accepted:
                highest_file.write_text(str(token))
            with open(self.directory / ("accepted" if accepted else "rejected"), "a") as log:
                log.write(f"{token} {writer}\n")
            return accepted
        finally:
            os.close(descriptor)

    def _lines(self, name: str) -> list[tuple[int, str]]:
        path = self.directory / name
        if not path.exists():
            return []
        pairs = [line.split(" ", 1) for line in path.read_text().splitlines()]
        return [(int(token), writer) for token, writer in pairs]

    def accepted(self) -> list[tuple[int, str]]:
        """The accepted writes, in order: ``(token, writer)``."""
        return self._lines("accepted")

    def rejected(self) -> list[tuple[int, str]]:
        """The refused writes, in order: ``(token, writer)``."""
        return self._lines("rejected")


class Hold(NamedTuple):
    """One acquisition in a contention run, as its holder saw it."""

    writer: str
    """Who held it: ``worker.n``, the n-th hold of a worker."""
    token: int
    start: float
    """When the acquiring write started (its expiry minus the duration), epoch seconds."""
    end: float
    """When its validity ended: the holder stopped, or ``skew`` before its last expiry."""
    froze: bool
    """Whether the holder was frozen (SIGSTOP, or a sleep for threads) during it."""


def lease_violations(holds: list[Hold], accepted: list[tuple[int, str]]) -> list[str]:
    """Check a contention run: what a lease with fencing must never let happen.

    :param holds: Every hold of the run, from every worker.
    :param accepted: The writes the protected resource accepted, in order.
    :return: One line per violation; empty when the run was sound.
    """
    violations = []
    ordered = sorted(holds, key=lambda hold: hold.start)
    for token, count in Counter(hold.token for hold in holds).items():
        if count > 1:
            violations.append(f"token {token} was issued to {count} holds")
    for earlier, later in itertools.pairwise(ordered):
        if later.token <= earlier.token:
            violations.append(
                f"hold {later.writer} got token {later.token} after hold {earlier.writer} "
                f"got {earlier.token}"
            )
        if earlier.end > later.start:
            violations.append(
                f"holds {earlier.writer} and {later.writer} were valid at once for "
                f"{earlier.end - later.start:.3f} s"
            )
    position = {hold.writer: index for index, hold in enumerate(ordered)}
    newest = -1
    for token, writer in accepted:
        if position[writer] < newest:
            violations.append(
                f"the resource accepted a stale write (token {token}) from hold {writer} "
                f"after hold {ordered[newest].writer} had written"
            )
        newest = max(newest, position[writer])
    return violations


class _UnfencedLease(Lease):
    """The negative control: a lease whose token never advances (it skips fencing)."""

    def _write_held(self, token: int, high: int, expected: str | None) -> tuple[bool, str | None]:
        return super()._write_held(1, high, expected)


def _freeze(seconds: float, freezer: str | None) -> None:
    """Stop this process with SIGSTOP until the parent resumes it, or sleep (threads)."""
    if freezer is None:
        time.sleep(seconds)
        return
    (Path(freezer) / str(os.getpid())).write_text(str(seconds))
    os.kill(os.getpid(), signal.SIGSTOP)


def _resume_frozen(freezer: Path, stop: threading.Event) -> None:
    """Resume each process that froze itself once its freeze is over; all at the end."""
    stopped_since: dict[int, float] = {}
    while True:
        finishing = stop.wait(0.01)
        for marker in list(freezer.iterdir()):
            pid = int(marker.name)
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                marker.unlink()
                continue
            if state != "T":
                continue
            since = stopped_since.setdefault(pid, time.monotonic())
            if finishing or time.monotonic() - since >= float(marker.read_text()):
                marker.unlink()
                del stopped_since[pid]
                os.kill(pid, signal.SIGCONT)
        if finishing and not any(freezer.iterdir()):
            return


def _contend_for_lease(
    cache: BaseCache | Callable[[], BaseCache],
    lease_class: type[Lease],
    key: tuple[str, str],
    worker: int,
    timing: tuple[float, float, float],
    resource: str,
    freezer: str | None,
    barrier: Any,
    results: Any,
) -> None:
    """One contender: take the lease again and again, write under it, sometimes freeze.

    Each hold lasts a random time up to one and a half times the lease's duration, and
    writes to the resource at once and then every few milliseconds, each time after
    checking :attr:`Lease.held`. The worker's first hold that leaves the run time for it
    freezes between the check and a write, long enough for another worker to take the
    lease over and write: the paused-holder case. Of the other holds, a third renew in
    the background (the ``with`` block's renewer), the rest by hand. Between holds the
    worker idles a random while. Reports its holds on ``results``.
    """
    if not isinstance(cache, BaseCache):
        cache = cache()
    duration, skew, seconds = timing
    rng = random.Random(worker)
    fenced = FencedResource(resource)
    freeze_for = duration * 2 + skew * 2
    holds: list[Hold] = []
    froze = False
    barrier.wait()
    end = time.time() + seconds
    while time.time() < end:
        freeze = not froze and time.time() + freeze_for * 2 < end
        froze |= freeze
        background = not freeze and rng.random() < 1 / 3
        lease = lease_class(
            cache,
            *key,
            duration=timedelta(seconds=duration),
            skew=timedelta(seconds=skew),
            owner=f"worker-{worker}",
            renew_every=timedelta(seconds=duration / 4) if background else None,
            wait=max(0.0, end - time.time()),
        )
        writer = f"{worker}.{len(holds)}"
        hold_for = rng.uniform(0, duration * 1.5)
        try:
            with lease:
                expires = lease.expires_at
                assert expires is not None and lease.token is not None
                start = expires.timestamp() - duration
                renew = not background
                frozen_for = freeze_for if freeze else None
                last = _hold(lease, fenced, writer, hold_for, renew, frozen_for, freezer, rng)
        except LeaseUnavailable:
            break
        except LeaseLost:
            pass
        assert lease.token is not None
        holds.append(Hold(writer, lease.token, start, min(last[0], last[1] - skew), freeze))
        time.sleep(rng.uniform(0, duration / 4))
    results.put(holds)


def _hold(
    lease: Lease,
    fenced: FencedResource,
    writer: str,
    hold_for: float,
    renew_by_hand: bool,
    freeze_for: float | None,
    freezer: str | None,
    rng: random.Random,
) -> tuple[float, float]:
    """Act under a held lease for ``hold_for`` seconds or until it is lost.

    A hold that freezes (for ``freeze_for`` seconds) does so before its second write,
    however short ``hold_for``.

    :return: When it stopped acting and the last expiry it wrote, in epoch seconds.
    """
    assert lease.token is not None
    started = time.monotonic()
    renewed = started
    duration = lease.duration.total_seconds()
    writes = 0
    while (freeze_for is not None or time.monotonic() - started < hold_for) and lease.held:
        if freeze_for is not None and writes == 1:
            _freeze(freeze_for, freezer)  # between the check and the write
            freeze_for = None
        fenced.write(lease.token, writer)
        writes += 1
        if renew_by_hand and time.monotonic() - renewed > duration / 4:
            renewed = time.monotonic()
            try:
                lease.renew()
            except LeaseLost:
                break
        time.sleep(rng.uniform(0.002, 0.02))
    stopped = time.time()
    expires = lease.expires_at
    assert expires is not None
    return stopped, expires.timestamp()


class LeaseConformance:
    """Leases (:mod:`grove.caches.lease`) on the handler, frozen holders included.

    Tokens, skew, upstream locks, costs, and contention. Mix it in beside
    :class:`CacheConformance`; it uses the ``cache`` fixture. The contention tests run
    :attr:`lease_contenders` processes that each build a handler with ``cache_factory``
    (see :class:`SharedCacheConformance`) and freeze themselves with SIGSTOP; for a store
    that lives in one process, set :attr:`lease_workers` to ``"threads"`` (a freeze is
    then a sleep). The other tests move a :class:`ManualClock` that only the leases use
    (``lease_clock``); a handler whose caller's clock decides expiry may share it.
    """

    lease_workers: ClassVar[Literal["processes", "threads"]] = "processes"
    """How the contenders run: processes sharing the store, or threads sharing ``cache``."""

    lease_contenders: ClassVar[int] = 8
    """Contenders for the one lease."""

    lease_duration: ClassVar[float] = 1.0
    """Seconds each acquisition or renewal of the contention test lasts."""

    lease_skew: ClassVar[float] = 0.2
    """The skew margin of the contention test, in seconds."""

    lease_contention_seconds: ClassVar[float] = 10.0
    """How long the contenders contend."""

    lease_control_seconds: ClassVar[float] = 6.0
    """How long they contend in the negative control (a lease without fencing)."""

    lease_timeout: ClassVar[float] = 300.0
    """Seconds to wait for the contenders' reports."""

    @pytest.fixture
    def lease_clock(self) -> ManualClock:
        """The wall clock of the leases under test."""
        return ManualClock()

    @pytest.fixture
    def lease_key(self) -> tuple[str, str]:
        """A lease key no other test uses."""
        return _fresh_pk("execution_lock"), "all"

    @staticmethod
    def _lease(cache: BaseCache, key: tuple[str, str], clock: ManualClock, **options: Any) -> Lease:
        options.setdefault("duration", timedelta(minutes=5))
        options.setdefault("skew", timedelta(seconds=5))
        return Lease(cache, *key, clock=clock, **options)

    def test_acquire_renew_release(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        lease = self._lease(cache, lease_key, lease_clock)
        assert (lease.held, lease.token, lease.expires_at) == (False, None, None)
        assert lease.acquire()
        first, expires = lease.token, lease.expires_at
        assert lease.held and first is not None and expires is not None
        stored = parse_value(cache.get(*lease_key))
        assert stored is not None
        assert (stored.state, stored.owner, stored.token, stored.expires) == (
            "held",
            lease.owner,
            first,
            expires,
        )
        assert abs(expires.timestamp() - (lease_clock() + 300)) < 1
        lease_clock.advance(60)
        lease.renew()
        assert lease.held and lease.token == first
        assert lease.expires_at is not None and lease.expires_at > expires
        with pytest.raises(RuntimeError, match="already held"):
            lease.acquire()
        lease.release()
        assert not lease.held and lease.expires_at is None
        released = parse_value(cache.get(*lease_key))
        assert released is not None and (released.state, released.token) == ("released", first)
        with pytest.raises(RuntimeError, match="not held"):
            lease.renew()
        lease.release()  # releasing again does nothing
        assert lease.acquire()
        assert lease.token is not None and lease.token > first
        lease.release()

    def test_a_held_lease_is_busy_for_others(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        holder = self._lease(cache, lease_key, lease_clock)
        other = self._lease(cache, lease_key, lease_clock)
        assert holder.acquire()
        assert not other.acquire()
        assert not other.acquire(wait=0.05)
        assert not other.held and other.token is None
        with pytest.raises(LeaseUnavailable), other:
            pytest.fail("the with block ran without the lease")
        holder.release()
        assert other.acquire()
        assert holder.token is not None and other.token is not None
        assert other.token > holder.token
        other.release()

    def test_holders_stop_skew_before_expiry_and_takers_wait_skew_after(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        holder = self._lease(cache, lease_key, lease_clock)
        taker = self._lease(cache, lease_key, lease_clock)
        assert holder.acquire()
        lease_clock.advance(300 - 5 - 0.1)
        assert holder.held
        lease_clock.advance(0.2)
        assert not holder.held
        lease_clock.advance(5 * 2 - 0.2)
        assert not taker.acquire()
        lease_clock.advance(0.2)
        assert taker.acquire()
        with pytest.raises(LeaseLost, match="lapsed"):
            holder.renew()
        assert holder.lost.is_set()
        holder.release()  # not its entry any more: nothing to do, no error
        assert taker.held
        assert holder.token is not None and taker.token is not None
        assert taker.token > holder.token
        taker.release()

    def test_tokens_grow_across_releases_expiries_breaks_and_restarts(
        self,
        cache: BaseCache,
        lease_key: tuple[str, str],
        lease_clock: ManualClock,
        request: pytest.FixtureRequest,
    ) -> None:
        tokens: list[int] = []

        def take(on: BaseCache) -> Lease:
            lease = self._lease(on, lease_key, lease_clock)
            assert lease.acquire() and lease.token is not None
            tokens.append(lease.token)
            return lease

        take(cache).release()
        take(cache)  # abandoned: it expires
        lease_clock.advance(3600)
        take(cache)
        cache.delete(*lease_key)  # broken by an operator
        take(cache)
        lease_clock.advance(3600)
        if self.lease_workers == "processes":
            restarted = request.getfixturevalue("cache_factory")()
            take(restarted).release()
        else:
            take(cache).release()
        assert tokens == sorted(set(tokens)), tokens
        assert int(cache.get(lease_key[0], lease_key[1] + FENCE_SUFFIX)) >= max(tokens)

    def test_token_blocks_are_reserved_in_the_counter(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        pk, sk = lease_key
        fence = sk + FENCE_SUFFIX
        last = '{"grove_lease":1,"state":"released","owner":"o","token":%d,"high":%d}'
        cache.set(pk, sk, last % (7, 7))
        cache.set(pk, fence, "7")
        lease = self._lease(cache, lease_key, lease_clock)
        assert lease.acquire()
        assert lease.token == 8
        assert cache.get(pk, fence) == str(7 + TOKEN_BLOCK)
        lease.release()
        cache.set(pk, sk, last % (20, 20))
        cache.set(pk, fence, "500")  # moved on by another taker: the block starts above it
        assert lease.acquire()
        assert lease.token == 21
        assert cache.get(pk, fence) == str(500 + TOKEN_BLOCK)
        lease.release()
        released = parse_value(cache.get(pk, sk))
        assert released is not None and released.high == 500 + TOKEN_BLOCK
        cache.set(pk, fence, "not a number")
        cache.delete(pk, sk)
        with pytest.raises(LeaseError, match="fencing counter"):
            lease.acquire()

    @pytest.mark.parametrize("offset", [3600.0, 1.0, -1.0], ids=["future", "ahead", "in-skew"])
    def test_an_upstream_lock_is_busy_until_its_time_plus_skew(
        self,
        cache: BaseCache,
        lease_key: tuple[str, str],
        lease_clock: ManualClock,
        offset: float,
    ) -> None:
        moment = datetime.fromtimestamp(lease_clock() + offset, UTC)
        upstream = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cache.set(*lease_key, upstream)
        lease = self._lease(cache, lease_key, lease_clock)
        assert not lease.acquire()
        assert cache.get(*lease_key) == upstream
        lease_clock.advance(offset + 5 - 0.1)
        assert not lease.acquire()
        lease_clock.advance(0.2)
        assert lease.acquire()
        stored = parse_value(cache.get(*lease_key))
        assert stored is not None and stored.state == "held" and stored.token == lease.token
        lease.release()

    def test_an_expired_upstream_lock_is_taken(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        moment = datetime.fromtimestamp(lease_clock() - 60, UTC)
        cache.set(*lease_key, moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        lease = self._lease(cache, lease_key, lease_clock)
        assert lease.acquire()
        assert lease.token is not None and lease.token >= 1
        lease.release()

    def test_a_value_that_is_not_a_lease_is_never_taken(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        for value in ("", "mine", '{"grove_lease":2}', "2024-01-01", '{"grove_lease":true}'):
            cache.set(*lease_key, value)
            lease = self._lease(cache, lease_key, lease_clock)
            lease_clock.advance(10**6)
            assert not lease.acquire()
            assert cache.get(*lease_key) == value

    def test_a_refused_renewal_raises_lease_lost(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        holder = self._lease(cache, lease_key, lease_clock)
        assert holder.acquire()
        cache.delete(*lease_key)  # an operator breaks it, and another collector takes it
        successor = self._lease(cache, lease_key, lease_clock)
        assert successor.acquire()
        with pytest.raises(LeaseLost, match="renewal was refused") as info:
            holder.renew()
        assert (info.value.pk, info.value.sk, info.value.token) == (*lease_key, holder.token)
        assert holder.lost.is_set() and not holder.held
        with pytest.raises(LeaseLost):
            holder.renew()
        holder.release()  # after a loss: nothing to do, no error
        stored = parse_value(cache.get(*lease_key))
        assert stored is not None and stored.token == successor.token
        cache.set(*lease_key, "overwritten by hand")
        with pytest.raises(LeaseLost, match="release was refused"):
            successor.release()
        assert cache.get(*lease_key) == "overwritten by hand"

    def test_a_with_block_whose_lease_is_lost_raises_on_exit(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        lease = self._lease(cache, lease_key, lease_clock, renew_every=timedelta(seconds=0.02))
        with pytest.raises(LeaseLost, match="while the with block ran"), lease:
            assert lease.held
            cache.set(*lease_key, "taken over by hand")
            assert lease.lost.wait(timeout=60), "the background renewer did not notice"
            assert not lease.held
        assert cache.get(*lease_key) == "taken over by hand"
        cache.delete(*lease_key)
        with lease:  # acquired again, the earlier loss is forgotten
            assert not lease.lost.is_set()

    def test_a_with_block_that_outlived_its_lease_raises_on_exit(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        lease = self._lease(cache, lease_key, lease_clock)
        with pytest.raises(LeaseLost), lease:
            lease_clock.advance(300)
        with lease:
            lease.renew()
        stored = parse_value(cache.get(*lease_key))
        assert stored is not None and stored.state == "released"

    def test_values_are_documented_json_and_never_repeat(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        seen: list[str] = []
        for _ in range(3):
            lease = self._lease(cache, lease_key, lease_clock, owner="collector-1")
            assert lease.acquire()
            seen.append(cache.get(*lease_key))
            lease.renew()  # at the same clock reading: still a new value
            seen.append(cache.get(*lease_key))
            lease.release()
            seen.append(cache.get(*lease_key))
        assert len(set(seen)) == len(seen)
        for value in seen:
            fields = json.loads(value)
            if fields["state"] == "held":
                assert list(fields) == ["grove_lease", "state", "owner", "token", "high", "expires"]
                assert fields["expires"].endswith("Z")
            else:
                assert list(fields) == ["grove_lease", "state", "owner", "token", "high"]
            assert fields["grove_lease"] == 1 and fields["owner"] == "collector-1"
        counter = cache.get(lease_key[0], lease_key[1] + FENCE_SUFFIX)
        assert counter.isdigit() and int(counter) >= 3

    def test_expiry_lets_an_abandoned_lease_disappear(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        if not isinstance(cache, ExpiringCache):
            pytest.skip(f"{type(cache).__module__} cannot expire entries")
        lease = self._lease(cache, lease_key, lease_clock)
        assert lease.acquire()
        entry_expires = cache.expires_at(*lease_key)
        assert lease.expires_at is not None and entry_expires is not None
        assert abs((entry_expires - lease.expires_at).total_seconds() - 5) < 60
        assert cache.expires_at(lease_key[0], lease_key[1] + FENCE_SUFFIX) is None
        lease.release()
        assert cache.expires_at(*lease_key) is None

    def test_refusals_report_what_was_stored_when_they_say_so(
        self, cache: BaseCache, lease_key: tuple[str, str]
    ) -> None:
        pk, _ = lease_key
        cache.set(pk, "stored", "value")
        calls: list[tuple[Callable[[], object], str | None]] = [
            (lambda: cache.set(pk, "stored", "x", not_set=True), "value"),
            (lambda: cache.set(pk, "stored", "x", constraint="other"), "value"),
            (lambda: cache.delete(pk, "stored", constraint="other"), "value"),
            (lambda: cache.set(pk, "absent", "x", constraint="other"), None),
            (lambda: cache.delete(pk, "absent", constraint="other"), None),
        ]
        for call, stored in calls:
            with pytest.raises(DataFormatException) as info:
                call()
            if getattr(cache, "reports_current", False):
                assert info.value.current_known
            if info.value.current_known:
                assert info.value.current == stored
            else:
                assert info.value.current is None

    def test_calls_per_operation(
        self, cache: BaseCache, lease_key: tuple[str, str], lease_clock: ManualClock
    ) -> None:
        counted = CallCounter(cache)
        lease = self._lease(counted, lease_key, lease_clock)
        other = self._lease(counted, lease_key, lease_clock)
        costs = {}
        for name, call in (
            ("first acquire", lease.acquire),
            ("busy", other.acquire),
            ("renew", lease.renew),
            ("release", lease.release),
            ("acquire", lease.acquire),
            ("renew again", lease.renew),
            ("release again", lease.release),
        ):
            before = counted.total
            call()
            costs[name] = counted.total - before
        first = 3 if counted.reports_current else 4
        assert costs == {
            "first acquire": first,
            "busy": 1,
            "renew": 1,
            "release": 1,
            "acquire": 2,
            "renew again": 1,
            "release again": 1,
        }

    # -- contention ---------------------------------------------------------------------

    def _contend(
        self,
        lease_class: type[Lease],
        seconds: float,
        cache: BaseCache,
        request: pytest.FixtureRequest,
        directory: Path,
    ) -> tuple[list[Hold], FencedResource]:
        key = (_fresh_pk("lease-race"), "all")
        resource = directory / "resource"
        resource.mkdir()
        timing = (self.lease_duration, self.lease_skew, seconds)
        if self.lease_workers == "threads":
            barrier = threading.Barrier(self.lease_contenders)
            results: queue.Queue[list[Hold]] = queue.Queue()
            with ThreadPoolExecutor(self.lease_contenders) as pool:
                futures = [
                    pool.submit(
                        _contend_for_lease,
                        *(cache, lease_class, key, worker, timing, str(resource), None),
                        barrier,
                        results,
                    )
                    for worker in range(self.lease_contenders)
                ]
                for future in futures:
                    future.result(timeout=self.lease_timeout)
            reports = [results.get_nowait() for _ in futures]
        else:
            factory = request.getfixturevalue("cache_factory")
            freezer = directory / "frozen"
            freezer.mkdir()
            done = threading.Event()
            resumer = threading.Thread(target=_resume_frozen, args=(freezer, done))
            resumer.start()
            try:
                reports = run_in_processes(
                    _contend_for_lease,
                    [
                        (factory, lease_class, key, worker, timing, str(resource), str(freezer))
                        for worker in range(self.lease_contenders)
                    ],
                    timeout=self.lease_timeout,
                )
            finally:
                done.set()
                resumer.join()
        return [hold for report in reports for hold in report], FencedResource(resource)

    def test_contenders_never_hold_at_once_nor_write_with_a_stale_token(
        self, cache: BaseCache, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """Contenders with random hold times, some frozen past their expiry mid-write."""
        holds, resource = self._contend(
            Lease, self.lease_contention_seconds, cache, request, tmp_path
        )
        assert lease_violations(holds, resource.accepted()) == []
        assert len({hold.writer.split(".")[0] for hold in holds}) >= 3, "too few took turns"
        assert any(hold.froze for hold in holds)
        assert resource.rejected(), (
            "no frozen holder came back after its successor wrote: fencing went untested"
        )

    def test_the_contention_check_catches_a_lease_without_fencing(
        self, cache: BaseCache, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """The negative control: the same run with a lease whose token never advances."""
        holds, resource = self._contend(
            _UnfencedLease, self.lease_control_seconds, cache, request, tmp_path
        )
        violations = lease_violations(holds, resource.accepted())
        assert any("stale write" in violation for violation in violations), (
            "the contention check passed a lease without fencing tokens"
        )
