"""Nothing the README says goes untested: its commands, its example and its links.

Each shell command in the README is listed here with what runs it, so a command added
to the README without a test fails this file; the Python example is a file of
``examples/`` that runs here; every link into the repository points at a file that exists.
"""

import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

RUN_ELSEWHERE = {
    # The main job; test_examples.py runs examples/operator_session.sh with this venv's
    # grove-cache on PATH, which is what the line does after installing.
    "python3 -m venv .venv && .venv/bin/pip install -e '.[all]' && "
    'PATH="$PWD/.venv/bin:$PATH" examples/operator_session.sh': "test_examples.py",
    # The test command itself: CI runs it (.ci/run execs it).
    "scripts/test": ".ci/run",
    # Run by scripts/test after pytest, with warnings as errors.
    "scripts/docs": "scripts/test",
}

INSTALL = re.compile(r"^pip install (?:grove-caches|'grove-caches\[(?P<extra>\w+)\]')$")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)


def _commands() -> list[str]:
    commands = []
    for block in _blocks("sh"):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def test_every_readme_command_is_run_by_a_test_or_checked_here() -> None:
    unaccounted = [
        command
        for command in _commands()
        if command not in RUN_ELSEWHERE and not INSTALL.match(command)
    ]
    assert unaccounted == [], "README commands that no test runs"
    for command in RUN_ELSEWHERE:
        assert command in _commands(), f"stale entry: {command}"


def test_scripts_the_readme_names_exist_and_are_wired() -> None:
    assert os.access(ROOT / "scripts" / "test", os.X_OK)
    assert os.access(ROOT / "scripts" / "docs", os.X_OK)
    assert "exec scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_script = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    assert "'.[all,testing,bench,docs]'" in test_script
    assert test_script.rstrip().endswith("scripts/docs")


def test_install_lines_name_extras_that_bring_their_backends() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    named = [match["extra"] for c in _commands() if (match := INSTALL.match(c)) and match["extra"]]
    assert named == ["aws", "redis", "postgresql", "cli", "all"]
    assert set(named) <= set(extras)
    assert set(named) <= set(metadata("grove-caches").get_all("Provides-Extra") or [])
    # What each line's comment promises is importable where '.[all]' is installed.
    for module in ("boto3", "redis", "psycopg", "psycopg_pool", "click", "rich"):
        __import__(module)


def test_the_python_example_is_examples_quickstart_whole() -> None:
    (block,) = _blocks("python")
    source = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    docstring_end = source.index('"""', 3) + len('"""\n\n')
    assert block == source[docstring_end:]


@pytest.mark.parametrize("handler", ["local_memory", "local_sqlite"])
def test_the_python_example_runs(tmp_path: Path, handler: str) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GROVE_")}
    env["GROVE_CACHE_HANDLER"] = handler
    env["GROVE_CACHE_LOCAL_SQLITE_PATH"] = str(tmp_path / "cache.db")
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert completed.stdout.splitlines() == [
        "pointer: 2024-05-01T00:00:00Z",
        "a second collector cannot take the lock",
    ]


def test_links_into_the_repository_point_at_files() -> None:
    links = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", README)
    assert links, "the README links into docs/"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert missing == []


def test_readme_is_a_front_door() -> None:
    assert len(README.splitlines()) <= 150
