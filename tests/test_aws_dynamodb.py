"""aws_dynamodb: the conformance suite on moto's server, plus what only DynamoDB has.

Every test talks to a real DynamoDB-compatible HTTP server (moto, in a child process on
a loopback port) with fake credentials; nothing reaches AWS.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

import grove.caches
from grove.caches import BaseCache, CacheEntry
from grove.caches.aws_dynamodb import Configuration, Handler, _Refused
from grove.caches.testing import (
    ExpiryConformance,
    ListingConformance,
    ManualClock,
    SharedCacheConformance,
    SharedExpiryConformance,
)
from grove.exceptions import (
    AccessException,
    ConfigurationException,
    DataFormatException,
    NotFoundException,
)
from tests.moto_server import (
    Answer,
    LoopbackEndpoint,
    Request,
    count_requests,
    dynamodb_error,
    dynamodb_error_answer,
    make_handler,
)

CONFORMANCE_TABLE = "grove-conformance"


def raw_client(url: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")


@pytest.fixture(scope="session")
def conformance_table(moto_endpoint: str) -> str:
    make_handler(moto_endpoint, CONFORMANCE_TABLE).create_table()
    return CONFORMANCE_TABLE


@pytest.fixture
def table(moto_endpoint: str, table_name: str) -> str:
    """A fresh, empty table for one test."""
    assert make_handler(moto_endpoint, table_name).create_table() is True
    return table_name


@pytest.fixture
def handler(moto_endpoint: str, table: str) -> Handler:
    cache = make_handler(moto_endpoint, table)
    cache.setup()
    return cache


class TestDynamoDBConformance(
    SharedCacheConformance, ListingConformance, ExpiryConformance, SharedExpiryConformance
):
    # Every request crosses HTTP to a server that answers one at a time, so the thread
    # tests make fewer increments than the defaults; the process counts are the issue's.
    thread_workers = 8
    thread_increments = 40
    thread_racers = 50
    process_workers = 4
    process_increments = 200
    process_racers = 8

    @pytest.fixture
    def cache(self, moto_endpoint: str, conformance_table: str, clock: ManualClock) -> BaseCache:
        cache = make_handler(moto_endpoint, conformance_table, clock=clock)
        cache.setup()
        return cache

    @pytest.fixture
    def cache_factory(self, moto_endpoint: str, conformance_table: str) -> Callable[[], BaseCache]:
        return functools.partial(make_handler, moto_endpoint, conformance_table)


# -- configuration ---------------------------------------------------------------------


def test_configuration_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "GROVE_CACHE_AWS_DYNAMODB_TABLE", "GROVE_CACHE_AWS_DYNAMODB_URL"):
        monkeypatch.delenv(name, raising=False)
    config = Configuration.from_environment()
    assert (config.table, config.url, config.assume_role_arn) == ("grove", None, None)
    assert config.table_region == config.region == "us-east-1"
    assert config.retry_mode == "standard"
    assert config.max_pool_connections >= 50
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert Configuration.from_environment().table_region == "eu-west-1"


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("grove_cache_aws_dynamodb_table", "state")
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_TABLE_REGION", "ap-south-1")
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_ASSUME_ROLE_ARN", "arn:aws:iam::1:role/r")
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_RETRY_MODE", "adaptive")
    handler = Handler()
    assert handler.config.table == "state"
    assert handler.config.region == "ap-south-1"
    assert handler.config.url == "http://127.0.0.1:1"
    assert handler.config.assume_role_arn == "arn:aws:iam::1:role/r"
    assert handler.config.read_timeout == 2.5
    assert handler.config.retry_mode == "adaptive"
    assert "'state' in ap-south-1 at http://127.0.0.1:1" in handler.location()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GROVE_CACHE_AWS_DYNAMODB_RETRY_MODE", "legacy"),
        ("GROVE_CACHE_AWS_DYNAMODB_MAX_ATTEMPTS", "0"),
        ("GROVE_CACHE_AWS_DYNAMODB_CONNECT_TIMEOUT", "-1"),
        ("GROVE_CACHE_AWS_DYNAMODB_ASSUME_ROLE_DURATION", "60"),
        ("GROVE_CACHE_AWS_DYNAMODB_TABLE", ""),
    ],
)
def test_invalid_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationException, match=variable):
        Handler()


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.delitem(sys.modules, "grove.caches.aws_dynamodb")
    with pytest.raises(ImportError, match=r"pip install 'grove-caches\[aws\]'"):
        importlib.import_module("grove.caches.aws_dynamodb")
    with pytest.raises(ConfigurationException, match=r"pip install 'grove-caches\[aws\]'"):
        grove.caches.load("aws_dynamodb")


def test_load_builds_a_ready_handler(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, table: str
) -> None:
    monkeypatch.setenv("GROVE_CACHE_HANDLER", "aws_dynamodb")
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_URL", moto_endpoint)
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_TABLE", table)
    cache = grove.caches.load()
    assert isinstance(cache, Handler)
    cache.set("pointer.x", "op", "1")
    assert make_handler(moto_endpoint, table).get("pointer.x", "op") == "1"


# -- the table -------------------------------------------------------------------------


def test_missing_table_is_a_configuration_error(moto_endpoint: str, table_name: str) -> None:
    cache = make_handler(moto_endpoint, table_name)
    calls: list[Callable[[], object]] = [
        cache.setup,
        lambda: cache.get("pk", "sk"),
        lambda: cache.set("pk", "sk", "v"),
        lambda: cache.set("pk", "sk", "v", constraint="u"),
        lambda: cache.delete("pk", "sk"),
        lambda: list(cache.entries()),
    ]
    for call in calls:
        with pytest.raises(ConfigurationException) as caught:
            call()
        message = str(caught.value)
        assert repr(table_name) in message
        assert "us-east-1" in message
        assert "create_table()" in message
        assert "aws dynamodb create-table" in message


def test_create_table_is_idempotent(moto_endpoint: str, table_name: str) -> None:
    cache = make_handler(moto_endpoint, table_name)
    assert cache.create_table() is True
    assert cache.create_table() is False
    assert cache.create_storage().startswith("found ")
    cache.setup()
    cache.set("pk", "sk", "v")
    table = raw_client(moto_endpoint).describe_table(TableName=table_name)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert sorted((k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]) == [
        ("pk", "HASH"),
        ("sk", "RANGE"),
    ]


def test_create_table_refuses_a_table_with_other_keys(moto_endpoint: str, table_name: str) -> None:
    raw_client(moto_endpoint).create_table(
        TableName=table_name,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ConfigurationException, match="string hash key 'pk'"):
        make_handler(moto_endpoint, table_name).create_table()


def test_reads_an_item_written_by_upstream_grove(moto_endpoint: str, table: str) -> None:
    raw = raw_client(moto_endpoint)
    key = {"pk": {"S": "pointer.okta.1f2e"}, "sk": {"S": "all"}}
    raw.put_item(
        TableName=table,
        Item={**key, "data": {"S": "2024-05-01T00:00:00Z"}, "expires": {"N": "1999999999"}},
    )
    cache = make_handler(moto_endpoint, table)
    assert cache.get("pointer.okta.1f2e", "all") == "2024-05-01T00:00:00Z"
    cache.set("pointer.okta.1f2e", "all", "2024-05-02T00:00:00Z", constraint="2024-05-01T00:00:00Z")
    # The value is written in the same shape, and the operator's attribute survives.
    item = raw.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    assert item == {**key, "data": {"S": "2024-05-02T00:00:00Z"}, "expires": {"N": "1999999999"}}
    assert list(cache.entries("pointer.okta.1f2e")) == [
        CacheEntry("pointer.okta.1f2e", "all", "2024-05-02T00:00:00Z")
    ]


def test_values_are_written_in_upstream_shape(handler: Handler, moto_endpoint: str) -> None:
    handler.set("execution_lock.x", "all", "", not_set=True)
    handler.set("pointer.x", "op", "\u00e9t\u00e9\n" * 1000)
    raw = raw_client(moto_endpoint)
    for pk, sk, value in [
        ("execution_lock.x", "all", ""),
        ("pointer.x", "op", "\u00e9t\u00e9\n" * 1000),
    ]:
        item = raw.get_item(
            TableName=handler.config.table,
            Key={"pk": {"S": pk}, "sk": {"S": sk}},
            ConsistentRead=True,
        )["Item"]
        assert item == {"pk": {"S": pk}, "sk": {"S": sk}, "data": {"S": value}}


def test_items_without_a_string_value(handler: Handler, moto_endpoint: str) -> None:
    raw = raw_client(moto_endpoint)
    table = handler.config.table
    raw.put_item(TableName=table, Item={"pk": {"S": "p"}, "sk": {"S": "none"}, "x": {"S": "1"}})
    raw.put_item(TableName=table, Item={"pk": {"S": "p"}, "sk": {"S": "num"}, "data": {"N": "1"}})
    # An item without `data` holds no value: absent to every call, and not listed.
    with pytest.raises(NotFoundException):
        handler.get("p", "none")
    handler.set("p", "none", "mine", not_set=True)
    assert handler.get("p", "none") == "mine"
    # A `data` attribute of another type was not written by Grove: say so, not a crash.
    with pytest.raises(AccessException, match="not a string"):
        handler.get("p", "num")
    with pytest.raises(DataFormatException):
        handler.set("p", "num", "v", not_set=True)


# -- requests --------------------------------------------------------------------------


def assert_one_request(sent: Counter[str], operation: str, call: Callable[[], object]) -> None:
    """Make the call (a miss or a refusal will do) and check that it sent one request."""
    sent.clear()
    with contextlib.suppress(NotFoundException, DataFormatException):
        call()
    assert sent == Counter({operation: 1}), call


def test_one_request_per_call(handler: Handler) -> None:
    exactly_one = functools.partial(assert_one_request, count_requests(handler))

    exactly_one("GetItem", lambda: handler.get("pk", "sk"))
    exactly_one("UpdateItem", lambda: handler.set("pk", "sk", "1", not_set=True))
    exactly_one("UpdateItem", lambda: handler.set("pk", "sk", "1", not_set=True))
    exactly_one("GetItem", lambda: handler.get("pk", "sk"))
    exactly_one("UpdateItem", lambda: handler.set("pk", "sk", "2", constraint="1"))
    exactly_one("UpdateItem", lambda: handler.set("pk", "sk", "3", constraint="1"))
    exactly_one("UpdateItem", lambda: handler.set("pk", "sk", "3"))
    exactly_one("DeleteItem", lambda: handler.delete("pk", "sk", constraint="2"))
    exactly_one("DeleteItem", lambda: handler.delete("pk", "sk", constraint="3"))
    exactly_one("DeleteItem", lambda: handler.delete("pk", "sk"))
    exactly_one("GetItem", lambda: handler.get("pk", "sk"))


def test_reads_are_consistent(handler: Handler) -> None:
    seen: list[dict[str, Any]] = []
    handler.client.meta.events.register(
        "provide-client-params.dynamodb.GetItem", lambda params, **_: seen.append(dict(params))
    )
    with pytest.raises(NotFoundException):
        handler.get("pk", "sk")
    assert seen and all(params["ConsistentRead"] is True for params in seen)


def test_fifty_threads_share_one_client_without_pool_warnings(
    moto_endpoint: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_handler(moto_endpoint, table)  # no setup(): the first calls race to build
    barrier = threading.Barrier(50)

    def work(index: int) -> int:
        barrier.wait()
        cache.set(f"pk{index % 5}", f"sk{index}", str(index))
        for _ in range(3):
            assert cache.get(f"pk{index % 5}", f"sk{index}") == str(index)
        return id(cache.client)

    with caplog.at_level(logging.DEBUG), ThreadPoolExecutor(50) as pool:
        clients = set(pool.map(work, range(50)))
    assert len(clients) == 1
    complaints = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert complaints == []
    assert not [r for r in caplog.records if "pool is full" in r.getMessage().lower()]


# -- failures --------------------------------------------------------------------------


def test_throttling_and_server_errors_are_retried(handler: Handler) -> None:
    handler.set("pk", "sk", "v")
    failures = [
        (400, "ThrottlingException", "Rate of requests exceeds the allowed throughput."),
        (500, "InternalServerError", "Internal server error"),
    ]
    attempts: list[str] = []

    def fail_first_attempts(request: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs["event_name"])
        if len(attempts) > len(failures):
            return None  # send it for real
        return dynamodb_error(request, *failures[len(attempts) - 1])

    handler.client.meta.events.register("before-send.dynamodb.GetItem", fail_first_attempts)
    assert handler.get("pk", "sk") == "v"
    assert len(attempts) == 3


def test_throttling_after_the_last_attempt_is_an_access_error(
    moto_endpoint: str, table: str
) -> None:
    cache = make_handler(moto_endpoint, table, max_attempts=2)
    attempts: list[str] = []

    def throttle(request: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs["event_name"])
        return dynamodb_error(request, 400, "ThrottlingException", "slow down")

    cache.client.meta.events.register("before-send.dynamodb.UpdateItem", throttle)
    with pytest.raises(AccessException) as caught:
        cache.set("pointer.x", "op", "secret value")
    message = str(caught.value)
    assert repr(table) in message
    assert "set of pk='pointer.x' sk='op'" in message
    assert "UpdateItem" in message and "ThrottlingException" in message
    assert "secret value" not in message
    assert len(attempts) == 2


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_server_down_is_an_access_error(closed_port: int) -> None:
    cache = make_handler(
        f"http://127.0.0.1:{closed_port}", "grove", connect_timeout=1, max_attempts=2
    )
    with pytest.raises(
        AccessException, match=r"get of pk='pk' sk='sk' failed in aws_dynamodb table 'grove'"
    ):
        cache.get("pk", "sk")
    with pytest.raises(AccessException, match="setup failed"):
        cache.setup()


def test_silent_server_times_out_as_an_access_error(silent_server: str) -> None:
    cache = make_handler(silent_server, "grove", read_timeout=0.5, max_attempts=2)
    with pytest.raises(AccessException, match="timeout"):
        cache.set("pk", "sk", "v")


# -- assume role -----------------------------------------------------------------------


ROLE = "arn:aws:iam::123456789012:role/grove-collector"


def signing_keys(handler: Handler) -> list[str]:
    """Record the access key id that signs each request the handler sends."""
    keys: list[str] = []

    def on_send(request: Any, **kwargs: Any) -> None:
        authorization = request.headers["Authorization"]
        authorization = (
            authorization.decode() if isinstance(authorization, bytes) else authorization
        )
        keys.append(authorization.split("Credential=")[1].split("/")[0])

    handler.client.meta.events.register("before-send.dynamodb", on_send)
    return keys


def test_assume_role_signs_with_sts_credentials(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, table: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    cache = make_handler(moto_endpoint, table, assume_role_arn=ROLE)
    keys = signing_keys(cache)
    cache.set("pk", "sk", "v")
    assert cache.get("pk", "sk") == "v"
    assert len(keys) == 2 and len(set(keys)) == 1
    assert keys[0] != "testing"
    frozen = cache.client._request_signer._credentials.get_frozen_credentials()  # type: ignore[attr-defined]
    identity = boto3.client(
        "sts",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=frozen.access_key,
        aws_secret_access_key=frozen.secret_key,
        aws_session_token=frozen.token,
    ).get_caller_identity()
    assert identity["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/grove-collector/")


def test_assumed_role_credentials_are_renewed_before_expiry(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, table: str
) -> None:
    # Credentials lasting 900 s are always inside botocore's 15-minute renewal window,
    # so every call renews them: a one-off AssumeRole would sign all calls alike.
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    cache = make_handler(moto_endpoint, table, assume_role_arn=ROLE, assume_role_duration=900)
    keys = signing_keys(cache)
    for index in range(3):
        cache.set("pk", "sk", str(index))
    assert len(set(keys)) == 3


def test_assume_role_refused_is_an_access_error(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, closed_port: int, table: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{closed_port}")
    cache = make_handler(moto_endpoint, table, assume_role_arn=ROLE, max_attempts=1)
    with pytest.raises(AccessException, match="setup failed"):
        cache.setup()


# -- an endpoint that is not DynamoDB ----------------------------------------------------


NOT_DYNAMODB = {
    "html": Answer(200, {"Content-Type": "text/html"}, b"<html><body>Welcome</body></html>"),
    "empty": Answer(200, {}, b""),
    "empty json": Answer(200, {"Content-Type": "application/x-amz-json-1.0"}, b"{}"),
}


@pytest.mark.parametrize("answer", NOT_DYNAMODB.values(), ids=NOT_DYNAMODB.keys())
def test_setup_refuses_an_endpoint_that_is_not_dynamodb(answer: Answer) -> None:
    with LoopbackEndpoint(lambda request: answer) as endpoint:
        cache = make_handler(endpoint.url, "grove")
        with pytest.raises(ConfigurationException) as caught:
            cache.setup()
    message = str(caught.value)
    assert endpoint.url in message
    assert "GROVE_CACHE_AWS_DYNAMODB_URL" in message


@pytest.mark.parametrize("answer", NOT_DYNAMODB.values(), ids=NOT_DYNAMODB.keys())
def test_calls_to_an_endpoint_that_is_not_dynamodb_fail(answer: Answer) -> None:
    calls: list[Callable[[BaseCache], object]] = [
        lambda cache: cache.get("pk", "sk"),
        lambda cache: cache.set("pk", "sk", "secret value"),
        lambda cache: cache.set("pk", "sk", "secret value", not_set=True),
        lambda cache: cache.set("pk", "sk", "secret value", constraint="old secret"),
        lambda cache: cache.delete("pk", "sk"),
        lambda cache: cache.delete("pk", "sk", constraint="old secret"),
        lambda cache: list(cache.entries()),
        lambda cache: list(cache.entries("pk")),
    ]
    with LoopbackEndpoint(lambda request: answer) as endpoint:
        cache = make_handler(endpoint.url, "grove")
        for call in calls:
            with pytest.raises(AccessException) as caught:
                call(cache)
            message = str(caught.value)
            assert endpoint.url in message, message
            assert "not DynamoDB" in message, message
            assert "secret" not in message, message


def test_setup_refuses_a_table_with_other_keys(moto_endpoint: str, table_name: str) -> None:
    raw_client(moto_endpoint).create_table(
        TableName=table_name,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ConfigurationException, match="string range key 'sk'"):
        make_handler(moto_endpoint, table_name).setup()


def test_setup_without_permission_to_describe_the_table(moto_endpoint: str, table: str) -> None:
    # A least-privilege policy may grant item calls only: setup() then proves the table
    # with one GetItem, whose answer is checked like any other.
    def refuse_describe(request: Request) -> Answer | None:
        if request.operation == "DescribeTable":
            return dynamodb_error_answer(400, "AccessDeniedException", "not authorized")
        return None

    with LoopbackEndpoint(refuse_describe, upstream=moto_endpoint) as endpoint:
        cache = make_handler(endpoint.url, table)
        cache.setup()
        assert endpoint.operations() == ["DescribeTable", "GetItem"]
        cache.set("pk", "sk", "v")
        assert make_handler(moto_endpoint, table).get("pk", "sk") == "v"


# -- expired session tokens --------------------------------------------------------------


def expire_first_attempt(code: str) -> Callable[[Request], Answer | None]:
    """A script that refuses the first sending of each request body with ``code``."""
    seen: set[bytes] = set()

    def script(request: Request) -> Answer | None:
        if request.body in seen:
            return None
        seen.add(request.body)
        return dynamodb_error_answer(
            400, code, "The security token included in the request is expired"
        )

    return script


@pytest.mark.parametrize("code", ["ExpiredTokenException", "ExpiredToken"])
def test_expired_token_renews_credentials_and_retries_once(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    moto_endpoint: str,
    table: str,
    code: str,
) -> None:
    with LoopbackEndpoint(expire_first_attempt(code), upstream=moto_endpoint) as endpoint:
        cache = make_handler(endpoint.url, table)
        cache.setup()
        # The credentials were rotated meanwhile (a new shared file, a new web-identity
        # token): renewing means reading the credential chain again.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated")
        calls: list[tuple[str, Callable[[], object]]] = [
            ("UpdateItem", lambda: cache.set("pk", "sk", "1", not_set=True)),
            ("GetItem", lambda: cache.get("pk", "sk")),
            ("UpdateItem", lambda: cache.set("pk", "sk", "2", constraint="1")),
            ("DeleteItem", lambda: cache.delete("pk", "sk", constraint="2")),
        ]
        for operation, call in calls:
            endpoint.requests.clear()
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="grove.caches.aws_dynamodb"):
                call()
            assert endpoint.operations() == [operation, operation]
            assert endpoint.requests[1].access_key == "rotated"
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1, warnings
            assert code in warnings[0] and repr(table) in warnings[0]
    with pytest.raises(NotFoundException):
        make_handler(moto_endpoint, table).get("pk", "sk")


def test_a_token_that_stays_expired_is_an_access_error(moto_endpoint: str, table: str) -> None:
    def always_expired(request: Request) -> Answer:
        return dynamodb_error_answer(400, "ExpiredTokenException", "expired")

    with LoopbackEndpoint(always_expired) as endpoint:
        cache = make_handler(endpoint.url, table)
        with pytest.raises(AccessException, match="ExpiredTokenException"):
            cache.set("pk", "sk", "v")
        assert endpoint.operations() == ["UpdateItem", "UpdateItem"]


def test_expired_assumed_role_credentials_are_assumed_again(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, table: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    script = expire_first_attempt("ExpiredTokenException")
    with LoopbackEndpoint(script, upstream=moto_endpoint) as endpoint:
        cache = make_handler(endpoint.url, table, assume_role_arn=ROLE)
        cache.set("pk", "sk", "v")
        first, second = endpoint.requests
        assert first.access_key != second.access_key
        assert "testing" not in (first.access_key, second.access_key)


# -- settings that cannot work -----------------------------------------------------------


def test_url_without_a_scheme_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROVE_CACHE_HANDLER", "aws_dynamodb")
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_URL", "localhost:8000")
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_AWS_DYNAMODB_URL"):
        grove.caches.load()


@pytest.mark.parametrize("variable", ["GROVE_CACHE_AWS_DYNAMODB_TABLE_REGION", "AWS_REGION"])
def test_a_region_that_does_not_exist_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    # create(), not load(): nothing may be sent to an AWS endpoint from a test.
    monkeypatch.delenv("GROVE_CACHE_AWS_DYNAMODB_URL", raising=False)
    monkeypatch.delenv("GROVE_CACHE_AWS_DYNAMODB_TABLE_REGION", raising=False)
    monkeypatch.setenv(variable, "mars-north-7")
    with pytest.raises(ConfigurationException, match=variable):
        grove.caches.create("aws_dynamodb")


def test_any_region_names_a_local_endpoint(moto_endpoint: str, table: str) -> None:
    cache = make_handler(moto_endpoint, table, table_region="local-1")
    assert cache.config.region == "local-1"


def test_no_credentials_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, moto_endpoint: str, table: str
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    credentials_file = tmp_path / "credentials"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials_file))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cache = make_handler(moto_endpoint, table)
    with pytest.raises(ConfigurationException) as caught:
        cache.setup()
    message = str(caught.value)
    assert str(credentials_file) in message
    assert "AWS_ACCESS_KEY_ID" in message
    assert repr(table) in message


# -- the deadline ------------------------------------------------------------------------


def test_configuration_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROVE_CACHE_AWS_DYNAMODB_DEADLINE", raising=False)
    assert Configuration.from_environment().deadline == 15.0
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_DEADLINE", "2.5")
    assert Configuration.from_environment().deadline == 2.5
    monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_DEADLINE", "0")
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_AWS_DYNAMODB_DEADLINE"):
        Configuration.from_environment()


def test_deadline_ends_the_retries_of_a_silent_server(silent_server: str) -> None:
    cache = make_handler(silent_server, "grove", read_timeout=1, max_attempts=5, deadline=2)
    sent = count_requests(cache)
    started = time.monotonic()
    with pytest.raises(AccessException) as caught:
        cache.set("pk", "sk", "v")
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "deadline of 2 s" in message and "UpdateItem" in message
    assert "set of pk='pk' sk='sk'" in message
    # Five attempts of one second each, and the pauses between them, would take 5-15 s.
    assert 1 <= sent["UpdateItem"] < 5
    assert elapsed < 10


def test_throttling_within_the_deadline_is_retried(moto_endpoint: str, table: str) -> None:
    throttled: list[str] = []

    def throttle_twice(request: Request) -> Answer | None:
        if request.operation == "UpdateItem" and len(throttled) < 2:
            throttled.append(request.operation)
            return dynamodb_error_answer(400, "ThrottlingException", "slow down")
        return None

    with LoopbackEndpoint(throttle_twice, upstream=moto_endpoint) as endpoint:
        cache = make_handler(endpoint.url, table, deadline=30)
        cache.set("pk", "sk", "v")
        assert endpoint.operations() == ["UpdateItem"] * 3
    assert make_handler(moto_endpoint, table).get("pk", "sk") == "v"


# -- expiry ------------------------------------------------------------------------------


def raw_item(url: str, table: str, pk: str, sk: str) -> dict[str, Any] | None:
    key = {"pk": {"S": pk}, "sk": {"S": sk}}
    item: dict[str, Any] | None = (
        raw_client(url).get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    )
    return item


def test_an_expiring_entry_carries_its_expiry_as_a_number(moto_endpoint: str, table: str) -> None:
    clock = ManualClock(start=1_800_000_000.0)
    cache = make_handler(moto_endpoint, table, clock=clock)
    cache.set("lock", "all", "held", not_set=True, ttl=90.5)
    key = {"pk": {"S": "lock"}, "sk": {"S": "all"}}
    item = raw_item(moto_endpoint, table, "lock", "all")
    assert item is not None and item.keys() == {"pk", "sk", "data", "expires_at"}
    assert float(item["expires_at"]["N"]) == 1_800_000_090.5
    # A plain set removes the expiry: the item is upstream Grove's shape again.
    cache.set("lock", "all", "kept")
    assert raw_item(moto_endpoint, table, "lock", "all") == {**key, "data": {"S": "kept"}}
    renamed = make_handler(moto_endpoint, table, clock=clock, ttl_attribute="ttl")
    renamed.set("lock", "all", "held", ttl=10)
    item = raw_item(moto_endpoint, table, "lock", "all")
    assert item is not None and item.keys() == {"pk", "sk", "data", "ttl"}
    assert float(item["ttl"]["N"]) == 1_800_000_010


def test_the_callers_clock_decides(moto_endpoint: str, table: str) -> None:
    now = ManualClock()
    ahead = ManualClock(start=now() + 120)
    on_time = make_handler(moto_endpoint, table, clock=now)
    early = make_handler(moto_endpoint, table, clock=ahead)
    on_time.set("lock", "all", "ours", ttl=60)
    # For the host whose clock runs two minutes ahead, the lock has expired: it reads
    # nothing, and its not_set passes inside DynamoDB, where its own clock is :now.
    with pytest.raises(NotFoundException):
        early.get("lock", "all")
    assert on_time.get("lock", "all") == "ours"
    early.set("lock", "all", "theirs", not_set=True, ttl=60)
    assert on_time.get("lock", "all") == "theirs"
    with pytest.raises(DataFormatException):
        on_time.set("lock", "all", "mine", not_set=True)


def test_expiry_costs_no_extra_request(moto_endpoint: str, table: str) -> None:
    clock = ManualClock()
    cache = make_handler(moto_endpoint, table, clock=clock)
    exactly_one = functools.partial(assert_one_request, count_requests(cache))

    exactly_one("UpdateItem", lambda: cache.set("pk", "sk", "1", not_set=True, ttl=10))
    exactly_one("GetItem", lambda: cache.get("pk", "sk"))
    exactly_one("UpdateItem", lambda: cache.set("pk", "sk", "2", constraint="1", ttl=10))
    exactly_one("UpdateItem", lambda: cache.set("pk", "sk", "3", ttl=10))
    clock.advance(20)
    exactly_one("GetItem", lambda: cache.get("pk", "sk"))
    exactly_one("UpdateItem", lambda: cache.set("pk", "sk", "4", constraint="3", ttl=10))
    exactly_one("DeleteItem", lambda: cache.delete("pk", "sk", constraint="3"))
    exactly_one("UpdateItem", lambda: cache.set("pk", "sk", "5", not_set=True, ttl=10))
    clock.advance(20)
    exactly_one("DeleteItem", lambda: cache.delete("pk", "sk"))


def test_create_table_turns_dynamodbs_ttl_on(moto_endpoint: str, table_name: str) -> None:
    cache = make_handler(moto_endpoint, table_name)
    assert cache.create_table() is True
    raw = raw_client(moto_endpoint)
    described = raw.describe_time_to_live(TableName=table_name)["TimeToLiveDescription"]
    assert described == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    assert cache.create_table() is False
    assert cache.create_storage().endswith("expiry in 'expires_at'")
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE"):
        make_handler(moto_endpoint, table_name, ttl_attribute="ttl").create_table()


def test_ttl_attribute_cannot_be_one_the_handler_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("data", "digest", "pk", "part"):
        monkeypatch.setenv("GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE", name)
        with pytest.raises(ConfigurationException, match="GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE"):
            Configuration.from_environment()


def test_an_expiry_attribute_of_another_type_is_reported(
    handler: Handler, moto_endpoint: str
) -> None:
    raw_client(moto_endpoint).put_item(
        TableName=handler.config.table,
        Item={"pk": {"S": "p"}, "sk": {"S": "s"}, "data": {"S": "v"}, "expires_at": {"S": "x"}},
    )
    with pytest.raises(AccessException, match="GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE"):
        handler.get("p", "s")


def test_sweep_walks_the_table_once_in_bounded_batches(moto_endpoint: str, table: str) -> None:
    clock = ManualClock()
    cache = make_handler(moto_endpoint, table, clock=clock)
    for index in range(30):
        cache.set(f"pk{index % 4}", f"gone{index}", "v", ttl=10)
        cache.set(f"pk{index % 4}", f"kept{index}", "w", ttl=1000)
    cache.set("pk0", "plain", "x")
    clock.advance(20)
    sent = count_requests(cache)
    batches: list[int] = []
    assert cache.sweep_expired(batch_size=7, progress=batches.append) == 30
    assert batches == [7, 7, 7, 7, 2]
    assert sent["DeleteItem"] == 30
    assert sent["Scan"] == 5
    assert len(list(cache.entries())) == 31
    assert cache.sweep_expired(batch_size=7) == 0


def test_a_refused_condition_brings_back_the_stored_item(handler: Handler) -> None:
    seen: list[dict[str, Any]] = []
    handler.client.meta.events.register(
        "provide-client-params.dynamodb", lambda params, **_: seen.append(dict(params))
    )
    handler.set("pk", "sk", "v")
    handler.set("pk", "sk", "w", constraint="v")
    with pytest.raises(DataFormatException):
        handler.delete("pk", "sk", constraint="v")
    with pytest.raises(DataFormatException):
        handler.set("pk", "sk", "x", not_set=True)
    asked = [params.get("ReturnValuesOnConditionCheckFailure") for params in seen]
    assert asked == [None, "ALL_OLD", "ALL_OLD", "ALL_OLD"]
    # Kept inside the handler for now: the refusal carries the item as it was.
    refused = handler._delete(
        {"pk": {"S": "pk"}, "sk": {"S": "sk"}},
        "#data = :expected",
        {":expected": {"S": "v"}},
        False,
        True,
    )
    assert refused == _Refused({"pk": {"S": "pk"}, "sk": {"S": "sk"}, "data": {"S": "w"}})
