"""local_sqlite: the conformance suite, plus what only a SQLite file has."""

from __future__ import annotations

import functools
import os
import random
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grove.caches import BaseCache, CacheEntry, load, local_sqlite
from grove.caches.local_sqlite import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Configuration,
    Handler,
    prefix_end,
)
from grove.caches.testing import (
    ExpiryConformance,
    ListingConformance,
    ManualClock,
    SharedCacheConformance,
    SharedExpiryConformance,
    run_in_processes,
)
from grove.exceptions import (
    AccessException,
    ConfigurationException,
    DataFormatException,
    NotFoundException,
)


class TestLocalSqliteConformance(
    SharedCacheConformance, ListingConformance, ExpiryConformance, SharedExpiryConformance
):
    @pytest.fixture
    def database(self, tmp_path: Path) -> str:
        return str(tmp_path / "cache.db")

    @pytest.fixture
    def cache(self, database: str, clock: ManualClock) -> Handler:
        return Handler(Configuration(path=database), clock=clock)

    @pytest.fixture
    def cache_factory(self, database: str) -> Callable[[], BaseCache]:
        return functools.partial(Handler, Configuration(path=database))


def _handler(path: Path | str, **settings: Any) -> Handler:
    return Handler(Configuration(path=str(path), **settings))


def _pragma(cache: Handler, name: str) -> Any:
    return cache._cursor().connection.execute(f"PRAGMA {name}").fetchone()[0]


# -- the file ------------------------------------------------------------------------


def test_new_file_has_the_versioned_schema_in_wal_mode(tmp_path: Path) -> None:
    cache = _handler(tmp_path / "cache.db")
    cache.setup()
    assert _pragma(cache, "user_version") == SCHEMA_VERSION == 2
    assert _pragma(cache, "application_id") == APPLICATION_ID
    assert _pragma(cache, "journal_mode") == "wal"
    with closing(sqlite3.connect(tmp_path / "cache.db")) as raw:
        (sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()
        columns = raw.execute("PRAGMA table_info(entries)").fetchall()
    assert "WITHOUT ROWID" in sql
    assert [(name, kind, not_null, primary) for _, name, kind, not_null, _, primary in columns] == [
        ("pk", "TEXT", 1, 1),
        ("sk", "TEXT", 1, 2),
        ("value", "TEXT", 1, 0),
        ("expires_at", "REAL", 0, 0),
    ]


def test_existing_file_is_reused(tmp_path: Path) -> None:
    _handler(tmp_path / "cache.db").set("pk", "sk", "kept")
    assert _handler(tmp_path / "cache.db").get("pk", "sk") == "kept"


def test_create_storage_makes_the_file_once(tmp_path: Path) -> None:
    path = tmp_path / "new" / "cache.db"
    assert _handler(path).create_storage() == f"created local_sqlite cache at {path}"
    assert _handler(path).create_storage() == f"found local_sqlite cache at {path}"
    assert _pragma(_handler(path), "user_version") == SCHEMA_VERSION


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    _handler(path).setup()
    with closing(sqlite3.connect(path)) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    cache = _handler(path)
    with pytest.raises(ConfigurationException, match=r"GROVE_CACHE_LOCAL_SQLITE_PATH.*newer"):
        cache.setup()
    with pytest.raises(ConfigurationException, match=f"schema version {SCHEMA_VERSION + 1}"):
        cache.get("pk", "sk")


def test_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as raw:
        raw.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY)")
        raw.commit()
    with pytest.raises(ConfigurationException, match="another application"):
        _handler(path).set("pk", "sk", "v")
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT count(*) FROM sqlite_master").fetchone() == (1,)


