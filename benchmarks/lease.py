"""Leases beside the raw calls they make: ``python -m benchmarks.lease [HANDLER ...]``.

For each handler, a :class:`~grove.caches.lease.Lease` runs acquire, renew, release in a
loop on one key, in the steady state (the key was acquired and released before). Every
call it makes goes through :class:`~grove.caches.testing.CallCounter` around the real
handler, which counts them. The floor makes the same calls on the same handler with
values prepared beforehand: a read or a refused claim and a compare-and-set for acquire,
one compare-and-set each for renew and release, ``ttl`` where the lease passes one. So
the ratio is what the lease's own work (JSON, clocks, bookkeeping) costs on top of the
calls it cannot avoid. Timings never fail anything.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta

from grove.caches import BaseCache, local_file, local_memory, local_sqlite
from grove.caches.lease import Lease
from grove.caches.testing import CallCounter
from grove.exceptions import DataFormatException

OPERATIONS = ("acquire", "renew", "release")
DURATION = timedelta(minutes=5)
SKEW = timedelta(seconds=5)
PK, SK = "execution_lock.bench", "all"


@contextmanager
def _scratch() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="grove-bench-lease-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def memory() -> Iterator[BaseCache]:
    yield local_memory.Handler()


@contextmanager
def files() -> Iterator[BaseCache]:
    with _scratch() as directory:
        handler = local_file.Handler(local_file.Configuration(path=directory))
        handler.setup()
        yield handler


@contextmanager
def sqlite() -> Iterator[BaseCache]:
    with _scratch() as directory:
        yield local_sqlite.Handler(local_sqlite.Configuration(path=f"{directory}/cache.db"))


Opener = Callable[[], AbstractContextManager[BaseCache]]
"""Makes a handler on new, empty storage, and removes the storage afterwards."""

HANDLERS: dict[str, tuple[str, Opener, int]] = {
    "local_memory": ("local_memory", memory, 20_000),
    "local_file": ("local_file, fsync on (the default)", files, 300),
    "local_sqlite": ("local_sqlite, synchronous full (the default)", sqlite, 300),
}
"""Name: the table's title, the handler, and acquire/renew/release cycles per run."""


@dataclass(frozen=True)
class Row:
    """One operation measured on one handler."""

    operation: str
    ops_per_second: float
    p50_us: float
    p99_us: float
    calls: Counter[str]
    """Calls per operation, by method (averaged over the loop; they are all equal)."""
    raw_ops_per_second: float


def _summary(samples_ns: list[int]) -> tuple[float, float, float]:
    quantiles = statistics.quantiles(samples_ns, n=100, method="inclusive")
    return 1e9 / statistics.fmean(samples_ns), quantiles[49] / 1000, quantiles[98] / 1000


def _timed(call: Callable[[], object]) -> int:
    started = time.perf_counter_ns()
    call()
    return time.perf_counter_ns() - started


Steps = tuple[Callable[[], object], ...]
"""acquire, renew, release, in the order of :data:`OPERATIONS`."""


def lease_steps(cache: BaseCache) -> Steps:
    """A lease's acquire, renew and release, after one acquisition of the key.

    :param cache: The handler.
    :return: The three steps.
    """
    lease = Lease(cache, PK, SK, duration=DURATION, skew=SKEW)
    assert lease.acquire()
    lease.release()

    def acquire() -> None:
        assert lease.acquire()

    return acquire, lease.renew, lease.release


