"""redis: the conformance suite on the machine's Redis, plus what only Redis has.

The suite and the layout tests run on the shared server (``REDIS_URL``, default
``redis://127.0.0.1:6379/0``), each test under a key prefix of its own whose keys it
removes afterwards; without a server they skip (and fail under ``CI=true``). Tests that
kill, restart, pause or reconfigure a server start a private ``redis-server`` on a free
loopback port and stop it by its PID.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydantic
import pytest
import redis
from redis.crc import key_slot

import grove.caches
from grove.caches import BaseCache, CacheEntry
from grove.caches.redis import (
    Configuration,
    EvictionWarning,
    Handler,
    entry_key,
    mask_url,
    parse_entry_key,
)
from grove.caches.testing import (
    ExpiryConformance,
    LeaseConformance,
    ListingConformance,
    ServerClock,
    SharedCacheConformance,
    SharedExpiryConformance,
)
from grove.exceptions import (
    AccessException,
    ConfigurationException,
    DataFormatException,
    NotFoundException,
)
from tests.redis_server import (
    RedisServer,
    fresh_prefix,
    remove_prefix,
    require_shared_server,
)

PASSWORD = "s3cret-Pa55"


def make_handler(url: str, prefix: str, **settings: Any) -> Handler:
    """A handler on ``url`` under ``prefix``; module level, so it pickles for processes."""
    return Handler(Configuration(url=pydantic.SecretStr(url), prefix=prefix, **settings))


@pytest.fixture(scope="module")
def shared_url() -> str:
    return require_shared_server()


@pytest.fixture
def prefix(shared_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the shared server, emptied afterwards."""
    name = fresh_prefix()
    yield name
    remove_prefix(shared_url, name)