def test_an_existing_empty_file_becomes_a_cache(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    cache = _handler(tmp_path / "empty.db")
    cache.set("pk", "sk", "v")
    assert _pragma(cache, "user_version") == SCHEMA_VERSION


def test_file_and_directories_are_private_whatever_the_umask(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "new" / "nested" / "cache.db"
    previous = os.umask(0)
    try:
        cache = _handler(path)
        cache.set("pk", "sk", "v")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for companion in ("-wal", "-shm"):
        assert stat.S_IMODE(Path(f"{path}{companion}").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / "nested").stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # not made by us: left alone


def test_not_a_database_is_an_access_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the pages you are looking for\n" * 200)
    cache = _handler(path)
    with pytest.raises(AccessException, match=re.escape(str(path)) + ".*not a database"):
        cache.setup()
    with pytest.raises(AccessException, match=re.escape(str(path))):
        cache.get("pk", "sk")
    with pytest.raises(AccessException, match=re.escape(str(path))):
        cache.set("pk", "sk", "v")
    assert path.read_bytes().startswith(b"these are not")


def test_corrupt_file_is_an_access_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    for index in range(200):
        cache.set(f"pk{index}", "sk", "v" * 100)
    cache.close()  # the last connection folds the WAL back into the file
    assert not Path(f"{path}-wal").exists()
    page_size = 4096
    with path.open("r+b") as file:
        file.seek(page_size)  # page 2 onwards: the table, not the header
        file.write(b"\xa5" * page_size * 3)
    with pytest.raises(
        AccessException, match="get of .* failed in local_sqlite cache at " + re.escape(str(path))
    ):
        _handler(path).get("pk100", "sk")


def test_unopenable_path_is_an_access_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a directory")
    cache = _handler(tmp_path / "file" / "cache.db")
    with pytest.raises(AccessException, match="cannot open local_sqlite cache at"):
        cache.get("pk", "sk")


# -- crashes -------------------------------------------------------------------------

_CRASH_PK = "crash"
_CRASH_SLOTS = 8


def _crash_value(index: int) -> str:
    """A value that names its write and spans pages: 1 to 60 KB of its own digits."""
    size = 1_000 + (index * 7_919) % 60_000
    return f"{index}:" + (f"{index:09d}" * (size // 9 + 1))[:size]


def _crash_writer(path: str, start: int, acknowledgements: int) -> None:
    """Overwrite the slots in a loop, reporting each write once set() has returned."""
    cache = _handler(path, synchronous="full")
    index = start
    while True:
        cache.set(_CRASH_PK, f"slot{index % _CRASH_SLOTS}", _crash_value(index))
        os.write(acknowledgements, index.to_bytes(8, "big"))
        index += 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_kill_9_loses_no_acknowledged_write_and_tears_no_value(tmp_path: Path) -> None:
    path = str(tmp_path / "crash.db")
    chance = random.Random(9)
    acknowledged: dict[str, int] = {}  # slot: the newest write that set() confirmed
    next_index = 0
    kills = 0
    for _ in range(120):
        receiver, sender = os.pipe()
        writer = os.fork()
        if writer == 0:  # pragma: no cover - the child runs until it is killed
            try:
                os.close(receiver)
                _crash_writer(path, next_index, sender)
            finally:
                os._exit(1)
        os.close(sender)
        with os.fdopen(receiver, "rb") as reports:
            # Kill at a random moment: sometimes while it opens the file, mostly mid-write.
            for _ in range(chance.randint(0, 12)):
                index = int.from_bytes(reports.read(8), "big")
                acknowledged[f"slot{index % _CRASH_SLOTS}"] = index
            time.sleep(chance.random() * 0.004)
            os.kill(writer, signal.SIGKILL)
            _, status = os.waitpid(writer, 0)
            kills += os.waitstatus_to_exitcode(status) == -signal.SIGKILL
            while report := reports.read(8):
                index = int.from_bytes(report, "big")
                acknowledged[f"slot{index % _CRASH_SLOTS}"] = index
        # The writer may have committed one write beyond the last it reported.
        newest = max(acknowledged.values(), default=-1)
        attempted = newest + 1 if newest >= next_index else next_index
        next_index = attempted + 1  # every write has an index of its own

        with closing(sqlite3.connect(path)) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        cache = _handler(path)
        stored = {entry.sk: entry.value for entry in cache.entries(_CRASH_PK)}
        cache.close()
        assert set(acknowledged) <= set(stored)
        for slot, value in stored.items():
            index = int(value.partition(":")[0])
            assert value == _crash_value(index), f"{slot} holds a torn value"
            assert slot == f"slot{index % _CRASH_SLOTS}"
            assert acknowledged.get(slot, -1) <= index <= attempted, slot
    assert kills >= 100
    assert len(acknowledged) == _CRASH_SLOTS


# -- locking -------------------------------------------------------------------------


def test_a_busy_file_is_an_access_error_after_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path, busy_timeout=0.05)
    cache.set("pk", "sk", "v")
    with closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as other:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        with pytest.raises(AccessException, match=r"set of .*database is locked"):
            cache.set("pk", "sk", "w")
        with pytest.raises(AccessException, match=r"delete of .*database is locked"):
            cache.delete("pk", "sk", constraint="v")
        assert cache.get("pk", "sk") == "v"  # readers do not wait for a writer
        other.execute("ROLLBACK")
    cache.set("pk", "sk", "w", constraint="v")
    assert cache.get("pk", "sk") == "w"


def test_a_busy_file_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path, busy_timeout=60)
    cache.set("pk", "sk", "0")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE entries SET value = '1'")
    locked = threading.Event()

    def release_soon() -> None:
        locked.wait()
        time.sleep(0.2)
        other.execute("COMMIT")
        other.close()

    releaser = threading.Thread(target=release_soon)
    releaser.start()
    locked.set()
    cache.set("pk", "sk", "2", constraint="1")  # waits for the commit, then sees '1'
    releaser.join()
    assert cache.get("pk", "sk") == "2"


def test_processes_creating_one_new_file_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "fresh" / "cache.db")
    outcomes = run_in_processes(_open_and_write, [(path, f"w{i}") for i in range(6)], timeout=120)
    assert sorted(outcomes) == [f"w{i}: ok" for i in range(6)]
    cache = _handler(path)
    assert sorted(entry.sk for entry in cache.entries("pk")) == [f"w{i}" for i in range(6)]
    assert _pragma(cache, "user_version") == SCHEMA_VERSION


def _open_and_write(path: str, name: str, barrier: Any, results: Any) -> None:
    cache = _handler(path)
    barrier.wait()
    try:
        cache.set("pk", name, name, not_set=True)
    except Exception as exc:
        results.put(f"{name}: {type(exc).__name__}: {exc}")
    else:
        results.put(f"{name}: ok")


# -- connections ---------------------------------------------------------------------


def test_each_thread_has_its_own_connection_closed_with_the_thread(tmp_path: Path) -> None:
    cache = _handler(tmp_path / "cache.db")
    cache.set("pk", "sk", "v")
    mine = cache._cursor().connection
    seen: list[sqlite3.Connection] = []

    def work() -> None:
        assert cache.get("pk", "sk") == "v"
        seen.append(cache._cursor().connection)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(connection) for connection in [mine, *seen]}) == 5
    assert list(cache._connections) == [cache._local.connection]
    for connection in seen:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("SELECT 1")


