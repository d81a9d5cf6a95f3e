"""grove-cache, driven as an operator would: the real console script in a subprocess,
against real handlers (files, SQLite, DynamoDB on moto's server)."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import io
import itertools
import json
import os
import pty
import shlex
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydantic
import pytest

from grove.caches import BaseCache, create
from grove.caches.lease import FENCE_SUFFIX, Lease, LeaseLost
from grove.caches.testing import HOSTILE_KEYS
from grove.cli import ExitCode, _masked_settings, main
from tests.moto_process import fake_credentials

GROVE_CACHE = str(Path(sys.executable).parent / "grove-cache")


@dataclass
class Cli:
    """Runs grove-cache with an environment of its own."""

    env: dict[str, str]
    label: str

    def __call__(
        self, *args: str, input: bytes | None = None, expect: int = ExitCode.OK
    ) -> subprocess.CompletedProcess[bytes]:
        completed = subprocess.run(
            [GROVE_CACHE, *args],
            input=input,
            capture_output=True,
            env=self.env,
            timeout=600,
            check=False,
        )
        assert completed.returncode == expect, (
            f"grove-cache {' '.join(args)} exited {completed.returncode}, expected {expect}\n"
            f"stdout: {completed.stdout[-2000:]!r}\nstderr: {completed.stderr[-2000:]!r}"
        )
        return completed

    def with_env(self, **changes: str) -> Cli:
        return Cli({**self.env, **changes}, self.label)


def on_terminal(env: dict[str, str], *args: str) -> tuple[int, bytes]:
    """Run grove-cache with stdout and stderr on a terminal (a pty 200 columns wide).

    :return: The exit code and everything the terminal received.
    """
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    try:
        process = subprocess.Popen(
            [GROVE_CACHE, *args],
            env={**env, "TERM": "xterm", "COLUMNS": "200"},
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        return process.wait(timeout=120), shown
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)


def clean_environment(tmp_path: Path) -> dict[str, str]:
    """The test process's environment without any Grove setting, with a private state home."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GROVE_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["COLUMNS"] = "200"
    return env


def local_file_env(directory: Path) -> dict[str, str]:
    return {
        "GROVE_CACHE_HANDLER": "local_file",
        "GROVE_CACHE_LOCAL_FILE_PATH": str(directory),
        "GROVE_CACHE_LOCAL_FILE_FSYNC": "false",
    }


def local_sqlite_env(database: Path) -> dict[str, str]:
    return {"GROVE_CACHE_HANDLER": "local_sqlite", "GROVE_CACHE_LOCAL_SQLITE_PATH": str(database)}


def aws_dynamodb_env(endpoint: str, table: str) -> dict[str, str]:
    return {
        "GROVE_CACHE_HANDLER": "aws_dynamodb",
        "GROVE_CACHE_AWS_DYNAMODB_URL": endpoint,
        "GROVE_CACHE_AWS_DYNAMODB_TABLE": table,
    }


