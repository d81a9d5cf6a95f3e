"""Contention: threads and processes racing compare-and-set, ``not_set`` and deletes.

:func:`run_in_processes` is public: a handler's own tests use it for races of their own.
Process workers are module-level functions, so that a spawned process can unpickle them.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pytest

from grove.caches import BaseCache
from grove.caches.testing.base import HandlerFixtures, SharedStoreFixtures
from grove.exceptions import DataFormatException, NotFoundException


def increment_until(cache: BaseCache, pk: str, sk: str, count: int) -> int:
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
    increment_until(cache, pk, sk, count)
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


class ThreadContentionTests(HandlerFixtures):
    """Threads of one process sharing one handler: no lost update, one winner per race."""

    thread_workers: ClassVar[int] = 8
    """Threads in the compare-and-set increment test."""

    thread_increments: ClassVar[int] = 200
    """Increments each of those threads makes."""

    thread_racers: ClassVar[int] = 50
    """Threads racing ``not_set=True`` for one key (Grove's default worker count)."""

    def test_threads_compare_and_set_lose_no_update(self, cache: BaseCache, pk: str) -> None:
        cache.set(pk, "counter", "0")
        barrier = threading.Barrier(self.thread_workers)

        def work() -> int:
            barrier.wait()
            return increment_until(cache, pk, "counter", self.thread_increments)

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


class ProcessContentionTests(SharedStoreFixtures):
    """Processes, each with its own handler on one store: no lost update, one winner."""

    process_workers: ClassVar[int] = 4
    """Processes in the compare-and-set increment test."""

    process_increments: ClassVar[int] = 500
    """Increments each of those processes makes."""

    process_racers: ClassVar[int] = 8
    """Processes racing ``not_set=True`` for one key."""

    process_timeout: ClassVar[float] = 300.0
    """Seconds the process tests wait for their workers before they fail."""

    def _run_processes(
        self, target: Callable[..., None], argument_sets: list[tuple[Any, ...]]
    ) -> list[Any]:
        return run_in_processes(target, argument_sets, timeout=self.process_timeout)

    def test_processes_compare_and_set_lose_no_update(
        self, cache: BaseCache, shared_cache_factory: Callable[[], BaseCache], pk: str
    ) -> None:
        cache.set(pk, "counter", "0")
        self._run_processes(
            _process_increments,
            [(shared_cache_factory, pk, "counter", self.process_increments)] * self.process_workers,
        )
        expected = self.process_workers * self.process_increments
        assert int(cache.get(pk, "counter")) == expected

    def test_processes_racing_not_set_have_one_winner(
        self, cache: BaseCache, shared_cache_factory: Callable[[], BaseCache], pk: str
    ) -> None:
        outcomes = self._run_processes(
            _process_not_set_race,
            [
                (shared_cache_factory, pk, "lock", f"process-{i}")
                for i in range(self.process_racers)
            ],
        )
        winners = [token for outcome, token in outcomes if outcome == "won"]
        assert len(winners) == 1, outcomes
        assert cache.get(pk, "lock") == winners[0]
