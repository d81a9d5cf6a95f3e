"""local_file: the conformance suite, plus what only a directory of files has."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import multiprocessing
import os
import random
import select
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grove.caches import CacheEntry, load
from grove.caches.local_file import (
    NAME_MAX,
    SUFFIX,
    Configuration,
    EntryPath,
    Handler,
    boundary,
    decode_components,
    encode_components,
    escape,
)
from grove.caches.local_file.framing import MAGIC
from grove.caches.local_file.framing import encode as encode_frame
from grove.caches.testing import (
    HOSTILE_KEYS,
    ExpiryConformance,
    ListingConformance,
    ManualClock,
    SharedCacheConformance,
    SharedExpiryConformance,
    increment_until,
)
from grove.caches.validation import MAX_KEY_BYTES
from grove.exceptions import (
    AccessException,
    ConfigurationException,
    DataFormatException,
    NotFoundException,
)


class TestLocalFileConformance(
    SharedCacheConformance, ListingConformance, ExpiryConformance, SharedExpiryConformance
):
    process_workers = 4
    process_increments = 500
    process_racers = 8

    @pytest.fixture
    def cache(self, tmp_path: Path, clock: ManualClock) -> Handler:
        handler = Handler(Configuration(path=str(tmp_path)), clock=clock)
        handler.setup()
        return handler

    @pytest.fixture
    def cache_factory(self, tmp_path: Path) -> Callable[[], Handler]:
        return functools.partial(Handler, Configuration(path=str(tmp_path)))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A cache directory inside a directory that nothing else writes to."""
    path = tmp_path / "cache"
    path.mkdir()
    return path


