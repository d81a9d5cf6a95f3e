"""benchmarks/plot.py draws every table of a results file, the same bytes each time."""

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the docs extra is not installed")

from benchmarks.plot import draw, suite_table
from benchmarks.run import suite_record
from benchmarks.suite import Suite
from grove.caches.benchmark import Measurement, Workload


def _results() -> dict[str, object]:
    def measured(rate: float) -> dict[str, Measurement]:
        return {
            operation: Measurement(operation, rate, 1e6 / rate, 3e6 / rate)
            for operation in ("set new", "get hit")
        }

    suite = Suite("toy, 10 keys", dict, dict, Workload(keys=10, calls=5))  # type: ignore[arg-type]
    record = suite_record(suite, {"handler": measured(500.0), "floor": measured(1000.0)})
    return {"date": "2024-05-01T00:00:00Z", "machine": {"cpus": 2}, "suites": [record]}


def test_a_results_file_becomes_figures_a_table_and_a_page(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results()), encoding="utf-8")
    first = {path.name: path.read_bytes() for path in draw(results, tmp_path / "a")}
    second = {path.name: path.read_bytes() for path in draw(results, tmp_path / "b")}
    assert first == second, "drawing the same results twice gives the same bytes"
    assert sorted(first) == ["bench-00-toy-10-keys.svg", "bench-figures.md", "bench-ratios.svg"]
    page = first["bench-figures.md"].decode()
    assert "/_generated/bench-00-toy-10-keys.svg" in page
    assert "| set new | 500 | 2,000.0 | 6,000.0 | 1,000 | 0.50 |" in page
    assert b"<svg" in first["bench-ratios.svg"] and b"toy, 10 keys" in first["bench-ratios.svg"]


def test_an_operation_without_a_floor_has_no_ratio() -> None:
    suite = _results()["suites"][0]  # type: ignore[index]
    del suite["results"]["floor"]["get hit"]
    assert suite_table(suite)[-1] == "| get hit | 500 | 2,000.0 | 6,000.0 | | |"