def test_close_closes_every_connection_and_reopens_on_use(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "sk", "v")
    assert Path(f"{path}-wal").exists()
    cache.close()
    assert not Path(f"{path}-wal").exists()  # the last connection to close removes it
    assert cache.get("pk", "sk") == "v"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    cache = _handler(tmp_path / "cache.db")
    cache.set("pk", "parent", "1")
    parents = cache._cursor().connection
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which never returns
        code = 1
        try:
            fresh = cache._cursor().connection is not parents
            cache.set("pk", "child", cache.get("pk", "parent") + "2")
            os.write(writer, b"fresh" if fresh else b"inherited")
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == b"fresh"
    assert cache._cursor().connection is parents
    assert cache.get("pk", "child") == "12"
    cache.set("pk", "parent", "3", constraint="1")


# -- values and keys -----------------------------------------------------------------


def test_text_after_a_nul_counts(tmp_path: Path) -> None:
    cache = _handler(tmp_path / "cache.db")
    cache.set("k\x00a", "s\x00a", "v\x00a")
    cache.set("k\x00b", "s\x00a", "v\x00b")
    cache.set("k\x00a", "s\x00b", "")
    assert cache.get("k\x00a", "s\x00a") == "v\x00a"
    assert cache.get("k\x00b", "s\x00a") == "v\x00b"
    with pytest.raises(DataFormatException):
        cache.set("k\x00a", "s\x00a", "w", constraint="v\x00b")
    with pytest.raises(DataFormatException):
        cache.delete("k\x00a", "s\x00a", constraint="v\x00")
    cache.set("k\x00a", "s\x00a", "w", constraint="v\x00a")
    assert sorted(cache.entries(prefix="k\x00")) == [
        CacheEntry("k\x00a", "s\x00a", "w"),
        CacheEntry("k\x00a", "s\x00b", ""),
        CacheEntry("k\x00b", "s\x00a", "v\x00b"),
    ]