@pytest.fixture
def cache(root: Path) -> Handler:
    return Handler(Configuration(path=str(root), fsync=False))


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path below root, relative to it, with its lstat; paths may exceed PATH_MAX."""
    for directory, directories, files, descriptor in os.fwalk(root):
        for name in directories + files:
            relative = os.path.relpath(os.path.join(directory, name), root)
            yield relative, os.stat(name, dir_fd=descriptor, follow_symlinks=False)


def tree(root: Path) -> list[str]:
    """Every path below root, relative to it, sorted."""
    return sorted(path for path, _ in walk(root))


# -- escaping ------------------------------------------------------------------------

KEYS = st.text(st.characters(codec="utf-8"), min_size=1).filter(
    lambda key: len(key.encode("utf-8")) <= MAX_KEY_BYTES
)
LONG_KEYS = st.text(st.characters(codec="utf-8", min_codepoint=0x80), min_size=200, max_size=256)


@settings(max_examples=500)
@given(key=KEYS | LONG_KEYS, suffix=st.sampled_from(["", SUFFIX]))
def test_escaping_round_trips_into_safe_components(key: str, suffix: str) -> None:
    components = encode_components(key, suffix)
    assert decode_components(components, suffix) == key
    for component in components:
        assert component not in (".", "..")
        assert "/" not in component
        assert "\x00" not in component
        assert not component.startswith(".")  # never a temporary, lock or hidden name
        assert len(component.encode("utf-8")) <= NAME_MAX
    assert components[-1].endswith(suffix)


@given(first=KEYS, second=KEYS)
def test_distinct_keys_have_distinct_components(first: str, second: str) -> None:
    if first != second:
        assert encode_components(first, SUFFIX) != encode_components(second, SUFFIX)


@given(name=st.text("AZaz09-._~%+=2EF5C/", min_size=1, max_size=12))
def test_only_names_that_escaping_makes_decode(name: str) -> None:
    """Listing trusts a name only if the key it decodes to is stored under that name."""
    for suffix in ("", SUFFIX):
        key = decode_components([name], suffix)
        if key is not None:
            assert encode_components(key, suffix) == [name]


@given(
    pk=st.text("AZaz09-._~/%", min_size=1, max_size=260),
    sk=st.text("AZaz09-._~/%", min_size=1, max_size=260),
)
def test_fast_path_for_plain_keys_agrees_with_escaping(pk: str, sk: str) -> None:
    entry = EntryPath(pk, sk)
    files = encode_components(sk, SUFFIX)
    assert entry.directories == [*encode_components(pk, ""), *files[:-1]]
    assert entry.file == files[-1]


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("pointer.okta_system_log.0cc175b9c0f1b6a8", "pointer.okta_system_log.0cc175b9c0f1b6a8"),
        ("Audit.General", "Audit.General"),
        ("a-b~c", "a-b~c"),
        (".", "%2E"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("a/b", "a%2Fb"),
        ("%", "%25"),
        ("%2F", "%252F"),
        ("with space", "with%20space"),
        ("nul\x00", "nul%00"),
        ("\u00e9", "%C3%A9"),
    ],
)
def test_escaping_examples(key: str, name: str) -> None:
    assert escape(key) == name


def test_names_too_long_for_one_component_are_chained() -> None:
    key = "\U0001f332" * (MAX_KEY_BYTES // 4)  # 3,072 bytes escaped
    components = encode_components(key, SUFFIX)
    assert len(components) == 13
    assert all(component.startswith("%+") for component in components[:-1])
    assert components[-1].startswith("%=") and components[-1].endswith(SUFFIX)
    assert encode_components("k" * 249, SUFFIX) == ["k" * 249 + SUFFIX]
    assert len(encode_components("k" * 250, SUFFIX)) == 2
    assert encode_components("k" * 255, "") == ["k" * 255]


# -- layout and compatibility with upstream Grove --------------------------------------


def test_plain_keys_use_the_upstream_layout(cache: Handler, root: Path) -> None:
    cache.set("pointer.okta_system_log.0cc175b9", "all", "2024-05-01T00:00:00.000Z")
    cache.set("pointer.okta_system_log.0cc175b9", "Audit.General", "caf\u00e9\r\n")
    assert tree(root) == [
        "pointer.okta_system_log.0cc175b9",
        "pointer.okta_system_log.0cc175b9/Audit.General.cache",
        "pointer.okta_system_log.0cc175b9/all.cache",
    ]
    partition = root / "pointer.okta_system_log.0cc175b9"
    assert (partition / "all.cache").read_bytes() == b"2024-05-01T00:00:00.000Z"
    assert (partition / "Audit.General.cache").read_bytes() == "caf\u00e9\r\n".encode()


def test_a_directory_written_by_upstream_grove_reads_back(root: Path) -> None:
    identity = "github_audit.5d41402abc4b2a76"
    pointers = root / f"pointer.{identity}"
    pointers.mkdir(mode=0o755)
    (pointers / "all.cache").write_bytes(b"1714521600000")
    locks = root / f"execution_lock.{identity}"
    locks.mkdir(mode=0o755)
    (locks / "all.cache").write_bytes(b"2024-05-01T00:05:00+00:00")
    cache = Handler(Configuration(path=str(root)))
    cache.setup()
    assert cache.get("pointer.github_audit.5d41402abc4b2a76", "all") == "1714521600000"
    assert sorted(cache.entries()) == [
        CacheEntry(
            "execution_lock.github_audit.5d41402abc4b2a76", "all", "2024-05-01T00:05:00+00:00"
        ),
        CacheEntry("pointer.github_audit.5d41402abc4b2a76", "all", "1714521600000"),
    ]
    cache.set(
        "execution_lock.github_audit.5d41402abc4b2a76",
        "all",
        "2024-05-01T00:10:00+00:00",
        constraint="2024-05-01T00:05:00+00:00",
    )
    assert (locks / "all.cache").read_bytes() == b"2024-05-01T00:10:00+00:00"


def test_hostile_keys_stay_inside_the_directory(cache: Handler, root: Path) -> None:
    escape_target = Path("/tmp/escape")
    existed = escape_target.exists()
    for pk in HOSTILE_KEYS:
        for sk in HOSTILE_KEYS:
            cache.set(pk, sk, f"{pk!r}/{sk!r}")
    assert sorted(os.listdir(root.parent)) == ["cache"]
    assert escape_target.exists() == existed
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())
        assert not path.is_symlink()
    files = [path for path in root.rglob("*") if path.is_file() and path.parent.name != ".locks"]
    assert len(files) == len(HOSTILE_KEYS) ** 2
    for pk in HOSTILE_KEYS:
        for sk in HOSTILE_KEYS:
            assert cache.get(pk, sk) == f"{pk!r}/{sk!r}"
    assert len(list(cache.entries())) == len(HOSTILE_KEYS) ** 2


def test_longest_keys_live_in_chains_of_directories(cache: Handler, root: Path) -> None:
    pk = "\U0001f332" * (MAX_KEY_BYTES // 4)
    sk = "/" * MAX_KEY_BYTES
    cache.set(pk, sk, "deep")
    (relative,) = (path for path in tree(root) if path.endswith(".cache"))
    assert len(relative.encode()) > 4096  # longer than PATH_MAX: opened step by step
    assert all(len(part.encode()) <= NAME_MAX for part in relative.split("/"))
    assert list(cache.entries(pk)) == [CacheEntry(pk, sk, "deep")]
    assert list(cache.entries(prefix="\U0001f332")) == [CacheEntry(pk, sk, "deep")]
    cache.set(pk, sk, "deeper", constraint="deep")
    assert cache.get(pk, sk) == "deeper"
    cache.delete(pk, sk, constraint="deeper")
    assert not [path for path in tree(root) if path.endswith(".cache")]


def age(root: Path, seconds: float = 3600) -> None:
    """Make everything below root look last changed ``seconds`` ago."""
    then = time.time() - seconds
    for _, directories, files, descriptor in os.fwalk(root):
        for name in directories + files:
            with contextlib.suppress(FileNotFoundError):  # a tidier may remove it meanwhile
                os.utime(name, (then, then), dir_fd=descriptor, follow_symlinks=False)


def test_setup_removes_directories_that_deletes_emptied(cache: Handler, root: Path) -> None:
    cache.set("p", "a", "1")
    cache.set("p", "b", "2")
    cache.set("\u20ac" * 300, "/" * 1024, "3")
    cache.delete("p", "a")
    cache.delete("\u20ac" * 300, "/" * 1024)
    cache.setup()
    assert len(tree(root)) > 2  # emptied just now: a writer may be about to use them
    age(root)
    cache.setup()
    assert tree(root) == ["p", "p/b.cache"]
    cache.delete("p", "b", constraint="2")
    age(root)
    assert tree(root) == ["p"]  # kept until the next setup: a lock's partition comes back
    cache.setup()
    assert tree(root) == []


def test_stray_files_are_not_entries(cache: Handler, root: Path) -> None:
    cache.set("p", "a", "1")
    for stray in ("notes.txt", "%41.cache", "%2e.cache", "b.cache.bak", ".DS_Store"):
        (root / "p" / stray).write_text("x")
    (root / "%zz").mkdir()
    (root / "%zz" / "a.cache").write_text("x")
    assert list(cache.entries()) == [CacheEntry("p", "a", "1")]
    with pytest.raises(NotFoundException):
        cache.get("p", "A")


# -- what get and a failed call leave behind --------------------------------------------


def test_get_and_failed_calls_create_nothing(cache: Handler, root: Path) -> None:
    keys = [("p", "s"), ("a/b", ".."), ("\u20ac" * 300, "\u20ac" * 300)]
    for pk, sk in keys:
        with pytest.raises(NotFoundException):
            cache.get(pk, sk)
    assert list(cache.entries()) == []
    assert os.listdir(root) == []
    for pk, sk in keys:
        with pytest.raises(DataFormatException):
            cache.set(pk, sk, "v", constraint="old")
        with pytest.raises(DataFormatException):
            cache.delete(pk, sk, constraint="old")
    assert os.listdir(root) == []  # the refusals wrote nothing, not even a lock file


def test_files_and_directories_are_private(root: Path) -> None:
    old_umask = os.umask(0)
    try:
        cache = Handler(Configuration(path=str(root)))
        cache.set("p", "s", "secret")
        cache.set("\u20ac" * 300, "/" * 1024, "secret")
        cache.set("q", "s", "secret", not_set=True)
    finally:
        os.umask(old_umask)
    paths = dict(walk(root))
    assert any(len(path) > 4096 for path in paths)
    for path, status in paths.items():
        expected = 0o700 if stat.S_ISDIR(status.st_mode) else 0o600
        assert stat.S_IMODE(status.st_mode) == expected, path


# -- configuration and durability --------------------------------------------------------


def test_configuration_comes_from_the_environment(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROVE_CACHE_LOCAL_FILE_PATH", str(root))
    assert Handler().config == Configuration(path=str(root), fsync=True)
    monkeypatch.setenv("grove_cache_local_file_fsync", "false")
    assert Handler().config.fsync is False
    monkeypatch.setenv("GROVE_CACHE_HANDLER", "local_file")
    loaded = load()
    assert isinstance(loaded, Handler)
    loaded.set("p", "s", "v")
    assert (root / "p" / "s.cache").read_text() == "v"


def test_bad_configuration_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROVE_CACHE_LOCAL_FILE_PATH", raising=False)
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_LOCAL_FILE_PATH is required"):
        Handler()
    monkeypatch.setenv("GROVE_CACHE_LOCAL_FILE_PATH", "/somewhere")
    monkeypatch.setenv("GROVE_CACHE_LOCAL_FILE_FSYNC", "sometimes")
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_LOCAL_FILE_FSYNC"):
        Handler()


def _fsync_targets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what every os.fsync call syncs (by path), then let it sync."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(descriptor: Any) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_fsync_on_syncs_file_then_directory(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Handler(Configuration(path=str(root), fsync=True))
    cache.set("p", "s", "v1")  # creates p/: synced into the cache directory too
    synced = _fsync_targets(monkeypatch)
    cache.set("p", "s", "v2")
    assert len(synced) == 2
    assert Path(synced[0]).parent == root / "p" and Path(synced[0]).name.startswith(".tmp.")
    assert synced[1] == str(root / "p")
    synced.clear()
    cache.delete("p", "s")
    assert synced == [str(root / "p")]
    synced.clear()
    cache.set("new", "s", "v")  # a new directory is synced into its parent first
    assert [synced[0], synced[2]] == [str(root), str(root / "new")]
    assert Path(synced[1]).parent == root / "new" and len(synced) == 3


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_fsync_off_never_syncs(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Handler(Configuration(path=str(root), fsync=False))
    synced = _fsync_targets(monkeypatch)
    cache.set("p", "s", "v1")
    cache.set("p", "s", "v2", constraint="v1")
    cache.set("\u20ac" * 300, "s", "v", not_set=True)
    cache.delete("p", "s")
    assert synced == []


# -- leftovers, corruption and unusable directories --------------------------------------


def test_temporary_leftovers_are_ignored_then_removed(cache: Handler, root: Path) -> None:
    cache.set("p", "s", "committed")
    stale = [root / "p" / ".tmp.4242.0", root / ".tmp.4242.1"]
    fresh = root / "p" / ".tmp.4243.0"
    for path in [*stale, fresh]:
        path.write_bytes(b"half a val")
    an_hour_ago = time.time() - 3600
    for path in stale:
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert cache.get("p", "s") == "committed"
    assert list(cache.entries()) == [CacheEntry("p", "s", "committed")]
    cache.setup()
    assert [path.exists() for path in stale] == [False, False]
    assert fresh.exists()  # young enough to belong to a running writer
    assert cache.tidy(older_than=0) == 1
    assert tree(root) == ["p", "p/s.cache"]


def test_corrupt_entry_is_an_access_error_naming_the_key(cache: Handler, root: Path) -> None:
    (root / "pointer.x").mkdir()
    (root / "pointer.x" / "op.cache").write_bytes(b"\xff\xfe secret")
    with pytest.raises(AccessException, match=r"pk='pointer.x' sk='op'.*not valid UTF-8") as info:
        cache.get("pointer.x", "op")
    assert "secret" not in str(info.value)
    assert "\\xff" not in str(info.value)
    with pytest.raises(AccessException, match="sk='op'"):
        list(cache.entries())
    with pytest.raises(DataFormatException):
        cache.set("pointer.x", "op", "new", constraint="anything")
    cache.set("pointer.x", "op", "repaired")
    assert cache.get("pointer.x", "op") == "repaired"


def test_path_below_a_regular_file_is_an_access_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "cache"
    cache = Handler(Configuration(path=str(path)))
    with pytest.raises(AccessException, match=str(path)):
        cache.setup()
    calls: list[Callable[[], object]] = [
        lambda: cache.get("p", "s"),
        lambda: cache.get("\u20ac" * 300, "s"),
        lambda: cache.set("p", "s", "v"),
        lambda: cache.set("p", "s", "v", not_set=True),
        lambda: cache.set("\u20ac" * 300, "s", "v"),
        lambda: cache.delete("p", "s"),
        lambda: cache.delete("\u20ac" * 300, "s"),
        lambda: list(cache.entries()),
    ]
    for call in calls:
        with pytest.raises(AccessException, match=str(path)):
            call()
    with pytest.raises(AccessException, match="not a directory"):
        Handler(Configuration(path=str(tmp_path / "file"))).setup()


def _unwritable_checks(path: str) -> dict[str, str]:
    cache = Handler(Configuration(path=path))
    outcomes = {}
    for name, call in [
        ("setup", cache.setup),
        ("set", lambda: cache.set("p", "s", "v")),
        ("get", lambda: cache.get("p", "s")),
    ]:
        try:
            call()
            outcomes[name] = "returned"
        except Exception as exc:
            outcomes[name] = f"{type(exc).__name__}: {exc}"
    return outcomes


def test_unwritable_directory_is_an_access_error(tmp_path: Path) -> None:
    """Root may write anywhere, so as root the calls run in a child that drops to nobody."""
    base = Path(tempfile.mkdtemp(prefix="grove-unwritable-"))
    try:
        path = base / "cache"
        path.mkdir()
        if os.geteuid() == 0:
            os.chmod(base, 0o755)
            os.chmod(path, 0o755)
            read_end, write_end = os.pipe()
            child = os.fork()
            if child == 0:  # pragma: no cover - the child reports through the pipe
                try:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    os.write(write_end, json.dumps(_unwritable_checks(str(path))).encode())
                finally:
                    os._exit(0)
            os.close(write_end)
            with os.fdopen(read_end, "rb") as pipe:
                outcomes = json.loads(pipe.read() or b"{}")
            os.waitpid(child, 0)
        else:
            os.chmod(path, 0o555)
            outcomes = _unwritable_checks(str(path))
            os.chmod(path, 0o755)
    finally:
        for directory, _, files in os.walk(base):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        shutil.rmtree(base)
    assert outcomes["setup"].startswith("AccessException") and "not writable" in outcomes["setup"]
    assert outcomes["set"].startswith("AccessException") and str(path) in outcomes["set"]
    assert outcomes["get"].startswith("NotFoundException")  # reading still works


# -- processes ---------------------------------------------------------------------------


CRASH_VALUE_BYTES = 1 << 20


def _version(number: int) -> str:
    header = f"version {number}:"
    return header + chr(ord("a") + number % 26) * (CRASH_VALUE_BYTES - len(header))


def _overwrite_forever(path: str, fsync: bool, first: int, ready: int, ttl: float | None) -> None:
    """The writer: overwrite one entry with ever newer versions, until killed."""
    cache = Handler(Configuration(path=path, fsync=fsync))
    number = first
    while True:
        number += 1
        cache.set("crash", "value", _version(number), ttl=ttl)
        if number == first + 1:
            os.write(ready, b"!")


def _assert_whole_version(value: str) -> int:
    assert value.startswith("version ") and ":" in value, f"torn value of {len(value)} characters"
    number = int(value[len("version ") : value.index(":")])
    whole = value == _version(number)
    assert whole, f"version {number} is torn: {len(value)} of {CRASH_VALUE_BYTES} characters"
    return number


@pytest.mark.slow
def test_writer_killed_at_random_moments_leaves_a_whole_value(root: Path) -> None:
    """SIGKILL a writer of 1 MiB values at random moments; every read is one whole version.

    The writer is forked from this process (no interpreter start-up per round); the parent
    waits until it has written once, lets it run a random while, and kills it. Every third
    writer sets a ttl, so its files are frames: never torn either, expiry included.
    """
    assert threading.active_count() == 1, "fork needs a single-threaded test process"
    kills = 120
    cache = Handler(Configuration(path=str(root)))
    cache.set("crash", "value", _version(0))
    chooser = random.Random(20240501)
    leftovers = 0
    last = 0
    for round_number in range(kills):
        ttl = 3600.0 if round_number % 3 == 0 else None
        ready_read, ready_write = os.pipe()
        writer = os.fork()
        if writer == 0:  # pragma: no cover - the writer runs until it is killed
            try:
                os.close(ready_read)
                _overwrite_forever(str(root), round_number % 2 == 0, last, ready_write, ttl)
            finally:
                os._exit(1)
        os.close(ready_write)
        try:
            readable, _, _ = select.select([ready_read], [], [], 60)
            assert readable and os.read(ready_read, 1) == b"!", "the writer never wrote"
            time.sleep(chooser.uniform(0, 0.01))
            os.kill(writer, signal.SIGKILL)
        finally:
            os.close(ready_read)
            _, status = os.waitpid(writer, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        last = _assert_whole_version(cache.get("crash", "value"))
        assert (cache.expires_at("crash", "value") is None) == (ttl is None)
        assert [entry.pk for entry in cache.entries()] == ["crash"]
        leftovers += sum(1 for path in (root / "crash").iterdir() if path.name.startswith(".tmp."))
    # Some kills landed between a temporary file's creation and its rename.
    assert leftovers > 0
    assert cache.tidy(older_than=0) > 0
    assert tree(root) == ["crash", "crash/value.cache"]
    _assert_whole_version(cache.get("crash", "value"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_no_descriptor_leaks(cache: Handler) -> None:
    long_key = "\u20ac" * 300
    cache.set("p", "s", "v")
    cache.set(long_key, long_key, "v")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        listing = cache.entries()
        assert isinstance(listing, Generator)
        next(listing)
        listing.close()  # abandoned half-way
        list(cache.entries(long_key))
        cache.get(long_key, long_key)
        cache.set(long_key, long_key, "w", constraint="v")
        cache.set(long_key, long_key, "v", constraint="w")
        with pytest.raises(DataFormatException):
            cache.delete(long_key, "absent", constraint="x")
    assert len(os.listdir("/proc/self/fd")) == before


def test_create_storage_makes_the_directory_private(tmp_path: Path) -> None:
    root = tmp_path / "new" / "cache"
    handler = Handler(Configuration(path=str(root)))
    assert handler.create_storage() == f"created local_file cache at {root}"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert handler.create_storage() == f"found local_file cache at {root}"
    handler.set("pk", "sk", "v")


# -- faults injected on real files --------------------------------------------------------

LONG_KEY = "\u20ac" * 300  # escaped, longer than one file name: a chain of directories


@pytest.fixture(params=["openat2", "one directory at a time"])
def resolving(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the handler opens paths: openat2 where the kernel has it, and the walk."""
    if request.param == "openat2":
        if boundary.openat2() is None:
            pytest.skip("openat2 is not available here (Linux 5.6 or later)")
    else:
        monkeypatch.setattr(boundary, "openat2", lambda: None)
    return str(request.param)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the cache, holding what a planted symlink points at."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "x.cache").write_text("outside secret")
    (path / "%C3%A9.cache").write_text("outside secret")
    return path


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """What is below a directory: each path with its mode, inode and content."""
    found = {}
    for relative, status in walk(path):
        content = (path / relative).read_bytes() if stat.S_ISREG(status.st_mode) else b""
        found[relative] = (status.st_mode, status.st_ino, content)
    return found