def store_env(label: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings of a fresh, empty store of the given handler (created if needed)."""
    if label == "local_file":
        directory = tmp_path / f"files-{uuid.uuid4().hex[:8]}"
        directory.mkdir()
        return local_file_env(directory)
    if label == "local_sqlite":
        return local_sqlite_env(tmp_path / f"cache-{uuid.uuid4().hex[:8]}.db")
    endpoint = request.getfixturevalue("moto_endpoint")
    env = {
        **fake_credentials(),
        **aws_dynamodb_env(endpoint, f"grove-cli-{uuid.uuid4().hex[:12]}"),
    }
    Cli({**clean_environment(tmp_path), **env}, label)("init")
    return env


@pytest.fixture(params=["local_file", "local_sqlite", "aws_dynamodb"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    env = {**clean_environment(tmp_path), **store_env(request.param, tmp_path, request)}
    return Cli(env, request.param)


def jsonl(entries: list[tuple[str, str, str]]) -> bytes:
    return b"".join(
        (json.dumps({"pk": pk, "sk": sk, "value": value}) + "\n").encode()
        for pk, sk, value in entries
    )


def parse_jsonl(data: bytes) -> list[tuple[str, str, str]]:
    records = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
    return sorted((record["pk"], record["sk"], record["value"]) for record in records)


HOSTILE_ENTRIES = sorted(
    [(f"pointer.{key}", key, f"{key}\r\n\u00e9\x00") for key in HOSTILE_KEYS]
    + [("execution_lock.x", "empty value", ""), ("p", "newlines", "\n\n")]
)


# -- single entries ------------------------------------------------------------------


def test_set_get_delete(cli: Cli) -> None:
    cli("set", "pointer.okta.abc", "all", "2024-05-01T00:00:00Z")
    assert cli("get", "pointer.okta.abc", "all").stdout == b"2024-05-01T00:00:00Z\n"
    assert cli("get", "-n", "pointer.okta.abc", "all").stdout == b"2024-05-01T00:00:00Z"
    cli("delete", "pointer.okta.abc", "all")
    missing = cli("get", "pointer.okta.abc", "all", expect=ExitCode.NOT_FOUND)
    assert missing.stdout == b""
    assert missing.stderr.decode().count("\n") == 1
    assert b"Traceback" not in missing.stderr


def test_lock_take_contest_release(cli: Cli) -> None:
    cli("set", "--not-set", "execution_lock.okta", "all", "until-10:05")
    contested = cli(
        "set", "--not-set", "execution_lock.okta", "all", "x", expect=ExitCode.CONDITION_NOT_MET
    )
    assert b"refused" in contested.stderr
    cli(
        "delete",
        "execution_lock.okta",
        "all",
        "--constraint",
        "other",
        expect=ExitCode.CONDITION_NOT_MET,
    )
    cli("set", "execution_lock.okta", "all", "until-10:10", "--constraint", "until-10:05")
    cli("delete", "execution_lock.okta", "all", "--constraint", "until-10:10")
    cli("get", "execution_lock.okta", "all", expect=ExitCode.NOT_FOUND)


def test_value_from_stdin_is_stored_exactly(cli: Cli) -> None:
    value = "line one\r\nline two\x00\u00e9\U0001f332\n".encode()
    cli("set", "pk", "sk", "-", input=value)
    assert cli("get", "-n", "pk", "sk").stdout == value


def test_keys_breaking_the_rules_are_usage_errors(cli: Cli) -> None:
    result = cli("get", "", "sk", expect=ExitCode.USAGE)
    assert b"pk must not be empty" in result.stderr
    cli("set", "pk", "k" * 1025, "v", expect=ExitCode.USAGE)
    cli("set", "pk", "sk", "v", "--not-set", "--constraint", "c", expect=ExitCode.USAGE)
    cli("no-such-command", expect=ExitCode.USAGE)


# -- many entries --------------------------------------------------------------------


def test_export_then_import_is_byte_for_byte(
    cli: Cli, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cli("import", "-", input=jsonl(HOSTILE_ENTRIES))
    exported = cli("export").stdout
    assert parse_jsonl(exported) == HOSTILE_ENTRIES

    cli("export", "-o", str(tmp_path / "dump.jsonl"))
    assert parse_jsonl((tmp_path / "dump.jsonl").read_bytes()) == HOSTILE_ENTRIES

    other = cli.with_env(**store_env(cli.label, tmp_path, request))
    report = other("import", str(tmp_path / "dump.jsonl")).stderr.decode()
    assert f"{len(HOSTILE_ENTRIES)} written, 0 skipped (already set), 0 failed" in report
    assert parse_jsonl(other("export").stdout) == HOSTILE_ENTRIES


def test_import_not_set_changes_nothing_that_exists(cli: Cli) -> None:
    cli("import", "-", input=jsonl(HOSTILE_ENTRIES))
    changed = [(pk, sk, "CHANGED") for pk, sk, _ in HOSTILE_ENTRIES]
    report = cli("import", "--not-set", "-", input=jsonl([*changed, ("new", "sk", "v")]))
    assert f"1 written, {len(HOSTILE_ENTRIES)} skipped" in report.stderr.decode()
    assert parse_jsonl(cli("export").stdout) == sorted([*HOSTILE_ENTRIES, ("new", "sk", "v")])


def test_import_reports_bad_lines_and_keeps_going(cli: Cli) -> None:
    data = b'{"pk": "a", "sk": "b", "value": "1"}\nnot json\n{"pk": "", "sk": "b", "value": "2"}\n'
    data += b'{"pk": "a", "sk": "c"}\n{"pk": "a", "sk": "d", "value": "4"}\n'
    result = cli("import", "-", input=data, expect=ExitCode.USAGE)
    stderr = result.stderr.decode()
    assert "2 written, 0 skipped (already set), 3 failed" in stderr
    assert "line 2" in stderr
    assert "line 3" in stderr
    assert "line 4" in stderr
    assert parse_jsonl(cli("export").stdout) == [("a", "b", "1"), ("a", "d", "4")]


def test_ls_selects_by_pk_and_prefix(cli: Cli) -> None:
    cli(
        "import",
        "-",
        input=jsonl(
            [
                ("pointer.a", "x", "1"),
                ("pointer.a", "y", "2"),
                ("pointer.b", "x", "3"),
                ("lock.a", "x", "4"),
            ]
        ),
    )
    assert parse_jsonl(cli("ls", "--json", "--pk", "pointer.a").stdout) == [
        ("pointer.a", "x", "1"),
        ("pointer.a", "y", "2"),
    ]
    assert len(parse_jsonl(cli("ls", "--prefix", "pointer.").stdout)) == 3
    assert len(parse_jsonl(cli("ls").stdout)) == 4
    cli("ls", "--pk", "a", "--prefix", "b", expect=ExitCode.USAGE)


def test_migrate_dry_run_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    cli("import", "-", input=jsonl(HOSTILE_ENTRIES))
    target = tmp_path / "target"
    target.mkdir()
    result = cli("migrate", "--to", "local_file", "--to-config", f"path={target}", "--dry-run")
    n = len(HOSTILE_ENTRIES)
    assert f"dry run: {n} entries: {n} would be new" in result.stderr.decode()
    assert not target.exists() or not any(target.rglob("*.cache"))


# -- operations ----------------------------------------------------------------------


def test_doctor_checks_a_working_store(cli: Cli) -> None:
    result = cli("doctor")
    output = result.stdout.decode()
    assert f"handler: {cli.label} (from GROVE_CACHE_HANDLER)" in output
    assert ("table = " if cli.label == "aws_dynamodb" else "path = ") in output
    assert "FAIL" not in output
    assert "the store works" in output
    assert parse_jsonl(cli("export").stdout) == []  # the scratch key is gone


def test_doctor_reports_a_broken_store(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**clean_environment(tmp_path), **local_file_env(blocker / "cache")}
    result = Cli(env, "local_file")("doctor", expect=ExitCode.ACCESS)
    assert "FAIL" in result.stdout.decode()


def test_init_creates_the_store(tmp_path: Path) -> None:
    env = clean_environment(tmp_path)
    Cli({**env, **local_file_env(tmp_path / "new" / "dir")}, "local_file")("init")
    assert (tmp_path / "new" / "dir").is_dir()
    Cli({**env, **local_sqlite_env(tmp_path / "deep" / "cache.db")}, "local_sqlite")("init")
    assert (tmp_path / "deep" / "cache.db").is_file()


def test_bench_measures_and_cleans_up(cli: Cli) -> None:
    cli("set", "pointer.keep", "all", "mine")
    output = cli("bench", "--keys", "20", "--calls", "20").stdout.decode()
    for operation in ("set new", "get hit", "compare-and-set", "delete"):
        assert operation in output
    assert parse_jsonl(cli("export").stdout) == [("pointer.keep", "all", "mine")]


# -- choosing and configuring the store ----------------------------------------------


def test_nothing_configured_uses_the_embedded_durable_store(tmp_path: Path) -> None:
    cli = Cli(clean_environment(tmp_path), "default")
    result = cli("set", "pointer.x", "all", "kept")
    assert result.stderr == b""  # in a pipe: no status line (a terminal gets one)
    assert (tmp_path / "state" / "grove" / "cache.db").is_file()
    assert cli("get", "pointer.x", "all").stdout == b"kept\n"
    code, shown = on_terminal(cli.env, "get", "pointer.x", "all")
    assert code == 0
    assert b"using local_sqlite (embedded default at " in shown


def test_handler_option_and_config_beat_the_environment(tmp_path: Path) -> None:
    env = {**clean_environment(tmp_path), "GROVE_CACHE_HANDLER": "nope"}
    cli = Cli(env, "local_file")
    (tmp_path / "x").mkdir()
    cli("--handler", "local_file", "--config", f"path={tmp_path / 'x'}", "set", "a", "b", "c")
    assert (tmp_path / "x" / "a" / "b.cache").read_text() == "c"


def test_configuration_errors_are_one_line(tmp_path: Path) -> None:
    env = {**clean_environment(tmp_path), "GROVE_CACHE_HANDLER": "local_file"}
    result = Cli(env, "local_file")("get", "a", "b", expect=ExitCode.CONFIGURATION)
    assert result.stderr == b"grove-cache: error: GROVE_CACHE_LOCAL_FILE_PATH is required\n"
    debug = Cli(env, "local_file")("--debug", "get", "a", "b", expect=ExitCode.CONFIGURATION)
    assert b"Traceback" in debug.stderr
    unknown = Cli({**env, "GROVE_CACHE_HANDLER": "nope"}, "x")(
        "get", "a", "b", expect=ExitCode.CONFIGURATION
    )
    assert b"installed:" in unknown.stderr


def test_access_errors_have_their_own_code(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**clean_environment(tmp_path), **local_file_env(blocker / "cache")}
    result = Cli(env, "local_file")("set", "a", "b", "c", expect=ExitCode.ACCESS)
    assert str(blocker).encode() in result.stderr
    assert b"Traceback" not in result.stderr


def test_progress_shows_on_a_terminal_only(tmp_path: Path) -> None:
    cli = Cli({**clean_environment(tmp_path), **local_sqlite_env(tmp_path / "c.db")}, "x")
    cli("import", "-", input=jsonl([(f"p{i}", "s", "v") for i in range(2000)]))
    piped = cli("export")
    assert b"\x1b[" not in piped.stderr

    code, shown = on_terminal(cli.env, "export", "-o", str(tmp_path / "out.jsonl"))
    assert code == 0
    assert b"exporting" in shown  # the progress bar's label
    assert b"exported 2,000 entries" in shown


def test_masked_settings_hide_secrets() -> None:
    class Settings(pydantic.BaseModel):
        url: str
        password: pydantic.SecretStr

    class Handler:
        config = Settings(url="postgres://127.0.0.1/db", password=pydantic.SecretStr("hunter2"))

    shown = dict(_masked_settings(Handler()))  # type: ignore[arg-type]
    assert shown == {"url": "postgres://127.0.0.1/db", "password": "********"}


@pytest.mark.slow
def test_migrate_round_trip_ends_identical(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """local_file -> aws_dynamodb -> local_sqlite -> local_file, 10,000 entries."""
    entries = sorted(
        [
            (f"pointer.conn{i % 97}.{i:05d}", f"op{i % 7}", f"value {i}\n")
            for i in range(10_000 - len(HOSTILE_ENTRIES))
        ]
        + HOSTILE_ENTRIES
    )
    assert len(entries) == 10_000
    base = clean_environment(tmp_path)
    chain = ["local_file", "aws_dynamodb", "local_sqlite", "local_file"]
    stores = [store_env(label, tmp_path, request) for label in chain]
    first = Cli({**base, **stores[0]}, chain[0])
    first("import", "-", input=jsonl(entries))
    for (source, target), label in zip(itertools.pairwise(stores), chain[1:], strict=True):
        prefix = f"GROVE_CACHE_{label.upper()}_"
        target_settings = [
            f"--to-config={name.removeprefix(prefix).lower()}={value}"
            for name, value in target.items()
            if name.startswith(prefix)
        ]
        credentials = {k: v for k, v in target.items() if not k.startswith("GROVE_")}
        report = Cli({**base, **credentials, **source}, label)(
            "migrate", "--to", label, *target_settings
        )
        summary = report.stderr.decode()
        assert "migrated 10,000 entries" in summary, summary
        assert ": 10,000 new, 0 unchanged, 0 overwritten" in summary, summary
        assert "0 failed; verified 10,000, 0 mismatched" in summary, summary
        print(summary.strip().splitlines()[-1])
    last = Cli({**base, **stores[-1]}, chain[-1])
    assert parse_jsonl(last("export").stdout) == entries


# -- in process: main(argv) ----------------------------------------------------------


@dataclass
class Ran:
    """What one in-process run of main() did."""

    code: int
    out: bytes
    err: str


class Grove:
    """Runs grove.cli.main(argv) in this process, with a clean Grove environment."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[bytes], home: Path
    ) -> None:
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        for name in list(os.environ):
            if name.upper().startswith("GROVE_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))

    def __call__(self, *args: str, stdin: bytes = b"", expect: int | None = ExitCode.OK) -> Ran:
        self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = main(list(args))
        out, err = self.capsys.readouterr()
        ran = Ran(code, out, err.decode())
        assert expect is None or code == expect, f"{args} exited {code}: {ran}"
        return ran

    def env(self, **variables: str) -> None:
        for name, value in variables.items():
            self.monkeypatch.setenv(name, value)


@pytest.fixture
def grove(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> Grove:
    return Grove(monkeypatch, capsysbinary, tmp_path)


@pytest.fixture
def sqlite_store(grove: Grove, tmp_path: Path) -> Path:
    """A local_sqlite store selected through the environment, as an operator would."""
    database = tmp_path / "store.db"
    grove.env(**local_sqlite_env(database))
    return database


# 1. settings


def test_misspelt_config_settings_are_refused(grove: Grove, tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    options = ["--handler", "local_file", "--config", f"path={tmp_path / 'files'}"]
    ran = grove(*options, "--config", "fsynk=false", "set", "a", "b", "c", expect=5)
    assert ran.err == (
        "grove-cache: error: --config fsynk: unknown setting for local_file; known: path, fsync\n"
    )
    assert not (tmp_path / "files" / "a").exists()
    ran = grove("--handler", "local_file", "--config", "pth=/x", "get", "a", "b", expect=None)
    assert ran.code == ExitCode.CONFIGURATION
    assert ran.err.startswith("grove-cache: error: --config pth: unknown setting for local_file")


def test_a_bad_value_names_where_it_came_from(grove: Grove, tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    grove.env(**local_file_env(tmp_path / "files"))
    given = grove("--config", "fsync=maybe", "get", "a", "b", expect=ExitCode.CONFIGURATION)
    assert given.err.startswith("grove-cache: error: --config fsync: Input should be a valid bool")
    assert "GROVE_CACHE_LOCAL_FILE_FSYNC" not in given.err
    grove.env(GROVE_CACHE_LOCAL_FILE_FSYNC="maybe")
    from_env = grove("get", "a", "b", expect=ExitCode.CONFIGURATION)
    assert from_env.err.startswith("grove-cache: error: GROVE_CACHE_LOCAL_FILE_FSYNC: Input")


def test_unknown_prefixed_variables_are_ignored_and_shown_by_doctor(
    grove: Grove, tmp_path: Path
) -> None:
    (tmp_path / "files").mkdir()
    grove.env(**local_file_env(tmp_path / "files"), GROVE_CACHE_LOCAL_FILE_FSYNK="false")
    grove("set", "a", "b", "c")  # a collector is not stopped by a variable it does not know
    doctor = grove("doctor").out.decode()
    assert (
        "warning: GROVE_CACHE_LOCAL_FILE_FSYNK is set, but local_file has no such setting "
        "(ignored)" in doctor
    )
    assert "the store works" in doctor


def test_handler_variable_name_is_case_insensitive(grove: Grove, tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    grove.env(grove_cache_handler="local_file", grove_cache_local_file_path=str(tmp_path / "files"))
    grove("set", "a", "b", "c")
    assert (tmp_path / "files" / "a" / "b.cache").read_text() == "c"
    grove.env(grove_cache_handler="Local_File")  # handler names stay exact
    ran = grove("get", "a", "b", expect=ExitCode.CONFIGURATION)
    assert "no cache handler named 'Local_File'" in ran.err


@pytest.mark.parametrize(
    ("handler", "variable", "relative"),
    [
        ("local_file", "GROVE_CACHE_LOCAL_FILE_PATH", "cache"),
        ("local_sqlite", "GROVE_CACHE_LOCAL_SQLITE_PATH", "state/cache.db"),
    ],
)
def test_tilde_is_the_home_directory(
    grove: Grove,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    handler: str,
    variable: str,
    relative: str,
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    grove.env(GROVE_CACHE_HANDLER=handler, **{variable: f"~/{relative}"})
    grove("init")
    grove("set", "a", "b", "c")
    assert grove("get", "a", "b").out == b"c\n"
    assert (home / relative).exists()
    assert list(work.iterdir()) == []  # no directory named '~'


# 5. and 6. messages that say what to do next, naming the flags given


def test_a_missing_directory_names_the_init_command(grove: Grove, tmp_path: Path) -> None:
    missing = tmp_path / "no such dir"
    options = ["--handler", "local_file", "--config", f"path={missing}"]
    for command in (["get", "a", "b"], ["ls"], ["export"]):
        ran = grove(*options, *command, expect=ExitCode.ACCESS)
        hint = f"; create it with: grove-cache --handler local_file --config 'path={missing}' init"
        assert ran.err.endswith(hint + "\n"), ran.err
        assert not missing.exists()  # reading commands never create the store
    init = shlex.split(ran.err.rsplit("create it with: ", 1)[1])
    assert init[0] == "grove-cache"
    grove(*init[1:])
    grove(*options, "get", "a", "b", expect=ExitCode.NOT_FOUND)


def test_a_missing_table_names_the_init_command(grove: Grove, moto_endpoint: str) -> None:
    table = f"grove-cli-missing-{uuid.uuid4().hex[:8]}"
    grove.env(**aws_dynamodb_env(moto_endpoint, table))
    ran = grove("get", "a", "b", expect=ExitCode.CONFIGURATION)
    assert ran.err.endswith("; create it with: grove-cache init\n"), ran.err
    ran = grove("--config", f"table={table}-2", "ls", expect=ExitCode.CONFIGURATION)
    assert ran.err.endswith(f"create it with: grove-cache --config table={table}-2 init\n")
    grove("init")
    grove("get", "a", "b", expect=ExitCode.NOT_FOUND)


def test_flags_are_named_as_flags(grove: Grove, sqlite_store: Path, tmp_path: Path) -> None:
    ran = grove("--handler", "local_fiel", "get", "a", "b", expect=ExitCode.CONFIGURATION)
    assert ran.err.startswith("grove-cache: error: --handler: no cache handler named 'local_fiel'")
    ran = grove("migrate", "--to", "local_fiel", expect=ExitCode.CONFIGURATION)
    assert ran.err.startswith("grove-cache: error: --to: no cache handler named 'local_fiel'")
    ran = grove(
        "migrate", "--to", "local_file", "--to-config", "path=", expect=ExitCode.CONFIGURATION
    )
    assert ran.err.startswith("grove-cache: error: --to-config path: String should have at least")
    ran = grove("migrate", "--to", "local_file", "--to-config", "x", expect=ExitCode.USAGE)
    assert "--to-config" in ran.err


# 7. CLI wording


def test_library_wording_becomes_cli_wording(grove: Grove, sqlite_store: Path) -> None:
    ran = grove("set", "a", "b", "c", "--not-set", "--constraint", "d", expect=ExitCode.USAGE)
    assert ran.err == "grove-cache: error: --not-set and --constraint cannot be used together\n"
    ran = grove("ls", "--pk", "a", "--prefix", "b", expect=ExitCode.USAGE)
    assert ran.err == "grove-cache: error: give --pk or --prefix, not both\n"
    ran = grove("export", "--pk", "a", "--prefix", "b", expect=ExitCode.USAGE)
    assert ran.err == "grove-cache: error: give --pk or --prefix, not both\n"
    ran = grove("set", "a", "b", "-x", expect=ExitCode.USAGE)
    assert ran.err.endswith("; put -- before a value that starts with -\n")
    grove("set", "--", "a", "b", "-x")
    assert grove("get", "a", "b").out == b"-x\n"
    ran = grove("set", "a", "b", "-", stdin=b"ok \xff\xfe", expect=ExitCode.USAGE)
    assert ran.err.startswith("grove-cache: error: standard input is not UTF-8 text")
    assert grove("get", "a", "b").out == b"-x\n"


def test_bare_command_prints_usage_and_commands(grove: Grove) -> None:
    ran = grove(expect=ExitCode.USAGE)
    assert ran.err.startswith("Usage: grove-cache [OPTIONS] COMMAND [ARGS]...")
    assert "error" not in ran.err.lower().split("commands:")[0]
    for command in ("get", "set", "delete", "ls", "export", "import", "migrate", "doctor"):
        assert f"\n  {command} " in ran.err


# 8. --debug and -q after the command


def test_debug_and_quiet_go_after_the_command_too(grove: Grove, tmp_path: Path) -> None:
    grove.env(GROVE_CACHE_HANDLER="local_file")  # no path: a configuration error
    for arguments in (["--debug", "get", "a", "b"], ["get", "a", "b", "--debug"]):
        ran = grove(*arguments, expect=ExitCode.CONFIGURATION)
        assert "Traceback" in ran.err
        assert ran.err.endswith("grove-cache: error: GROVE_CACHE_LOCAL_FILE_PATH is required\n")
    assert "Traceback" not in grove("get", "a", "b", expect=ExitCode.CONFIGURATION).err
    grove.env(**local_file_env(tmp_path))
    grove("set", "a", "b", "c")
    assert grove("export").err == "exported 1 entry\n"
    assert grove("export", "-q").err == ""
    assert grove("-q", "export").err == ""


# 9. noise


def test_embedded_default_is_announced_once_on_a_terminal_only(tmp_path: Path) -> None:
    env = clean_environment(tmp_path)
    assert Cli(env, "default")("doctor").stderr == b""
    code, shown = on_terminal(env, "doctor")
    assert code == 0
    assert shown.count(b"embedded default at") == 1  # the handler line of doctor
    code, shown = on_terminal(env, "ls")
    assert code == 0
    assert shown.count(b"using local_sqlite (embedded default at ") == 1
    code, shown = on_terminal(env, "-q", "set", "a", "b", "c")
    assert code == 0
    assert shown == b""


# 10. bench


@pytest.mark.parametrize(
    "options",
    [
        ["--keys", "0"],
        ["--keys", "-5"],
        ["--calls", "0"],
        ["--calls", "1"],
        ["--value-bytes", "-1"],
        ["--value-bytes", str(4 * 1024 * 1024 + 1)],
    ],
)
def test_bench_refuses_bad_options_before_writing(
    grove: Grove, sqlite_store: Path, options: list[str]
) -> None:
    ran = grove("bench", *options, expect=ExitCode.USAGE)
    assert f"Invalid value for '{options[0]}'" in ran.err
    assert grove("export").out == b""


def count_entries(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        try:
            return int(connection.execute("SELECT count(*) FROM entries").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


@pytest.mark.parametrize(
    ("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)]
)
def test_interrupted_bench_removes_its_entries(
    tmp_path: Path, signal_number: int, code: int
) -> None:
    database = tmp_path / "store.db"
    cli = Cli({**clean_environment(tmp_path), **local_sqlite_env(database)}, "local_sqlite")
    cli("set", "pointer.keep", "all", "mine")
    process = subprocess.Popen(
        [GROVE_CACHE, "bench", "--keys", "2000", "--calls", "5000"],
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(6000):
            if count_entries(database) > 100:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the benchmark stored nothing in 60 s")
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == code, stderr
    assert parse_jsonl(cli("export").stdout) == [("pointer.keep", "all", "mine")]


def test_bench_progress_counts_operations(tmp_path: Path) -> None:
    env = {**clean_environment(tmp_path), **local_sqlite_env(tmp_path / "store.db")}
    code, shown = on_terminal(env, "bench", "--keys", "10", "--calls", "10")
    assert code == 0
    assert b"/7 operations" in shown
    assert b"entries" not in shown


# 11. and 12. import


def test_import_keeps_the_last_line_for_a_key(grove: Grove, sqlite_store: Path) -> None:
    keys = [(f"pointer.{k}", "all") for k in range(40)]
    lines = [(pk, sk, str(round_)) for round_ in range(50) for pk, sk in keys]
    ran = grove("import", "-", stdin=jsonl(lines))
    assert "2,000 written" in ran.err
    assert parse_jsonl(grove("export").out) == sorted((pk, sk, "49") for pk, sk in keys)


def test_import_not_set_keeps_the_first_line_for_a_key(
    grove: Grove, tmp_path: Path, sqlite_store: Path
) -> None:
    keys = [(f"pointer.{k}", "all") for k in range(40)]
    lines = [(pk, sk, str(round_)) for round_ in range(50) for pk, sk in keys]
    ran = grove("import", "--not-set", "-", stdin=jsonl(lines))
    assert "40 written, 1,960 skipped (already set), 0 failed" in ran.err
    assert parse_jsonl(grove("export").out) == sorted((pk, sk, "0") for pk, sk in keys)


def test_import_treats_deep_nesting_as_a_bad_line_and_accepts_a_bom(
    grove: Grove, sqlite_store: Path
) -> None:
    data = codecs.BOM_UTF8 + jsonl([("first", "s", "1")])
    data += b"[" * 100_000 + b"\n" + jsonl([("after", "s", "2")])
    ran = grove("import", "-", stdin=data, expect=ExitCode.USAGE)
    assert "grove-cache: line 2: not an entry (" in ran.err
    assert "imported: 2 written, 0 skipped (already set), 1 failed" in ran.err
    assert parse_jsonl(grove("export").out) == [("after", "s", "2"), ("first", "s", "1")]


# 13. export -o


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems (as root), unmounted at the end."""
    mounts: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mount{len(mounts)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=True)


def test_export_to_an_unwritable_place_is_an_access_error(
    grove: Grove, sqlite_store: Path, tmp_path: Path, mounted: Callable[[str], Path]
) -> None:
    grove("import", "-", stdin=jsonl([(f"p{i}", "s", "v" * 1000) for i in range(200)]))
    read_only = mounted("ro,size=1m")
    full = mounted("size=64k")
    places = [
        tmp_path / "missing" / "dump.jsonl",
        read_only / "dump.jsonl",
        Path("/proc/x"),
        Path("/dev/full"),
        full / "dump.jsonl",
    ]
    for place in places:
        ran = grove("export", "-o", str(place), expect=ExitCode.ACCESS)
        assert ran.err.startswith(f"grove-cache: error: cannot write {place}: "), ran.err
        assert "init" not in ran.err
    assert list(full.iterdir()) == []  # no partial export, no temporary file


def test_export_replaces_a_file_whole(grove: Grove, sqlite_store: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_text("old\n")
    grove("set", "a", "b", "c")
    grove("export", "-o", str(dump))
    assert parse_jsonl(dump.read_bytes()) == [("a", "b", "c")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary


# 14. ls on a terminal


def test_ls_on_a_terminal_shows_stored_text_literally(tmp_path: Path) -> None:
    cli = Cli({**clean_environment(tmp_path), **local_sqlite_env(tmp_path / "s.db")}, "x")
    cli(
        "import",
        "-",
        input=jsonl(
            [
                ("[bold red]RED[/bold red]", "s", "[link=http://127.0.0.1/]click[/link]"),
                ("[/x]", "\x1b]0;title\x07", "x\x1b[31mred"),
            ]
        ),
    )
    code, shown = on_terminal(cli.env, "ls")
    assert code == 0, shown
    assert b"[bold red]RED[/bold red]" in shown
    assert b"[link=http://127.0.0.1/]click[/link]" in shown
    assert b"[/x]" in shown
    assert b"\x1b]" not in shown  # no OSC sequence: no title, no hyperlink
    assert b"\x07" not in shown
    assert b"\x1b[31m" not in shown
    assert b"\\x1b]0;title" in shown.replace(b"\x1b[0m", b"").replace(b"\x1b[7m", b"")


# 15. and 16. migrate


def test_migrate_not_set_keeps_newer_destination_entries(
    grove: Grove, sqlite_store: Path, tmp_path: Path
) -> None:
    grove("import", "-", stdin=jsonl([("pointer.a", "all", "old"), ("pointer.b", "all", "1")]))
    target = tmp_path / "target"
    to = ["--to", "local_file", "--to-config", f"path={target}"]
    destination = ["--handler", "local_file", "--config", f"path={target}"]
    grove(*destination, "init")
    grove(*destination, "set", "pointer.a", "all", "newer")

    dry = grove("migrate", *to, "--dry-run", "--not-set")
    assert "dry run: 2 entries: 1 would be new, 1 would be skipped (already at" in dry.err
    ran = grove("migrate", *to, "--not-set")
    assert ": 1 new, 1 skipped (already at the destination), 0 failed; verified 1," in ran.err
    assert grove(*destination, "get", "pointer.a", "all").out == b"newer\n"
    assert grove(*destination, "get", "pointer.b", "all").out == b"1\n"

    dry = grove("migrate", *to, "--dry-run")
    assert "0 would be new, 1 already equal, 1 would be overwritten (the destination" in dry.err
    ran = grove("migrate", *to)
    assert (
        ": 0 new, 1 unchanged, 1 overwritten (the destination held a different value), "
        "0 failed; verified 1, 0 mismatched" in ran.err
    )
    assert grove(*destination, "get", "pointer.a", "all").out == b"old\n"


def test_progress_has_a_total_where_it_is_known(tmp_path: Path) -> None:
    env = {**clean_environment(tmp_path), **local_sqlite_env(tmp_path / "s.db")}
    source = tmp_path / "entries.jsonl"
    source.write_bytes(jsonl([(f"p{i}", "s", "v" * 100) for i in range(3000)]))
    code, shown = on_terminal(env, "import", str(source))
    assert code == 0
    assert b"importing" in shown
    assert b"%" in shown
    assert b"eta" in shown
    assert b"kB" in shown  # the file's size is the total
    target = tmp_path / "target"
    target.mkdir()
    code, shown = on_terminal(env, "migrate", "--to", "local_file", "--to-config", f"path={target}")
    assert code == 0, shown
    assert b"/3,000 entries" in shown
    assert b"eta" in shown


# 17. the Quick start's session: see tests/test_examples.py


# -- locks (issue 16) ----------------------------------------------------------------


def store_of(cli: Cli) -> BaseCache:
    """The store the ``cli`` fixture's commands use, for the test to act on directly."""
    prefix = f"GROVE_CACHE_{cli.label.upper()}_"
    settings = {
        name.removeprefix(prefix).lower(): value
        for name, value in cli.env.items()
        if name.startswith(prefix)
    }
    handler = create(cli.label, settings=settings)
    handler.setup()
    return handler


def upstream_lock(seconds_from_now: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def held_lease(store: BaseCache, pk: str, owner: str) -> Lease:
    lease = Lease(store, pk, "all", duration=timedelta(minutes=5), owner=owner)
    assert lease.acquire()
    return lease


def test_locks_lists_leases_and_upstream_locks(cli: Cli) -> None:
    store = store_of(cli)
    held = held_lease(store, "execution_lock.okta", "collector-1")
    released = held_lease(store, "execution_lock.slack", "collector-2")
    released.release()
    store.set("execution_lock.github", "all", upstream_lock(-180))
    store.set("execution_lock.gitlab", "all", upstream_lock(600))
    store.set("execution_lock.odd", "all", "not a lock")
    store.set("pointer.okta", "all", "2024-05-01T00:00:00Z")

    records = [json.loads(line) for line in cli("locks").stdout.decode().splitlines()]
    shown = {record["pk"]: record for record in records}
    assert sorted(shown) == [
        "execution_lock.github",
        "execution_lock.gitlab",
        "execution_lock.odd",
        "execution_lock.okta",
        "execution_lock.slack",
    ]  # no #fence counters, nothing outside the prefix
    okta = shown["execution_lock.okta"]
    assert (okta["state"], okta["owner"], okta["token"]) == ("held", "collector-1", held.token)
    assert held.expires_at is not None and okta["expires"] == held.expires_at.isoformat()
    assert 200 < okta["expires_in"] <= 300
    assert okta["value"] == store.get("execution_lock.okta", "all")
    slack = shown["execution_lock.slack"]
    assert (slack["state"], slack["token"], slack["expires_in"]) == ("released", 1, None)
    assert shown["execution_lock.github"]["state"] == "upstream"
    assert -300 < shown["execution_lock.github"]["expires_in"] < -100
    assert 500 < shown["execution_lock.gitlab"]["expires_in"] <= 600
    assert (shown["execution_lock.odd"]["state"], shown["execution_lock.odd"]["owner"]) == (
        "other",
        None,
    )
    pointers = cli("locks", "--prefix", "pointer.").stdout.decode().splitlines()
    assert [json.loads(line)["state"] for line in pointers] == ["other"]


def test_locks_table_on_a_terminal(tmp_path: Path) -> None:
    env = {**clean_environment(tmp_path), **local_sqlite_env(tmp_path / "s.db")}
    store = store_of(Cli(env, "local_sqlite"))
    held_lease(store, "execution_lock.okta", "collector-1")
    store.set("execution_lock.github", "all", upstream_lock(-125))
    code, shown = on_terminal(env, "locks")
    assert code == 0, shown
    text = shown.decode()
    assert "collector-1" in text and "held" in text and "upstream" in text
    assert "expires in 4m5" in text and "expired 2m0" in text
    assert "2 locks" in text


def test_locks_break_removes_the_lease_and_keeps_its_counter(cli: Cli) -> None:
    store = store_of(cli)
    stuck = held_lease(store, "execution_lock.okta", "collector-1")
    result = cli("locks", "break", "execution_lock.okta", "all", "--yes")
    assert "held lock pk='execution_lock.okta' sk='all', owner 'collector-1'" in (
        result.stderr.decode()
    )
    cli("get", "execution_lock.okta", "all", expect=ExitCode.NOT_FOUND)
    assert cli("get", "execution_lock.okta", "all" + FENCE_SUFFIX).stdout.strip().isdigit()
    successor = held_lease(store, "execution_lock.okta", "collector-2")
    assert successor.token is not None and stuck.token is not None
    assert successor.token > stuck.token
    with pytest.raises(LeaseLost):
        stuck.renew()
    cli("locks", "break", "execution_lock.okta", "all" + FENCE_SUFFIX, expect=ExitCode.USAGE)
    cli("locks", "break", "execution_lock.absent", "all", "-y", expect=ExitCode.NOT_FOUND)


def test_locks_break_if_expired_refuses_a_live_lock(cli: Cli) -> None:
    store = store_of(cli)
    live = held_lease(store, "execution_lock.okta", "collector-1")
    value = store.get("execution_lock.okta", "all")
    refused = cli(
        "locks",
        "break",
        "execution_lock.okta",
        "all",
        "--if-expired",
        "-y",
        expect=ExitCode.CONDITION_NOT_MET,
    )
    assert "has not expired" in refused.stderr.decode()
    assert store.get("execution_lock.okta", "all") == value
    live.renew()
    store.set("execution_lock.github", "all", upstream_lock(-60))
    store.set("execution_lock.gitlab", "all", upstream_lock(60))
    store.set("execution_lock.odd", "all", "not a lock")
    cli("locks", "break", "execution_lock.github", "all", "--if-expired", "-y")
    cli("get", "execution_lock.github", "all", expect=ExitCode.NOT_FOUND)
    for pk in ("execution_lock.gitlab", "execution_lock.odd"):
        cli("locks", "break", pk, "all", "--if-expired", "-y", expect=ExitCode.CONDITION_NOT_MET)
        cli("get", pk, "all")


def test_locks_break_removes_only_the_value_it_showed(cli: Cli) -> None:
    """The lease is renewed while the operator reads the prompt: the renewal wins."""
    store = store_of(cli)
    lease = held_lease(store, "execution_lock.okta", "collector-1")
    process = subprocess.Popen(
        [GROVE_CACHE, "locks", "break", "execution_lock.okta", "all"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env,
    )
    assert process.stdin is not None and process.stderr is not None
    shown = b""
    while b"break it?" not in shown:
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, f"grove-cache exited before asking: {shown!r}"
        shown += chunk
    lease.renew()
    renewed = store.get("execution_lock.okta", "all")
    _, rest = process.communicate(b"y\n", timeout=120)
    assert process.returncode == ExitCode.CONDITION_NOT_MET, shown + rest
    assert b"changed since it was shown" in rest
    assert store.get("execution_lock.okta", "all") == renewed
    lease.renew()

    declined = cli("locks", "break", "execution_lock.okta", "all", input=b"n\n")
    assert b"nothing was removed" in declined.stderr
    assert lease.held
    lease.release()
