"""The handler: the atomic primitives over items, heads and chunks.

Invariants: every primitive is one conditional request on the key's item (plus chunk
requests that precede or follow it), so its check and its write are one step; a refused
condition changes nothing; every driver error reaches the rule layer, which words it
(:meth:`Handler._classify` declares what DynamoDB's errors mean).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError
from typing_extensions import override

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
from grove.caches.aws_dynamodb.chunks import (
    _CHUNK_BYTES,
    _COMPRESSION_LEVEL,
    _PACKED_BYTES,
    _PAGE_ITEMS,
    _READ_ROUNDS,
    ChunkStore,
    _Chunked,
)
from grove.caches.aws_dynamodb.client import Configuration, NotDynamoDBError, _error_code
from grove.caches.aws_dynamodb.expressions import (
    _ALIVE,
    _EXPIRED,
    _LARGE_ATTRIBUTES,
    _NOT_LARGE,
    _PRESENT,
    GARBAGE_AGE,
    INLINE_VALUE_BYTES,
    MAX_VALUE_BYTES,
    _digest,
    _seconds,
    attribute_names,
    condition_for,
    update_expression,
)
from grove.caches.aws_dynamodb.table import TableAdmin
from grove.exceptions import AccessException, ConfigurationException, GroveException

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_logger = logging.getLogger("grove.caches.aws_dynamodb")


class _Refused(NamedTuple):
    """A conditional request whose condition failed: nothing changed.

    DynamoDB sends back the item as it was in the same answer when asked
    (``ReturnValuesOnConditionCheckFailure``); kept here for callers to come.
    """

    item: dict[str, Any] | None


class Handler(ChunkStore, TableAdmin, ExpiringCache, Listing, CreatingStorage, Maintaining):
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
            request["ExpressionAttributeNames"] = attribute_names(self._ttl, update, condition)
        else:
            request["ExpressionAttributeNames"] = attribute_names(self._ttl, update)
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
            update = update_expression(sets, [], expires, values)
            if not isinstance(self._update(pk, sk, update, values, _NOT_LARGE, False), _Refused):
                return True
            update = update_expression(sets, _LARGE_ATTRIBUTES, expires, values)
            self._replaced(self._update(pk, sk, update, values, None, True))
            return True
        condition, may_be_chunked = condition_for(expected, values, self._clock)
        # When the stored value is absent or small, there is nothing large to remove.
        removes = _LARGE_ATTRIBUTES if may_be_chunked else []
        update = update_expression(sets, removes, expires, values)
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
        update = update_expression(sets, removes, expires, values)
        # Should this request fail without an answer (a timeout after DynamoDB applied
        # it), the new chunks stay: maintain() removes them if no head names them.
        condition, may_be_chunked = condition_for(expected, values, self._clock)
        answer = self._update(
            pk, sk, update, values, condition, may_be_chunked, callers=expected is not ANY
        )
        if isinstance(answer, _Refused):
            if version is not None:
                self._delete_chunks(version, int(values[":parts"]["N"]))
            return False
        self._replaced(answer)
        return True

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
            condition, may_be_chunked = condition_for(expected, values, self._clock)
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
            request["ExpressionAttributeNames"] = attribute_names(self._ttl, condition)
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
        request["ExpressionAttributeNames"] = attribute_names(self._ttl, live)
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
                **attribute_names(self._ttl, condition),
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
    def create_storage(self) -> str:
        """Create the table if it is missing; see :meth:`create_table`.

        :raises ConfigurationException: The table exists with other keys.
        :raises AccessException: DynamoDB refused or failed.
        :return: What was done, in one line.
        """
        created = self.create_table()
        return f"{'created' if created else 'found'} {self.location()}, expiry in {self._ttl!r}"

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
        try:
            return self._collect_garbage(GARBAGE_AGE if older_than is None else older_than)
        except self.driver_errors as exc:
            raise self._failure("maintain", exc) from exc


def create_table(config: Configuration | None = None, *, timeout: float = 300.0) -> bool:
    """Create the table that ``config`` names, if it is missing; see :meth:`Handler.create_table`.

    :param config: The settings; read from the environment when ``None``.
    :param timeout: Seconds to wait for the table to become active.
    :raises ConfigurationException: A setting is invalid, or the table exists with other keys.
    :raises AccessException: DynamoDB refused or failed.
    :return: ``True`` when the table was created, ``False`` when it existed.
    """
    return Handler(config).create_table(timeout=timeout)
