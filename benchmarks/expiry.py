"""The price of expiry on any handler: ``set`` with ``ttl`` and ``get`` of an expiring entry.

Two fresh handlers of the same kind are measured in the same run: one whose every ``set``
passes a ``ttl`` of a day (so its filled entries, stored by one ``set`` each, expire too,
and ``get hit`` reads expiring entries), and one without. The issue's target is that the
first does every operation within 10% of the second.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from grove.caches.atomic import ExpiringCache
from grove.caches.benchmark import KeyValue, Workload, compare, format_table, measure

DAY = 86_400.0
"""The time to live of every entry the expiring subject writes."""

OPERATIONS = ("set new", "get hit", "overwrite", "compare-and-set", "not_set")
"""What expiry could slow down: writes that store a deadline, reads that check one."""

TARGET = 0.9
"""The least throughput ratio with ttl / without."""


class WithTtl:
    """A handler whose every ``set`` passes a time to live; filled by one ``set`` per key.

    :param handler: The handler; its own bulk ``populate`` is not used, so the filled
        entries expire.
    :param ttl: The time to live of every write.
    """

    def __init__(self, handler: ExpiringCache, ttl: float | timedelta = DAY) -> None:
        self.handler = handler
        self.ttl = ttl

    def get(self, pk: str, sk: str) -> str:
        return self.handler.get(pk, sk)

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        self.handler.set(pk, sk, value, not_set, constraint, ttl=self.ttl)

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self.handler.delete(pk, sk, constraint)


def expiry_report(make: Callable[[], ExpiringCache], workload: Workload, label: str = "") -> str:
    """Measure a handler with ``ttl`` on every write beside the same handler without.

    :param make: Makes a fresh, empty handler (called twice).
    :param workload: Sizes and counts.
    :param label: Says which handler, in the table's first line.
    :return: The table, with a target line per operation.
    """
    subjects: dict[str, KeyValue] = {"with ttl": WithTtl(make()), "without": make()}
    results = measure(subjects, workload, OPERATIONS)
    title = f"expiry{' of ' + label if label else ''}: with ttl vs without"
    lines = [format_table("with ttl", "without", results).replace("with ttl vs without", title)]
    for operation, ratio in compare("with ttl", "without", results).items():
        verdict = "meets" if ratio >= TARGET else "BELOW"
        lines.append(
            f"  target {operation} with ttl >= {TARGET:.2f}x without: {verdict} ({ratio:.2f})"
        )
    return "\n".join(lines)