@pytest.fixture
def handler(shared_url: str, prefix: str) -> Iterator[Handler]:
    cache = make_handler(shared_url, prefix)
    yield cache
    cache.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server without persistence, stopped after the test."""
    own = RedisServer(tmp_path)
    own.start()
    yield own
    own.stop(kill=True)


def raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


class TestRedisConformance(
    SharedCacheConformance, ListingConformance, ExpiryConformance, SharedExpiryConformance
):
    # The server's clock decides: the eight expiries of the section sleep 8 x 0.18 s. The
    # ttl leaves 150 ms for the calls a test makes before its entry must have expired.
    expiry_ttl = 0.15
    expiry_wait = 0.18
    sweep_counts_expired = False

    @pytest.fixture
    def clock(self) -> ServerClock:
        return ServerClock()

    @pytest.fixture
    def cache(self, handler: Handler) -> BaseCache:
        return handler

    @pytest.fixture
    def cache_factory(self, shared_url: str, prefix: str) -> Callable[[], BaseCache]:
        return functools.partial(make_handler, shared_url, prefix)


class TestRedisLease(LeaseConformance):
    @pytest.fixture
    def cache(self, handler: Handler) -> BaseCache:
        return handler

    @pytest.fixture
    def cache_factory(self, shared_url: str, prefix: str) -> Callable[[], BaseCache]:
        return functools.partial(make_handler, shared_url, prefix)


# -- configuration ---------------------------------------------------------------------


def test_configuration_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in Configuration.model_fields:
        monkeypatch.delenv(Configuration.env_name(field), raising=False)
    config = Configuration.from_environment()
    assert config.url.get_secret_value() == "redis://localhost:6379/0"
    assert config.prefix == "grove"
    assert (config.connect_timeout, config.socket_timeout) == (5.0, 10.0)
    assert config.pool_size >= 50
    assert config.retries == 3


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("grove_cache_redis_url", f"rediss://grove:{PASSWORD}@cache.example:6380/2")
    monkeypatch.setenv("GROVE_CACHE_REDIS_PREFIX", "collectors")
    monkeypatch.setenv("GROVE_CACHE_REDIS_CONNECT_TIMEOUT", "1.5")
    monkeypatch.setenv("GROVE_CACHE_REDIS_SOCKET_TIMEOUT", "2.5")
    monkeypatch.setenv("GROVE_CACHE_REDIS_POOL_SIZE", "7")
    monkeypatch.setenv("GROVE_CACHE_REDIS_RETRIES", "0")
    cache = Handler()
    config = cache.config
    assert config.prefix == "collectors"
    assert (config.connect_timeout, config.socket_timeout) == (1.5, 2.5)
    assert (config.pool_size, config.retries) == (7, 0)
    assert cache.pool.max_connections == 7
    assert (
        cache.location() == "redis cache 'collectors' at rediss://grove:****@cache.example:6380/2"
    )
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GROVE_CACHE_REDIS_URL", f"http://user:{PASSWORD}@127.0.0.1:6379"),
        ("GROVE_CACHE_REDIS_URL", "127.0.0.1:6379"),
        ("GROVE_CACHE_REDIS_PREFIX", "a{b"),
        ("GROVE_CACHE_REDIS_PREFIX", "a}"),
        ("GROVE_CACHE_REDIS_PREFIX", ""),
        ("GROVE_CACHE_REDIS_POOL_SIZE", "0"),
        ("GROVE_CACHE_REDIS_RETRIES", "-1"),
        ("GROVE_CACHE_REDIS_SOCKET_TIMEOUT", "0"),
    ],
)
def test_invalid_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationException, match=variable) as caught:
        Handler()
    assert PASSWORD not in str(caught.value)


def test_unparsable_url_is_a_configuration_error_without_the_password() -> None:
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_REDIS_URL") as caught:
        make_handler(f"redis://:{PASSWORD}@127.0.0.1:notaport/0", "grove")
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://:{PASSWORD}@h:1/0", "redis://:****@h:1/0"),
        (f"rediss://user:{PASSWORD}@h/3", "rediss://user:****@h/3"),
        ("redis://user@h/3", "redis://user@h/3"),
        (
            f"unix:///run/redis.sock?db=1&password={PASSWORD}",
            "unix:///run/redis.sock?db=1&password=****",
        ),
        (f"redis://:{PASSWORD}@[::1]:6379", "redis://:****@[::1]:6379"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_load_builds_a_ready_handler(
    monkeypatch: pytest.MonkeyPatch, shared_url: str, prefix: str
) -> None:
    monkeypatch.setenv("GROVE_CACHE_HANDLER", "redis")
    monkeypatch.setenv("GROVE_CACHE_REDIS_URL", shared_url)
    monkeypatch.setenv("GROVE_CACHE_REDIS_PREFIX", prefix)
    cache = grove.caches.load()
    assert isinstance(cache, Handler)
    cache.set("pk", "sk", "v")
    assert grove.caches.load("redis", settings={"prefix": prefix}).get("pk", "sk") == "v"


def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "grove.caches.redis")
    with pytest.raises(ImportError, match=r"pip install 'grove-caches\[redis\]'"):
        importlib.import_module("grove.caches.redis")
    with pytest.raises(ConfigurationException, match=r"pip install 'grove-caches\[redis\]'"):
        grove.caches.load("redis")


# -- layout ----------------------------------------------------------------------------


def test_entries_are_strings_under_the_documented_keys(
    handler: Handler, shared_url: str, prefix: str
) -> None:
    handler.set("pointer.okta.1f2e", "all", "2024-05-01T00:00:00Z")
    handler.set("100%}{", "s}k%", "odd")
    with raw(shared_url) as client:
        names = sorted(client.scan_iter(match=f"{prefix}:*"))
        assert names == sorted(
            [
                f"{prefix}:{{pointer.okta.1f2e}}all".encode(),
                f"{prefix}:{{100%25%7D{{}}s}}k%".encode(),
            ]
        )
        assert client.type(names[0]) == b"string"
        assert client.get(f"{prefix}:{{pointer.okta.1f2e}}all") == b"2024-05-01T00:00:00Z"
        assert client.ttl(f"{prefix}:{{pointer.okta.1f2e}}all") == -1


@pytest.mark.parametrize(
    ("pk", "sk"),
    [
        ("a", "b"),
        ("a}b", "c"),
        ("a", "}b"),
        ("%7D", "x"),
        ("%", "%"),
        ("nul\x00", "\x00"),
        ("{", "{}"),
    ],
)
def test_entry_key_round_trips(pk: str, sk: str) -> None:
    key = entry_key("grove", pk, sk)
    assert parse_entry_key("grove", key.encode()) == (pk, sk)
    assert parse_entry_key("grove:x", key.encode()) is None


@pytest.mark.parametrize(
    "name",
    [
        b"grove:{}sk",
        b"grove:{pk}",
        b"grove:{pk",
        b"grove:pk}sk",
        b"grove:{a%41}sk",
        b"grove:{\xff}sk",
        b"other:{pk}sk",
    ],
)
def test_names_this_layout_cannot_produce_are_not_entries(name: bytes) -> None:
    assert parse_entry_key("grove", name) is None


def test_every_key_of_a_partition_shares_one_hash_slot() -> None:
    for pk in ("pointer.okta.1f2e", "a}b{c", "\U0001f332", "x" * 1024):
        slots = {key_slot(entry_key("grove", pk, sk).encode()) for sk in ("a", "b", "}", "{x}")}
        assert slots == {key_slot(pk.replace("%", "%25").replace("}", "%7D").encode())}


def test_foreign_keys_under_the_prefix_are_skipped(
    handler: Handler, shared_url: str, prefix: str
) -> None:
    handler.set("pk", "sk", "mine")
    with raw(shared_url) as client:
        for name in (
            f"{prefix}:{{pk",
            f"{prefix}:{{}}sk",
            f"{prefix}:{{pk}}",
            f"{prefix}:{{p%41}}sk",
            f"{prefix}:plain",
        ):
            client.set(name, "foreign")
        client.set(f"{prefix}:{{pk}}".encode() + b"\xff", "foreign")
    assert list(handler.entries()) == [CacheEntry("pk", "sk", "mine")]
    assert list(handler.entries("pk")) == [CacheEntry("pk", "sk", "mine")]
    assert list(handler.entries(prefix="p")) == [CacheEntry("pk", "sk", "mine")]


def test_prefixes_never_see_each_others_entries(shared_url: str, prefix: str) -> None:
    neighbours = [prefix, f"{prefix}:x", f"{prefix}x", f"{prefix}*", f"{prefix}[a]?\\"]
    handlers = [make_handler(shared_url, name) for name in neighbours]
    try:
        for name, cache in zip(neighbours, handlers, strict=True):
            cache.set("pk", "sk", name)
            cache.set("pk*", "sk", name)
        for name, cache in zip(neighbours, handlers, strict=True):
            assert sorted(cache.entries()) == [
                CacheEntry("pk", "sk", name),
                CacheEntry("pk*", "sk", name),
            ]
            assert list(cache.entries("pk")) == [CacheEntry("pk", "sk", name)]
            assert sorted(cache.entries(prefix="pk")) == sorted(cache.entries())
            assert cache.get("pk", "sk") == name
    finally:
        for name in neighbours[1:]:
            remove_prefix(shared_url, name)


def test_partition_listing_matches_only_that_partition(handler: Handler) -> None:
    for pk in ("p", "p}", "p%", "p%7D", "p*", "p?", "p[", "p\\", "q", "pp"):
        handler.set(pk, "sk", pk)
    for pk in ("p", "p}", "p%", "p%7D", "p*", "p?", "p[", "p\\"):
        assert list(handler.entries(pk)) == [CacheEntry(pk, "sk", pk)]
    assert sorted(entry.pk for entry in handler.entries(prefix="p%")) == ["p%", "p%7D"]
    assert sorted(entry.pk for entry in handler.entries(prefix="p}")) == ["p}"]


def test_listing_yields_each_entry_once_over_many_pages(
    handler: Handler, shared_url: str, prefix: str
) -> None:
    with raw(shared_url) as client, client.pipeline(transaction=False) as pipe:
        for index in range(3000):
            pipe.set(entry_key(prefix, f"pk{index % 7}", f"sk{index}"), str(index))
        pipe.execute()
    listed = list(handler.entries())
    assert len(listed) == 3000
    assert len(set(listed)) == 3000
    assert sorted(int(entry.value) for entry in listed) == list(range(3000))
    assert len(list(handler.entries("pk3"))) == len(range(3, 3000, 7))


def test_listing_while_entries_change(handler: Handler, shared_url: str, prefix: str) -> None:
    with raw(shared_url) as client, client.pipeline(transaction=False) as pipe:
        for index in range(2000):
            pipe.set(entry_key(prefix, "stable", f"sk{index}"), "v")
        pipe.execute()
    stop = threading.Event()

    def churn() -> None:
        index = 0
        while not stop.is_set():
            handler.set("churn", f"sk{index % 500}", str(index))
            handler.delete("churn", f"sk{(index + 250) % 500}")
            index += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        listed = [entry for entry in handler.entries() if entry.pk == "stable"]
    finally:
        stop.set()
        worker.join()
    assert len(listed) == 2000
    assert len({entry.sk for entry in listed}) == 2000


def test_values_beyond_4_mib(handler: Handler) -> None:
    value = ("\u00e9t\u00e9 \U0001f332 " * (16 * 1024 * 1024 // 14))[: 8 * 1024 * 1024]
    handler.set("big", "value", value)
    assert handler.get("big", "value") == value
    handler.set("big", "value", "small", constraint=value)
    assert handler.get("big", "value") == "small"


def test_a_value_that_is_not_utf8_is_an_access_error_naming_the_key(
    handler: Handler, shared_url: str, prefix: str
) -> None:
    with raw(shared_url) as client:
        client.set(entry_key(prefix, "pk", "sk"), b"\xff\xfe")
    with pytest.raises(AccessException, match=r"get of pk='pk' sk='sk'"):
        handler.get("pk", "sk")
    handler.set("pk", "sk", "repaired")
    assert handler.get("pk", "sk") == "repaired"


def test_a_key_of_another_type_is_an_access_error(
    handler: Handler, shared_url: str, prefix: str
) -> None:
    with raw(shared_url) as client:
        client.hset(entry_key(prefix, "pk", "sk"), "field", "value")
    with pytest.raises(AccessException, match="WRONGTYPE"):
        handler.get("pk", "sk")
    with pytest.raises(AccessException, match="WRONGTYPE"):
        handler.set("pk", "sk", "v", constraint="x")


def test_ttl_is_the_servers_and_plain_set_clears_it(
    handler: Handler, shared_url: str, prefix: str
) -> None:
    handler.set("lock", "sk", "mine", not_set=True, ttl=60)
    with raw(shared_url) as client:
        assert 59_000 < client.pttl(entry_key(prefix, "lock", "sk")) <= 60_000
        server_now = client.time()
    moment = handler.expires_at("lock", "sk")
    assert moment is not None
    assert abs(moment.timestamp() - (server_now[0] + server_now[1] / 1e6 + 60)) < 5
    handler.set("lock", "sk", "theirs", constraint="mine", ttl=0.0001)  # 1 ms at least
    handler.set("other", "sk", "plain", ttl=60)
    handler.set("other", "sk", "plain")
    with raw(shared_url) as client:
        assert client.pttl(entry_key(prefix, "other", "sk")) == -1
    assert handler.sweep_expired() == 0


# -- round trips -----------------------------------------------------------------------


def test_each_call_is_one_round_trip(server: RedisServer) -> None:
    cache = make_handler(server.url, "trips")
    cache.setup()
    server.log_every_command()
    calls: list[tuple[str, Callable[[], object], list[str]]] = [
        ("get miss", lambda: cache.get("p", "s"), ["GET"]),
        ("set not_set", lambda: cache.set("p", "s", "1", not_set=True), ["SET"]),
        ("set not_set refused", lambda: cache.set("p", "s", "1", not_set=True), ["SET"]),
        ("get hit", lambda: cache.get("p", "s"), ["GET"]),
        ("set", lambda: cache.set("p", "s", "2"), ["SET"]),
        # The first script call after a start finds no script cached: EVALSHA, then EVAL.
        (
            "set constraint, first",
            lambda: cache.set("p", "s", "3", constraint="2"),
            ["EVALSHA", "EVAL"],
        ),
        ("set constraint", lambda: cache.set("p", "s", "4", constraint="3"), ["EVALSHA"]),
        ("set constraint refused", lambda: cache.set("p", "s", "5", constraint="3"), ["EVALSHA"]),
        ("set ttl", lambda: cache.set("p", "s", "5", ttl=60), ["SET"]),
        (
            "set constraint ttl",
            lambda: cache.set("p", "s", "6", constraint="5", ttl=60),
            ["EVALSHA"],
        ),
        (
            "delete constraint, first",
            lambda: cache.delete("p", "s", constraint="6"),
            ["EVALSHA", "EVAL"],
        ),
        ("delete constraint refused", lambda: cache.delete("p", "s", constraint="6"), ["EVALSHA"]),
        ("delete", lambda: cache.delete("p", "s"), ["DEL"]),
    ]
    for name, call, expected in calls:
        before = len(server.grove_commands())
        with contextlib.suppress(NotFoundException, DataFormatException):
            call()
        assert server.grove_commands()[before:] == expected, name


def test_scripts_are_sent_again_after_the_server_forgets_them(server: RedisServer) -> None:
    cache = make_handler(server.url, "flush")
    cache.set("p", "s", "1")
    cache.set("p", "s", "2", constraint="1")
    with server.admin() as client:
        client.script_flush()
    server.log_every_command()
    cache.set("p", "s", "3", constraint="2")
    cache.set("p", "s", "4", constraint="3")
    assert server.grove_commands() == ["EVALSHA", "EVAL", "EVALSHA"]
    assert cache.get("p", "s") == "4"


# -- connections and faults ------------------------------------------------------------


def _our_client_ids(server: RedisServer) -> list[int]:
    with server.admin() as client:
        return [int(c["id"]) for c in client.client_list() if c["name"] == "grove-caches"]


def test_threads_share_a_small_pool_without_exhausting_it(server: RedisServer) -> None:
    cache = make_handler(server.url, "pool", pool_size=4)
    cache.set("p", "counter", "0")

    def work(index: int) -> None:
        for step in range(30):
            cache.set("p", f"t{index}", str(step))
            assert cache.get("p", f"t{index}") == str(step)

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(work, range(50)))
    assert 1 <= len(_our_client_ids(server)) <= 4


def test_killed_connections_are_replaced_before_they_fail_a_call(server: RedisServer) -> None:
    cache = make_handler(server.url, "kill", retries=0)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cache.set("p", f"s{i}", "v"), range(64)))
    killed = _our_client_ids(server)
    assert killed
    with server.admin() as client:
        for client_id in killed:
            client.client_kill_filter(_id=client_id)
    # With no retries at all, every call still succeeds: the pool finds each killed
    # connection closed when it hands it out, and opens a new one.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cache.set("p", f"s{i}", "w", constraint="v"), range(64)))
    assert sorted(cache.entries("p")) == sorted(CacheEntry("p", f"s{i}", "w") for i in range(64))
    assert not set(killed) & set(_our_client_ids(server))


def test_connections_killed_mid_run_lose_no_acknowledged_increment(server: RedisServer) -> None:
    cache = make_handler(server.url, "kill", retries=5)
    cache.set("p", "counter", "0")
    acknowledged = Counter[str]()
    stop = threading.Event()

    def increment(worker: int) -> None:
        for _ in range(150):
            while True:
                try:
                    current = cache.get("p", "counter")
                    cache.set("p", "counter", str(int(current) + 1), constraint=current)
                except DataFormatException:
                    continue
                except AccessException as exc:
                    # Only a conditional write whose answer was lost may fail here.
                    assert "may or may not have been applied" in str(exc), exc
                    acknowledged["unknown"] += 1
                    continue
                acknowledged["done"] += 1
                break

    def killer() -> None:
        with server.admin() as client:
            while not stop.is_set():
                for client_id in _our_client_ids(server):
                    client.client_kill_filter(_id=client_id)
                acknowledged["kill rounds"] += 1
                time.sleep(0.01)

    killing = threading.Thread(target=killer)
    killing.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(increment, range(8)))
    finally:
        stop.set()
        killing.join()
    assert acknowledged["kill rounds"] > 5
    final = int(cache.get("p", "counter"))
    assert acknowledged["done"] == 8 * 150
    assert acknowledged["done"] <= final <= acknowledged["done"] + acknowledged["unknown"]
    # No stale connection is left to fail a later call.
    for index in range(200):
        cache.set("p", "after", str(index), constraint=str(index - 1) if index else None)


def test_restart_under_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    own = RedisServer(tmp_path, ["--appendonly", "yes", "--appendfsync", "always"])
    own.start()
    try:
        cache = make_handler(own.url, "restart", retries=8, connect_timeout=1, socket_timeout=2)
        written: list[tuple[str, str]] = []
        lock = threading.Lock()
        failures = Counter[str]()
        stop = threading.Event()

        def writer(worker: int) -> None:
            index = 0
            while not stop.is_set():
                sk = f"w{worker}-{index}"
                try:
                    cache.set("acked", sk, sk, not_set=True)
                except AccessException as exc:
                    failures[type(exc.__cause__).__name__] += 1
                else:
                    with lock:
                        written.append(("acked", sk))
                index += 1

        workers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for worker in workers:
            worker.start()
        try:
            while len(written) < 500:
                time.sleep(0.01)
            own.stop(kill=True)
            own.start()
            count = len(written)
            while len(written) < count + 500:
                time.sleep(0.01)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        stored = {entry.sk for entry in cache.entries("acked")}
        missing = [sk for _, sk in written if sk not in stored]
        assert not missing, f"{len(missing)} acknowledged writes lost; failures {failures}"
        assert len(written) >= 1000
    finally:
        own.stop(kill=True)


def test_server_down_is_an_access_error_naming_the_masked_location(tmp_path: Path) -> None:
    own = RedisServer(tmp_path)  # never started: nothing listens on its port
    cache = make_handler(f"redis://:{PASSWORD}@127.0.0.1:{own.port}/0", "down", retries=1)
    for call in (
        lambda: cache.get("p", "s"),
        lambda: cache.set("p", "s", "v"),
        lambda: cache.set("p", "s", "v", constraint="u"),
        lambda: cache.delete("p", "s"),
        lambda: list(cache.entries()),
        cache.setup,
        cache.create_storage,
    ):
        with pytest.raises(AccessException, match=rf"127\.0\.0\.1:{own.port}") as caught:
            call()
        assert PASSWORD not in str(caught.value)
        assert ":****@" in str(caught.value)


def test_the_pool_reconnects_after_the_server_comes_back(tmp_path: Path) -> None:
    own = RedisServer(tmp_path, ["--appendonly", "yes"])
    own.start()
    try:
        cache = make_handler(own.url, "back", retries=0)
        cache.set("p", "s", "1")
        own.stop()
        with pytest.raises(AccessException):
            cache.get("p", "s")
        with pytest.raises(AccessException):
            cache.set("p", "s", "2", constraint="1")
        own.start()
        assert cache.get("p", "s") == "1"
        cache.set("p", "s", "2", constraint="1")
        assert cache.get("p", "s") == "2"
    finally:
        own.stop(kill=True)


def test_a_stuck_server_fails_calls_within_the_timeouts(server: RedisServer) -> None:
    cache = make_handler(server.url, "stuck", retries=1, socket_timeout=0.3, connect_timeout=0.3)
    cache.set("p", "s", "0")
    cache.set("p", "s", "1", constraint="0")  # the script is cached; one idle connection
    outcomes: dict[str, BaseException] = {}

    def attempt() -> None:
        # The compare-and-set goes first, on the open connection: it is sent, and its
        # answer never comes. The get is sent again after its timeout, then gives up.
        for name, call in (
            ("cas", lambda: cache.set("p", "s", "2", constraint="1")),
            ("get", lambda: cache.get("p", "s")),
        ):
            try:
                call()
            except BaseException as exc:
                outcomes[name] = exc

    server.pause()
    try:
        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        server.resume()
    assert isinstance(outcomes["cas"], AccessException)
    assert "may or may not have been applied" in str(outcomes["cas"])
    assert isinstance(outcomes["get"], AccessException)
    assert "Timeout" in str(outcomes["get"])
    # The paused server ran the compare-and-set when it resumed; nothing else.
    assert cache.get("p", "s") == "2"


def test_a_loading_server_is_waited_for(tmp_path: Path) -> None:
    own = RedisServer(tmp_path)
    own.start()
    try:
        with own.admin() as client:
            with client.pipeline(transaction=False) as pipe:
                for index in range(2000):
                    pipe.set(f"filler:{index}", "x" * 100)
                pipe.set(entry_key("loading", "p", "s"), "kept")
                pipe.execute()
            client.save()
        own.stop()
        # One millisecond per key, answering between keys: the restarted server loads its
        # snapshot for 2 seconds, and answers LOADING meanwhile.
        own.arguments += [
            "--key-load-delay",
            "1000",
            "--loading-process-events-interval-bytes",
            "1024",
        ]
        own.start(wait=False)
        impatient = make_handler(own.url, "loading", retries=0)
        with pytest.raises(AccessException, match="BusyLoadingError"):
            impatient.get("p", "s")
        patient = make_handler(own.url, "loading", retries=8)
        assert patient.get("p", "s") == "kept"
    finally:
        own.stop(kill=True)


def test_a_read_only_replica_refuses_writes(server: RedisServer) -> None:
    cache = make_handler(server.url, "replica")
    cache.set("p", "s", "1")
    with server.admin() as client:
        client.replicaof("127.0.0.1", RedisServer(server.directory).port)
    writes: list[Callable[[], None]] = [
        lambda: cache.set("p", "s", "2"),
        lambda: cache.set("p", "t", "2", not_set=True),
        lambda: cache.set("p", "s", "2", constraint="1"),
        lambda: cache.delete("p", "s", constraint="1"),
        lambda: cache.delete("p", "s"),
    ]
    try:
        assert cache.get("p", "s") == "1"
        for call in writes:
            with pytest.raises(AccessException, match=r"(?i)read.only"):
                call()
    finally:
        with server.admin() as client:
            client.replicaof("NO", "ONE")
    assert cache.get("p", "s") == "1"
    cache.set("p", "s", "2", constraint="1")


def test_out_of_memory_refuses_writes_but_not_reads_or_releases(server: RedisServer) -> None:
    cache = make_handler(server.url, "oom")
    cache.set("p", "lock", "mine")
    writes: list[Callable[[], None]] = [
        lambda: cache.set("p", "s", "v"),
        lambda: cache.set("p", "s", "v", not_set=True),
        lambda: cache.set("p", "lock", "renewed", constraint="mine"),
    ]
    with server.admin() as client:
        client.config_set("maxmemory", 1)
    try:
        for call in writes:
            with pytest.raises(AccessException, match="maxmemory"):
                call()
        assert cache.get("p", "lock") == "mine"
        cache.delete("p", "lock", constraint="mine")
    finally:
        with server.admin() as client:
            client.config_set("maxmemory", 0)
    with pytest.raises(NotFoundException):
        cache.get("p", "lock")


def test_auth_required_wrong_password_and_unknown_database(server: RedisServer) -> None:
    with server.admin() as client:
        client.config_set("requirepass", PASSWORD)
    with pytest.raises(AccessException, match=r"requires a password \(NOAUTH\)") as required:
        make_handler(server.url, "auth").get("p", "s")
    assert "GROVE_CACHE_REDIS_URL" not in str(required.value)
    wrong = f"redis://:wrong-{PASSWORD[::-1]}@127.0.0.1:{server.port}/0"
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_REDIS_URL") as refused:
        make_handler(wrong, "auth").set("p", "s", "v")
    assert PASSWORD[::-1] not in str(refused.value)
    right = make_handler(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", "auth")
    right.set("p", "s", "v")
    assert right.get("p", "s") == "v"
    assert PASSWORD not in right.location()
    unknown_database = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/99"
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_REDIS_URL") as database:
        make_handler(unknown_database, "auth").get("p", "s")
    assert "DB index" in str(database.value)
    assert PASSWORD not in str(database.value)


def test_unix_socket(server: RedisServer) -> None:
    cache = make_handler(f"unix://{server.unix_socket}?db=1", "unix")
    cache.set("p", "s", "v", not_set=True)
    assert cache.get("p", "s") == "v"
    with server.admin(db=1) as client:
        assert client.get(entry_key("unix", "p", "s")) == b"v"


# -- create_storage --------------------------------------------------------------------


def test_create_storage_reports_the_server(server: RedisServer) -> None:
    cache = make_handler(server.url, "init")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = cache.create_storage()
    assert found.startswith(f"found redis cache 'init' at {server.url}: Redis ")
    assert "maxmemory-policy noeviction" in found
    assert "role master" in found


def test_create_storage_warns_about_an_evicting_server(server: RedisServer) -> None:
    with server.admin() as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    cache = make_handler(server.url, "init")
    with pytest.warns(EvictionWarning, match="allkeys-lru.*lost lock"):
        found = cache.create_storage()
    assert "evicts entries" in found


def test_unique_prefix_fixture_leaves_other_keys_alone(shared_url: str) -> None:
    mine, other = fresh_prefix(), fresh_prefix()
    make_handler(shared_url, mine).set("p", "s", "v")
    make_handler(shared_url, other).set("p", "s", "v")
    assert remove_prefix(shared_url, mine) == 1
    assert make_handler(shared_url, other).get("p", "s") == "v"
    assert remove_prefix(shared_url, other) == 1