def assert_refused(call: Callable[[], object], path: Path) -> None:
    with pytest.raises(AccessException) as info:
        call()
    assert f"'{path}'" in str(info.value), str(info.value)


@pytest.mark.parametrize("pk", ["evil", "\u00e9", LONG_KEY])
def test_symlinked_partition_is_never_followed(
    resolving: str, root: Path, outside: Path, pk: str
) -> None:
    """A symlink planted as a partition directory: every call refuses it by name."""
    link = root / encode_components(pk, "")[0]
    link.symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    cache = Handler(Configuration(path=str(root), fsync=False))
    sk = "x" if pk != "\u00e9" else "\u00e9"
    calls: list[Callable[[], object]] = [
        lambda: cache.get(pk, sk),
        lambda: cache.set(pk, "new", "W"),
        lambda: cache.set(pk, sk, "W"),
        lambda: cache.set(pk, "new", "W", not_set=True),
        lambda: cache.set(pk, sk, "W", constraint="outside secret"),
        lambda: cache.delete(pk, sk),
        lambda: cache.delete(pk, sk, constraint="outside secret"),
        lambda: list(cache.entries()),
        lambda: list(cache.entries(pk)),
        lambda: list(cache.entries(prefix=pk[0])),
    ]
    for call in calls:
        assert_refused(call, link)
        assert snapshot(outside) == before
    assert link.is_symlink()


