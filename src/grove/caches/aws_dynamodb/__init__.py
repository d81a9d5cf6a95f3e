"""Grove AWS DynamoDB cache handler.

The package's parts, each with its invariants in its docstring:
:mod:`~grove.caches.aws_dynamodb.client` (the boto3 client, credentials, deadlines and
answer checks), :mod:`~grove.caches.aws_dynamodb.expressions` (the item layout and the
condition and update expressions over it), :mod:`~grove.caches.aws_dynamodb.chunks`
(values beyond one item: packing, chunks, their garbage),
:mod:`~grove.caches.aws_dynamodb.table` (creating and checking the table) and
:mod:`~grove.caches.aws_dynamodb.handler` (the atomic primitives).

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

Large values (up to :data:`MAX_VALUE_BYTES`): the item of the key is a *head*, holding
the value compressed (``packed``) or naming immutable chunk items written before it;
switching the head is the write, so it stays one atomic conditional request. See
:mod:`~grove.caches.aws_dynamodb.chunks` for the layout, the reads that never mix two
versions, and :meth:`Handler.maintain`, which removes chunks no head names.

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
"""

from __future__ import annotations

try:
    import boto3  # noqa: F401 - the extra is checked before any part is imported
except ImportError as exc:  # without the aws extra (a test hides boto3)
    raise ImportError(
        f"grove.caches.aws_dynamodb needs boto3 ({exc}): pip install 'grove-caches[aws]'"
    ) from exc

from grove.caches.aws_dynamodb.client import (
    Configuration,
    DeadlineExceededError,
    NotDynamoDBError,
)
from grove.caches.aws_dynamodb.expressions import (
    GARBAGE_AGE,
    INLINE_VALUE_BYTES,
    MAX_VALUE_BYTES,
    WRITE_DEADLINE,
)
from grove.caches.aws_dynamodb.handler import Handler, _Refused, create_table

__all__ = [
    "GARBAGE_AGE",
    "INLINE_VALUE_BYTES",
    "MAX_VALUE_BYTES",
    "WRITE_DEADLINE",
    "Configuration",
    "DeadlineExceededError",
    "Handler",
    "NotDynamoDBError",
    "_Refused",
    "create_table",
]
