"""Measure a handler beside a floor: ops/s and p50/p99 latency per operation.

A *floor* is the least work that the operation needs on the same storage (a dict behind a
lock, a raw file write and rename, the raw request), measured in the same run, so the
ratio handler/floor says what the handler's own layer costs on a shared, noisy machine.
A floor implements the three methods of :class:`KeyValue` with whatever raw calls it
stands for; it need not enforce the contract. A subject may also offer
``populate(entries)``, which stores a list of ``(pk, sk, value)`` in bulk: the store is
then filled that way before measuring, instead of by one ``set`` per key (which takes
hours for a million keys on a store that syncs every write).

Each operation runs ``repeats`` times, subject and floor alternating (each repeat starting
with the next subject), and the best run of each counts: throughput from a loop timed as a
whole, latency from a second loop that times every call. The ``benchmarks/`` folder of the
repository runs this for every handler with its floors; ``grove-cache bench`` runs it for
the configured handler.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from grove.exceptions import NotFoundException

__all__ = [
    "OPERATIONS",
    "KeyValue",
    "Measurement",
    "Workload",
    "compare",
    "format_table",
    "measure",
]


class KeyValue(Protocol):
    """What the benchmark calls: the shape of :class:`~grove.caches.BaseCache`."""

    def get(self, pk: str, sk: str) -> str:
        """Return the value stored under the key."""
        ...

    def set(
        self,
        pk: str,
        sk: str,
        value: str,
        not_set: bool = False,
        constraint: str | None = None,
    ) -> None:
        """Store a value, optionally only if absent or equal to ``constraint``."""
        ...

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        """Remove the entry, optionally only if equal to ``constraint``."""
        ...


OPERATIONS = (
    "set new",
    "get hit",
    "get miss",
    "overwrite",
    "compare-and-set",
    "not_set",
    "delete",
)
"""The operations measured, in the order they run."""


@dataclass(frozen=True)
class Workload:
    """What to measure.

    :param keys: Entries stored before measuring (the store's size).
    :param calls: Calls per operation and run.
    :param value_bytes: Size of every value, in ASCII characters.
    :param repeats: Runs per operation; the best counts.
    :param namespace: A word in every partition key the benchmark writes, so that a
        benchmark of a live store touches only its own entries.
    :param remove_after: Delete the stored entries when done, however the measuring ends
        (a live store); a throwaway store skips this.
    """

    keys: int = 1_000
    calls: int = 2_000
    value_bytes: int = 64
    repeats: int = 3
    namespace: str = "bench"
    remove_after: bool = False


@dataclass(frozen=True)
class Measurement:
    """One operation measured on one subject."""

    operation: str
    ops_per_second: float
    p50_us: float
    p99_us: float


def _key(namespace: str, index: int) -> tuple[str, str]:
    # Grove's shape: many pointer partitions with a few operations each.
    return f"pointer.{namespace}.{index // 8:08x}", f"operation-{index % 8}"


def _fresh_key(namespace: str, tag: str, index: int) -> tuple[str, str]:
    return f"fresh.{namespace}.{tag}.{index // 8:08x}", f"operation-{index % 8}"


_Step = tuple[Callable[[int], object], Callable[[], None]]
"""One operation's call for the i-th step, and its clean-up after the run."""


def _nothing() -> None:
    return None


class _Run:
    """The state of one subject across operations: which value each stored key holds."""

    def __init__(self, store: KeyValue, workload: Workload) -> None:
        self.store = store
        self.workload = workload
        self.values = ("a" * workload.value_bytes, "b" * workload.value_bytes)
        self.stored_keys = [_key(workload.namespace, index) for index in range(workload.keys)]
        self.current = [0] * workload.keys
        self.runs = 0
        # Fresh keys the step in progress may have stored, until its clean-up removed them.
        self.unremoved: list[tuple[str, str]] = []

    def populate(self) -> None:
        bulk = getattr(self.store, "populate", None)
        if bulk is not None:
            bulk([(pk, sk, self.values[0]) for pk, sk in self.stored_keys])
            return
        for pk, sk in self.stored_keys:
            self.store.set(pk, sk, self.values[0])

    def remove(self) -> None:
        """Delete every entry the benchmark may have stored, however far it got."""
        for pk, sk in self.stored_keys + self.unremoved:
            self.store.delete(pk, sk)
        self.unremoved = []

    def steps(self, operation: str) -> tuple[Callable[[int], object], Callable[[], None]]:
        """Return the call to make for the i-th step, and the clean-up after the run.

        Keys are made before the run, so the timed loop holds only the call itself.
        """
        self.runs += 1
        fresh = [
            _fresh_key(self.workload.namespace, str(self.runs), index)
            for index in range(self.workload.calls)
        ]
        table = {**self._reading_steps(fresh), **self._writing_steps(fresh)}
        if operation in ("set new", "not_set", "delete"):
            self.unremoved = fresh
        if operation == "delete":
            for pk, sk in fresh:
                self.store.set(pk, sk, self.values[0])
        return table[operation]

    def _reading_steps(self, fresh: list[tuple[str, str]]) -> dict[str, _Step]:
        store, stored, size = self.store, self.stored_keys, self.workload.keys

        def get_miss(index: int) -> object:
            try:
                return store.get(*fresh[index])
            except (NotFoundException, KeyError, FileNotFoundError):
                return None

        return {
            "get hit": (lambda i: store.get(*stored[i % size]), _nothing),
            "get miss": (get_miss, _nothing),
        }

    def _writing_steps(self, fresh: list[tuple[str, str]]) -> dict[str, _Step]:
        store, values, current = self.store, self.values, self.current
        stored, size = self.stored_keys, self.workload.keys

        def remove_fresh() -> None:
            for pk, sk in fresh:
                store.delete(pk, sk)
            self.unremoved = []

        def removed_by_the_run() -> None:
            self.unremoved = []

        def overwrite(index: int) -> object:
            # A different value each time: storing the same bytes again costs some
            # backends nothing (SQLite writes no page), which would flatter them.
            slot = index % size
            current[slot] = 1 - current[slot]
            store.set(*stored[slot], values[current[slot]])
            return None

        def compare_and_set(index: int) -> object:
            slot = index % size
            old = current[slot]
            current[slot] = 1 - old
            store.set(*stored[slot], values[1 - old], constraint=values[old])
            return None

        return {
            "set new": (lambda i: store.set(*fresh[i], values[0]), remove_fresh),
            "overwrite": (overwrite, _nothing),
            "compare-and-set": (compare_and_set, _nothing),
            "not_set": (lambda i: store.set(*fresh[i], values[0], not_set=True), remove_fresh),
            "delete": (lambda i: store.delete(*fresh[i]), removed_by_the_run),
        }


def _throughput(step: Callable[[int], object], calls: int) -> float:
    started = time.perf_counter()
    for index in range(calls):
        step(index)
    return calls / (time.perf_counter() - started)


def _latencies_us(step: Callable[[int], object], calls: int) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for index in range(calls):
        started = clock()
        step(index)
        samples.append((clock() - started) / 1000)
    return samples


def _percentile(samples: Sequence[float], fraction: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[round(fraction * 100) - 1]


def measure(
    subjects: dict[str, KeyValue],
    workload: Workload,
    operations: Sequence[str] = OPERATIONS,
    on_operation: Callable[[str], object] | None = None,
) -> dict[str, dict[str, Measurement]]:
    """Measure each operation on each subject, the subjects alternating run by run.

    :param subjects: Names and stores, for example a handler and its floor. Each starts
        empty; the benchmark fills it with ``workload.keys`` entries.
    :param workload: Sizes and counts.
    :param operations: Which of :data:`OPERATIONS` to measure.
    :param on_operation: Called with each operation's name when it is measured, for a
        progress display.
    :return: For each subject, its measurement of each operation.
    """
    runs = {name: _Run(store, workload) for name, store in subjects.items()}
    try:
        return _measure(runs, workload, operations, on_operation)
    finally:
        # On every way out (an error, Ctrl-C), so a live store keeps no scratch entries.
        if workload.remove_after:
            for run in runs.values():
                run.remove()


def _measure(
    runs: dict[str, _Run],
    workload: Workload,
    operations: Sequence[str],
    on_operation: Callable[[str], object] | None,
) -> dict[str, dict[str, Measurement]]:
    subjects = runs.keys()
    for run in runs.values():
        run.populate()
    results: dict[str, dict[str, Measurement]] = {name: {} for name in subjects}
    for operation in operations:
        # Flush what filling and the previous operation wrote: otherwise the disk's
        # write-back lands on whichever file-backed subject happens to run next.
        os.sync()
        best_rate = dict.fromkeys(subjects, 0.0)
        best_latency: dict[str, list[float]] = {}
        for repeat in range(workload.repeats):
            # Each repeat starts with the next subject, so none always runs right after
            # the same neighbour (whose disk write-back it would otherwise inherit).
            order = list(runs.items())
            shift = repeat % len(order)
            for name, run in order[shift:] + order[:shift]:
                step, clean_up = run.steps(operation)
                best_rate[name] = max(best_rate[name], _throughput(step, workload.calls))
                clean_up()
                step, clean_up = run.steps(operation)
                samples = _latencies_us(step, workload.calls)
                clean_up()
                if name not in best_latency or statistics.median(samples) < statistics.median(
                    best_latency[name]
                ):
                    best_latency[name] = samples
        for name in subjects:
            samples = best_latency[name]
            results[name][operation] = Measurement(
                operation=operation,
                ops_per_second=best_rate[name],
                p50_us=_percentile(samples, 0.50),
                p99_us=_percentile(samples, 0.99),
            )
        if on_operation is not None:
            on_operation(operation)
    return results


def compare(
    subject: str, floor: str, results: dict[str, dict[str, Measurement]]
) -> dict[str, float]:
    """Return the throughput ratio subject/floor for each operation measured on both.

    :param subject: The name of the measured handler in ``results``.
    :param floor: The name of its floor in ``results``.
    :param results: What :func:`measure` returned.
    :return: Operation name to ratio (1.0 means as fast as the floor).
    """
    return {
        operation: measurement.ops_per_second / results[floor][operation].ops_per_second
        for operation, measurement in results[subject].items()
        if operation in results[floor]
    }


def format_table(
    subject: str,
    floor: str | None,
    results: dict[str, dict[str, Measurement]],
) -> str:
    """Render one subject's measurements, beside its floor when one is named.

    :param subject: The name of the measured handler in ``results``.
    :param floor: The name of its floor in ``results``, or ``None``.
    :param results: What :func:`measure` returned.
    :return: A plain-text table, one line per operation.
    """
    header = f"{'operation':<16}{'ops/s':>12}{'p50 us':>10}{'p99 us':>10}"
    if floor is not None:
        header += f"{'floor ops/s':>14}{'ratio':>8}"
    lines = [f"{subject}" + (f" vs {floor}" if floor else ""), header]
    ratios = compare(subject, floor, results) if floor is not None else {}
    for operation, measurement in results[subject].items():
        line = (
            f"{operation:<16}{measurement.ops_per_second:>12,.0f}"
            f"{measurement.p50_us:>10.1f}{measurement.p99_us:>10.1f}"
        )
        if floor is not None and operation in ratios:
            line += f"{results[floor][operation].ops_per_second:>14,.0f}{ratios[operation]:>8.2f}"
        lines.append(line)
    return "\n".join(lines)