@pytest.mark.parametrize("sk", ["s", "\u00e9"])
def test_symlinked_entry_file_is_never_followed(
    resolving: str, root: Path, outside: Path, sk: str
) -> None:
    """A symlink planted as an entry file is never read through; set/delete replace it."""
    (root / "p").mkdir()
    link = root / "p" / encode_components(sk, SUFFIX)[0]
    link.symlink_to(outside / "x.cache")
    before = snapshot(outside)
    cache = Handler(Configuration(path=str(root), fsync=False))
    calls: list[Callable[[], object]] = [
        lambda: cache.get("p", sk),
        lambda: cache.set("p", sk, "W", not_set=True),
        lambda: cache.set("p", sk, "W", constraint="outside secret"),
        lambda: cache.delete("p", sk, constraint="outside secret"),
        lambda: list(cache.entries()),
        lambda: list(cache.entries("p")),
    ]
    for call in calls:
        assert_refused(call, link)
        assert snapshot(outside) == before
    cache.set("p", sk, "mine")  # replaces the link, not its target
    assert not link.is_symlink() and link.read_text() == "mine"
    link.unlink()
    link.symlink_to(outside / "x.cache")
    cache.delete("p", sk)  # removes the link, not its target
    assert not link.exists() and not link.is_symlink()
    assert snapshot(outside) == before