_EDGE_CHARACTERS = st.sampled_from(
    [
        *("\x00", "a", "b", "\x7f", "\x80", "\u07ff", "\u0800", "\ud7ff", "\ue000"),
        *("\uffff", "\U00010000", "\U0010fffe", "\U0010ffff"),
    ]
)


@given(prefix=st.text(_EDGE_CHARACTERS, min_size=1, max_size=4), key=st.text(_EDGE_CHARACTERS))
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: str, key: str) -> None:
    end = prefix_end(prefix)
    in_range = prefix <= key and (end is None or key < end)
    assert in_range == key.startswith(prefix)
    # SQLite orders TEXT by its UTF-8 bytes; so must the bound.
    if end is not None:
        encoded_in_range = prefix.encode() <= key.encode() < end.encode()
        assert encoded_in_range == key.startswith(prefix)


def test_listing_by_prefix_at_unicode_edges(tmp_path: Path) -> None:
    cache = _handler(tmp_path / "cache.db")
    keys = [
        "p",
        "p\x00",
        "p\ud7ff",
        "p\ue000",
        "p\U0010ffff",
        "p\U0010ffff\x00",
        "q",
        "o\U0010ffff",
    ]
    for key in keys:
        cache.set(key, "sk", key)
    for prefix in ["p", "p\ud7ff", "p\U0010ffff", "\U0010ffff", "o", "p\x00"]:
        listed = sorted(entry.pk for entry in cache.entries(prefix=prefix))
        assert listed == sorted(key for key in keys if key.startswith(prefix)), prefix


def test_listing_is_a_snapshot_unaffected_by_writes(tmp_path: Path) -> None:
    cache = _handler(tmp_path / "cache.db")
    for index in range(300):
        cache.set("pk", f"{index:04d}", str(index))
    seen = []
    for entry in cache.entries("pk"):
        seen.append(entry.sk)
        cache.delete("pk", entry.sk)  # on this thread's own connection
        cache.set("pk", entry.sk + "-new", "x")
    assert seen == [f"{index:04d}" for index in range(300)]
    assert len(list(cache.entries("pk"))) == 300


# -- configuration -------------------------------------------------------------------


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GROVE_CACHE_LOCAL_SQLITE_PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("GROVE_CACHE_LOCAL_SQLITE_SYNCHRONOUS", "Normal")
    monkeypatch.setenv("GROVE_CACHE_LOCAL_SQLITE_BUSY_TIMEOUT", "2.5")
    cache = Handler()
    cache.set("pk", "sk", "v")
    assert cache.config.busy_timeout == 2.5
    assert _pragma(cache, "synchronous") == 1  # NORMAL
    assert (tmp_path / "env.db").exists()


def test_synchronous_defaults_to_full(tmp_path: Path) -> None:
    cache = _handler(tmp_path / "cache.db")
    assert cache.config.synchronous == "full"
    assert _pragma(cache, "synchronous") == 2  # FULL


def test_load_by_entry_point_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GROVE_CACHE_HANDLER", "local_sqlite")
    monkeypatch.setenv("GROVE_CACHE_LOCAL_SQLITE_PATH", str(tmp_path / "loaded.db"))
    cache = load()
    assert isinstance(cache, Handler)
    assert (tmp_path / "loaded.db").exists()  # setup() opened it


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SYNCHRONOUS", "off", "GROVE_CACHE_LOCAL_SQLITE_SYNCHRONOUS: Input should be 'full'"),
        ("BUSY_TIMEOUT", "-1", "GROVE_CACHE_LOCAL_SQLITE_BUSY_TIMEOUT: Input should be greater"),
        ("BUSY_TIMEOUT", "soon", "GROVE_CACHE_LOCAL_SQLITE_BUSY_TIMEOUT: Input should be a"),
        ("PATH", ":memory:", "GROVE_CACHE_LOCAL_SQLITE_PATH: .*use local_memory"),
        ("PATH", "", "GROVE_CACHE_LOCAL_SQLITE_PATH: String should have at least 1"),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv("GROVE_CACHE_LOCAL_SQLITE_PATH", str(tmp_path / "cache.db"))
    monkeypatch.setenv(f"GROVE_CACHE_LOCAL_SQLITE_{variable}", value)
    with pytest.raises(ConfigurationException, match=message):
        Handler()


