"""redis beside the raw redis-py commands on the same server (the floor).

The server is the machine's Redis (``REDIS_URL``, default ``redis://127.0.0.1:6379/0``).
Every subject writes under a key prefix of its own, and its keys are removed when it is
dropped. The floor sends the handler's commands through redis-py's ``Redis`` client on a
pool of the same size, with no checks: ``GET``, ``SET``, ``SET NX``, ``DEL``, and the
handler's own compare-and-set script through ``register_script`` (``EVALSHA``), on the
same key names. After the table it prints the commands each call sends (counted on the
handler's connections), the throughput of 1, 8 and 50 threads sharing one handler (and
one raw client) with the errors they met, the speed of 1 and 4 MiB values, and the price
of expiry (:mod:`benchmarks.expiry`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import redis
from redis.connection import Connection

from benchmarks.expiry import expiry_report
from benchmarks.suite import Suite, threaded_rate
from grove.caches.benchmark import OPERATIONS, Workload
from grove.caches.redis import _SET_IF_EQUAL, Configuration, Handler, entry_key
from grove.exceptions import DataFormatException, NotFoundException

THREADS = (1, 8, 50)
"""Thread counts for the shared-handler throughput."""

Entries = list[tuple[str, str, str]]


def _url() -> str:
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def _remove_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(names), 500):
            client.unlink(*names[start : start + 500])
    finally:
        client.close()


def _populate(url: str, prefix: str, entries: Entries) -> None:
    client = redis.Redis.from_url(url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for pk, sk, value in entries:
                pipe.set(entry_key(prefix, pk, sk), value)
            pipe.execute()
    finally:
        client.close()


class ScratchHandler(Handler):
    """The handler under test, under a fresh prefix removed when it is dropped."""

    def __init__(self, url: str) -> None:
        prefix = f"grove-bench-{uuid.uuid4().hex[:12]}"
        super().__init__(Configuration(url=pydantic.SecretStr(url), prefix=prefix))
        self.url = url
        weakref.finalize(self, _remove_prefix, url, prefix)

    def populate(self, entries: Entries) -> None:
        _populate(self.url, self.prefix, entries)


class RawRedis:
    """The floor: the handler's commands on redis-py's client, without checks."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"grove-bench-{uuid.uuid4().hex[:12]}"
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=max(THREADS))
        self.client = redis.Redis(connection_pool=pool)
        self.compare_and_set = self.client.register_script(_SET_IF_EQUAL)
        weakref.finalize(self, _remove_prefix, url, self.prefix)
        weakref.finalize(self, pool.disconnect)

    def populate(self, entries: Entries) -> None:
        _populate(self.url, self.prefix, entries)

    def get(self, pk: str, sk: str) -> str:
        value = self.client.get(entry_key(self.prefix, pk, sk))
        if value is None:
            raise KeyError((pk, sk))
        return value.decode() if isinstance(value, bytes) else str(value)

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        key = entry_key(self.prefix, pk, sk)
        if constraint is not None:
            done = self.compare_and_set(keys=[key], args=[constraint, value])
        else:
            done = self.client.set(key, value, nx=not_set)
        if not done:
            raise KeyError((pk, sk))

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self.client.delete(entry_key(self.prefix, pk, sk))


class _Counted:
    """Counts the commands that a handler's connections send, the handshake excluded."""

    def __init__(self, handler: Handler) -> None:
        self.sent: Counter[str] = Counter()
        counts = self.sent

        class CountingConnection(Connection):
            def send_command(self, *args: Any, **kwargs: Any) -> None:
                counts[str(args[0]).upper()] += 1
                super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

        handler.pool.disconnect()
        handler.pool.connection_class = CountingConnection