def test_symlink_inside_a_chain_is_never_followed(
    resolving: str, root: Path, outside: Path
) -> None:
    cache = Handler(Configuration(path=str(root), fsync=False))
    cache.set("p", LONG_KEY, "v")
    components = encode_components(LONG_KEY, SUFFIX)
    link = root / "p" / components[0]
    shutil.rmtree(link)
    link.symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    for call in [
        lambda: cache.get("p", LONG_KEY),
        lambda: cache.set("p", LONG_KEY, "W"),
        lambda: cache.delete("p", LONG_KEY),
        lambda: list(cache.entries("p")),
    ]:
        assert_refused(call, link)
    assert snapshot(outside) == before


def test_symlinked_lock_directory_of_earlier_releases_is_never_used(
    resolving: str, root: Path, outside: Path
) -> None:
    """Earlier releases kept lock files in <path>/.locks; one planted as a link is unused."""
    (root / ".locks").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    cache = Handler(Configuration(path=str(root), fsync=False))
    cache.setup()
    for pk, sk in [("p", "s"), ("\u00e9", "\u00e9"), (LONG_KEY, LONG_KEY)]:
        cache.set(pk, sk, "1")
        cache.set(pk, sk, "2", constraint="1")
        cache.set(pk, "n", "x", not_set=True)
        assert cache.get(pk, sk) == "2"
        cache.delete(pk, sk, constraint="2")
        cache.delete(pk, "n")
    assert list(cache.entries()) == []
    assert snapshot(outside) == before


