"""Testing on a moto server: fixtures for fake AWS credentials and one server per session,
and helpers for tests of the aws_dynamodb handler.

Registered as a plugin in ``conftest.py``, so any test module can ask for
``moto_endpoint`` (the server's URL, with fake credentials in the environment for the
whole session) or ``table_name`` (a table name no other test uses).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders

from benchmarks.moto_server import UNSET, MotoServer, fake_credentials
from grove.caches.aws_dynamodb import Configuration, Handler


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Start one single-threaded moto server for the session, with fake credentials.

    The environment is set for the whole session (worker processes inherit it) and
    restored at the end; the server is stopped by its PID.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in fake_credentials().items():
            patch.setenv(name, value)
        for name in UNSET:
            patch.delenv(name, raising=False)
        with MotoServer() as server:
            yield server.url


@pytest.fixture
def table_name() -> str:
    """A table name no other test uses."""
    return f"grove-{uuid.uuid4().hex[:12]}"


def make_handler(url: str, table: str, **settings: Any) -> Handler:
    """Build a handler on the moto server; picklable through functools.partial."""
    return Handler(Configuration(url=url, table=table, **settings))


def count_requests(handler: Handler) -> Counter[str]:
    """Count every HTTP request (each attempt) the handler's client sends, by operation."""
    sent: Counter[str] = Counter()

    def on_send(request: Any, **kwargs: Any) -> None:
        sent[kwargs["event_name"].rsplit(".", 1)[-1]] += 1

    handler.client.meta.events.register("before-send.dynamodb", on_send)
    return sent


def fake_answer(request: Any, status: int, body: dict[str, Any]) -> AWSResponse:
    """An answer for a ``before-send`` hook to return instead of sending the request."""
    headers = HTTPHeaders()
    headers["Content-Type"] = "application/x-amz-json-1.0"
    return AWSResponse(request.url, status, headers, _Raw(json.dumps(body).encode()))


def dynamodb_error(request: Any, status: int, code: str, message: str) -> AWSResponse:
    """An error answer as DynamoDB sends it, for a ``before-send`` hook to return."""
    body = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}
    return fake_answer(request, status, body)


class _Raw:
    """The raw body botocore reads from an HTTP response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body
