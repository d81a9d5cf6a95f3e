"""aws_dynamodb: values beyond DynamoDB's 400 KB item limit, on moto's server.

Large values are packed (compressed into the head item) or chunked (immutable chunk
items under a fresh version, then one conditional switch of the head); see the module
docstring of grove.caches.aws_dynamodb. These tests check each stored form, the
requests each call costs, atomicity under racing processes, and writers killed
between the steps.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import queue
import random
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from grove.caches import CacheEntry
from grove.caches.aws_dynamodb import INLINE_VALUE_BYTES, MAX_VALUE_BYTES, Handler
from grove.caches.testing import ManualClock
from grove.exceptions import DataFormatException, NotFoundException
from tests.moto_server import count_requests, fake_answer, make_handler

MiB = 1024 * 1024
CHUNK_PREFIX = "grove.caches.chunk."


def random_text(size: int, seed: int) -> str:
    """ASCII text of exactly ``size`` characters that zlib shrinks only to about 76%."""
    raw = random.Random(seed).randbytes(size * 3 // 4 + 3)
    return base64.b64encode(raw).decode("ascii")[:size]


def compressible_text(size: int, seed: int) -> str:
    """Text of exactly ``size`` characters, with UTF-8, that zlib shrinks a lot."""
    unit = f"\u00e9t\u00e9 {seed} " + "".join(random.Random(seed).choices("abcdef0123", k=40))
    return (unit * (size // len(unit) + 1))[:size]


@pytest.fixture
def table(moto_endpoint: str, table_name: str) -> str:
    make_handler(moto_endpoint, table_name).create_table()
    return table_name


@pytest.fixture
def handler(moto_endpoint: str, table: str) -> Handler:
    return make_handler(moto_endpoint, table)


def raw_items(handler: Handler) -> list[dict[str, Any]]:
    """Every item of the handler's table, read without the handler."""
    client = boto3.client(
        "dynamodb", endpoint_url=handler.config.url, region_name=handler.config.region
    )
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(
        TableName=handler.config.table, ConsistentRead=True
    ):
        items.extend(page["Items"])
    return items


def head_of(handler: Handler, pk: str, sk: str) -> dict[str, Any]:
    [item] = [i for i in raw_items(handler) if i["pk"]["S"] == pk and i["sk"]["S"] == sk]
    return item


def chunks_of(handler: Handler, pk: str) -> Counter[str]:
    """How many chunk items each version owned by ``pk`` has."""
    return Counter(
        item["pk"]["S"][len(CHUNK_PREFIX) :]
        for item in raw_items(handler)
        if item["pk"]["S"].startswith(CHUNK_PREFIX) and item["of_pk"]["S"] == pk
    )


# -- stored forms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [MiB // 2, MiB, 2 * MiB, 4 * MiB], ids=["0.5MiB", "1MiB", "2MiB", "4MiB"]
)
@pytest.mark.parametrize("kind", ["incompressible", "compressible"])
def test_large_value_round_trips_with_conditions(handler: Handler, size: int, kind: str) -> None:
    make = random_text if kind == "incompressible" else compressible_text
    value, other = make(size, seed=size), make(size, seed=size + 1)
    handler.set("dedup", "hashes", value, not_set=True)
    assert handler.get("dedup", "hashes") == value
    head = head_of(handler, "dedup", "hashes")
    if kind == "compressible":
        assert set(head) == {"pk", "sk", "packed", "digest"}
        assert chunks_of(handler, "dedup") == Counter()
    else:
        assert set(head) == {"pk", "sk", "digest", "version", "parts"}
        parts = int(head["parts"]["N"])
        assert parts >= 2
        assert chunks_of(handler, "dedup") == Counter({head["version"]["S"]: parts})
    with pytest.raises(DataFormatException):
        handler.set("dedup", "hashes", "x", not_set=True)
    # compare-and-set compares the logical value, not its stored form
    with pytest.raises(DataFormatException):
        handler.set("dedup", "hashes", "x", constraint=other)
    with pytest.raises(DataFormatException):
        handler.set("dedup", "hashes", "x", constraint=value[:-1])
    handler.set("dedup", "hashes", other, constraint=value)
    assert handler.get("dedup", "hashes") == other
    with pytest.raises(DataFormatException):
        handler.delete("dedup", "hashes", constraint=value)
    assert handler.get("dedup", "hashes") == other
    handler.delete("dedup", "hashes", constraint=other)
    with pytest.raises(NotFoundException):
        handler.get("dedup", "hashes")
    # Nothing is left behind: no head, no chunks.
    assert raw_items(handler) == []


