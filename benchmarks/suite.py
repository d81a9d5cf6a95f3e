"""What one handler's benchmark module provides: subjects, their floor and the targets."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from grove.caches.benchmark import KeyValue, Workload


@dataclass
class Suite:
    """One table of the report: a handler (or a setting of it) beside its floor.

    :param title: What the table measures, e.g. ``local_file fsync=off, 1,000 keys``.
    :param subject: Makes the handler under test, empty.
    :param floor: Makes the floor, empty, on the same kind of storage.
    :param workload: Sizes and counts for this table.
    :param targets: Operation to the least acceptable throughput ratio subject/floor.
    :param extra_floors: More references measured in the same run, shown as ratios too.
    :param report: Measures whatever else the handler wants to show and returns the
        lines printed after the table.
    """

    title: str
    subject: Callable[[], KeyValue]
    floor: Callable[[], KeyValue]
    workload: Workload
    targets: dict[str, float] = field(default_factory=dict)
    extra_floors: dict[str, Callable[[], KeyValue]] = field(default_factory=dict)
    report: Callable[[], str] | None = None


def threaded_rate(store: KeyValue, threads: int, calls: int, operation: str) -> tuple[float, int]:
    """Measure ``threads`` threads sharing ``store``, each calling it ``calls`` times.

    :param store: The handler or floor under test.
    :param threads: Threads started together, each on a key of its own.
    :param calls: Calls each thread makes.
    :param operation: ``"get"``, or anything else for an overwriting ``set``.
    :return: Calls per second, and how many calls raised.
    """
    keys = [(f"threads.{index % 50}", f"sk{index}") for index in range(threads)]
    for pk, sk in keys:
        store.set(pk, sk, "v" * 64)
    barrier = threading.Barrier(threads + 1)
    errors = Counter[str]()

    def work(pk: str, sk: str) -> None:
        barrier.wait()
        for _ in range(calls):
            try:
                if operation == "get":
                    store.get(pk, sk)
                else:
                    store.set(pk, sk, "w" * 64)
            except Exception as exc:
                errors[type(exc).__name__] += 1

    workers = [threading.Thread(target=work, args=key) for key in keys]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return threads * calls / (time.perf_counter() - started), sum(errors.values())