def round_trips(url: str) -> str:
    """Count the commands each kind of call sends.

    :param url: The server.
    :return: One line per call.
    """
    handler = ScratchHandler(url)
    counted = _Counted(handler)
    handler.set("warm", "up", "0")
    handler.set("warm", "up", "1", constraint="0")
    handler.delete("warm", "up", constraint="1")
    calls: list[tuple[str, Callable[[], object]]] = [
        ("get miss", lambda: handler.get("p", "s")),
        ("set not_set", lambda: handler.set("p", "s", "1", not_set=True)),
        ("set not_set, refused", lambda: handler.set("p", "s", "1", not_set=True)),
        ("get hit", lambda: handler.get("p", "s")),
        ("set", lambda: handler.set("p", "s", "2")),
        ("set constraint", lambda: handler.set("p", "s", "3", constraint="2")),
        ("set constraint, refused", lambda: handler.set("p", "s", "4", constraint="2")),
        ("set ttl", lambda: handler.set("p", "s", "3", ttl=60)),
        ("set constraint ttl", lambda: handler.set("p", "s", "4", constraint="3", ttl=60)),
        ("delete constraint, refused", lambda: handler.delete("p", "s", constraint="3")),
        ("delete constraint", lambda: handler.delete("p", "s", constraint="4")),
        ("delete", lambda: handler.delete("p", "s")),
    ]
    lines = ["  commands sent per call (one round trip each):"]
    for name, call in calls:
        counted.sent.clear()
        with contextlib.suppress(NotFoundException, DataFormatException):
            call()
        sent = ", ".join(f"{command}" for command in counted.sent.elements())
        lines.append(f"    {name:<28}{sum(counted.sent.values())}  ({sent})")
    return "\n".join(lines)


def thread_throughput(url: str, calls: int = 2000) -> str:
    """Measure 1, 8 and 50 threads sharing one handler, beside one shared raw client.

    :param url: The server.
    :param calls: Calls made in all, split between the threads.
    :return: The report lines.
    """
    handler = ScratchHandler(url)
    raw = RawRedis(url)
    lines = [
        "  threads sharing one handler (ops/s; raw client shared the same way; ratio; errors):"
    ]
    for threads in THREADS:
        for operation in ("get", "overwrite"):
            per_thread = max(40, calls // threads)
            mine, errors = threaded_rate(handler, threads, per_thread, operation)
            floor, _ = threaded_rate(raw, threads, per_thread, operation)
            lines.append(
                f"    {threads:>2} thread{'s' if threads > 1 else ' '} {operation:<10}"
                f"{mine:>10,.0f}{floor:>10,.0f}{mine / floor:>8.2f}{errors:>6}"
            )
    return "\n".join(lines)


def _random_text(size: int) -> str:
    return base64.b64encode(random.Random(size).randbytes(size))[:size].decode()


def large_values(url: str, calls: int = 20) -> str:
    """Measure set, get and compare-and-set of 1 and 4 MiB values, beside the floor.

    :param url: The server.
    :param calls: Calls per operation.
    :return: The report lines.
    """
    handler = ScratchHandler(url)
    raw = RawRedis(url)
    lines = ["  large values, one thread (ops/s handler, floor, ratio):"]
    for size in (1024 * 1024, 4 * 1024 * 1024):
        values = [_random_text(size), _random_text(size)[::-1]]
        for store in (handler, raw):
            store.set("large", "v", values[1])
        for operation in ("set", "get", "compare-and-set"):
            rates = []
            for store in (handler, raw):
                current = 1
                started = time.perf_counter()
                for _ in range(calls):
                    if operation == "set":
                        store.set("large", "v", values[current])
                    elif operation == "get":
                        store.get("large", "v")
                    else:
                        store.set("large", "v", values[1 - current], constraint=values[current])
                        current = 1 - current
                rates.append(calls / (time.perf_counter() - started))
            label = f"{operation} {size // (1024 * 1024)} MiB"
            lines.append(
                f"    {label:<24}{rates[0]:>8.1f}{rates[1]:>8.1f}{rates[0] / rates[1]:>8.2f}"
            )
    return "\n".join(lines)


def suites(keys: int) -> Iterator[Suite]:
    """The redis table at one store size, on the machine's server.

    :param keys: Entries in the store while measuring.
    :return: One suite.
    """
    url = _url()
    workload = Workload(keys=keys, calls=5000, repeats=3)
    yield Suite(
        title=f"redis at {url} (loopback), {keys:,} keys",
        subject=lambda: ScratchHandler(url),
        floor=lambda: RawRedis(url),
        workload=workload,
        targets=dict.fromkeys(OPERATIONS, 0.8),
        report=lambda: "\n".join(
            [
                round_trips(url),
                thread_throughput(url),
                large_values(url),
                expiry_report(lambda: ScratchHandler(url), workload, "redis"),
            ]
        ),
    )
