"""aws_dynamodb against the same raw boto3 client calls, on a local moto server.

The benchmark starts its own moto server (threaded, keep-alive, as moto serves it) on a
loopback port with fake credentials. The floor makes the very requests the handler
makes (``GetItem`` with ``ConsistentRead``, ``UpdateItem`` with its condition,
``DeleteItem``) straight on a boto3 client, so the ratio is the cost of the handler's
own layer. A second reference is the handler itself with a time to live on every
``set`` (so ``get hit`` reads entries that expire): its ratios (handler without ttl ÷
with) show what expiry costs. After the table it prints the HTTP requests each call
sends, the throughput of 1, 8 and 50 threads sharing one handler (and one raw client),
and the speed of 1 MiB values, packed and chunked.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from benchmarks.expiry import WithTtl
from benchmarks.suite import Suite, threaded_rate
from grove.caches.aws_dynamodb import Configuration, Handler
from grove.caches.benchmark import Workload
from grove.exceptions import DataFormatException, NotFoundException
from tests.moto_process import UNSET, MotoServer, fake_credentials

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

THREADS = (1, 8, 50)
"""Thread counts for the shared-handler throughput."""


class RawClient:
    """The floor: the handler's requests, made directly on a boto3 client."""

    def __init__(self, url: str, table: str) -> None:
        self.table = table
        self.client: DynamoDBClient = boto3.client(
            "dynamodb",
            endpoint_url=url,
            region_name="us-east-1",
            config=Config(max_pool_connections=max(THREADS)),
        )

    def get(self, pk: str, sk: str) -> str:
        item = self.client.get_item(
            TableName=self.table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
        ).get("Item")
        if item is None:
            raise KeyError((pk, sk))
        return item["data"]["S"]

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        request: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
            "UpdateExpression": "SET #data = :value",
            "ExpressionAttributeNames": {"#data": "data"},
            "ExpressionAttributeValues": {":value": {"S": value}},
        }
        if not_set:
            request["ConditionExpression"] = "attribute_not_exists(#data)"
        elif constraint is not None:
            request["ConditionExpression"] = "#data = :expected"
            request["ExpressionAttributeValues"][":expected"] = {"S": constraint}
        self.client.update_item(**request)

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self.client.delete_item(TableName=self.table, Key={"pk": {"S": pk}, "sk": {"S": sk}})


def _handler(url: str, table: str) -> Handler:
    handler = Handler(Configuration(url=url, table=table))
    handler.setup()
    return handler


def _fresh_table(url: str) -> str:
    table = f"bench-{uuid.uuid4().hex[:8]}"
    Handler(Configuration(url=url, table=table)).create_table()
    return table


def requests_per_call(url: str) -> str:
    """Count the HTTP requests each kind of call sends.

    :param url: The server's endpoint.
    :return: One line per call.
    """
    handler = _handler(url, _fresh_table(url))
    sent: Counter[str] = Counter()
    handler.client.meta.events.register(
        "before-send.dynamodb", lambda **kwargs: sent.update([kwargs["event_name"]])
    )
    calls: list[tuple[str, Callable[[], object]]] = [
        ("get miss", lambda: handler.get("p", "s")),
        ("set not_set", lambda: handler.set("p", "s", "1", not_set=True)),
        ("set not_set, refused", lambda: handler.set("p", "s", "1", not_set=True)),
        ("get hit", lambda: handler.get("p", "s")),
        ("set", lambda: handler.set("p", "s", "2")),
        ("set constraint", lambda: handler.set("p", "s", "3", constraint="2")),
        ("set constraint, refused", lambda: handler.set("p", "s", "4", constraint="2")),
        ("delete constraint, refused", lambda: handler.delete("p", "s", constraint="2")),
        ("delete constraint", lambda: handler.delete("p", "s", constraint="3")),
        ("set ttl", lambda: handler.set("p", "s", "5", ttl=3600)),
        ("get expiring", lambda: handler.get("p", "s")),
        ("delete", lambda: handler.delete("p", "s")),
    ]
    lines = ["  HTTP requests per call (every attempt counted):"]
    for name, call in calls:
        sent.clear()
        with contextlib.suppress(NotFoundException, DataFormatException):
            call()
        lines.append(f"    {name:<28}{sum(sent.values())}")
    return "\n".join(lines)