def test_missing_path_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROVE_CACHE_LOCAL_SQLITE_PATH", raising=False)
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_LOCAL_SQLITE_PATH is required"):
        Handler()


# -- a missing database (issue 11, item 4) --------------------------------------------


def test_reads_of_a_missing_database_create_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mistyped" / "cache.db"
    cache = _handler(path)
    with pytest.raises(NotFoundException):
        cache.get("pk", "sk")
    cache.delete("pk", "sk")
    with pytest.raises(DataFormatException):
        cache.delete("pk", "sk", constraint="v")
    assert list(cache.entries()) == []
    assert list(cache.entries("pk")) == []
    assert list(cache.entries(prefix="p")) == []
    assert not (tmp_path / "mistyped").exists()
    cache.set("pk", "sk", "v")  # the first write creates it
    assert _handler(path).get("pk", "sk") == "v"


def test_reads_of_an_empty_file_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    path.touch()
    cache = _handler(path)
    with pytest.raises(NotFoundException):
        cache.get("pk", "sk")
    cache.delete("pk", "sk")
    assert list(cache.entries()) == []
    assert path.stat().st_size == 0
    assert sorted(os.listdir(tmp_path)) == ["cache.db"]


def test_setup_creates_the_database(tmp_path: Path) -> None:
    path = tmp_path / "new" / "cache.db"
    _handler(path).setup()
    assert _pragma(_handler(path), "user_version") == SCHEMA_VERSION


# -- the file removed or replaced while open (issue 10, item 7) ------------------------


def _remove_files(path: Path, *suffixes: str) -> None:
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink()


def test_writes_into_a_removed_database_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "before", "1")
    _remove_files(path, "", "-wal", "-shm")
    with pytest.raises(AccessException, match=r"set of pk='pk' sk='after'.*removed or replaced"):
        cache.set("pk", "after", "2")
    # Nothing is created again behind the operator's back, by reads or writes...
    with pytest.raises(AccessException, match=r"removed while in use.*setup"):
        cache.get("pk", "before")
    with pytest.raises(AccessException, match="removed while in use"):
        cache.set("pk", "after", "2")
    with pytest.raises(AccessException, match="removed while in use"):
        cache.delete("pk", "before")
    assert not path.exists()
    # ...until setup() (grove-cache init) makes a new store.
    cache.setup()
    cache.set("pk", "after", "3")
    assert [tuple(entry) for entry in _handler(path).entries()] == [("pk", "after", "3")]


def test_a_store_created_again_by_another_process_is_used(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "old", "1")
    _remove_files(path, "", "-wal", "-shm")
    _handler(path).set("pk", "new", "2")  # a collector started since: its first write
    with pytest.raises(AccessException, match="removed or replaced"):
        cache.set("pk", "mine", "3")
    assert cache.get("pk", "new") == "2"
    cache.set("pk", "mine", "3")
    assert sorted(entry.sk for entry in _handler(path).entries()) == ["mine", "new"]


@pytest.mark.parametrize("operation", ["set", "not_set", "constraint", "delete", "delete_if"])
def test_every_write_into_a_replaced_database_is_refused(tmp_path: Path, operation: str) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "sk", "old")
    replacement = _handler(tmp_path / "backup.db")
    replacement.set("pk", "sk", "restored")
    replacement.close()
    os.replace(tmp_path / "backup.db", path)  # e.g. a backup put back in place
    _remove_files(path, "-wal", "-shm")
    writes: dict[str, Callable[[], None]] = {
        "set": lambda: cache.set("pk", "sk", "new"),
        "not_set": lambda: cache.set("pk", "other", "new", not_set=True),
        "constraint": lambda: cache.set("pk", "sk", "new", constraint="old"),
        "delete": lambda: cache.delete("pk", "sk"),
        "delete_if": lambda: cache.delete("pk", "sk", constraint="old"),
    }
    with pytest.raises(AccessException, match=re.escape(str(path)) + ".*removed or replaced"):
        writes[operation]()
    # The next call uses the store now at the path, in every thread.
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.append(cache.get("pk", "sk")))
    reader.start()
    reader.join()
    assert seen == ["restored"]
    assert cache.get("pk", "sk") == "restored"
    cache.set("pk", "sk", "new", constraint="restored")
    assert _handler(path).get("pk", "sk") == "new"


