"""Draw the benchmark figures: ``python -m benchmarks.plot [RESULTS] [OUTDIR]``.

Reads a results file written by ``python -m benchmarks.run --json RESULTS`` (default
``benchmarks/results.json``) and writes into OUTDIR (default ``docs/_generated``):

- ``bench-<n>.svg``: one figure per table of the run, ops/s of each operation for the
  handler beside its floor (and any other reference measured in the same run), on a
  logarithmic axis;
- ``bench-ratios.svg``: every handler's throughput ratio to its floor, per operation;
- ``bench-figures.md``: the figures with their captions and their numbers as tables,
  for the documentation to include.

The SVG files carry no date and fixed ids, so drawing the same results twice gives the
same bytes. The documentation build runs this script, so the figures always show the
committed results file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from grove.caches.benchmark import OPERATIONS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "benchmarks" / "results.json"
DEFAULT_OUTDIR = ROOT / "docs" / "_generated"

_COLOURS = ("#1f6feb", "#8c959f", "#d29922", "#2da44e", "#cf222e")
"""The handler first, then its floor, then other references."""


def _deterministic() -> None:
    plt.rcParams.update(
        {
            "svg.hashsalt": "grove-caches",
            "svg.fonttype": "none",  # text stays text: smaller, searchable
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )


def _subjects(results: dict[str, Any]) -> list[str]:
    """The handler, its floor, then the others in the order they were measured."""
    first = [name for name in ("handler", "floor") if name in results]
    return first + [name for name in results if name not in first]


def _label(subject: str) -> str:
    return {"handler": "handler", "floor": "floor"}.get(subject, subject)


def suite_figure(suite: dict[str, Any], path: Path) -> None:
    """Draw one table of the run: ops/s per operation, handler beside its references.

    :param suite: One entry of the results file's ``suites``.
    :param path: The SVG file to write.
    """
    results = suite["results"]
    subjects = _subjects(results)
    operations = [op for op in OPERATIONS if op in results["handler"]]
    height = 0.8 / len(subjects)
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(operations) * len(subjects) / 2 + 1.2))
    for index, subject in enumerate(subjects):
        positions = [row + index * height for row in range(len(operations))]
        values = [results[subject].get(op, {}).get("ops_per_second", 0.0) for op in operations]
        axes.barh(
            positions,
            values,
            height=height,
            label=_label(subject),
            color=_COLOURS[index % len(_COLOURS)],
        )
    axes.set_yticks([row + 0.4 - height / 2 for row in range(len(operations))], operations)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("operations per second (log scale; more is better)")
    axes.set_title(suite["title"], loc="left")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    figure.tight_layout()
    figure.savefig(path, metadata={"Date": None})
    plt.close(figure)


def ratio_figure(suites: list[dict[str, Any]], path: Path) -> None:
    """Draw every table's throughput ratio handler/floor, per operation.

    :param suites: The results file's ``suites``.
    :param path: The SVG file to write.
    """
    figure, axes = plt.subplots(figsize=(8, 0.32 * len(suites) + 1.6))
    for row, suite in enumerate(suites):
        handler, floor = suite["results"]["handler"], suite["results"]["floor"]
        for column, operation in enumerate(OPERATIONS):
            if operation not in handler or operation not in floor:
                continue
            ratio = handler[operation]["ops_per_second"] / floor[operation]["ops_per_second"]
            axes.scatter(
                ratio,
                row,
                marker="os^Dv<>"[column % 7],
                color=_COLOURS[column % len(_COLOURS)],
                label=operation if row == 0 else None,
                zorder=3,
            )
    axes.axvline(1.0, color="#8c959f", linewidth=1, zorder=1)
    axes.set_yticks(range(len(suites)), [_short(suite["title"]) for suite in suites])
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("throughput ratio handler / floor (1 = as fast as the floor)")
    low, high = axes.get_xlim()
    ticks = [tick for tick in _RATIO_TICKS if low <= tick <= high]
    axes.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
    axes.minorticks_off()
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    figure.tight_layout()
    figure.savefig(path, metadata={"Date": None})
    plt.close(figure)


_RATIO_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _short(title: str) -> str:
    """``redis at redis://... (loopback), 1,000 keys`` becomes ``redis, 1,000 keys``."""
    name, _, rest = title.partition(", ")
    name = re.sub(r" (on|at) .*$", "", name)
    keys = rest.split(", floor", maxsplit=1)[0]
    return f"{name}, {keys}" if keys else name


