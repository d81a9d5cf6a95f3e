"""grove-cache, driven as an operator would: the real console script in a subprocess,
against real handlers (files, SQLite, DynamoDB on moto's server)."""

from __future__ import annotations

import itertools
import json
import os
import pty
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest

from benchmarks.moto_server import fake_credentials
from grove.caches.testing import HOSTILE_KEYS
from grove.cli import ExitCode, _masked_settings

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
    assert f"{len(HOSTILE_ENTRIES)} entries would be copied" in result.stderr.decode()
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
    assert b"using local_sqlite" in result.stderr
    assert b"embedded default" in result.stderr
    assert (tmp_path / "state" / "grove" / "cache.db").is_file()
    assert cli("get", "pointer.x", "all").stdout == b"kept\n"


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

    leader, follower = pty.openpty()
    try:
        completed = subprocess.run(
            [GROVE_CACHE, "export", "-o", str(tmp_path / "out.jsonl")],
            env={**cli.env, "TERM": "xterm"},
            stderr=follower,
            stdout=subprocess.DEVNULL,
            timeout=120,
            check=True,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert completed.returncode == 0
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
        target_settings = [
            f"--to-config={name.removeprefix(f'GROVE_CACHE_{label.upper()}_').lower()}={value}"
            for name, value in target.items()
            if name != "GROVE_CACHE_HANDLER"
        ]
        credentials = {k: v for k, v in target.items() if not k.startswith("GROVE_")}
        report = Cli({**base, **credentials, **source}, label)(
            "migrate", "--to", label, *target_settings
        )
        summary = report.stderr.decode()
        assert "10,000 copied" in summary, summary
        assert "0 failed; verified 10,000, 0 mismatched" in summary, summary
        print(summary.strip().splitlines()[-1])
    last = Cli({**base, **stores[-1]}, chain[-1])
    assert parse_jsonl(last("export").stdout) == entries
