"""Testing on a moto server: fixtures for fake AWS credentials and one server per session,
and helpers for tests of the aws_dynamodb handler.

Registered as a plugin in ``conftest.py``, so any test module can ask for
``moto_endpoint`` (the server's URL, with fake credentials in the environment for the
whole session) or ``table_name`` (a table name no other test uses).

:class:`LoopbackEndpoint` is a scripted HTTP server on a loopback port, for the faults a
real DynamoDB endpoint can show but moto cannot be asked to: an answer that is not
DynamoDB's, an expired session token, a server that stops answering.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders

from grove.caches.atomic import Clock
from grove.caches.aws_dynamodb import Configuration, Handler
from tests.moto_process import UNSET, MotoServer, fake_credentials


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


def make_handler(url: str, table: str, clock: Clock | None = None, **settings: Any) -> Handler:
    """Build a handler on the moto server; picklable through functools.partial."""
    return Handler(Configuration(url=url, table=table, **settings), clock=clock)


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
    headers["x-amzn-RequestId"] = uuid.uuid4().hex
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


class Request(NamedTuple):
    """One request a :class:`LoopbackEndpoint` received."""

    operation: str
    """The DynamoDB operation, from the ``X-Amz-Target`` header (``GetItem``)."""
    body: bytes
    access_key: str
    """The access key id that signed the request."""


class Answer(NamedTuple):
    """What a :class:`LoopbackEndpoint` sends back instead of forwarding a request."""

    status: int
    headers: dict[str, str]
    body: bytes


Script = Callable[[Request], Answer | None]
"""Decides each request: an answer to send, or ``None`` to forward it upstream."""


def dynamodb_error_answer(status: int, code: str, message: str) -> Answer:
    """An error answer in DynamoDB's shape, for a :data:`Script` to send."""
    body = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": uuid.uuid4().hex}
    return Answer(status, headers, json.dumps(body).encode())


class LoopbackEndpoint:
    """A scripted HTTP server on a free ``127.0.0.1`` port, served by threads of this process.

    Each POST is recorded in :attr:`requests` and shown to ``script``; its answer is
    sent, or, when it returns ``None``, the request is forwarded unchanged to
    ``upstream`` (the moto server) and moto's answer relayed. Use it as a context
    manager; :attr:`url` is the endpoint.

    :param script: Decides each request.
    :param upstream: Where forwarded requests go; without it every request must be
        answered by ``script``.
    """

    def __init__(self, script: Script, upstream: str | None = None) -> None:
        self.script = script
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                signature = self.headers.get("Authorization", "")
                request = Request(
                    self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1],
                    body,
                    signature.partition("Credential=")[2].partition("/")[0],
                )
                with endpoint._lock:
                    endpoint.requests.append(request)
                answer = endpoint.script(request) or endpoint._forward(self, body)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                """Do not log every request."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _forward(self, received: BaseHTTPRequestHandler, body: bytes) -> Answer:
        if self.upstream is None:
            raise AssertionError("the script answered None without an upstream to forward to")
        connection = http.client.HTTPConnection(
            self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=30
        )
        try:
            headers = {k: v for k, v in received.headers.items() if k.lower() != "connection"}
            connection.request("POST", received.path, body=body, headers=headers)
            response = connection.getresponse()
            relayed = {
                name: value
                for name, value in response.getheaders()
                if name.lower() not in ("content-length", "connection", "transfer-encoding")
            }
            return Answer(response.status, relayed, response.read())
        finally:
            connection.close()

    def operations(self) -> list[str]:
        """The operations received so far, in order."""
        with self._lock:
            return [request.operation for request in self.requests]

    def __enter__(self) -> LoopbackEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
