"""What one handler's benchmark module provides: subjects, their floor and the targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from grove.caches.benchmark import KeyValue, Measurement, Workload

Measured = dict[str, dict[str, Measurement]]
"""Measurements by subject name, then by operation."""


@dataclass
class Suite:
    """One table of the report: a handler (or a setting of it) beside its floor.

    :param title: What the table measures, e.g. ``local_file fsync=off, 1,000 keys``.
    :param subject: Makes the handler under test, empty.
    :param floor: Makes the floor, empty, on the same kind of storage.
    :param workload: Sizes and counts for this table.
    :param targets: Operation to the least acceptable throughput ratio subject/floor.
    :param extra_floors: More references measured in the same run, shown as ratios too.
    :param external: References measured in another process during the run (upstream
        Grove in its own environment), each by a function of the workload that returns
        the reference's measurements (``subject``) and those of this suite's floor
        measured beside it there (``floor``); the reference is shown scaled by the ratio
        of the two floors.
    :param report: Measures whatever else the handler wants to show and returns the
        lines printed after the table.
    """

    title: str
    subject: Callable[[], KeyValue]
    floor: Callable[[], KeyValue]
    workload: Workload
    targets: dict[str, float] = field(default_factory=dict)
    extra_floors: dict[str, Callable[[], KeyValue]] = field(default_factory=dict)
    external: dict[str, Callable[[Workload], dict[str, dict[str, Measurement]]]] = field(
        default_factory=dict
    )
    report: Callable[[], str] | None = None
