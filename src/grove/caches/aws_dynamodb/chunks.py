"""Values beyond one item: packed into the head, or split into chunk items.

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

Invariants: chunks are immutable and written before the head that names them; the head's
switch is the write; a reader that finds a chunk missing starts again from the head; a
chunk that no head names is garbage, removed by :meth:`ChunkStore._collect_garbage` only
once older than a write can take.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from grove.caches.atomic import ABSENT, Stored, describe_key
from grove.caches.aws_dynamodb.client import Connection
from grove.caches.aws_dynamodb.expressions import (
    _CHUNK_EXPIRY_MARGIN,
    WRITE_DEADLINE,
    _digest,
    _seconds,
    attribute_names,
)
from grove.exceptions import AccessException

if TYPE_CHECKING:
    pass

_PACKED_BYTES = 400_000
"""The most compressed bytes kept in a head item (the keys take the rest of 400 KB)."""
_CHUNK_BYTES = 400_000
"""Compressed bytes per chunk item (its keys and owner take the rest of 400 KB)."""
_CHUNK_PREFIX = "grove.caches.chunk."
_COMPRESSION_LEVEL = 1  # zlib's fastest: Grove's hex digests shrink almost as much as at 6
_BATCH_WRITE_ITEMS = 25  # DynamoDB's limit per BatchWriteItem (10 MB of chunks, under 16)
_BATCH_GET_ITEMS = 25  # 10 MB of chunks, under BatchGetItem's 16 MB answer
_READ_ROUNDS = 10
_PAGE_ITEMS = 1000
"""Items a listing or sweeping request reads at most (besides DynamoDB's 1 MB), so that
each page stays far inside the deadline, however slow the link or the server."""
_BATCH_ROUNDS = 8

_logger = logging.getLogger("grove.caches.aws_dynamodb")


class _Chunked(NamedTuple):
    """A head that points at chunks: what :meth:`Handler._decode` finds in one."""

    version: str
    parts: int
    digest: str


class ChunkStore(Connection):
    """The large-value half of a handler: decoding heads, reading and writing chunks."""

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

    def _head(self, pk: str, sk: str, projection: str) -> dict[str, Any] | None:
        """Some attributes of a key's item, read consistently; ``None`` without an item."""
        item: dict[str, Any] | None = self._request(
            "GetItem",
            {
                "TableName": self._table,
                "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
                "ConsistentRead": True,
                "ProjectionExpression": projection,
                "ExpressionAttributeNames": attribute_names(self._ttl, projection),
                "ReturnConsumedCapacity": "TOTAL",
            },
        ).get("Item")
        return item

    def _collect_garbage(self, older_than: float) -> int:
        """Delete the chunk items that no head names, older than ``older_than`` seconds.

        One paginated ``Scan`` finds them; each version's head is read (one ``GetItem``)
        before its chunks go, so a head written meanwhile keeps them.

        :raises ClientError: DynamoDB failed (the handler's ``maintain`` words it).
        :return: How many chunk items were deleted.
        """
        cutoff = time.time() - older_than
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
        while True:
            page = self._request("Scan", request)
            for item in page.get("Items", []):
                version = str(item["pk"]["S"])[len(_CHUNK_PREFIX) :]
                owner_pk, owner_sk = str(item["of_pk"]["S"]), str(item["of_sk"]["S"])
                written = float(str(item["at"]["N"]))
                _, _, newest, sks = versions.setdefault(version, (owner_pk, owner_sk, written, []))
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
        return deleted
