"""The boto3 client of a handler: credentials, deadlines, and answers checked.

Clients: one low-level boto3 client per handler, built in :meth:`Handler.setup` or on
first use, and shared by all threads (botocore clients are thread-safe). Its connection
pool holds ``GROVE_CACHE_AWS_DYNAMODB_MAX_POOL_CONNECTIONS`` connections (default 50,
Grove's worker count), so threads never queue behind the pool. Throttling, 5xx answers
and connection errors are retried with backoff in botocore's ``standard`` (or
``adaptive``) retry mode, then surface as :class:`~grove.exceptions.AccessException`
naming the table and the operation. Each request has a deadline,
``GROVE_CACHE_AWS_DYNAMODB_DEADLINE`` (15 s), over all its attempts and the pauses
between them: no attempt starts after it, each attempt's read timeout is cut to the
time left, and a retryable failure after it ends the request
(:class:`DeadlineExceededError`). A small call is one request, so a server that is down
fails it after about the deadline: only a connection being opened, or a backoff pause
begun before the deadline (botocore's, at most a few seconds), can carry past it.

Answers are checked (:meth:`Handler._check_answer`): a request id, what the operation
returns, and, for item requests, which ask for it at no cost, the consumed capacity of
this table. An endpoint that is not DynamoDB (an HTML page, an empty 200) is
:class:`NotDynamoDBError`, never a silent success; :meth:`Handler.setup` proves the table
with ``DescribeTable``.

Credentials come from boto3's usual chain. With ``GROVE_CACHE_AWS_DYNAMODB_ASSUME_ROLE_ARN``
they come from STS instead, as refreshable credentials that botocore renews before they
expire. Should DynamoDB still answer ``ExpiredToken`` (``ExpiredTokenException``) —
a rotated credentials file, a web-identity token replaced on disk, credentials revoked
early — the client is built again from the chain (the role assumed again) and the
request sent once more, with one warning in the log. ``GROVE_CACHE_AWS_DYNAMODB_URL``
points every DynamoDB call at another endpoint (DynamoDB Local, moto, a VPC endpoint);
STS honours boto3's own ``AWS_ENDPOINT_URL_STS``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import boto3
import botocore
import botocore.session
from botocore import xform_name
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound
from botocore.retries.standard import RetryContext, StandardRetryConditions
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from grove.caches.atomic import Clock
from grove.caches.aws_dynamodb.expressions import _OWN_ATTRIBUTES
from grove.caches.configuration import HandlerConfiguration
from grove.exceptions import ConfigurationException, GroveException

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sts import STSClient

_DEFAULT_REGION = "us-east-1"
_ROLE_SESSION_NAME = "grove-caches"

_EXPIRED_TOKEN = frozenset({"ExpiredTokenException", "ExpiredToken"})
_OPERATIONS = (
    "GetItem",
    "UpdateItem",
    "DeleteItem",
    "BatchGetItem",
    "BatchWriteItem",
    "Query",
    "Scan",
    "DescribeTable",
    "CreateTable",
    "DescribeTimeToLive",
    "UpdateTimeToLive",
)
_METHODS = {operation: xform_name(operation) for operation in _OPERATIONS}
_ANSWER_KEYS = {
    "GetItem": "ConsumedCapacity",
    "UpdateItem": "ConsumedCapacity",
    "DeleteItem": "ConsumedCapacity",
    "BatchGetItem": "Responses",
    "BatchWriteItem": "UnprocessedItems",
    "Query": "Count",
    "Scan": "Count",
    "DescribeTable": "Table",
    "CreateTable": "TableDescription",
    "DescribeTimeToLive": "TimeToLiveDescription",
    "UpdateTimeToLive": "TimeToLiveSpecification",
}
"""What every answer of each operation holds; item requests ask for their consumed
capacity, so that even an empty success (a write, a miss) says that DynamoDB saw it."""
_REGION_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")  # botocore's rule

_logger = logging.getLogger("grove.caches.aws_dynamodb")


@functools.cache
def _dynamodb_regions() -> frozenset[str]:
    """Every region in which the installed botocore knows a DynamoDB endpoint."""
    session = botocore.session.get_session()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("dynamodb", partition_name=partition)
    )


class NotDynamoDBError(BotoCoreError):
    """An endpoint answered a request, but not as DynamoDB answers."""

    fmt = "{operation} answer from {endpoint} is not DynamoDB's: {why}"


class DeadlineExceededError(BotoCoreError):
    """A request was still unanswered when its deadline passed."""

    fmt = (
        "{operation} gave up: the deadline of {deadline:g} s "
        "(GROVE_CACHE_AWS_DYNAMODB_DEADLINE) passed after {attempts} attempt(s){last}"
    )


class _Deadline:
    """Bounds every request of a client, all its attempts and pauses included.

    Installed on botocore's events: the deadline starts when a request is made
    (``before-call``); no attempt starts after it, and each attempt's read timeout is
    cut to the time left (``before-send``); a retryable failure after it ends the
    request at once instead of pausing before another attempt (``needs-retry``). The
    request then raises :class:`DeadlineExceededError`, naming the last failure.
    """

    _DEADLINE = "grove_deadline"
    _ATTEMPTS = "grove_attempts"
    _LAST = "grove_last_failure"

    def __init__(self, seconds: float, read_timeout: float, max_attempts: int) -> None:
        self.seconds = seconds
        self.read_timeout = read_timeout
        self.retryable = StandardRetryConditions(max_attempts=max_attempts)

    def install(self, client: DynamoDBClient) -> None:
        events = client.meta.events
        events.register("before-call.dynamodb", self.start)
        events.register("before-send.dynamodb", self.before_attempt)
        events.register_first("needs-retry.dynamodb", self.after_attempt)

    def start(self, context: dict[str, Any], **_: Any) -> None:
        context[self._DEADLINE] = time.monotonic() + self.seconds
        context[self._ATTEMPTS] = 0

    def before_attempt(self, request: Any, event_name: str, **_: Any) -> None:
        context = request.context
        left = context.get(self._DEADLINE, math.inf) - time.monotonic()
        if left <= 0:
            raise self._exceeded(event_name.rsplit(".", 1)[-1], context)
        context[self._ATTEMPTS] = context.get(self._ATTEMPTS, 0) + 1
        # botocore reads a per-request read timeout from the context (newer releases).
        context["read_timeout"] = min(self.read_timeout, left)

    def after_attempt(
        self,
        response: tuple[Any, dict[str, Any]] | None,
        attempts: int,
        caught_exception: Exception | None,
        request_dict: dict[str, Any],
        operation: Any,
        **_: Any,
    ) -> None:
        context = request_dict["context"]
        http_response, parsed = response if response is not None else (None, None)
        if caught_exception is not None:
            context[self._LAST] = f"{type(caught_exception).__name__}: {caught_exception}"
        elif parsed is not None and "Error" in parsed:
            context[self._LAST] = str(parsed["Error"].get("Code") or "an error")
        if time.monotonic() < context.get(self._DEADLINE, math.inf):
            return
        attempt = RetryContext(
            attempt_number=attempts,
            operation_model=operation,
            parsed_response=parsed,
            http_response=http_response,
            caught_exception=caught_exception,
            request_context=context,
        )
        if self.retryable.is_retryable(attempt):
            raise self._exceeded(operation.name, context)

    def _exceeded(self, operation: str, context: dict[str, Any]) -> DeadlineExceededError:
        last = context.get(self._LAST)
        return DeadlineExceededError(
            operation=operation,
            deadline=self.seconds,
            attempts=context.get(self._ATTEMPTS, 0),
            last=f"; the last failed with {last}" if last else "",
        )


class Configuration(HandlerConfiguration):
    """Defines environment variables used to configure the AWS DynamoDB handler.

    Each field is set by ``GROVE_CACHE_AWS_DYNAMODB_<FIELD>``, case-insensitive; for
    example ``assume_role_arn`` by ``GROVE_CACHE_AWS_DYNAMODB_ASSUME_ROLE_ARN``.
    """

    model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_AWS_DYNAMODB_")

    table: str = Field(default="grove", min_length=1, description="The DynamoDB table.")
    url: str | None = Field(
        default=None,
        description="An endpoint URL for every DynamoDB call (DynamoDB Local, a VPC endpoint).",
    )
    assume_role_arn: str | None = Field(
        default=None, description="A role to assume through STS for every call."
    )
    table_region: str | None = Field(
        default=None,
        validate_default=True,
        description="The table's region; default AWS_REGION when set, else us-east-1.",
    )
    assume_role_duration: int = Field(
        default=3600,
        ge=900,
        le=43200,
        description="Seconds each set of assumed-role credentials is valid (the role's "
        "maximum session duration caps it); renewal starts 15 minutes before expiry, so at "
        "900 every call renews.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to wait for a connection, per attempt."
    )
    read_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for an answer, per attempt."
    )
    max_attempts: int = Field(
        default=5, ge=1, description="Attempts per request, the first one included."
    )
    retry_mode: Literal["standard", "adaptive"] = Field(
        default="standard", description="botocore's retry mode."
    )
    max_pool_connections: int = Field(
        default=50, ge=1, description="HTTP connections kept for the threads sharing a handler."
    )
    ttl_attribute: str = Field(
        default="expires_at",
        min_length=1,
        max_length=255,
        description="The number attribute that holds when an entry expires, in seconds "
        "since the epoch; create_table() turns DynamoDB's TTL on for it.",
    )
    deadline: float = Field(
        default=15.0,
        gt=0,
        description="Seconds one request may take, all its attempts and the pauses between "
        "them included; a small get, set or delete is one request.",
    )

    @field_validator("url")
    @classmethod
    def _url_with_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL with a host, such as http://localhost:8000"
            )
        return value

    @field_validator("ttl_attribute")
    @classmethod
    def _not_a_grove_attribute(cls, value: str) -> str:
        if value in _OWN_ATTRIBUTES:
            raise ValueError(f"{value!r} is an attribute the handler itself uses")
        return value

    @field_validator("assume_role_arn")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("table_region")
    @classmethod
    def _region_from_environment(cls, value: str | None, info: ValidationInfo) -> str:
        region = value or os.environ.get("AWS_REGION") or _DEFAULT_REGION
        source = "" if value else " (from AWS_REGION)"
        if not _REGION_NAME.fullmatch(region):
            raise ValueError(f"{region!r}{source} is not a region name")
        # Any name will do for a local endpoint (DynamoDB Local, moto): it only signs.
        local = (
            info.data.get("url")
            or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if not local and region not in _dynamodb_regions():
            raise ValueError(
                f"{region!r}{source} is not a region where botocore {botocore.__version__} "
                "knows DynamoDB (a region newer than botocore needs an upgrade)"
            )
        return region

    @property
    def region(self) -> str:
        """The table's region, always set after validation."""
        return self.table_region or _DEFAULT_REGION


