"""Upstream Grove's handler measured by the same harness, in a virtual environment of its own.

Upstream Grove (``pip install --no-deps grove==2.2.0 'pydantic<2' aws-lambda-powertools
jmespath typing_extensions``) has the module names of this package, so it cannot share an
environment with it. The benchmark of a handler runs this file with that environment's
Python: it loads the measuring harness (:mod:`grove.caches.benchmark`, which needs only
the standard library and ``grove.exceptions.NotFoundException``, found in upstream too)
from its file, measures upstream's handler beside the floor of :mod:`benchmarks.locked_dict`
(alternating, as the harness does) with the same workload, and prints the measurements as
JSON. The report scales upstream's figures by the ratio of the two floors, so that upstream
and this package compare as if measured in one process, whatever load the machine had in
between.

The environment is named by ``GROVE_BENCH_UPSTREAM_VENV`` (a directory with
``bin/python``); without it there is no upstream column, as in CI.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the child runs in upstream's environment, without this package
    from grove.caches.benchmark import Measurement, Workload

VENV_ENV = "GROVE_BENCH_UPSTREAM_VENV"
"""The environment variable naming upstream Grove's virtual environment."""

HERE = Path(__file__).resolve().parent
HARNESS = HERE.parent / "src" / "grove" / "caches" / "benchmark.py"
FLOOR = HERE / "locked_dict.py"


def upstream_venv() -> Path | None:
    """Return upstream Grove's virtual environment, when one is named.

    :return: Its directory, or ``None`` when ``GROVE_BENCH_UPSTREAM_VENV`` is unset.
    """
    named = os.environ.get(VENV_ENV, "").strip()
    return Path(named) if named else None


def measure_upstream(handler: str, workload: Workload) -> dict[str, dict[str, Measurement]]:
    """Measure upstream Grove's handler and the floor in its own environment, in a child.

    :param handler: The handler's module name in ``grove.caches``, e.g. ``local_memory``.
    :param workload: The same workload the table measures.
    :raises RuntimeError: No environment is named, or the child failed.
    :return: Each operation's measurement, under ``subject`` (upstream) and ``floor``.
    """
    from grove.caches.benchmark import Measurement  # noqa: PLC0415 - see TYPE_CHECKING

    venv = upstream_venv()
    if venv is None:
        raise RuntimeError(f"{VENV_ENV} names no virtual environment with upstream Grove")
    completed = subprocess.run(
        [str(venv / "bin" / "python"), __file__, handler, json.dumps(asdict(workload))],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",  # never this repository's grove on the path
        env={name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"measuring upstream {handler} failed: {completed.stderr[-2000:]}")
    return {
        name: {operation: Measurement(**fields) for operation, fields in results.items()}
        for name, results in json.loads(completed.stdout).items()
    }


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _child(argv: Sequence[str]) -> int:
    """In upstream's environment: measure its handler and print JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("handler")
    parser.add_argument("workload")
    arguments = parser.parse_args(argv)
    harness = _load("grove_caches_benchmark", HARNESS)
    floor = _load("grove_caches_locked_dict", FLOOR).LockedDict()
    subject = importlib.import_module(f"grove.caches.{arguments.handler}").Handler()
    workload = harness.Workload(**json.loads(arguments.workload))
    results = harness.measure({"subject": subject, "floor": floor}, workload)
    print(
        json.dumps(
            {
                name: {operation: asdict(found) for operation, found in measured.items()}
                for name, measured in results.items()
            }
        )
    )
    return 0


if __name__ == "__main__":
    del sys.path[0]  # this folder: its modules are named like handlers and drivers
    sys.exit(_child(sys.argv[1:]))