def thread_throughput(url: str, calls: int = 200) -> str:
    """Measure 1, 8 and 50 threads sharing one handler, beside one shared raw client.

    :param url: The server's endpoint.
    :param calls: Calls per thread.
    :return: The report lines.
    """
    handler = _handler(url, _fresh_table(url))
    raw = RawClient(url, _fresh_table(url))
    lines = [
        "  threads sharing one handler (ops/s; raw client shared the same way; ratio):",
    ]
    for threads in THREADS:
        for operation in ("get", "overwrite"):
            per_thread = max(20, calls // threads * 4) if threads > 1 else calls
            mine, _ = threaded_rate(handler, threads, per_thread, operation)
            floor, _ = threaded_rate(raw, threads, per_thread, operation)
            lines.append(
                f"    {threads:>2} thread{'s' if threads > 1 else ' '} {operation:<10}"
                f"{mine:>10,.0f}{floor:>10,.0f}{mine / floor:>8.2f}"
            )
    return "\n".join(lines)


def _dedup_hashes(size: int) -> str:
    """Grove's deduplication hashes: a JSON list of md5 hex digests, ``size`` characters."""
    digests = [hashlib.md5(str(i).encode()).hexdigest() for i in range(size // 35 + 1)]
    return json.dumps(digests)[:size]


def _random_text(size: int) -> str:
    return base64.b64encode(random.Random(size).randbytes(size))[:size].decode()


def _stored_form(handler: Handler, pk: str, sk: str) -> str:
    item = handler.client.get_item(
        TableName=handler.config.table, Key={"pk": {"S": pk}, "sk": {"S": sk}}
    )["Item"]
    if "packed" in item:
        return "packed"
    return f"{item['parts']['N']} parts"


def large_values(url: str, calls: int = 20) -> str:
    """Measure set and get of 1 MiB values on one thread, by stored form.

    :param url: The server's endpoint.
    :param calls: Calls per operation.
    :return: The report lines.
    """
    handler = _handler(url, _fresh_table(url))
    sent: Counter[str] = Counter()
    handler.client.meta.events.register(
        "before-send.dynamodb", lambda **kwargs: sent.update([kwargs["event_name"]])
    )
    lines = ["  1 MiB values, one thread (ops/s, p50 ms, HTTP requests per call):"]
    size = 1024 * 1024
    # 400 digests repeated: within zlib's 32 KiB window, so they pack into one item.
    repeated = _dedup_hashes(400 * 35)[1:-1] + ", "
    repeated = "[" + repeated * (size // len(repeated) + 1)
    for name, values in (
        ("repeated hashes", [repeated[:size], repeated[1 : size + 1]]),
        ("hex digests", [_dedup_hashes(size), _dedup_hashes(size)[::-1]]),
        ("random text", [_random_text(size), _random_text(size)[::-1]]),
    ):
        handler.set("large", name, values[1])
        form = _stored_form(handler, "large", name)
        for operation in ("set", "get"):
            samples = []
            sent.clear()
            for index in range(calls):
                started = time.perf_counter()
                if operation == "set":
                    handler.set("large", name, values[index % 2])
                else:
                    handler.get("large", name)
                samples.append(time.perf_counter() - started)
            label = f"{operation} {name} ({form})"
            lines.append(
                f"    {label:<34}{calls / sum(samples):>8.1f}"
                f"{statistics.median(samples) * 1000:>8.1f}{sum(sent.values()) / calls:>6.1f}"
            )
    return "\n".join(lines)


def suites(keys: int) -> Iterator[Suite]:
    """The aws_dynamodb table at one store size, on a moto server it starts.

    :param keys: Entries in the store while measuring.
    :return: One suite; the server stops when the generator is done.
    """
    saved = {name: os.environ.get(name) for name in [*fake_credentials(), *UNSET]}
    os.environ.update(fake_credentials())
    for name in UNSET:
        os.environ.pop(name, None)
    try:
        with MotoServer(threaded=True) as server:
            url = server.url
            yield Suite(
                title=f"aws_dynamodb on moto (local HTTP), {keys:,} keys",
                subject=lambda: _handler(url, _fresh_table(url)),
                floor=lambda: RawClient(url, _fresh_table(url)),
                workload=Workload(keys=keys, calls=300, repeats=3),
                targets={"get hit": 0.8, "overwrite": 0.8, "compare-and-set": 0.8},
                extra_floors={
                    "with ttl": lambda: WithTtl(_handler(url, _fresh_table(url)), ttl=3600.0)
                },
                report=lambda: "\n".join(
                    [requests_per_call(url), thread_throughput(url), large_values(url)]
                ),
            )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