def test_a_thread_that_read_before_the_replacement_reads_the_new_store(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "sk", "old")
    proceed, replaced = threading.Event(), threading.Event()
    seen: list[str] = []

    def reader() -> None:
        seen.append(cache.get("pk", "sk"))  # opens this thread's connection
        proceed.set()
        replaced.wait()
        seen.append(cache.get("pk", "sk"))

    thread = threading.Thread(target=reader)
    thread.start()
    proceed.wait()
    replacement = _handler(tmp_path / "backup.db")
    replacement.set("pk", "sk", "restored")
    replacement.close()
    os.replace(tmp_path / "backup.db", path)
    _remove_files(path, "-wal", "-shm")
    try:
        with pytest.raises(AccessException, match="removed or replaced"):
            cache.set("pk", "x", "1")  # this thread's write finds out, for every thread
    finally:
        replaced.set()
        thread.join()
    assert seen == ["old", "restored"]


def test_removal_is_seen_once_the_directory_stamp_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trust a stamp as soon as it is in the past, so that the quick check is in use.
    monkeypatch.setattr(local_sqlite, "_SETTLED_NS", 0)
    monkeypatch.setattr(local_sqlite, "_SETTLED_WHOLE_SECONDS_NS", 0)
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "sk", "1")
    cache.set("pk", "sk", "2")
    assert cache._local.connection.stamp is not None
    _remove_files(path, "", "-wal", "-shm")
    with pytest.raises(AccessException, match="removed or replaced"):
        cache.set("pk", "sk", "3")


@pytest.mark.parametrize("margin", [0, 3_600_000_000_000])
def test_a_directory_stamp_is_trusted_only_when_older_than_a_clock_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, margin: int
) -> None:
    monkeypatch.setattr(local_sqlite, "_SETTLED_NS", margin)
    monkeypatch.setattr(local_sqlite, "_SETTLED_WHOLE_SECONDS_NS", margin)
    (tmp_path / "a file").touch()  # a change, stamped just now
    found = os.stat(tmp_path)
    expected = (found.st_dev, found.st_ino, found.st_mtime_ns, found.st_ctime_ns)
    assert local_sqlite._settled_stamp(str(tmp_path)) == (expected if margin == 0 else None)


_READ_ALL = """
import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as connection:
    print(sorted(connection.execute("SELECT sk, value FROM entries").fetchall()))
"""


