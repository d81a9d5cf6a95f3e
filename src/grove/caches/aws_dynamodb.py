"""Grove AWS DynamoDB cache handler.

Layout: one DynamoDB table (``GROVE_CACHE_AWS_DYNAMODB_TABLE``, default ``grove``) with a
string hash key ``pk`` and a string range key ``sk``. A value of up to
:data:`INLINE_VALUE_BYTES` bytes of UTF-8 (nearly DynamoDB's 400 KB item limit) is the
string attribute ``data`` of its item: upstream Grove's shape, so tables written by
upstream Grove read back unchanged, and small values are written exactly as upstream
Grove wrote them. Other attributes of an item (a TTL an operator added, say) are left
alone: writes are ``UpdateItem``, as upstream Grove's were. An item with neither a
``data`` nor a ``digest`` attribute holds no value.

Atomicity of small values: each call is one request, which DynamoDB applies atomically,
condition included.

- ``get`` is one ``GetItem`` with ``ConsistentRead=True``: a lock or a pointer is never
  read stale.
- ``set`` is one ``UpdateItem`` carrying its condition: ``not_set`` is
  ``(attribute_not_exists(data) AND attribute_not_exists(digest)) OR expires_at <= :now``,
  ``constraint`` is ``data = :constraint AND (attribute_not_exists(expires_at) OR
  expires_at > :now)``.
- ``delete`` is one ``DeleteItem``, with the same ``constraint`` condition.

A failed condition (``ConditionalCheckFailedException``) changes nothing and becomes
:class:`~grove.exceptions.DataFormatException`; nothing is read before it is written.

Large values (up to :data:`MAX_VALUE_BYTES`): the item of the key is a *head*. A value
that zlib compresses into one item is stored whole in the head, as binary ``packed``
beside the SHA-256 ``digest`` of the value: one request, as for a small value. A larger
one is split: its compressed bytes go into immutable *chunk* items written first under a
fresh version id (hash key ``grove.caches.chunk.<version>``, range keys ``0000``,
``0001``...), then one conditional ``UpdateItem`` switches the head to that version
(``version``, ``parts``, ``digest``); that single request is the write, so it is atomic
and carries the ``not_set``/``constraint`` condition like a small write. A ``constraint``
over :data:`INLINE_VALUE_BYTES` is compared with the head's ``digest``, so
compare-and-set works on the logical value whatever its stored form. The replaced
version's chunks are deleted afterwards, learnt from the same request
(``ReturnValues=ALL_OLD``). A reader reads the head (consistently), then that version's
chunks (``BatchGetItem``, consistently); if a chunk vanished, the value was replaced
under it and it starts again from the head, so it never returns a mix of two versions.
The reassembled value is checked against the digest. A writer that dies after writing
chunks but before switching the head leaves them unreferenced: never read, and removed by
:meth:`Handler.maintain`, the maintenance call, once older than an hour (a writer
gives up switching a head more than :data:`WRITE_DEADLINE` seconds after it started
writing chunks, so a sweep never removes the chunks of a write in flight). One that dies
after the switch leaves the old version's chunks, removed the same way.

Requests per call (botocore's retries aside):

- a small or packed value: 1 for ``get``, ``set`` and ``delete``;
- a chunked value of N parts: ``get`` 1 + ceil(N / 25), ``set`` ceil(N / 25) + 1;
- replacing or deleting a chunked value: + ceil(N_old / 25) to delete its chunks;
- an unconditional small ``set`` over a large value, or an unconditional ``delete`` of
  a chunked one: + 1, as the one-request form is tried first;
- a refused chunked ``set``: + ceil(N / 25) to delete the chunks it wrote.

A 4 MiB value of incompressible text is 9 parts; 4 MiB of Grove's hex digests, 6.

Listing is a ``Query`` for one partition key and a paginated ``Scan`` otherwise, both
with consistent reads; chunk items are never listed, chunked values are listed whole.

Expiry: ``set(..., ttl=...)`` stores, in the same request, the number attribute
``GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE`` (default ``expires_at``): the moment the
entry expires, in seconds since the epoch to the millisecond. A ``set`` without ``ttl``
removes it in the same request; plain entries keep upstream Grove's shape. The caller's
clock decides (:attr:`Handler.clock_owner`; ``time.time`` unless a clock is given): a
read compares the attribute with it, and every condition carries it as ``:now``, so an
expired entry is absent inside the same single request (``not_set`` passes over it, no
``constraint`` matches it, listing filters it out). DynamoDB's own TTL, which
:meth:`Handler.create_table` turns on for the attribute, deletes expired items only
within days and decides nothing; :meth:`Handler.sweep_expired` removes them sooner, in
bounded batches (filtered ``Scan`` pages, one conditional ``DeleteItem`` each). A
chunked value expires as a whole: its head carries the expiry, and its chunks are
deleted with it (by the sweep, by the write that replaces it, or, once DynamoDB's TTL
removed the head, by :meth:`Handler.maintain`); they carry the expiry too, one
day later, so DynamoDB removes them even if nobody sweeps.

Clock skew: hosts whose clocks differ by ``d`` seconds disagree about an entry for
``d`` seconds around its expiry. A host whose clock runs ahead sees it expire up to
``d`` seconds early, and may take a lock over it while the holder's clock still says it
is held; a host whose clock lags keeps seeing it up to ``d`` seconds longer. Keep hosts
on NTP (skew of milliseconds) and times to live far above the skew. DynamoDB's TTL
deletes an item only after AWS's clock passed its expiry, usually much later; a host
lagging AWS's clock can see such an entry vanish up to ``d`` seconds early.

Durability is DynamoDB's: a write is acknowledged once it is stored in several
availability zones.

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
import hashlib
import logging
import math
import os
import re
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict
from typing_extensions import override

try:
    import boto3
    import botocore
    import botocore.session
    from botocore import xform_name
    from botocore.config import Config
    from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials
    from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound, WaiterError
    from botocore.retries.standard import RetryContext, StandardRetryConditions
except ImportError as exc:  # without the aws extra (a test hides boto3)
    raise ImportError(
        f"grove.caches.aws_dynamodb needs boto3 ({exc}): pip install 'grove-caches[aws]'"
    ) from exc

from grove.caches import CacheEntry, CreatingStorage, Listing, Maintaining
from grove.caches.atomic import (
    ABSENT,
    ANY,
    Clock,
    Expected,
    ExpectedToRemove,
    ExpiringCache,
    Sentinel,
    Stored,
    describe_key,
)
from grove.caches.configuration import HandlerConfiguration
from grove.exceptions import AccessException, ConfigurationException, GroveException

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sts import STSClient

__all__ = [
    "INLINE_VALUE_BYTES",
    "MAX_VALUE_BYTES",
    "WRITE_DEADLINE",
    "Configuration",
    "DeadlineExceededError",
    "Handler",
    "NotDynamoDBError",
    "create_table",
]

INLINE_VALUE_BYTES = 400_000
"""The largest value, in bytes of UTF-8, stored as the string ``data`` of one item.