def raw_steps(cache: BaseCache) -> Steps:
    """The calls a lease makes, with values prepared beforehand.

    :param cache: The handler.
    :return: The three steps.
    """
    released = (
        '{"grove_lease":1,"state":"released","owner":"bench:1:00000000","token":%d,"high":1048576}'
    )
    held = (
        '{"grove_lease":1,"state":"held","owner":"bench:1:00000000","token":%d,"high":1048576,'
        '"expires":"2030-01-01T00:00:00.%06dZ"}'
    )
    claim = (
        '{"grove_lease":1,"state":"claiming","owner":"bench:1:00000000",'
        '"expires":"2030-01-01T00:00:00.000000Z","nonce":"' + "0" * 32 + '"}'
    )
    store: Callable[..., None] = cache.set
    ttl = {"ttl": DURATION + SKEW} if cache.supports_expiry() else {}
    claim_first = bool(getattr(cache, "reports_current", False))
    token = [1]
    cache.set(PK, SK, released % token[0])

    def acquire() -> None:
        if claim_first:
            with suppress(DataFormatException):
                store(PK, SK, claim, not_set=True, **ttl)
        else:
            cache.get(PK, SK)
        store(PK, SK, held % (token[0] + 1, 0), constraint=released % token[0], **ttl)

    def renew() -> None:
        store(PK, SK, held % (token[0] + 1, 1), constraint=held % (token[0] + 1, 0), **ttl)

    def release() -> None:
        token[0] += 1
        cache.set(PK, SK, released % token[0], constraint=held % (token[0], 1))

    return acquire, renew, release


def measure(open_handler: Opener, cycles: int, repeats: int = 3) -> list[Row]:
    """Measure a lease and its floor, each on its own new handler, call by call in turn.

    Each lease operation is timed right beside the same raw operation, so both see the
    same load on a shared machine.

    :param open_handler: Makes a handler on new, empty storage (a context manager).
    :param cycles: acquire/renew/release cycles per run.
    :param repeats: Runs; the best (by mean) of each operation counts.
    :return: One row per operation.
    """
    best: dict[str, list[int]] = {}
    best_raw: dict[str, list[int]] = {}
    calls: Counter[str] = Counter()
    for _ in range(repeats):
        with open_handler() as handler, open_handler() as raw_handler:
            counted = CallCounter(handler)
            subject, floor = lease_steps(counted), raw_steps(raw_handler)
            samples: dict[str, list[int]] = {operation: [] for operation in OPERATIONS}
            raw: dict[str, list[int]] = {operation: [] for operation in OPERATIONS}
            calls.clear()
            for _ in range(cycles):
                for operation, step, raw_step in zip(OPERATIONS, subject, floor, strict=True):
                    before = Counter(counted.calls)
                    samples[operation].append(_timed(step))
                    raw[operation].append(_timed(raw_step))
                    for method, count in (counted.calls - before).items():
                        calls[f"{operation} {method}"] += count
        for operation in OPERATIONS:
            for kept, new in ((best, samples), (best_raw, raw)):
                if operation not in kept or statistics.fmean(new[operation]) < statistics.fmean(
                    kept[operation]
                ):
                    kept[operation] = new[operation]
    rows = []
    for operation in OPERATIONS:
        rate, p50, p99 = _summary(best[operation])
        per_operation = Counter(
            {
                key.split(" ", 1)[1]: count / cycles
                for key, count in calls.items()
                if key.startswith(operation + " ")
            }
        )
        rows.append(Row(operation, rate, p50, p99, per_operation, _summary(best_raw[operation])[0]))
    return rows


def format_rows(title: str, rows: Sequence[Row]) -> str:
    """Render one handler's table.

    :param title: The handler and its settings.
    :param rows: What :func:`measure` returned.
    :return: A plain-text table.
    """
    lines = [
        title,
        f"{'operation':<10}{'ops/s':>10}{'p50 us':>9}{'p99 us':>9}  {'calls':<18}"
        f"{'raw ops/s':>10}{'ratio':>7}",
    ]
    for row in rows:
        calls = ", ".join(f"{method} {count:g}" for method, count in sorted(row.calls.items()))
        lines.append(
            f"{row.operation:<10}{row.ops_per_second:>10,.0f}{row.p50_us:>9.1f}{row.p99_us:>9.1f}"
            f"  {calls:<18}{row.raw_ops_per_second:>10,.0f}"
            f"{row.ops_per_second / row.raw_ops_per_second:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print a table for each chosen handler.

    :param argv: The arguments, without the program name.
    :return: The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("handlers", nargs="*", choices=[*HANDLERS, []], help="default: all")
    parser.add_argument("--cycles", type=int, help="cycles per run (default: per handler)")
    arguments = parser.parse_args(argv)
    for name in arguments.handlers or HANDLERS:
        title, opener, cycles = HANDLERS[name]
        print(format_rows(title, measure(opener, arguments.cycles or cycles)), flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