def test_files_and_directories_where_the_other_belongs_are_named(
    resolving: str, root: Path
) -> None:
    (root / "file").write_text("a file where a partition directory belongs")
    (root / "p").mkdir()
    (root / "p" / "s.cache").mkdir()
    cache = Handler(Configuration(path=str(root), fsync=False))
    below_a_file: list[Callable[[], object]] = [
        lambda: cache.get("file", "s"),
        lambda: cache.set("file", "s", "v"),
        lambda: cache.set("file", "s", "v", not_set=True),
        lambda: cache.delete("file", "s"),
    ]
    for call in below_a_file:
        assert_refused(call, root / "file")
    on_a_directory: list[Callable[[], object]] = [
        lambda: cache.get("p", "s"),
        lambda: cache.set("p", "s", "v", constraint="x"),
        lambda: cache.set("p", "s", "v"),
    ]
    for call in on_a_directory:
        assert_refused(call, root / "p" / "s.cache")
    assert list(cache.entries("p")) == []  # a directory is not an entry; listing skips it
    assert (root / "file").read_text() == "a file where a partition directory belongs"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_fifo_planted_as_an_entry_does_not_block(resolving: str, root: Path) -> None:
    (root / "p").mkdir()
    os.mkfifo(root / "p" / "s.cache")
    cache = Handler(Configuration(path=str(root), fsync=False))
    assert_refused(lambda: cache.get("p", "s"), root / "p" / "s.cache")
    assert_refused(lambda: cache.delete("p", "s", constraint="x"), root / "p" / "s.cache")


def _calls_that_create_nothing(cache: Handler) -> list[Callable[[], object]]:
    return [
        lambda: cache.get("p", "s"),
        lambda: cache.set("p", "s", "v", constraint="old"),
        lambda: cache.delete("p", "s"),
        lambda: cache.delete("p", "s", constraint="old"),
        lambda: list(cache.entries()),
    ]


