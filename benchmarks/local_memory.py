"""local_memory against a bare dict wrapped in a method call with a threading.Lock.

With ``GROVE_BENCH_UPSTREAM_VENV`` naming a virtual environment with upstream Grove 2.2.0
(see :mod:`benchmarks.upstream`), also beside upstream's ``local_memory``, measured in the
same run in a child process.

The table is followed by the price of expiry (:mod:`benchmarks.expiry`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from benchmarks.expiry import expiry_report
from benchmarks.locked_dict import LockedDict
from benchmarks.suite import Suite
from benchmarks.upstream import measure_upstream, upstream_venv
from grove.caches.benchmark import Workload
from grove.caches.local_memory import Handler


def suites(keys: int) -> Iterator[Suite]:
    """The local_memory table at one store size.

    :param keys: Entries in the store while measuring.
    :return: One suite.
    """
    workload = Workload(keys=keys, calls=50_000)
    yield Suite(
        title=f"local_memory, {keys:,} keys",
        subject=Handler,
        floor=LockedDict,
        workload=workload,
        targets={"get hit": 0.5, "set new": 0.5, "overwrite": 0.5},
        external=(
            {"upstream Grove 2.2.0": functools.partial(measure_upstream, "local_memory")}
            if upstream_venv() is not None
            else {}
        ),
        report=lambda: expiry_report(Handler, workload, "local_memory"),
    )
