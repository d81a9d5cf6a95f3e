"""Run the benchmarks: ``python -m benchmarks.run [HANDLER ...] [--keys N ...] [--json FILE]``.

Prints, per handler and operation, ops/s and p50/p99 latency beside the floor measured in
the same run, the ratio, and whether it meets the handler's target. Timings never fail
anything: the exit code is 0 unless the benchmark itself breaks. ``--json FILE`` also
writes every measurement to FILE (the input of ``benchmarks/plot.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.suite import Suite
from grove.caches.benchmark import Measurement, compare, format_table, measure

HANDLERS = ("local_memory", "local_file", "local_sqlite", "aws_dynamodb", "redis", "postgresql")
"""Handlers with a module of the same name in this folder."""


def _scaled(
    external: dict[str, dict[str, Measurement]], floor: dict[str, Measurement]
) -> dict[str, Measurement]:
    """A reference measured in another process, scaled by the floors of both processes.

    :param external: The reference (``subject``) and the floor measured beside it.
    :param floor: The floor measured here.
    :return: The reference's figures as if measured here.
    """
    scaled = {}
    for operation, measured in external["subject"].items():
        factor = floor[operation].ops_per_second / external["floor"][operation].ops_per_second
        scaled[operation] = dataclasses.replace(
            measured, ops_per_second=measured.ops_per_second * factor
        )
    return scaled


def run_suite(suite: Suite, record: list[dict[str, Any]] | None = None) -> str:
    """Measure one suite and render its table with the targets.

    :param suite: What to measure.
    :param record: When given, the suite's measurements are appended to it, as
        :func:`suite_record` makes them.
    :return: The report text.
    """
    subjects = {"handler": suite.subject(), "floor": suite.floor()}
    subjects.update({name: make() for name, make in suite.extra_floors.items()})
    results = measure(subjects, suite.workload)
    for name, run in suite.external.items():
        results[name] = _scaled(run(suite.workload), results["floor"])
    if record is not None:
        record.append(suite_record(suite, results))
    lines = [format_table("handler", "floor", results).replace("handler vs floor", suite.title)]
    for name in [*suite.extra_floors, *suite.external]:
        ratios = compare("handler", name, results)
        lines.append(
            f"  vs {name}: " + ", ".join(f"{op} {ratio:.2f}" for op, ratio in ratios.items())
        )
    ratios = compare("handler", "floor", results)
    for operation, target in suite.targets.items():
        verdict = "meets" if ratios[operation] >= target else "BELOW"
        lines.append(
            f"  target {operation} >= {target:.2f}x floor: {verdict} ({ratios[operation]:.2f})"
        )
    if suite.report is not None:
        lines.append(suite.report())
    return "\n".join(lines)


def suite_record(suite: Suite, results: dict[str, dict[str, Measurement]]) -> dict[str, Any]:
    """Describe one suite's measurements as JSON-ready data.

    :param suite: What was measured.
    :param results: What :func:`~grove.caches.benchmark.measure` returned for it.
    :return: ``{"title", "workload", "results": {subject: {operation: {...}}}}``.
    """
    return {
        "title": suite.title,
        "workload": dataclasses.asdict(suite.workload),
        "results": {
            subject: {
                operation: {
                    "ops_per_second": measurement.ops_per_second,
                    "p50_us": measurement.p50_us,
                    "p99_us": measurement.p99_us,
                }
                for operation, measurement in measurements.items()
            }
            for subject, measurements in results.items()
        },
    }


def write_results(path: Path, suites: list[dict[str, Any]]) -> None:
    """Write the measurements of a run, with what the machine was, as JSON.

    :param path: The file to write (replaced whole).
    :param suites: The suites' records, as :func:`suite_record` makes them.
    """
    document = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "python": platform.python_version(),
            "system": platform.platform(terse=True),
            "cpus": os.cpu_count(),
            "load_average": [round(load, 2) for load in os.getloadavg()],
        },
        "suites": suites,
    }
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    temporary.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and print a report for each chosen handler.

    :param argv: The arguments, without the program name.
    :return: The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("handlers", nargs="*", choices=[*HANDLERS, []], help="default: all")
    parser.add_argument(
        "--keys", type=int, action="append", help="store sizes to measure (default: 1000)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every measurement to FILE"
    )
    arguments = parser.parse_args(argv)
    record: list[dict[str, Any]] | None = [] if arguments.json else None
    for handler in arguments.handlers or HANDLERS:
        module = importlib.import_module(f"benchmarks.{handler}")
        for keys in arguments.keys or [1_000]:
            for suite in module.suites(keys):
                print(run_suite(suite, record), flush=True)
                print()
                if record is not None:  # after each suite, so a long run keeps what it did
                    write_results(arguments.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