def test_missing_root_is_created_by_setup_and_the_first_write(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        for first in ("setup", "set", "not_set"):
            top = tmp_path / first
            path = top / "parent" / "cache"
            cache = Handler(Configuration(path=str(path)))
            for refused in _calls_that_create_nothing(cache):
                assert_refused(refused, path)
            assert not top.exists()  # reads, refusals and deletes create nothing
            if first == "setup":
                cache.setup()
            else:
                cache.set("p", "s", "v", not_set=first == "not_set")
                assert cache.get("p", "s") == "v"
            for made in (top, top / "parent", path):
                assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # a parent that existed is as was


@pytest.mark.parametrize("key", [("p", "s"), (LONG_KEY, LONG_KEY)])
def test_removed_root_is_never_taken_for_an_empty_store(root: Path, key: tuple[str, str]) -> None:
    pk, sk = key
    cache = Handler(Configuration(path=str(root), fsync=False))
    cache.set(pk, sk, "v")
    cache.set(pk, sk, "w", constraint="v")  # every path of the key has been used
    shutil.rmtree(root)
    for call in [
        lambda: cache.get(pk, sk),
        lambda: cache.set(pk, sk, "x", constraint="w"),
        lambda: cache.delete(pk, sk, constraint="w"),
        lambda: cache.delete(pk, sk),
        lambda: list(cache.entries()),
        lambda: list(cache.entries(pk)),
    ]:
        assert_refused(call, root)
        assert not root.exists()
    cache.set(pk, sk, "x", not_set=True)  # a write makes the store again, as a first one
    assert cache.get(pk, sk) == "x"


def _increment_with_a_pause(
    path: str, pk: str, sk: str, count: int, paused: Any, resume: Any, results: Any
) -> None:
    cache = Handler(Configuration(path=path, fsync=False))
    increment_until(cache, pk, sk, count // 2)
    paused.set()
    resume.wait()
    increment_until(cache, pk, sk, count - count // 2)
    results.put("done")


def _increment_when_told(
    path: str, pk: str, sk: str, count: int, ready: Any, resume: Any, results: Any
) -> None:
    cache = Handler(Configuration(path=path, fsync=False))
    ready.set()
    resume.wait()
    increment_until(cache, pk, sk, count)
    results.put("done")


@pytest.mark.parametrize("replaced", ["the directory", "its hidden directories"])
def test_store_replaced_mid_run_loses_no_update(root: Path, replaced: str) -> None:
    """One process works, the store is replaced under it, a new process joins: no loss.

    The directory is copied and the copy put in its place (new inodes, same entries), or
    the hidden directories (earlier releases' lock files) are removed.
    """
    increments = 1_500
    cache = Handler(Configuration(path=str(root), fsync=False))
    cache.set("counter", "n", "0")
    context = multiprocessing.get_context("spawn")
    paused, ready, resume = context.Event(), context.Event(), context.Event()
    results = context.Queue()
    first = context.Process(
        target=_increment_with_a_pause,
        args=(str(root), "counter", "n", increments, paused, resume, results),
    )
    second = context.Process(
        target=_increment_when_told,
        args=(str(root), "counter", "n", increments, ready, resume, results),
    )
    first.start()
    try:
        assert paused.wait(120), "the first process never got half-way"
        if replaced == "the directory":
            shutil.copytree(root, root.with_name("copy"), symlinks=True)
            shutil.rmtree(root)
            root.with_name("copy").rename(root)
        else:
            for hidden in root.glob(".*"):
                shutil.rmtree(hidden)
        second.start()
        assert ready.wait(120), "the second process never started"
        resume.set()  # both increment at once from here
        assert [results.get(timeout=300) for _ in range(2)] == ["done", "done"]
    finally:
        for process in (first, second):
            if process.pid is not None:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
                    process.join()
    assert [first.exitcode, second.exitcode] == [0, 0]
    assert cache.get("counter", "n") == str(2 * increments)


def _tidy_until(path: str, stop: Any, results: Any) -> None:
    cache = Handler(Configuration(path=path, fsync=False))
    rounds = failures = 0
    while not stop.is_set():
        try:
            cache.setup()
        except AccessException:
            failures += 1
        rounds += 1
    results.put((rounds, failures))


def _churn(cache: Handler, key: str, value: str) -> list[str]:
    """Make, change and remove an entry with every kind of call; return the failures."""
    failures = []
    calls: list[Callable[[], None]] = [
        lambda: cache.set(key, key, value),
        lambda: cache.set(key, key, "x", constraint=value),
        lambda: cache.delete(key, key),
        lambda: cache.set(key, key, "y", not_set=True),
        lambda: cache.delete(key, key, constraint="y"),
    ]
    for call in calls:
        try:
            call()
        except (AccessException, DataFormatException) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
    return failures


def test_tidy_beside_writers_of_long_keys(root: Path) -> None:
    """setup() tidies empty directories while a writer makes and empties a long key's.

    Before each round the directories are made to look old, so that the tidier may remove
    each one that it finds empty, while the writer opens it, makes a child in it, or
    writes a file in it.
    """
    cache = Handler(Configuration(path=str(root), fsync=False))
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    tidier = context.Process(target=_tidy_until, args=(str(root), stop, results))
    tidier.start()
    failures: list[str] = []
    try:
        for number in range(2_000):
            age(root)  # the tidier may remove any directory that the writer finds empty
            failures.extend(_churn(cache, LONG_KEY, str(number)))
    finally:
        stop.set()
        rounds, tidy_failures = results.get(timeout=120)
        tidier.join(timeout=30)
    assert rounds > 0 and tidy_failures == 0
    assert failures == [], f"{len(failures)} of 10,000 calls failed, first: {failures[0]}"
    assert not [path for path in tree(root) if "/.tmp." in path]  # none left behind
    age(root)
    cache.setup()
    assert tree(root) == []  # every directory emptied and tidied


def _hold_lock(root: Path, pk: str) -> int:
    """Take the lock that writes of a plain key take: flock on its directory."""
    descriptor = os.open(root / pk, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def _process_state(pid: int) -> str:
    """The state letter of a process (R running, S sleeping, ...), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")
def test_write_interrupted_while_waiting_for_the_lock_leaves_no_temporary(root: Path) -> None:
    """SIGINT reaches a writer that wrote its 1 MiB temporary file and waits for the lock."""
    assert threading.active_count() == 1, "fork needs a single-threaded test process"
    cache = Handler(Configuration(path=str(root), fsync=False))
    cache.set("p", "s", "old")
    holder = _hold_lock(root, "p")
    try:
        writer = os.fork()
        if writer == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                cache.set("p", "s", "n" * CRASH_VALUE_BYTES)
                code = 2
            except KeyboardInterrupt:
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 120
        while not (
            any(
                path.name.startswith(".tmp.") and path.stat().st_size == CRASH_VALUE_BYTES
                for path in (root / "p").iterdir()
            )
            and _process_state(writer) == "S"
        ):
            assert time.monotonic() < deadline, "the writer never waited for the lock"
            time.sleep(0.01)
        os.kill(writer, signal.SIGINT)
        _, status = os.waitpid(writer, 0)
    finally:
        os.close(holder)
    assert os.waitstatus_to_exitcode(status) == 0, "the writer did not stop on SIGINT"
    assert os.listdir(root / "p") == ["s.cache"]  # its temporary file is gone
    assert cache.get("p", "s") == "old"


# -- expiry (issue 13) -------------------------------------------------------------------

_FRAME_OF_ANOTHER = encode_frame(b"another", 1_000_000.0).decode("utf-8")
HOSTILE_VALUES = [
    "",
    "\x00",
    "\x00\x00\x00",
    MAGIC.decode("utf-8"),
    MAGIC.decode("utf-8")[:-1],
    MAGIC.decode("utf-8") + "never\n",
    MAGIC.decode("utf-8") + "never\nvalue",
    MAGIC.decode("utf-8") + "1e300\nvalue",
    MAGIC.decode("utf-8") + "garbage",
    _FRAME_OF_ANOTHER,
    _FRAME_OF_ANOTHER * 2,
    "plain " + _FRAME_OF_ANOTHER,
    "caf\u00e9\r\n\x00",
]


def _file_of(root: Path, pk: str, sk: str) -> bytes:
    return (root / pk / f"{sk}{SUFFIX}").read_bytes()


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=repr)
@pytest.mark.parametrize("ttl", [None, 60.0], ids=["plain", "ttl"])
def test_hostile_values_round_trip_and_are_never_metadata(
    root: Path, value: str, ttl: float | None
) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    cache = Handler(Configuration(path=str(root), fsync=False), clock=clock)
    cache.set("pk", "sk", value, ttl=ttl)
    assert cache.get("pk", "sk") == value
    assert list(cache.entries("pk")) == [CacheEntry("pk", "sk", value)]
    moment = cache.expires_at("pk", "sk")
    assert (moment and moment.timestamp()) == (None if ttl is None else 1_700_000_060.0)
    data = _file_of(root, "pk", "sk")
    if ttl is None and not value.encode().startswith(MAGIC):
        assert data == value.encode()  # the upstream layout, byte for byte
    else:
        assert data.startswith(MAGIC) and data.endswith(value.encode())
    cache.set("pk", "sk", value + "!", constraint=value, ttl=ttl)
    cache.set("pk", "sk", value, constraint=value + "!")
    with pytest.raises(DataFormatException):
        cache.set("pk", "sk", "x", not_set=True)
    clock.advance(3600)  # whatever the value holds, only a real frame expires
    assert cache.get("pk", "sk") == value
    assert cache.sweep_expired() == 0
    cache.delete("pk", "sk", constraint=value)
    with pytest.raises(NotFoundException):
        cache.get("pk", "sk")


def test_an_expiring_entry_rewritten_plain_is_the_upstream_file_again(
    cache: Handler, root: Path
) -> None:
    cache.set("pointer.okta", "all", "2024-05-01T00:00:00Z", ttl=60)
    assert _file_of(root, "pointer.okta", "all").startswith(MAGIC)
    cache.set("pointer.okta", "all", "2024-05-02T00:00:00Z")
    assert _file_of(root, "pointer.okta", "all") == b"2024-05-02T00:00:00Z"
    assert tree(root) == ["pointer.okta", "pointer.okta/all.cache"]


def test_an_upstream_file_starting_with_the_magic_is_read_as_a_frame(
    cache: Handler, root: Path
) -> None:
    """The documented choice: the magic decides; a header that does not parse is corrupt.

    Upstream writes values raw, so a value of its own starting with NUL and the magic
    line would be read as a frame: a readable one as the value after its header, any
    other as a corrupt entry (never its bytes in a message), which a plain set repairs.
    """
    (root / "pk").mkdir()
    (root / "pk" / "framed.cache").write_bytes(MAGIC + b"never\nafter the header")
    (root / "pk" / "broken.cache").write_bytes(MAGIC + b"secret token without a header end")
    assert cache.get("pk", "framed") == "after the header"
    with pytest.raises(AccessException, match=r"sk='broken'.*frame") as info:
        cache.get("pk", "broken")
    assert "secret" not in str(info.value)
    with pytest.raises(AccessException, match="sk='broken'"):
        cache.expires_at("pk", "broken")
    with pytest.raises(AccessException, match="sk='broken'"):
        list(cache.entries("pk"))
    broken = (MAGIC + b"secret token without a header end").decode()
    with pytest.raises(DataFormatException):
        cache.set("pk", "broken", "new", constraint=broken)
    with pytest.raises(DataFormatException):
        cache.set("pk", "broken", "new", not_set=True)
    assert cache.sweep_expired() == 0
    cache.set("pk", "broken", "repaired")
    assert cache.get("pk", "broken") == "repaired"


def test_expiry_is_the_callers_clock_in_epoch_seconds(root: Path) -> None:
    early = Handler(Configuration(path=str(root)), clock=ManualClock(start=1_000_000.0))
    late = Handler(Configuration(path=str(root)), clock=ManualClock(start=1_000_100.0))
    early.set("pk", "sk", "v", ttl=60)
    assert _file_of(root, "pk", "sk") == MAGIC + b"1000060.0\nv"
    assert early.get("pk", "sk") == "v"  # each caller decides by its own clock
    with pytest.raises(NotFoundException):
        late.get("pk", "sk")
    assert early.sweep_expired() == 0
    assert late.sweep_expired() == 1
    assert tree(root) == ["pk"]


def test_setup_and_tidy_remove_expired_files(root: Path) -> None:
    clock = ManualClock()
    cache = Handler(Configuration(path=str(root), fsync=False), clock=clock)
    long_pk = "\u20ac" * 300
    cache.set("pk", "gone", "v", ttl=10)
    cache.set(long_pk, "gone", "v", ttl=10)
    cache.set("pk", "kept", "v", ttl=1000)
    cache.set("pk", "plain", "v")
    clock.advance(20)
    cache.setup()
    assert sorted(path for path in tree(root) if path.endswith(SUFFIX)) == [
        "pk/kept.cache",
        "pk/plain.cache",
    ]
    clock.advance(1000)
    assert cache.tidy() == 1
    assert sorted(cache.entries()) == [CacheEntry("pk", "plain", "v")]


def test_sweep_keeps_a_file_written_again_before_it_took_the_lock(root: Path) -> None:
    """The sweep reads the file again under the lock: a writer that got there first wins."""
    clock = ManualClock()
    rewritten: list[int] = []

    def rewrite_then_lock(descriptor: Any, operation: int) -> None:
        if operation == fcntl.LOCK_EX and not rewritten:
            # Another process renames a plain value over the entry just before the lock.
            (root / "pk" / ".tmp.other").write_bytes(b"w")
            os.rename(root / "pk" / ".tmp.other", root / "pk" / f"a{SUFFIX}")
            rewritten.append(descriptor)
        fcntl.flock(descriptor, operation)

    class Racing(Handler):
        _flock = staticmethod(rewrite_then_lock)

    cache = Racing(Configuration(path=str(root), fsync=False), clock=clock)
    cache.set("pk", "a", "v", ttl=10)
    clock.advance(20)
    rewritten.clear()
    assert cache.sweep_expired() == 0
    assert rewritten
    assert cache.get("pk", "a") == "w"
    assert cache.expires_at("pk", "a") is None