def test_small_values_keep_the_upstream_shape_after_large_ones(handler: Handler) -> None:
    handler.set("pk", "sk", random_text(MiB, seed=1))
    handler.set("pk", "sk", "small")
    assert head_of(handler, "pk", "sk") == {
        "pk": {"S": "pk"},
        "sk": {"S": "sk"},
        "data": {"S": "small"},
    }
    assert chunks_of(handler, "pk") == Counter()
    handler.set("pk", "sk", compressible_text(MiB, seed=1), constraint="small")
    handler.set("pk", "sk", random_text(MiB, seed=2), constraint=compressible_text(MiB, seed=1))
    handler.set("pk", "sk", "small again", constraint=random_text(MiB, seed=2))
    assert handler.get("pk", "sk") == "small again"
    assert [set(item) for item in raw_items(handler)] == [{"pk", "sk", "data"}]


def test_value_over_the_limit_is_refused_and_changes_nothing(handler: Handler) -> None:
    handler.set("pk", "sk", "small")
    sent = count_requests(handler)
    for too_big in ("x" * (MAX_VALUE_BYTES + 1), "\u00e9" * (MAX_VALUE_BYTES // 2 + 1)):
        with pytest.raises(ValueError, match=str(MAX_VALUE_BYTES)):
            handler.set("pk", "sk", too_big)
        with pytest.raises(ValueError, match=str(MAX_VALUE_BYTES)):
            handler.set("pk", "new", too_big, not_set=True)
    assert sent == Counter()
    assert handler.get("pk", "sk") == "small"
    with pytest.raises(NotFoundException):
        handler.get("pk", "new")


def test_value_at_the_limit_round_trips(handler: Handler) -> None:
    value = random_text(MAX_VALUE_BYTES, seed=7)
    sent = count_requests(handler)
    handler.set("pk", "sk", value)
    parts = int(head_of(handler, "pk", "sk")["parts"]["N"])
    assert parts > 25  # more than one batch each way
    assert sent == Counter({"BatchWriteItem": 2, "UpdateItem": 1})
    sent.clear()
    assert handler.get("pk", "sk") == value
    assert sent == Counter({"GetItem": 1, "BatchGetItem": 2})
    handler.delete("pk", "sk", constraint=value)
    assert raw_items(handler) == []


def test_requests_per_call_by_size(handler: Handler) -> None:
    sent = count_requests(handler)
    packed, chunked = compressible_text(MiB, seed=1), random_text(MiB, seed=1)

    def costs(call: Callable[[], object]) -> Counter[str]:
        sent.clear()
        call()
        return Counter(sent)

    # small: one request each
    assert costs(lambda: handler.set("p", "s", "1")) == Counter({"UpdateItem": 1})
    assert costs(lambda: handler.get("p", "s")) == Counter({"GetItem": 1})
    # packed: one request each, conditional or not
    assert costs(lambda: handler.set("p", "s", packed, constraint="1")) == Counter(
        {"UpdateItem": 1}
    )
    assert costs(lambda: handler.get("p", "s")) == Counter({"GetItem": 1})
    assert costs(lambda: handler.set("p", "s", packed, constraint=packed)) == Counter(
        {"UpdateItem": 1}
    )
    # an unconditional small set over a large value tries the one-request form first
    assert costs(lambda: handler.set("p", "s", "1")) == Counter({"UpdateItem": 2})
    assert costs(lambda: handler.set("p", "s", packed)) == Counter({"UpdateItem": 1})
    assert costs(lambda: handler.delete("p", "s")) == Counter({"DeleteItem": 1})
    # chunked (3 parts): chunks then head; head then chunks
    assert costs(lambda: handler.set("p", "s", chunked)) == Counter(
        {"BatchWriteItem": 1, "UpdateItem": 1}
    )
    assert int(head_of(handler, "p", "s")["parts"]["N"]) == 3
    assert costs(lambda: handler.get("p", "s")) == Counter({"GetItem": 1, "BatchGetItem": 1})
    # replacing a chunked value deletes its chunks afterwards
    assert costs(lambda: handler.set("p", "s", chunked + "!", constraint=chunked)) == Counter(
        {"BatchWriteItem": 2, "UpdateItem": 1}
    )
    assert costs(lambda: handler.set("p", "s", "small")) == Counter(
        {"UpdateItem": 2, "BatchWriteItem": 1}
    )
    handler.set("p", "s", chunked)
    assert costs(lambda: handler.delete("p", "s")) == Counter(
        {"DeleteItem": 2, "BatchWriteItem": 1}
    )
    # a refused chunked write removes the chunks it wrote
    handler.set("p", "s", "small")
    assert costs(lambda: _refused(lambda: handler.set("p", "s", chunked, not_set=True))) == (
        Counter({"BatchWriteItem": 2, "UpdateItem": 1})
    )
    assert chunks_of(handler, "p") == Counter()


def _refused(call: Callable[[], object]) -> None:
    with pytest.raises(DataFormatException):
        call()


def test_upstream_item_near_the_limit_matches_its_constraint(
    handler: Handler, moto_endpoint: str
) -> None:
    big = random_text(INLINE_VALUE_BYTES + 4_000, seed=3)
    boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1").put_item(
        TableName=handler.config.table,
        Item={"pk": {"S": "p"}, "sk": {"S": "s"}, "data": {"S": big}},
    )
    assert handler.get("p", "s") == big
    with pytest.raises(DataFormatException):
        handler.set("p", "s", "x", constraint=big[:-1] + "?")
    handler.set("p", "s", random_text(MiB, seed=4), constraint=big)
    handler.set("p", "s", big, constraint=random_text(MiB, seed=4))
    handler.delete("p", "s", constraint=big)
    assert raw_items(handler) == []


def test_listing_shows_large_values_whole_and_no_chunks(handler: Handler) -> None:
    values = {
        "small": "v",
        "packed": compressible_text(MiB, seed=5),
        "chunked": random_text(MiB, seed=5),
    }
    for sk, value in values.items():
        handler.set("listed", sk, value)
    expected = sorted(CacheEntry("listed", sk, value) for sk, value in values.items())
    assert sorted(handler.entries("listed")) == expected
    assert sorted(handler.entries(prefix="list")) == expected
    assert sorted(handler.entries()) == expected
    assert sorted(handler.entries(prefix=CHUNK_PREFIX)) == []


# -- readers never see a torn value ----------------------------------------------------


# -- expiry ----------------------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
def expiring(moto_endpoint: str, table: str, clock: ManualClock) -> Handler:
    return make_handler(moto_endpoint, table, clock=clock)


@pytest.mark.parametrize("kind", ["packed", "chunked"])
def test_a_large_value_expires_as_a_whole(expiring: Handler, clock: ManualClock, kind: str) -> None:
    value = compressible_text(MiB, seed=3) if kind == "packed" else random_text(MiB, seed=3)
    expiring.set("dedup", "hashes", value, ttl=60)
    head = head_of(expiring, "dedup", "hashes")
    assert float(head["expires_at"]["N"]) == clock() + 60
    chunks = [i for i in raw_items(expiring) if i["pk"]["S"].startswith(CHUNK_PREFIX)]
    assert len(chunks) == (3 if kind == "chunked" else 0)
    # Chunks expire a day after their head, so DynamoDB's TTL never takes one first.
    assert {float(c["expires_at"]["N"]) for c in chunks} <= {clock() + 60 + 86_400}
    assert expiring.get("dedup", "hashes") == value
    clock.advance(61)
    with pytest.raises(NotFoundException):
        expiring.get("dedup", "hashes")
    assert list(expiring.entries("dedup")) == []
    with pytest.raises(DataFormatException):
        expiring.set("dedup", "hashes", "x", constraint=value)
    # not_set over it takes its place and collects its chunks in passing.
    expiring.set("dedup", "hashes", "fresh", not_set=True)
    assert raw_items(expiring) == [
        {"pk": {"S": "dedup"}, "sk": {"S": "hashes"}, "data": {"S": "fresh"}}
    ]


def test_sweep_collects_the_chunks_of_expired_values(expiring: Handler, clock: ManualClock) -> None:
    for index in range(3):
        expiring.set("dedup", f"gone{index}", random_text(MiB, seed=index), ttl=60)
    kept = random_text(MiB, seed=9)
    expiring.set("dedup", "kept", kept, ttl=3600)
    clock.advance(61)
    assert expiring.sweep_expired(batch_size=2) == 3
    assert expiring.get("dedup", "kept") == kept
    version = head_of(expiring, "dedup", "kept")["version"]["S"]
    assert chunks_of(expiring, "dedup") == Counter({version: 3})
    assert len(raw_items(expiring)) == 4


def test_reader_starts_again_when_chunks_vanish_under_it(moto_endpoint: str, table: str) -> None:
    reader, writer = make_handler(moto_endpoint, table), make_handler(moto_endpoint, table)
    first, second = random_text(MiB, seed=10), random_text(MiB, seed=11)
    writer.set("p", "s", first)
    replaced: list[str] = []

    def replace_before_chunks_are_read(request: Any, **kwargs: Any) -> None:
        if not replaced:
            replaced.append("yes")
            writer.set("p", "s", second)  # deletes the chunks of `first`

    reader.client.meta.events.register(
        "before-send.dynamodb.BatchGetItem", replace_before_chunks_are_read
    )
    sent = count_requests(reader)
    assert reader.get("p", "s") == second
    assert sent == Counter({"GetItem": 2, "BatchGetItem": 2})


def test_unprocessed_batch_items_are_retried(handler: Handler) -> None:
    value = random_text(MiB, seed=12)
    answered: Counter[str] = Counter()

    def nothing_processed(request: Any, **kwargs: Any) -> Any:
        operation = kwargs["event_name"].rsplit(".", 1)[-1]
        answered[operation] += 1
        if answered[operation] > 1:
            return None
        body = json.loads(request.body)
        key = "UnprocessedItems" if operation == "BatchWriteItem" else "UnprocessedKeys"
        answer = {key: body["RequestItems"]}
        if operation == "BatchGetItem":
            answer["Responses"] = {handler.config.table: []}
        return fake_answer(request, 200, answer)

    handler.client.meta.events.register("before-send.dynamodb.BatchWriteItem", nothing_processed)
    handler.client.meta.events.register("before-send.dynamodb.BatchGetItem", nothing_processed)
    handler.set("p", "s", value)
    assert handler.get("p", "s") == value
    assert answered == Counter({"BatchWriteItem": 2, "BatchGetItem": 2})


def collect(results: Any, processes: list[Any]) -> list[Any]:
    """Gather one outcome per process; stop early when one died without reporting."""
    outcomes: list[Any] = []
    while len(outcomes) < len(processes):
        try:
            outcomes.append(results.get(timeout=1))
        except queue.Empty:
            if sum(process.exitcode not in (None, 0) for process in processes):
                break
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()
    return outcomes


def value_for(n: int) -> str:
    """The n-th value of the contended key: small, packed or chunked, self-checking."""
    kind = n % 3
    if kind == 0:
        return f"{n}|small"
    if kind == 1:
        return f"{n}|" + compressible_text(600_000, seed=n)
    return f"{n}|" + random_text(600_000, seed=n)


def _alternating_writer(url: str, table: str, count: int, barrier: Any, results: Any) -> None:
    cache = make_handler(url, table)
    barrier.wait()
    done = torn = 0
    while done < count:
        current = cache.get("contended", "v")
        if current != value_for(int(current.split("|", 1)[0])):
            torn += 1
        try:
            cache.set(
                "contended", "v", value_for(int(current.split("|", 1)[0]) + 1), constraint=current
            )
        except DataFormatException:
            continue
        done += 1
    results.put(("writer", done, torn))


def _reader(url: str, table: str, count: int, barrier: Any, results: Any) -> None:
    cache = make_handler(url, table)
    barrier.wait()
    torn = backwards = 0
    last = -1
    for _ in range(count):
        current = cache.get("contended", "v")
        n = int(current.split("|", 1)[0])
        torn += current != value_for(n)
        backwards += n < last
        last = max(last, n)
    results.put(("reader", count, torn + backwards))


def test_processes_alternating_large_and_small_values_lose_nothing(
    moto_endpoint: str, table: str
) -> None:
    writers, increments, readers, reads = 4, 20, 2, 60
    cache = make_handler(moto_endpoint, table)
    cache.set("contended", "v", value_for(0))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(writers + readers)
    results = context.Queue()
    processes = [
        context.Process(
            target=_alternating_writer, args=(moto_endpoint, table, increments, barrier, results)
        )
        for _ in range(writers)
    ] + [
        context.Process(target=_reader, args=(moto_endpoint, table, reads, barrier, results))
        for _ in range(readers)
    ]
    for process in processes:
        process.start()
    outcomes = collect(results, processes)
    assert [process.exitcode for process in processes] == [0] * len(processes)
    assert sorted(outcomes) == sorted(
        [("reader", reads, 0)] * readers + [("writer", increments, 0)] * writers
    )
    assert cache.get("contended", "v") == value_for(writers * increments)
    # Only the final value's chunks remain (80 % 3 == 2: it is chunked).
    head = head_of(cache, "contended", "v")
    assert chunks_of(cache, "contended") == Counter({head["version"]["S"]: int(head["parts"]["N"])})


# -- writers killed between steps ------------------------------------------------------


def _killed_writer(url: str, table: str, value: str, kill_before: str) -> None:
    """Set a chunked value, killing this process (SIGKILL) just before a request."""
    cache = make_handler(url, table)
    sent: list[str] = []

    def kill(request: Any, **kwargs: Any) -> None:
        operation = kwargs["event_name"].rsplit(".", 1)[-1]
        sent.append(operation)
        if kill_before == "head" and operation == "UpdateItem":
            os.kill(os.getpid(), signal.SIGKILL)
        if kill_before == "cleanup" and operation == "BatchWriteItem" and "UpdateItem" in sent:
            os.kill(os.getpid(), signal.SIGKILL)

    cache.client.meta.events.register("before-send.dynamodb", kill)
    cache.set("killed", "v", value)


@pytest.mark.slow
@pytest.mark.parametrize("kill_before", ["head", "cleanup"])
def test_writer_killed_between_steps(moto_endpoint: str, table: str, kill_before: str) -> None:
    cache = make_handler(moto_endpoint, table)
    old, new = random_text(MiB, seed=20), random_text(MiB, seed=21)
    cache.set("killed", "v", old)
    old_version = head_of(cache, "killed", "v")["version"]["S"]
    process = multiprocessing.get_context("spawn").Process(
        target=_killed_writer, args=(moto_endpoint, table, new, kill_before)
    )
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL
    chunks = chunks_of(cache, "killed")
    assert len(chunks) == 2  # the old version's chunks and the new one's
    if kill_before == "head":
        # The head was never switched: the old value is whole, the new chunks orphans.
        assert cache.get("killed", "v") == old
        survivor = old_version
    else:
        # The head was switched: the new value is whole, the old chunks orphans.
        assert cache.get("killed", "v") == new
        survivor = head_of(cache, "killed", "v")["version"]["S"]
        assert survivor != old_version
    # A sweep leaves chunks younger than its threshold (those of writes in flight) alone.
    assert cache.collect_garbage() == 0
    orphans = sum(count for version, count in chunks.items() if version != survivor)
    assert cache.collect_garbage(older_than=0) == orphans
    assert chunks_of(cache, "killed") == Counter({survivor: chunks[survivor]})
    assert cache.get("killed", "v") == (old if kill_before == "head" else new)
    assert cache.collect_garbage(older_than=0) == 0
