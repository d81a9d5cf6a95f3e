"""Grove AWS DynamoDB cache handler.

Layout: one DynamoDB table (``GROVE_CACHE_AWS_DYNAMODB_TABLE``, default ``grove``) with a
string hash key ``pk`` and a string range key ``sk``; the value is the string attribute
``data`` of the item. That is upstream Grove's shape, so tables written by upstream Grove
read back unchanged. Other attributes of an item (a TTL an operator added, say) are left
alone: writes are ``UpdateItem ... SET data``, as upstream Grove's were. An item without
a ``data`` string holds no value.

Atomicity: every call is one request and DynamoDB applies each request atomically, its
condition included:

- ``get`` is one ``GetItem`` with ``ConsistentRead=True``, so a lock or a pointer is never
  read stale;
- ``set`` is one ``UpdateItem`` carrying its condition: ``attribute_not_exists(data)``
  for ``not_set``, ``data = :constraint`` for ``constraint``;
- ``delete`` is one ``DeleteItem``, with ``data = :constraint`` for ``constraint``.

A failed condition (``ConditionalCheckFailedException``) changes nothing and becomes
:class:`~grove.exceptions.DataFormatException`; nothing is read before it is written.
Listing is a ``Query`` for one partition key and a paginated ``Scan`` otherwise, both
with consistent reads.

Durability is DynamoDB's: a write is acknowledged once it is stored in several
availability zones.

Clients: one low-level boto3 client per handler, built in :meth:`Handler.setup` or on
first use, and shared by all threads (botocore clients are thread-safe). Its connection
pool holds ``GROVE_CACHE_AWS_DYNAMODB_MAX_POOL_CONNECTIONS`` connections (default 50,
Grove's worker count), so threads never queue behind the pool. Throttling, 5xx answers
and connection errors are retried with backoff in botocore's ``standard`` (or
``adaptive``) retry mode, then surface as :class:`~grove.exceptions.AccessException`
naming the table and the operation; connect and read timeouts are explicit, so a server
that is down fails the call instead of hanging it.

Credentials come from boto3's usual chain. With ``GROVE_CACHE_AWS_DYNAMODB_ASSUME_ROLE_ARN``
they come from STS instead, as refreshable credentials that botocore renews before they
expire, so long collections never die on ``ExpiredToken``. ``GROVE_CACHE_AWS_DYNAMODB_URL``
points every DynamoDB call at another endpoint (DynamoDB Local, moto, a VPC endpoint);
STS honours boto3's own ``AWS_ENDPOINT_URL_STS``.

Values: DynamoDB refuses items over 400 KB, so values over :data:`INLINE_VALUE_BYTES`
bytes of UTF-8 are refused with ``ValueError`` before any request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
from typing_extensions import override

try:
    import boto3
    import botocore.session
    from botocore.config import Config
    from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials
    from botocore.exceptions import BotoCoreError, ClientError, WaiterError
except ImportError as exc:  # pragma: no cover - exercised by a test that hides boto3
    raise ImportError(
        f"grove.caches.aws_dynamodb needs boto3 ({exc}): pip install 'grove-caches[aws]'"
    ) from exc

from grove.caches import CacheEntry
from grove.caches.atomic import ABSENT, ANY, AtomicCache, Expected, ExpectedToRemove, Stored
from grove.caches.configuration import HandlerConfiguration
from grove.exceptions import AccessException, ConfigurationException

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sts import STSClient

__all__ = ["INLINE_VALUE_BYTES", "Configuration", "Handler", "create_table"]

INLINE_VALUE_BYTES = 400_000
"""The largest value, in bytes of UTF-8, stored in the ``data`` attribute of one item.