class _AssumedRole(CredentialProvider):
    """A credential provider that yields one refreshable set of assumed-role credentials."""

    METHOD = "grove-assume-role"
    CANONICAL_NAME = "GroveAssumeRole"

    def __init__(self, credentials: RefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> RefreshableCredentials:
        return self._credentials


class Connection:
    """The client half of a handler: one client, shared, built once.

    It is built again on ``ExpiredToken``; every request goes through
    :meth:`_request`, which checks that the answer is DynamoDB's.
    """

    # Provided by the handler (and by grove.caches.atomic.AtomicCache): declared here,
    # not defined, so that they do not shadow the handler's own.
    config: Configuration
    _table: str
    _ttl: str
    _clock: Clock
    _client: DynamoDBClient | None
    _client_lock: threading.Lock
    _renewable: bool
    driver_errors: ClassVar[tuple[type[Exception], ...]]
    location: Callable[[], str]
    _failure: Callable[..., GroveException]

    @property
    def client(self) -> DynamoDBClient:
        """The DynamoDB client, built on first use and shared by all threads.

        :raises ConfigurationException: No credentials were found.
        """
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
        return client

    def _connect(self) -> DynamoDBClient:
        """Build a client from the credential chain (or the assumed role) and the settings.

        :raises ConfigurationException: No credentials were found, or the profile is missing.
        """
        config = self.config
        botocore_config = Config(
            region_name=config.region,
            connect_timeout=min(config.connect_timeout, config.deadline),
            read_timeout=min(config.read_timeout, config.deadline),
            retries={"mode": config.retry_mode, "total_max_attempts": config.max_attempts},
            max_pool_connections=config.max_pool_connections,
        )
        session = botocore.session.Session()
        try:
            found = session.get_credentials()
        except ProfileNotFound as exc:
            raise ConfigurationException(
                f"no AWS credentials for {self.location()}: {exc} (AWS_PROFILE)"
            ) from exc
        if found is None:
            raise ConfigurationException(self._no_credentials_message(session))
        if config.assume_role_arn:
            sts: STSClient = boto3.session.Session(botocore_session=session).client(
                "sts", config=botocore_config
            )
            session = botocore.session.Session()
            credentials = self._assume_role(sts, config.assume_role_arn)
            session.register_component("credential_provider", CredentialResolver([credentials]))
        client: DynamoDBClient = boto3.session.Session(botocore_session=session).client(
            "dynamodb", endpoint_url=config.url, config=botocore_config
        )
        _Deadline(config.deadline, config.read_timeout, config.max_attempts).install(client)
        return client

    def _no_credentials_message(self, session: botocore.session.Session) -> str:
        resolver = session.get_component("credential_provider")
        methods = ", ".join(provider.METHOD for provider in resolver.providers)
        credentials_file = os.path.expanduser(str(session.get_config_variable("credentials_file")))
        config_file = os.path.expanduser(str(session.get_config_variable("config_file")))
        return (
            f"no AWS credentials for {self.location()}: boto3 looked in the environment "
            f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), in {credentials_file} "
            f"(AWS_SHARED_CREDENTIALS_FILE) and {config_file} (AWS_CONFIG_FILE) for the "
            f"profile {session.profile or 'default'!r} (AWS_PROFILE), and tried, in order: "
            f"{methods}"
        )

    def _assume_role(self, sts: STSClient, role_arn: str) -> _AssumedRole:
        """Build credentials that STS renews before they expire.

        With less than 15 minutes left, the next call renews them (one thread renews
        while the others go on with the old ones); only in the last 10 minutes do calls
        wait for the renewal.
        """
        duration = self.config.assume_role_duration

        def fetch() -> dict[str, Any]:
            answer = sts.assume_role(
                RoleArn=role_arn, RoleSessionName=_ROLE_SESSION_NAME, DurationSeconds=duration
            )
            credentials = answer["Credentials"]
            return {
                "access_key": credentials["AccessKeyId"],
                "secret_key": credentials["SecretAccessKey"],
                "token": credentials["SessionToken"],
                "expiry_time": credentials["Expiration"].isoformat(),
            }

        return _AssumedRole(
            RefreshableCredentials.create_from_metadata(
                metadata=fetch(), refresh_using=fetch, method=_AssumedRole.METHOD
            )
        )

    def _renew(self, stale: DynamoDBClient, code: str) -> DynamoDBClient:
        """Replace a client whose credentials expired by one built afresh; return it.

        The first thread to find the stale client rebuilds it and logs one warning; the
        others use the new one.
        """
        with self._client_lock:
            if self._client is stale:
                _logger.warning(
                    "%s answered %s: renewing the credentials from the credential chain%s "
                    "and retrying once",
                    self.location(),
                    code,
                    " and the assumed role" if self.config.assume_role_arn else "",
                )
                self._client = self._connect()
            assert self._client is not None
            return self._client

    def _request(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its answer, checked to be DynamoDB's.

        An answer of ``ExpiredToken`` renews the credentials and sends the request once
        more.

        :raises ClientError: DynamoDB refused the request (a failed condition included, or
            a missing table: see :meth:`_classify`).
        :raises NotDynamoDBError: The answer was not DynamoDB's.
        :raises BotoCoreError: The request failed otherwise (network, deadline).
        """
        client = self._client or self.client
        method = _METHODS[operation]
        try:
            answer: dict[str, Any] = getattr(client, method)(**request)
        except ClientError as exc:
            code = _error_code(exc)
            if code not in _EXPIRED_TOKEN or not self._renewable:
                raise
            client = self._renew(client, code)
            answer = getattr(client, method)(**request)
        self._check_answer(client, operation, request, answer)
        return answer

    def _check_answer(
        self, client: DynamoDBClient, operation: str, request: dict[str, Any], answer: Any
    ) -> None:
        """Make sure that an answer is DynamoDB's: a request id, and what the operation returns.

        :raises NotDynamoDBError: It is not: an HTML page, an empty body, a bare ``{}``.
        """
        metadata = answer.get("ResponseMetadata", {})
        required = _ANSWER_KEYS[operation]
        if not metadata.get("RequestId"):
            content_type = metadata.get("HTTPHeaders", {}).get("content-type", "none")
            why = f"no request id (content type {content_type!r})"
        elif required not in answer:
            why = f"no {required}"
        elif required == "ConsumedCapacity" and (
            answer[required].get("TableName") != request["TableName"]
        ):
            why = "the consumed capacity of another table"
        else:
            return
        raise NotDynamoDBError(operation=operation, endpoint=client.meta.endpoint_url, why=why)


def _error_code(exc: ClientError) -> str:
    """The error code of DynamoDB's answer, such as ``ConditionalCheckFailedException``."""
    return str(exc.response.get("Error", {}).get("Code", ""))