def _entries_seen_by_another_process(path: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", _READ_ALL, str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_writes_after_the_wal_and_shm_were_removed_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "before", "1")
    cache.close()  # folds the WAL into the file: "before" is in the database itself
    cache.set("pk", "kept", "2")
    _remove_files(path, "-wal", "-shm")  # loses "kept": SQLite cannot help that
    with pytest.raises(AccessException, match=r"sk='after'.*removed or replaced"):
        cache.set("pk", "after", "3")
    # SQLite in this process would go on using the removed -shm: refuse, until a restart.
    with pytest.raises(AccessException, match="restart"):
        cache.get("pk", "before")
    cache.close()
    with pytest.raises(AccessException, match="restart"):
        _handler(path).set("pk", "after", "3")
    # The refused write never reaches the database, not even when connections close.
    assert _entries_seen_by_another_process(path) == "[('before', '1')]"


# -- rows written by other tools (issue 10, items 8 and 9) ----------------------------


def _insert_raw(path: Path, pk: object, sk: object, value: object) -> None:
    with closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("INSERT INTO entries (pk, sk, value) VALUES (?, ?, ?)", (pk, sk, value))


def test_a_value_stored_as_a_blob_reads_and_compares_as_its_text(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.setup()
    text = "caf\u00e9 \u2603\x00after a NUL"
    _insert_raw(path, "pk", "sk", text.encode())  # as sqlite3's readfile() would
    _insert_raw(path, "pk", "other", text.encode())
    assert cache.get("pk", "sk") == text
    assert type(cache.get("pk", "sk")) is str
    assert sorted(cache.entries("pk")) == [("pk", "other", text), ("pk", "sk", text)]
    assert all(type(entry.value) is str for entry in cache.entries())
    with pytest.raises(DataFormatException):
        cache.set("pk", "sk", "new", constraint=text[:-1])
    cache.set("pk", "sk", "new", constraint=text)
    assert cache.get("pk", "sk") == "new"
    cache.delete("pk", "other", constraint=text)
    assert list(cache.entries()) == [("pk", "sk", "new")]


@pytest.mark.parametrize("column", ["pk", "sk"])
def test_a_key_stored_as_a_blob_is_an_access_error_naming_it(tmp_path: Path, column: str) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "sk", "v")
    keys = {"pk": "pk", "sk": "sk", column: b"blob-key"}
    _insert_raw(path, keys["pk"], keys["sk"], "secret value")
    with pytest.raises(AccessException, match=r"blob-key.*BLOB") as caught:
        list(cache.entries())
    assert "secret" not in _messages(caught.value)


_UNDECODABLE = b"secret token \xff\xfe"


def _messages(exc: BaseException | None) -> str:
    """Every message in an exception's chain, as a traceback would show them."""
    seen = []
    while exc is not None:
        seen.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(seen)


@pytest.mark.parametrize("stored_as", ["BLOB", "TEXT"])
def test_an_undecodable_value_is_an_access_error_without_its_text(
    tmp_path: Path, stored_as: str
) -> None:
    path = tmp_path / "cache.db"
    cache = _handler(path)
    cache.set("pk", "fine", "v")
    with closing(sqlite3.connect(path)) as raw, raw:
        raw.execute(
            f"INSERT INTO entries (pk, sk, value) VALUES ('pk', 'bad', CAST(? AS {stored_as}))",
            (_UNDECODABLE,),
        )
    with pytest.raises(AccessException, match=r"get of pk='pk' sk='bad'.*not UTF-8") as caught:
        cache.get("pk", "bad")
    assert "secret" not in _messages(caught.value)
    with pytest.raises(AccessException, match=r"pk='pk' sk='bad'.*not UTF-8") as caught:
        list(cache.entries("pk"))
    assert "secret" not in _messages(caught.value)
    with pytest.raises(DataFormatException) as refused:  # no str equals it
        cache.set("pk", "bad", "new", constraint=_UNDECODABLE.decode("latin-1"))
    assert "secret" not in _messages(refused.value)
    assert cache.get("pk", "fine") == "v"
    cache.set("pk", "bad", "repaired")  # a plain set overwrites it
    assert cache.get("pk", "bad") == "repaired"


# -- expiry (issue 13) ----------------------------------------------------------------

_VERSION_1_FILE = Path(__file__).parent / "data" / "local_sqlite_v1.db"
"""A database written by schema version 1 (main at 4e1e1a2, before expiry)."""

_VERSION_1_ENTRIES = [
    ("dedup.okta", "hashes", '["0cc175b9c0f1b6a831c399e269772661"]'),
    ("emoji \U0001f332", "new\nline", "caf\u00e9 \u2603\x00after-nul"),
    ("empty", "value", ""),
    ("execution_lock.okta", "system_log", "1714564800.0"),
    ("pointer.okta.0cc175b9c0f1b6a831c399e269772661", "system_log", "2024-05-01T12:00:00Z"),
]


def _version_1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    path.write_bytes(_VERSION_1_FILE.read_bytes())
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (1,)
        assert "expires_at" not in {row[1] for row in raw.execute("PRAGMA table_info(entries)")}
    return path


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = _version_1_copy(tmp_path)
    inode = path.stat().st_ino
    clock = ManualClock()
    cache = Handler(Configuration(path=str(path)), clock=clock)
    assert cache.get("empty", "value") == ""  # a read opens, and upgrades, the file
    assert sorted(cache.entries()) == _VERSION_1_ENTRIES
    assert _pragma(cache, "user_version") == SCHEMA_VERSION
    assert path.stat().st_ino == inode
    for pk, sk, _ in _VERSION_1_ENTRIES:
        assert cache.expires_at(pk, sk) is None
    cache.set("execution_lock.okta", "system_log", "taken", constraint="1714564800.0", ttl=60)
    clock.advance(61)
    with pytest.raises(NotFoundException):
        cache.get("execution_lock.okta", "system_log")
    assert len(list(cache.entries())) == len(_VERSION_1_ENTRIES) - 1
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_processes_upgrading_one_file_at_once(tmp_path: Path) -> None:
    path = str(_version_1_copy(tmp_path))
    outcomes = run_in_processes(_open_and_write, [(path, f"w{i}") for i in range(6)], timeout=120)
    assert sorted(outcomes) == [f"w{i}: ok" for i in range(6)]
    cache = _handler(path)
    assert len(list(cache.entries())) == len(_VERSION_1_ENTRIES) + 6
    assert _pragma(cache, "user_version") == SCHEMA_VERSION


def test_expiry_is_the_callers_clock_in_epoch_seconds(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    early = Handler(Configuration(path=str(path)), clock=ManualClock(start=1_000_000.0))
    late = Handler(Configuration(path=str(path)), clock=ManualClock(start=1_000_100.0))
    early.set("pk", "sk", "v", ttl=60)
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT expires_at FROM entries").fetchall() == [(1_000_060.0,)]
    assert early.get("pk", "sk") == "v"  # each caller decides by its own clock
    with pytest.raises(NotFoundException):
        late.get("pk", "sk")
    late.set("pk", "sk", "mine", not_set=True)
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT value, expires_at FROM entries").fetchall() == [("mine", None)]


def test_every_call_is_one_statement(tmp_path: Path) -> None:
    clock = ManualClock()
    cache = Handler(Configuration(path=str(tmp_path / "cache.db")), clock=clock)
    cache.set("pk", "warm", "up")
    statements: list[str] = []
    cache._local.connection.connection.set_trace_callback(statements.append)
    calls: list[Callable[[], object]] = [
        lambda: cache.set("pk", "sk", "1", ttl=60),
        lambda: cache.get("pk", "sk"),
        lambda: cache.set("pk", "sk", "2", constraint="1", ttl=60),
        lambda: cache.set("pk", "sk", "3", constraint="2"),
        lambda: cache.set("pk", "sk", "4"),
        lambda: cache.delete("pk", "sk", constraint="4"),
        lambda: cache.set("pk", "sk", "5", not_set=True, ttl=10),
        lambda: clock.advance(20),
        lambda: cache.set("pk", "sk", "6", not_set=True, ttl=10),  # over the expired row
        lambda: cache.delete("pk", "sk"),
    ]
    for call in calls:
        statements.clear()
        call()
        assert len(statements) == (0 if call is calls[7] else 1), statements
    assert cache.expires_at("pk", "warm") is None


def test_sweep_reads_the_table_once_and_wraps_around(tmp_path: Path) -> None:
    clock = ManualClock()
    cache = Handler(Configuration(path=str(tmp_path / "cache.db")), clock=clock)
    for index in range(40):  # expiring entries between entries that stay
        cache.set(f"pk{index:02d}", "gone", "v", ttl=10)
        cache.set(f"pk{index:02d}", "kept", "v")
    clock.advance(20)
    assert cache._sweep_expired(15) == 15  # stops at pk14
    cache.set("pk00", "late", "v", ttl=10)  # expires behind where the sweep stopped
    cache.set("pk39", "late", "v", ttl=10)
    clock.advance(20)
    batches: list[int] = []
    assert cache.sweep_expired(batch_size=10, progress=batches.append) == 25 + 2
    assert batches == [10, 10, 7]  # pk15..pk24, pk25..pk34, pk35..pk39 + both late ones
    assert sorted(entry.pk for entry in cache.entries()) == [f"pk{i:02d}" for i in range(40)]
    assert cache.sweep_expired() == 0


def test_sweep_keeps_an_entry_written_again_since_it_was_found(tmp_path: Path) -> None:
    clock = ManualClock()
    cache = Handler(Configuration(path=str(tmp_path / "cache.db")), clock=clock)
    cache.set("pk", "a", "v", ttl=10)
    cache.set("pk", "b", "v", ttl=10)
    clock.advance(20)
    statements: list[str] = []
    connection = cache._local.connection.connection

    def rewrite_after_the_search(statement: str) -> None:
        statements.append(statement)
        if statement == "BEGIN IMMEDIATE":
            # Another process writes "a" again between the search and the deletion.
            with closing(sqlite3.connect(tmp_path / "cache.db", isolation_level=None)) as other:
                other.execute("UPDATE entries SET value = 'w', expires_at = NULL WHERE sk = 'a'")

    connection.set_trace_callback(rewrite_after_the_search)
    assert cache.sweep_expired() == 1
    connection.set_trace_callback(None)
    assert cache.get("pk", "a") == "w"
    assert [statement.split()[0] for statement in statements] == [
        "SELECT",
        "BEGIN",
        "DELETE",
        "DELETE",
        "COMMIT",
    ]