DynamoDB's item limit is 400 KB including attribute names and the keys; this leaves room
for two keys of the largest allowed size (1024 bytes each)."""

_DEFAULT_REGION = "us-east-1"
_ROLE_SESSION_NAME = "grove-caches"


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
        description="Seconds each set of assumed-role credentials lasts before renewal.",
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

    @field_validator("table_region")
    @classmethod
    def _region_from_environment(cls, value: str | None) -> str:
        return value or os.environ.get("AWS_REGION") or _DEFAULT_REGION

    @field_validator("url", "assume_role_arn")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

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


class Handler(AtomicCache):
    """A cache handler that keeps Grove's pointers, locks and hashes in a DynamoDB table."""

    driver_errors: ClassVar[tuple[type[Exception], ...]] = (ClientError, BotoCoreError)
    max_value_bytes: ClassVar[int | None] = INLINE_VALUE_BYTES

    def __init__(
        self,
        config: Configuration | None = None,
        *,
        client: DynamoDBClient | None = None,
    ) -> None:
        """Prepare the handler; no request is made until the first call or :meth:`setup`.

        :param config: The settings; read from the environment when ``None``.
        :param client: A DynamoDB client to use instead of building one from ``config``.
        :raises ConfigurationException: A setting in the environment is invalid.
        """
        self.config = config if config is not None else Configuration.from_environment()
        self._table = self.config.table
        self._client: DynamoDBClient | None = client
        self._client_lock = threading.Lock()

    @override
    def location(self) -> str:
        where = f" at {self.config.url}" if self.config.url else ""
        return f"aws_dynamodb table {self._table!r} in {self.config.region}{where}"

    @property
    def client(self) -> DynamoDBClient:
        """The DynamoDB client, built on first use and shared by all threads."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
        return client

    def _connect(self) -> DynamoDBClient:
        config = self.config
        botocore_config = Config(
            region_name=config.region,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"mode": config.retry_mode, "total_max_attempts": config.max_attempts},
            max_pool_connections=config.max_pool_connections,
        )
        session = botocore.session.Session()
        if config.assume_role_arn:
            credentials = self._assume_role(config.assume_role_arn, botocore_config)
            session.register_component("credential_provider", CredentialResolver([credentials]))
        return boto3.session.Session(botocore_session=session).client(
            "dynamodb", endpoint_url=config.url, config=botocore_config
        )

    def _assume_role(self, role_arn: str, botocore_config: Config) -> _AssumedRole:
        """Build credentials that STS renews before they expire.

        botocore refreshes them in the background from 15 minutes before expiry, and
        blocks callers only in the last 10 minutes.
        """
        sts: STSClient = boto3.session.Session().client("sts", config=botocore_config)
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

    @override
    def setup(self) -> None:
        """Build the client and check, with one ``GetItem``, that the table can be read.

        :raises ConfigurationException: The table does not exist.
        :raises AccessException: DynamoDB (or STS) could not be reached or refused access.
        """
        try:
            self._read("grove.caches.setup", "probe")
        except self.driver_errors as exc:
            raise AccessException(
                f"setup failed in {self.location()}: {type(exc).__name__}: {exc}"
            ) from exc

    def _check_error(self, exc: ClientError) -> str:
        """Return the error code, after turning a missing table into a configuration error.

        :raises ConfigurationException: The error says that the table does not exist.
        """
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "ResourceNotFoundException":
            raise ConfigurationException(self._missing_table_message()) from exc
        return code

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

    def _value_of(self, item: dict[str, Any], pk: str, sk: str) -> Stored:
        data = item.get("data")
        if data is None:
            return ABSENT
        value = data.get("S")
        if not isinstance(value, str):
            raise AccessException(
                f"pk={pk!r} sk={sk!r} in {self.location()} holds a 'data' attribute of "
                f"type {', '.join(data)}, not a string; it was not written by Grove"
            )
        return value

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one ``GetItem`` with ``ConsistentRead=True``."""
        client = self._client or self.client
        try:
            answer = client.get_item(
                TableName=self._table,
                Key={"pk": {"S": pk}, "sk": {"S": sk}},
                ConsistentRead=True,
            )
        except ClientError as exc:
            self._check_error(exc)
            raise
        item = answer.get("Item")
        if item is None:
            return ABSENT
        return self._value_of(item, pk, sk)

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: one ``UpdateItem`` whose condition expresses ``expected``."""
        client = self._client or self.client
        values: dict[str, Any] = {":value": {"S": value}}
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
            "UpdateExpression": "SET #data = :value",
            "ExpressionAttributeNames": {"#data": "data"},
            "ExpressionAttributeValues": values,
        }
        if expected is ABSENT:
            request["ConditionExpression"] = "attribute_not_exists(#data)"
        elif expected is not ANY:
            request["ConditionExpression"] = "#data = :expected"
            values[":expected"] = {"S": expected}
        try:
            client.update_item(**request)
        except ClientError as exc:
            if self._check_error(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: one ``DeleteItem``, conditional on ``data`` when ``expected`` is a value."""
        client = self._client or self.client
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
        }
        if expected is not ANY:
            request["ConditionExpression"] = "#data = :expected"
            request["ExpressionAttributeNames"] = {"#data": "data"}
            request["ExpressionAttributeValues"] = {":expected": {"S": expected}}
        try:
            client.delete_item(**request)
        except ClientError as exc:
            if self._check_error(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    @override
    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """A ``Query`` of one partition, or a ``Scan``; consistent reads, page by page.

        Each page is one request; an entry is yielded as it was when its page was read.
        """
        client = self.client
        names = {"#data": "data"}
        request: dict[str, Any] = {
            "TableName": self._table,
            "ConsistentRead": True,
            "ExpressionAttributeNames": names,
        }
        if pk is not None:
            names["#pk"] = "pk"
            request["KeyConditionExpression"] = "#pk = :pk"
            request["FilterExpression"] = "attribute_exists(#data)"
            request["ExpressionAttributeValues"] = {":pk": {"S": pk}}
            page_of = client.query
        else:
            if prefix:
                names["#pk"] = "pk"
                request["FilterExpression"] = (
                    "begins_with(#pk, :prefix) AND attribute_exists(#data)"
                )
                request["ExpressionAttributeValues"] = {":prefix": {"S": prefix}}
            else:
                request["FilterExpression"] = "attribute_exists(#data)"
            page_of = client.scan  # type: ignore[assignment]
        while True:
            try:
                page = page_of(**request)
            except ClientError as exc:
                self._check_error(exc)
                raise
            for item in page.get("Items", []):
                item_pk, item_sk = item["pk"]["S"], item["sk"]["S"]
                value = self._value_of(item, item_pk, item_sk)
                if value is not ABSENT:
                    yield CacheEntry(item_pk, item_sk, value)
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def create_table(self, *, timeout: float = 300.0) -> bool:
        """Create the table with Grove's schema and on-demand billing, if it is missing.

        Idempotent: an existing table with the right keys is left as it is. Either way,
        this waits until the table is active.

        :param timeout: Seconds to wait for the table to become active.
        :raises ConfigurationException: The table exists with other keys.
        :raises AccessException: DynamoDB refused or failed, or the table did not become
            active in time.
        :return: ``True`` when the table was created, ``False`` when it existed.
        """
        client = self.client
        try:
            try:
                client.create_table(
                    TableName=self._table,
                    AttributeDefinitions=[
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": "S"},
                    ],
                    KeySchema=[
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
                created = True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                    raise
                created = False
            delay = 2
            client.get_waiter("table_exists").wait(
                TableName=self._table,
                WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timeout // delay))},
            )
            table = client.describe_table(TableName=self._table)["Table"]
        except (ClientError, BotoCoreError, WaiterError) as exc:
            raise AccessException(
                f"creating the table failed in {self.location()}: {type(exc).__name__}: {exc}"
            ) from exc
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
        return created


def create_table(config: Configuration | None = None, *, timeout: float = 300.0) -> bool:
    """Create the table that ``config`` names, if it is missing; see :meth:`Handler.create_table`.

    :param config: The settings; read from the environment when ``None``.
    :param timeout: Seconds to wait for the table to become active.
    :raises ConfigurationException: A setting is invalid, or the table exists with other keys.
    :raises AccessException: DynamoDB refused or failed.
    :return: ``True`` when the table was created, ``False`` when it existed.
    """
    return Handler(config).create_table(timeout=timeout)