DynamoDB's item limit is 400 KB including attribute names and the keys; this leaves room
for two keys of the largest allowed size (1024 bytes each)."""

MAX_VALUE_BYTES = 16 * 1024 * 1024
"""The largest value, in bytes of UTF-8, that the handler stores (compressed and split
when it must be)."""

WRITE_DEADLINE = 600.0
"""Seconds after which a writer that is still writing chunks gives up instead of
switching the head to them; :meth:`Handler.maintain` only removes older chunks."""

GARBAGE_AGE = 3600.0
"""Seconds after which :meth:`Handler.maintain` deletes chunks that no value names, by
default: well above :data:`WRITE_DEADLINE`, so a write in flight keeps its chunks."""

_DEFAULT_REGION = "us-east-1"
_ROLE_SESSION_NAME = "grove-caches"

_PACKED_BYTES = 400_000
"""The most compressed bytes kept in a head item (the keys take the rest of 400 KB)."""
_CHUNK_BYTES = 400_000
"""Compressed bytes per chunk item (its keys and owner take the rest of 400 KB)."""
_UPSTREAM_DATA_BYTES = 409_600
"""The largest ``data`` string any writer (upstream Grove) can have stored in one item."""
_CHUNK_PREFIX = "grove.caches.chunk."
_COMPRESSION_LEVEL = 1  # zlib's fastest: Grove's hex digests shrink almost as much as at 6
_BATCH_WRITE_ITEMS = 25  # DynamoDB's limit per BatchWriteItem (10 MB of chunks, under 16)
_BATCH_GET_ITEMS = 25  # 10 MB of chunks, under BatchGetItem's 16 MB answer
_READ_ROUNDS = 10
_PAGE_ITEMS = 1000
"""Items a listing or sweeping request reads at most (besides DynamoDB's 1 MB), so that
each page stays far inside the deadline, however slow the link or the server."""
_BATCH_ROUNDS = 8

_LARGE_ATTRIBUTES = ["#packed", "#digest", "#version", "#parts"]
_NAMES = {
    "#data": "data",
    "#packed": "packed",
    "#digest": "digest",
    "#version": "version",
    "#parts": "parts",
}
_PRESENT = "(attribute_exists(#data) OR attribute_exists(#digest))"
_ABSENT = "attribute_not_exists(#data) AND attribute_not_exists(#digest)"
_NOT_LARGE = "attribute_not_exists(#digest)"
_ALIVE = "(attribute_not_exists(#ttl) OR #ttl > :now)"
_EXPIRED = "#ttl <= :now"
_OWN_ATTRIBUTES = frozenset({"pk", "sk", *_NAMES.values(), "part", "of_pk", "of_sk", "at"})
_CHUNK_EXPIRY_MARGIN = 86_400.0
"""Chunks of an expiring value expire this much later than their head, so DynamoDB's
own TTL never removes a chunk while a clock that lags by less than a day still reads
its head."""

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

_logger = logging.getLogger(__name__)


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


class _Chunked(NamedTuple):
    """A head that points at chunks: what :meth:`Handler._decode` finds in one."""

    version: str
    parts: int
    digest: str


class _Refused(NamedTuple):
    """A conditional request whose condition failed: nothing changed.

    DynamoDB sends back the item as it was in the same answer when asked
    (``ReturnValuesOnConditionCheckFailure``); kept here for callers to come.
    """

    item: dict[str, Any] | None


def _seconds(moment: float) -> str:
    """A moment as a DynamoDB number: seconds since the epoch, to the millisecond."""
    return f"{moment:.3f}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


class Handler(ExpiringCache, Listing, CreatingStorage, Maintaining):
    """A cache handler that keeps Grove's pointers, locks and hashes in a DynamoDB table.

    Expiry is decided by the caller's clock; see the module docstring for what clock
    skew between hosts does.
    """

    configuration = Configuration
    config: Configuration

    clock_owner = "caller"
    driver_errors: ClassVar[tuple[type[Exception], ...]] = (ClientError, BotoCoreError)
    max_value_bytes: ClassVar[int | None] = MAX_VALUE_BYTES

    def __init__(
        self,
        config: Configuration | None = None,
        *,
        client: DynamoDBClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Prepare the handler; no request is made until the first call or :meth:`setup`.

        :param config: The settings; read from the environment when ``None``.
        :param client: A DynamoDB client to use instead of building one from ``config``;
            its own timeouts and retries apply (not ``deadline``), and its credentials are
            not renewed on ``ExpiredToken``.
        :param clock: The clock that decides expiry; ``time.time`` when ``None``.
        :raises ConfigurationException: A setting in the environment is invalid.
        """
        self.config = config if config is not None else Configuration.from_environment()
        self._table = self.config.table
        self._ttl = self.config.ttl_attribute
        self._clock = clock or time.time
        self._sweep_from: dict[str, Any] | None = None
        self._client: DynamoDBClient | None = client
        self._renewable = client is None
        self._client_lock = threading.Lock()

    @override
    def location(self) -> str:
        where = f" at {self.config.url}" if self.config.url else ""
        return f"aws_dynamodb table {self._table!r} in {self.config.region}{where}"

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

    @override
    def setup(self) -> None:
        """Build the client and prove the table with one ``DescribeTable``.

        The table must exist with a string hash key ``pk`` and a string range key ``sk``.
        Where a policy grants item calls only (``AccessDeniedException``), one
        ``GetItem`` proves instead that the table exists and takes those keys. Either
        answer is checked to be DynamoDB's, so a URL pointing at another server fails here.

        :raises ConfigurationException: The table does not exist or has other keys, the
            endpoint is not DynamoDB, or there are no credentials.
        :raises AccessException: DynamoDB (or STS) could not be reached or refused access.
        """
        try:
            try:
                table = self._request("DescribeTable", {"TableName": self._table})["Table"]
            except ClientError as exc:
                if _error_code(exc) != "AccessDeniedException":
                    raise
                self._read("grove.caches.setup", "probe")
            else:
                self._check_schema(table)
        except self.driver_errors as exc:
            raise self._failure("setup", exc) from exc

    def _check_schema(self, table: dict[str, Any]) -> None:
        """Make sure a table has Grove's keys.

        :param table: The table's description, as ``DescribeTable`` answers it.
        :raises ConfigurationException: It has other keys.
        """
        keys = {key["AttributeName"]: key["KeyType"] for key in table.get("KeySchema", [])}
        types = {
            attribute["AttributeName"]: attribute["AttributeType"]
            for attribute in table.get("AttributeDefinitions", [])
        }
        if (
            keys != {"pk": "HASH", "sk": "RANGE"}
            or types.get("pk") != "S"
            or types.get("sk") != "S"
        ):
            raise ConfigurationException(
                f"{self.location()} exists with keys {keys} of types {types}; Grove needs a "
                "string hash key 'pk' and a string range key 'sk' "
                "(GROVE_CACHE_AWS_DYNAMODB_TABLE names another table)"
            )

    @override
    def _classify(self, operation: str, exc: Exception) -> tuple[type[GroveException], str]:
        """A missing table, or at setup an endpoint that is not DynamoDB, is configuration.

        Whatever the call: ``ResourceNotFoundException`` means that the table the settings
        name does not exist, and the detail says how to create it.
        """
        if isinstance(exc, ClientError) and _error_code(exc) == "ResourceNotFoundException":
            return ConfigurationException, self._missing_table_message()
        if isinstance(exc, NotDynamoDBError) and operation == "setup":
            variable = " (GROVE_CACHE_AWS_DYNAMODB_URL)" if self.config.url else ""
            return ConfigurationException, f"the endpoint is not DynamoDB{variable}: {exc}"
        return super()._classify(operation, exc)

    def _missing_table_message(self) -> str:
        config = self.config
        endpoint = f" --endpoint-url {config.url}" if config.url else ""
        return (
            f"DynamoDB table {self._table!r} does not exist in region {config.region}"
            + (f" at {config.url}" if config.url else "")
            + " (GROVE_CACHE_AWS_DYNAMODB_TABLE, GROVE_CACHE_AWS_DYNAMODB_TABLE_REGION). "
            "Create it with grove.caches.aws_dynamodb.create_table(), or with: "
            f"aws dynamodb create-table --table-name {self._table} --region {config.region}"
            f"{endpoint} --attribute-definitions AttributeName=pk,AttributeType=S "
            "AttributeName=sk,AttributeType=S --key-schema AttributeName=pk,KeyType=HASH "
            "AttributeName=sk,KeyType=RANGE --billing-mode PAY_PER_REQUEST"
        )

    def _expiry(self, item: dict[str, Any], pk: str, sk: str) -> float | None:
        """When an item expires, in seconds since the epoch; ``None`` when it does not."""
        attribute = item.get(self._ttl)
        if attribute is None:
            return None
        number = attribute.get("N")
        if not isinstance(number, str):
            raise AccessException(
                f"{describe_key(pk, sk)} in {self.location()} holds a {self._ttl!r} "
                f"attribute of type {', '.join(attribute)}, not a number; another writer "
                "uses the attribute GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE names"
            )
        return float(number)

    def _decode(self, item: dict[str, Any], pk: str, sk: str, now: float) -> Stored | _Chunked:
        """Read the value of an item: small, packed, a pointer to chunks, or none.

        :param now: The caller's clock: an item that expired by then holds no value.
        """
        if self._ttl in item:
            expires = self._expiry(item, pk, sk)
            if expires is not None and expires <= now:
                return ABSENT
        data = item.get("data")
        if data is not None:
            value = data.get("S")
            if not isinstance(value, str):
                raise AccessException(
                    f"{describe_key(pk, sk)} in {self.location()} holds a 'data' attribute "
                    f"of type {', '.join(data)}, not a string; it was not written by Grove"
                )
            return value
        digest = item.get("digest")
        if digest is None:
            return ABSENT
        packed = item.get("packed")
        if packed is not None:
            return self._unpack(packed["B"], digest["S"], pk, sk)
        return _Chunked(item["version"]["S"], int(item["parts"]["N"]), digest["S"])

    def _unpack(self, packed: bytes, digest: str, pk: str, sk: str) -> str:
        try:
            data = zlib.decompress(packed)
        except zlib.error as exc:
            raise self._corrupt(pk, sk, f"not zlib ({exc})") from exc
        if _digest(data) != digest:
            raise self._corrupt(pk, sk, "its digest does not match")
        return data.decode("utf-8")

    def _corrupt(self, pk: str, sk: str, why: str) -> AccessException:
        return AccessException(
            f"the value of {describe_key(pk, sk)} in {self.location()} is corrupt: {why}"
        )

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one ``GetItem`` with ``ConsistentRead=True``.

        For a chunked value, the chunks that head names, read consistently; if one has
        vanished, the value was replaced meanwhile and the read starts again. An item
        whose expiry has passed by the caller's clock holds no value.
        """
        request = {
            "TableName": self._table,
            "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
            "ConsistentRead": True,
            "ReturnConsumedCapacity": "TOTAL",
        }
        for _ in range(_READ_ROUNDS):
            item = self._request("GetItem", request).get("Item")
            if item is None:
                return ABSENT
            value = self._decode(item, pk, sk, self._clock())
            if not isinstance(value, _Chunked):
                return value
            parts = self._get_chunks(value)
            if parts is not None:
                return self._unpack(b"".join(parts), value.digest, pk, sk)
        raise AccessException(
            f"get of {describe_key(pk, sk)} failed in {self.location()}: the value was "
            f"replaced under each of {_READ_ROUNDS} reads"
        )

    def _get_chunks(self, head: _Chunked) -> list[bytes] | None:
        """Read a version's chunks in order, or ``None`` when one of them is missing."""
        chunk_pk = _CHUNK_PREFIX + head.version
        keys = [{"pk": {"S": chunk_pk}, "sk": {"S": f"{i:04d}"}} for i in range(head.parts)]
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), _BATCH_GET_ITEMS):
            pending: dict[str, Any] = {
                self._table: {
                    "Keys": keys[start : start + _BATCH_GET_ITEMS],
                    "ConsistentRead": True,
                    "ProjectionExpression": "#sk, #part",
                    "ExpressionAttributeNames": {"#sk": "sk", "#part": "part"},
                }
            }
            for round_ in range(_BATCH_ROUNDS):
                answer = self._request("BatchGetItem", {"RequestItems": pending})
                for item in answer.get("Responses", {}).get(self._table, []):
                    found[str(item["sk"]["S"])] = bytes(item["part"]["B"])
                pending = dict(answer.get("UnprocessedKeys") or {})
                if not pending:
                    break
                time.sleep(min(1.0, 0.05 * 2**round_))
            else:
                raise self._unprocessed("BatchGetItem")
        if len(found) < head.parts:
            return None
        return [found[f"{i:04d}"] for i in range(head.parts)]

    def _unprocessed(self, operation: str) -> AccessException:
        return AccessException(
            f"{operation} in {self.location()} left items unprocessed after "
            f"{_BATCH_ROUNDS} rounds (throttled)"
        )

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        """Apply put or delete requests, 25 at a time, until none is left unprocessed."""
        for start in range(0, len(requests), _BATCH_WRITE_ITEMS):
            pending: dict[str, Any] = {self._table: requests[start : start + _BATCH_WRITE_ITEMS]}
            for round_ in range(_BATCH_ROUNDS):
                answer = self._request("BatchWriteItem", {"RequestItems": pending})
                pending = dict(answer.get("UnprocessedItems") or {})
                if not pending:
                    break
                time.sleep(min(1.0, 0.05 * 2**round_))
            else:
                raise self._unprocessed("BatchWriteItem")

    def _delete_chunks(self, version: str, parts: int) -> None:
        """Delete a version's chunks, best effort: the sweep removes what this leaves."""
        chunk_pk = _CHUNK_PREFIX + version
        try:
            self._batch_write(
                [
                    {"DeleteRequest": {"Key": {"pk": {"S": chunk_pk}, "sk": {"S": f"{i:04d}"}}}}
                    for i in range(parts)
                ]
            )
        except (ClientError, BotoCoreError, AccessException) as exc:
            _logger.warning(
                "could not delete the %d chunks of version %s in %s (maintain() will): %s",
                parts,
                version,
                self.location(),
                exc,
            )

    def _replaced(self, answer: Any) -> None:
        """Delete the chunks of the head a request replaced, if it had any."""
        old = answer.get("Attributes") or {}
        if "version" in old and "parts" in old:
            self._delete_chunks(str(old["version"]["S"]), int(old["parts"]["N"]))

    def _condition(self, expected: Expected, values: dict[str, Any]) -> tuple[str | None, bool]:
        """The condition for ``expected``, and whether the stored value may be chunked.

        An expired entry is absent inside the condition itself: ``not_set`` passes over
        it, and no value matches it (``:now`` is the caller's clock).

        :param values: The request's attribute values, to which this adds its own.
        """
        if expected is ANY:
            return None, True
        values[":now"] = {"N": _seconds(self._clock())}
        if expected is ABSENT:
            # What is there may be an expired large value, whose chunks must then go.
            return f"({_ABSENT}) OR {_EXPIRED}", True
        if expected.isascii() and len(expected) <= INLINE_VALUE_BYTES:
            values[":expected"] = {"S": expected}
            return f"#data = :expected AND {_ALIVE}", False
        data = expected.encode("utf-8")
        if len(data) <= INLINE_VALUE_BYTES:
            values[":expected"] = {"S": expected}
            return f"#data = :expected AND {_ALIVE}", False
        values[":digest_expected"] = {"S": _digest(data)}
        if len(data) > _UPSTREAM_DATA_BYTES:
            return f"#digest = :digest_expected AND {_ALIVE}", True
        values[":expected"] = {"S": expected}
        return f"(#data = :expected OR #digest = :digest_expected) AND {_ALIVE}", True

    def _attribute_names(self, *expressions: str) -> dict[str, str]:
        """The attribute names the expressions use; DynamoDB refuses unused ones."""
        text = " ".join(expressions)
        names = {token: name for token, name in _NAMES.items() if token in text}
        if "#ttl" in text:
            names["#ttl"] = self._ttl
        return names

    @staticmethod
    def _expression(
        sets: list[str], removes: list[str], expires: float | None, values: dict[str, Any]
    ) -> str:
        """An update expression that also sets the expiry, or removes it when ``None``."""
        if expires is None:
            removes = [*removes, "#ttl"]
        else:
            sets = [*sets, "#ttl = :expires"]
            values[":expires"] = {"N": _seconds(expires)}
        return "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")

    def _update(
        self,
        pk: str,
        sk: str,
        update: str,
        values: dict[str, Any],
        condition: str | None,
        return_old: bool,
        *,
        callers: bool = False,
    ) -> dict[str, Any] | _Refused:
        """One ``UpdateItem``; :class:`_Refused` when its condition failed.

        :param callers: The condition is the caller's (``not_set``, ``constraint``).
        """
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
            "UpdateExpression": update,
            "ExpressionAttributeValues": values,
            "ReturnConsumedCapacity": "TOTAL",
        }
        if condition is not None:
            request["ConditionExpression"] = condition
            request["ExpressionAttributeNames"] = self._attribute_names(update, condition)
        else:
            request["ExpressionAttributeNames"] = self._attribute_names(update)
        return self._conditional("UpdateItem", request, return_old, callers)

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: one conditional ``UpdateItem`` of the key's item; the entry never expires.

        A small value is that one request. An unconditional small write requires the
        old value to be small or absent (the common case: one request); when it is
        large, the write is made again, unconditionally, returning the old head so that
        its chunks can go. A large value is packed into the same request, or its chunks
        are written first under a fresh version, which the request then switches to.
        The same request removes any expiry.
        """
        return self._store(pk, sk, value, expected, None)

    @override
    def _write_expiring(self, pk: str, sk: str, value: str, expected: Expected, ttl: float) -> bool:
        """Atomic: as :meth:`_write`, with the expiry set in the same request.

        The expiry is the caller's clock plus ``ttl``; chunks of a chunked value carry it
        too, a day later (see the module docstring).
        """
        return self._store(pk, sk, value, expected, self._clock() + ttl)

    def _store(
        self, pk: str, sk: str, value: str, expected: Expected, expires: float | None
    ) -> bool:
        if value.isascii() and len(value) <= INLINE_VALUE_BYTES:
            data = None
        else:
            data = value.encode("utf-8")
            if len(data) <= INLINE_VALUE_BYTES:
                data = None
        if data is None:
            return self._write_small(pk, sk, value, expected, expires)
        return self._write_large(pk, sk, data, expected, expires)

    def _write_small(
        self, pk: str, sk: str, value: str, expected: Expected, expires: float | None
    ) -> bool:
        values: dict[str, Any] = {":value": {"S": value}}
        sets = ["#data = :value"]
        if expected is ANY:
            update = self._expression(sets, [], expires, values)
            if not isinstance(self._update(pk, sk, update, values, _NOT_LARGE, False), _Refused):
                return True
            update = self._expression(sets, _LARGE_ATTRIBUTES, expires, values)
            self._replaced(self._update(pk, sk, update, values, None, True))
            return True
        condition, may_be_chunked = self._condition(expected, values)
        # When the stored value is absent or small, there is nothing large to remove.
        removes = _LARGE_ATTRIBUTES if may_be_chunked else []
        update = self._expression(sets, removes, expires, values)
        answer = self._update(pk, sk, update, values, condition, may_be_chunked, callers=True)
        if isinstance(answer, _Refused):
            return False
        self._replaced(answer)
        return True

    def _write_large(
        self, pk: str, sk: str, data: bytes, expected: Expected, expires: float | None
    ) -> bool:
        packed = zlib.compress(data, _COMPRESSION_LEVEL)
        values: dict[str, Any] = {":digest": {"S": _digest(data)}}
        version = None
        if len(packed) <= _PACKED_BYTES:
            sets = ["#packed = :packed", "#digest = :digest"]
            removes = ["#data", "#version", "#parts"]
            values[":packed"] = {"B": packed}
        else:
            version = uuid.uuid4().hex
            try:
                parts = self._put_chunks(pk, sk, version, packed, expires)
            except (ClientError, BotoCoreError, AccessException):
                self._delete_chunks(version, -(-len(packed) // _CHUNK_BYTES))
                raise
            sets = ["#digest = :digest", "#version = :version", "#parts = :parts"]
            removes = ["#data", "#packed"]
            values[":version"] = {"S": version}
            values[":parts"] = {"N": str(parts)}
        update = self._expression(sets, removes, expires, values)
        # Should this request fail without an answer (a timeout after DynamoDB applied
        # it), the new chunks stay: maintain() removes them if no head names them.
        condition, may_be_chunked = self._condition(expected, values)
        answer = self._update(
            pk, sk, update, values, condition, may_be_chunked, callers=expected is not ANY
        )
        if isinstance(answer, _Refused):
            if version is not None:
                self._delete_chunks(version, int(values[":parts"]["N"]))
            return False
        self._replaced(answer)
        return True

    def _put_chunks(
        self, pk: str, sk: str, version: str, packed: bytes, expires: float | None
    ) -> int:
        """Write the compressed value as chunk items; return how many.

        :raises AccessException: Writing took longer than :data:`WRITE_DEADLINE`.
        """
        started = time.monotonic()
        chunk_pk = {"S": _CHUNK_PREFIX + version}
        owner = {"of_pk": {"S": pk}, "of_sk": {"S": sk}, "at": {"N": str(int(time.time()))}}
        if expires is not None:
            owner[self._ttl] = {"N": _seconds(expires + _CHUNK_EXPIRY_MARGIN)}
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": chunk_pk,
                        "sk": {"S": f"{index:04d}"},
                        "part": {"B": packed[offset : offset + _CHUNK_BYTES]},
                        **owner,
                    }
                }
            }
            for index, offset in enumerate(range(0, len(packed), _CHUNK_BYTES))
        ]
        self._batch_write(requests)
        if time.monotonic() - started > WRITE_DEADLINE:
            self._delete_chunks(version, len(requests))
            raise AccessException(
                f"set of {describe_key(pk, sk)} failed in {self.location()}: writing "
                f"{len(requests)} chunks took over {WRITE_DEADLINE:.0f} s; nothing changed"
            )
        return len(requests)

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: one ``DeleteItem``, with the condition of ``expected``.

        An unconditional delete first requires the value not to be chunked (one
        request); when it is, it deletes again, returning the head so that its chunks
        can go. Chunks are deleted after the head. An expired entry is deleted by an
        unconditional delete, and no ``constraint`` matches it.
        """
        values: dict[str, Any] = {}
        if expected is ANY:
            condition: str | None = "attribute_not_exists(#version)"
            may_be_chunked = False
        else:
            condition, may_be_chunked = self._condition(expected, values)
        key = {"pk": {"S": pk}, "sk": {"S": sk}}
        answer = self._delete(key, condition, values, may_be_chunked, expected is not ANY)
        if isinstance(answer, _Refused):
            if expected is not ANY:
                return False
            answer = self._delete(key, None, values, True, False)
        self._replaced(answer)
        return True

    def _delete(
        self,
        key: dict[str, Any],
        condition: str | None,
        values: dict[str, Any],
        return_old: bool,
        callers: bool,
    ) -> dict[str, Any] | _Refused:
        """One ``DeleteItem``; :class:`_Refused` when its condition failed.

        :param callers: The condition is the caller's (``constraint``).
        """
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": key,
            "ReturnConsumedCapacity": "TOTAL",
        }
        if condition is not None:
            request["ConditionExpression"] = condition
            request["ExpressionAttributeNames"] = self._attribute_names(condition)
            if values:
                request["ExpressionAttributeValues"] = values
        return self._conditional("DeleteItem", request, return_old, callers)

    def _conditional(
        self, operation: str, request: dict[str, Any], return_old: bool, callers: bool
    ) -> dict[str, Any] | _Refused:
        """Send one conditional request; :class:`_Refused` when its condition failed.

        :param return_old: Return the item as it was before (``ReturnValues=ALL_OLD``).
        :param callers: The condition is the caller's: a refusal brings back the item as
            it was, in the same answer (``ReturnValuesOnConditionCheckFailure``).
        """
        if return_old:
            request["ReturnValues"] = "ALL_OLD"
        if callers:
            request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            return self._request(operation, request)
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                old = exc.response.get("Item")
                return _Refused(old if isinstance(old, dict) else None)
            raise

    @override
    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """A ``Query`` of one partition, or a ``Scan``; consistent reads, page by page.

        Each page is one request of at most :data:`_PAGE_ITEMS` items; an entry is
        yielded as it was when its page was read.
        A chunked value is read again whole (see :meth:`_read`); chunk items are not
        entries, and neither are entries expired when the page is read (the filter of
        the request, then the same test here).
        """
        live = f"{_PRESENT} AND {_ALIVE}"
        request: dict[str, Any] = {
            "TableName": self._table,
            "ConsistentRead": True,
            "Limit": _PAGE_ITEMS,
        }
        values: dict[str, Any] = {}
        if pk is not None:
            request["KeyConditionExpression"] = "#pk = :pk"
            request["FilterExpression"] = live
            values[":pk"] = {"S": pk}
        elif prefix:
            request["FilterExpression"] = f"begins_with(#pk, :prefix) AND {live}"
            values[":prefix"] = {"S": prefix}
        else:
            request["FilterExpression"] = live
        request["ExpressionAttributeNames"] = self._attribute_names(live)
        request["ExpressionAttributeValues"] = values
        if pk is not None or prefix:
            request["ExpressionAttributeNames"]["#pk"] = "pk"
        while True:
            now = self._clock()
            values[":now"] = {"N": _seconds(now)}
            page = self._request("Query" if pk is not None else "Scan", request)
            for item in page.get("Items", []):
                item_pk, item_sk = str(item["pk"]["S"]), str(item["sk"]["S"])
                value = self._decode(item, item_pk, item_sk, now)
                if isinstance(value, _Chunked):
                    value = self._read(item_pk, item_sk)
                if value is not ABSENT:
                    yield CacheEntry(item_pk, item_sk, value)
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def _head(self, pk: str, sk: str, projection: str) -> dict[str, Any] | None:
        """Some attributes of a key's item, read consistently; ``None`` without an item."""
        item: dict[str, Any] | None = self._request(
            "GetItem",
            {
                "TableName": self._table,
                "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
                "ConsistentRead": True,
                "ProjectionExpression": projection,
                "ExpressionAttributeNames": self._attribute_names(projection),
                "ReturnConsumedCapacity": "TOTAL",
            },
        ).get("Item")
        return item

    @override
    def _read_expiry(self, pk: str, sk: str) -> float | Literal[Sentinel.ABSENT] | None:
        """Atomic: one ``GetItem`` of the head's value markers and expiry."""
        item = self._head(pk, sk, "#data, #digest, #ttl")
        if item is None or ("data" not in item and "digest" not in item):
            return ABSENT
        expires = self._expiry(item, pk, sk)
        if expires is not None and expires <= self._clock():
            return ABSENT
        return expires

    @override
    def _sweep_expired(self, limit: int) -> int:
        """Remove up to ``limit`` expired entries: ``Scan`` pages, one ``DeleteItem`` each.

        The pages are filtered to entries expired by the caller's clock; each delete
        requires that still (``#ttl <= :now``), so an entry written again meanwhile
        survives, and returns the head so that a chunked value's chunks go with it. The
        scan resumes where the previous call stopped and starts again once it reaches
        the end of the table, so successive calls walk the table once.
        """
        now = {"N": _seconds(self._clock())}
        condition = f"{_PRESENT} AND {_EXPIRED}"
        request: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": condition,
            "Limit": _PAGE_ITEMS,
            "ProjectionExpression": "#pk, #sk",
            "ExpressionAttributeNames": {
                **self._attribute_names(condition),
                "#pk": "pk",
                "#sk": "sk",
            },
            "ExpressionAttributeValues": {":now": now},
        }
        removed = 0
        while True:
            if self._sweep_from is not None:
                request["ExclusiveStartKey"] = self._sweep_from
            page = self._request("Scan", request)
            for item in page.get("Items", []):
                key = {"pk": item["pk"], "sk": item["sk"]}
                answer = self._delete(key, _EXPIRED, {":now": now}, True, False)
                self._sweep_from = key
                if not isinstance(answer, _Refused):
                    self._replaced(answer)
                    removed += 1
                    if removed == limit:
                        return removed
            self._sweep_from = page.get("LastEvaluatedKey") or None
            if self._sweep_from is None:
                return removed

    @override
    def maintain(self, *, older_than: float | None = None) -> int:
        """Delete chunk items that no value refers to: the maintenance call.

        A writer killed between writing a large value's chunks and switching its head
        to them, or between that switch and deleting the old chunks, leaves chunks that
        no head names. They are never read; this finds them (one paginated ``Scan``)
        and deletes them, checking each version's head first (one ``GetItem``).

        :param older_than: Leave chunks written less than this many seconds ago: they
            may belong to a write in flight; ``None`` for an hour. Keep it well above
            :data:`WRITE_DEADLINE` plus the clock skew between hosts.
        :raises ConfigurationException: The table does not exist.
        :raises AccessException: DynamoDB failed.
        :return: How many chunk items were deleted.
        """
        cutoff = time.time() - (GARBAGE_AGE if older_than is None else older_than)
        request: dict[str, Any] = {
            "TableName": self._table,
            "ConsistentRead": True,
            "FilterExpression": "begins_with(#pk, :prefix) AND attribute_exists(#part)",
            "Limit": _PAGE_ITEMS,
            "ProjectionExpression": "#pk, #sk, #of_pk, #of_sk, #at",
            "ExpressionAttributeNames": {
                "#pk": "pk",
                "#sk": "sk",
                "#part": "part",
                "#of_pk": "of_pk",
                "#of_sk": "of_sk",
                "#at": "at",
            },
            "ExpressionAttributeValues": {":prefix": {"S": _CHUNK_PREFIX}},
        }
        versions: dict[str, tuple[str, str, float, list[str]]] = {}
        try:
            while True:
                page = self._request("Scan", request)
                for item in page.get("Items", []):
                    version = str(item["pk"]["S"])[len(_CHUNK_PREFIX) :]
                    owner_pk, owner_sk = str(item["of_pk"]["S"]), str(item["of_sk"]["S"])
                    written = float(str(item["at"]["N"]))
                    _, _, newest, sks = versions.setdefault(
                        version, (owner_pk, owner_sk, written, [])
                    )
                    sks.append(str(item["sk"]["S"]))
                    if written > newest:
                        versions[version] = (owner_pk, owner_sk, written, sks)
                last = page.get("LastEvaluatedKey")
                if not last:
                    break
                request["ExclusiveStartKey"] = last
            deleted = 0
            for version, (owner_pk, owner_sk, newest, sks) in versions.items():
                if newest > cutoff:
                    continue
                head = self._head(owner_pk, owner_sk, "#version") or {}
                if head.get("version", {}).get("S") == version:
                    continue
                chunk_pk = {"S": _CHUNK_PREFIX + version}
                self._batch_write(
                    [{"DeleteRequest": {"Key": {"pk": chunk_pk, "sk": {"S": sk}}}} for sk in sks]
                )
                deleted += len(sks)
        except self.driver_errors as exc:
            raise self._failure("maintain", exc) from exc
        return deleted

    def create_table(self, *, timeout: float = 300.0) -> bool:
        """Create the table with Grove's schema and on-demand billing, if it is missing.

        Idempotent: an existing table with the right keys is left as it is. Either way,
        this waits until the table is active, then turns DynamoDB's TTL on for the
        expiry attribute (``GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE``) if it is off, so
        that DynamoDB removes expired entries by itself, within days. Where the policy
        does not allow it, a warning says so: expiry works all the same, and
        :meth:`~grove.caches.atomic.ExpiringCache.sweep_expired` removes what expired.

        :param timeout: Seconds to wait for the table to become active.
        :raises ConfigurationException: The table exists with other keys, or its TTL is
            on another attribute.
        :raises AccessException: DynamoDB refused or failed, or the table did not become
            active in time.
        :return: ``True`` when the table was created, ``False`` when it existed.
        """
        try:
            try:
                self._request(
                    "CreateTable",
                    {
                        "TableName": self._table,
                        "AttributeDefinitions": [
                            {"AttributeName": "pk", "AttributeType": "S"},
                            {"AttributeName": "sk", "AttributeType": "S"},
                        ],
                        "KeySchema": [
                            {"AttributeName": "pk", "KeyType": "HASH"},
                            {"AttributeName": "sk", "KeyType": "RANGE"},
                        ],
                        "BillingMode": "PAY_PER_REQUEST",
                    },
                )
                created = True
            except ClientError as exc:
                if _error_code(exc) != "ResourceInUseException":
                    raise
                created = False
            delay = 2
            self.client.get_waiter("table_exists").wait(
                TableName=self._table,
                WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timeout // delay))},
            )
            table = self._request("DescribeTable", {"TableName": self._table})["Table"]
        except (ClientError, BotoCoreError, WaiterError) as exc:
            raise self._failure("create_storage", exc) from exc
        self._check_schema(table)
        self._enable_ttl()
        return created

    def _enable_ttl(self) -> None:
        """Turn DynamoDB's TTL on for the expiry attribute, unless it is on already.

        :raises ConfigurationException: TTL is on for another attribute.
        :raises AccessException: DynamoDB failed.
        """
        try:
            ttl = self._request("DescribeTimeToLive", {"TableName": self._table})
            state = ttl["TimeToLiveDescription"]
            if state.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
                if state.get("AttributeName") == self._ttl:
                    return
                raise ConfigurationException(
                    f"{self.location()} has DynamoDB's TTL on attribute "
                    f"{state.get('AttributeName')!r}, and a table has one TTL attribute: set "
                    f"GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE to it (not {self._ttl!r})"
                )
            self._request(
                "UpdateTimeToLive",
                {
                    "TableName": self._table,
                    "TimeToLiveSpecification": {"Enabled": True, "AttributeName": self._ttl},
                },
            )
        except ClientError as exc:
            if _error_code(exc) != "AccessDeniedException":
                raise self._failure("create_storage", exc, where=f"TTL on {self._ttl!r}") from exc
            _logger.warning(
                "%s: not allowed to turn DynamoDB's TTL on for %r, so DynamoDB will not remove "
                "expired entries by itself (sweep_expired() does): %s",
                self.location(),
                self._ttl,
                exc,
            )
        except BotoCoreError as exc:
            raise self._failure("create_storage", exc, where=f"TTL on {self._ttl!r}") from exc

    @override
    def create_storage(self) -> str:
        """Create the table if it is missing; see :meth:`create_table`.

        :raises ConfigurationException: The table exists with other keys.
        :raises AccessException: DynamoDB refused or failed.
        :return: What was done, in one line.
        """
        created = self.create_table()
        return f"{'created' if created else 'found'} {self.location()}, expiry in {self._ttl!r}"


def _error_code(exc: ClientError) -> str:
    """The error code of DynamoDB's answer, such as ``ConditionalCheckFailedException``."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def create_table(config: Configuration | None = None, *, timeout: float = 300.0) -> bool:
    """Create the table that ``config`` names, if it is missing; see :meth:`Handler.create_table`.

    :param config: The settings; read from the environment when ``None``.
    :param timeout: Seconds to wait for the table to become active.
    :raises ConfigurationException: A setting is invalid, or the table exists with other keys.
    :raises AccessException: DynamoDB refused or failed.
    :return: ``True`` when the table was created, ``False`` when it existed.
    """
    return Handler(config).create_table(timeout=timeout)