def suite_table(suite: dict[str, Any]) -> list[str]:
    """Write one table of the run as Markdown: the figure's numbers, with latency.

    :param suite: One entry of the results file's ``suites``.
    :return: The table's lines.
    """
    handler, floor = suite["results"]["handler"], suite["results"]["floor"]
    lines = [
        "| operation | ops/s | p50 µs | p99 µs | floor ops/s | ratio |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for operation in OPERATIONS:
        if operation not in handler:
            continue
        measured = handler[operation]
        row = (
            f"| {operation} | {measured['ops_per_second']:,.0f} | {measured['p50_us']:,.1f} "
            f"| {measured['p99_us']:,.1f} |"
        )
        if operation in floor:
            ratio = measured["ops_per_second"] / floor[operation]["ops_per_second"]
            row += f" {floor[operation]['ops_per_second']:,.0f} | {ratio:.2f} |"
        else:
            row += " | |"
        lines.append(row)
    return lines


def _slug(index: int, title: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"bench-{index:02d}-{words[:40].rstrip('-')}"


def draw(results_path: Path, outdir: Path) -> list[Path]:
    """Draw every figure and the Markdown page fragment that shows them.

    :param results_path: A results file of ``benchmarks.run --json``.
    :param outdir: Where to write; created if missing.
    :return: The files written.
    """
    document = json.loads(results_path.read_text(encoding="utf-8"))
    suites: list[dict[str, Any]] = document["suites"]
    outdir.mkdir(parents=True, exist_ok=True)
    _deterministic()
    machine = document.get("machine", {})
    lines = [
        f"Measured {document.get('date', 'on an unknown date')} on {machine.get('cpus', '?')}"
        f" CPUs (load average {', '.join(map(str, machine.get('load_average', [])))} when "
        f"it ended), Python {machine.get('python', '?')}, {machine.get('system', '?')}; "
        f"drawn from `{results_path.name}` by `benchmarks/plot.py`.",
        "",
    ]
    written = []
    ratios = outdir / "bench-ratios.svg"
    ratio_figure(suites, ratios)
    written.append(ratios)
    lines += [
        "```{figure} /_generated/bench-ratios.svg",
        ":alt: throughput ratio to the floor, per handler and operation",
        "",
        "Every table's throughput ratio handler/floor, per operation.",
        "```",
        "",
    ]
    for index, suite in enumerate(suites):
        name = _slug(index, suite["title"])
        path = outdir / f"{name}.svg"
        suite_figure(suite, path)
        written.append(path)
        workload = suite.get("workload", {})
        lines += [
            f"```{{figure}} /_generated/{name}.svg",
            f":alt: {suite['title']}: operations per second",
            "",
            f"{suite['title']}: {workload.get('calls', '?')} calls per operation and run, "
            f"best of {workload.get('repeats', '?')}, {workload.get('value_bytes', '?')}-byte "
            "values.",
            "```",
            "",
            *suite_table(suite),
            "",
        ]
    fragment = outdir / "bench-figures.md"
    fragment.write_text("\n".join(lines), encoding="utf-8")
    written.append(fragment)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and draw.

    :param argv: The arguments, without the program name.
    :return: The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("outdir", nargs="?", type=Path, default=DEFAULT_OUTDIR)
    arguments = parser.parse_args(argv)
    for path in draw(arguments.results, arguments.outdir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
