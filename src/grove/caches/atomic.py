"""The public rules of every built-in handler, over a few atomic primitives.

:class:`AtomicCache` implements :meth:`get`, :meth:`set` and :meth:`delete` once for all
built-in handlers: argument checks, the key and value rules of
:mod:`grove.caches.validation`, the meaning of ``not_set`` and ``constraint``, and the
translation of driver errors into :class:`~grove.exceptions.AccessException`. A backend
implements three primitives, each atomic by the backend's own mechanism (a lock, a
conditional request, one SQL statement), and says how in its docstring:

- :meth:`AtomicCache._read` returns the stored value or :data:`ABSENT`;
- :meth:`AtomicCache._write` stores a value if the entry is as expected;
- :meth:`AtomicCache._remove` removes an entry if it is as expected.

A write or removal whose condition fails returns ``False``, or better a :class:`Refused`
carrying the stored value it saw in the same step: the public methods put that value on
the :class:`~grove.exceptions.DataFormatException` they raise (its ``current``), so a
caller can retry without a second read.

Absence is the sentinel :data:`ABSENT`, never a falsy value: ``""`` is a stored value.
Keys, values and constraints reach the primitives as exact ``str`` objects: a ``str``
subclass (whose ``__eq__`` could lie) is copied to a plain ``str`` first.

A handler with entries that expire also derives from :class:`ExpiringCache`, the expiry
ability, and implements its primitives.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final, Literal

from typing_extensions import override

from grove.caches import BaseCache, CacheEntry, Expiring
from grove.caches.validation import (
    KNOWN_KEYS,
    check_one_key,
    check_ttl,
    check_value,
    checked_key,
    utf8_size,
)
from grove.exceptions import (
    AccessException,
    DataFormatException,
    GroveException,
    NotFoundException,
)


class Sentinel(enum.Enum):
    """States of an entry that are not a stored value."""

    ABSENT = "absent"
    """No value is stored under the key."""

    ANY = "any"
    """Any state at all: an unconditional write or delete."""


ABSENT: Final = Sentinel.ABSENT
ANY: Final = Sentinel.ANY

Stored = str | Literal[Sentinel.ABSENT]
"""What :meth:`AtomicCache._read` finds: a value, or :data:`ABSENT`."""

Expected = str | Literal[Sentinel.ABSENT, Sentinel.ANY]
"""What a write requires of the entry: this exact value, :data:`ABSENT`, or :data:`ANY`."""

ExpectedToRemove = str | Literal[Sentinel.ANY]
"""What a removal requires of the entry: this exact value, or :data:`ANY`."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A refused condition, with what the primitive saw: an optional richer ``False``.

    A write or removal primitive may return this instead of ``False`` when it read the
    stored value in the same atomic step as the failed check, at no extra request. It
    is falsy, so code that tests the outcome with ``if not written`` keeps working.
    """

    current: Stored = field(repr=False)
    """The stored value the check saw, or :data:`ABSENT`."""

    def __bool__(self) -> bool:
        return False


Outcome = bool | Refused
"""What a write or removal primitive returns: ``True`` when done, ``False`` or a
:class:`Refused` when the entry was not as expected."""

Clock = Callable[[], float]
"""A clock: returns the current time in seconds since the Unix epoch, like
:func:`time.time`. Handlers whose caller's clock decides expiry accept one, so tests can
move time."""

_KEY_PREVIEW_CHARS = 80


def describe_key(pk: str, sk: str) -> str:
    """Name an entry in a message, shortening very long keys.

    :param pk: The partition key.
    :param sk: The sort key.
    :return: For example ``pk='pointer.x' sk='op'``.
    """

    def preview(key: str) -> str:
        if len(key) <= _KEY_PREVIEW_CHARS:
            return repr(key)
        return repr(key[:_KEY_PREVIEW_CHARS]) + f"... ({len(key)} characters)"

    return f"pk={preview(pk)} sk={preview(sk)}"


class AtomicCache(BaseCache):
    """A cache whose public methods enforce the contract over three atomic primitives.

    Subclasses set :attr:`driver_errors` to the exceptions their storage library raises
    and implement :meth:`_read`, :meth:`_write`, :meth:`_remove` and :meth:`location`.
    """

    driver_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """Exceptions of the storage library that mean the storage failed; the public methods
    re-raise them as :class:`~grove.exceptions.AccessException` with the exception as
    its cause."""

    reports_current: ClassVar[bool] = False
    """``True`` when every refused write or removal returns a :class:`Refused`, so every
    :class:`~grove.exceptions.DataFormatException` it causes says what was stored. A hint
    for callers choosing between trying a write first and reading first
    (:mod:`grove.caches.lease` does); ``current_known`` on each exception is the truth."""

    def location(self) -> str:
        """Say where this handler keeps its entries, for messages.

        :return: For example ``local_file cache at /var/lib/grove``.
        """
        return type(self).__module__

    @abc.abstractmethod
    def _read(self, pk: str, sk: str) -> Stored:
        """Return the value stored under a key, or :data:`ABSENT`.

        :param pk: The partition key, already checked.
        :param sk: The sort key, already checked.
        :return: The stored value, exactly as it was written, or :data:`ABSENT`.
        """

    @abc.abstractmethod
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> Outcome:
        """Store a value if the entry is as expected, as one atomic step.

        :param pk: The partition key, already checked.
        :param sk: The sort key, already checked.
        :param value: The value to store, already checked.
        :param expected: :data:`ANY` to write unconditionally, :data:`ABSENT` to write
            only when no value is stored, or a value the stored one must equal.
        :return: ``True`` when the value was stored; ``False`` when the entry was not as
            expected (and nothing changed), or a :class:`Refused` saying what was stored
            if the step saw it.
        """

    @abc.abstractmethod
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> Outcome:
        """Remove an entry if it is as expected, as one atomic step.

        :param pk: The partition key, already checked.
        :param sk: The sort key, already checked.
        :param expected: :data:`ANY` to remove whatever is stored (an absent entry is not
            an error), or a value the stored one must equal.
        :return: ``True`` when the entry is gone; ``False`` when it was not as expected
            (and nothing changed), or a :class:`Refused` saying what was stored if the
            step saw it.
        """

    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """Yield stored entries lazily; the optional listing primitive.

        Handlers that can list override this; :meth:`entries` checks the arguments and
        wraps driver errors. Each yielded entry must be one that was stored at some moment
        during the scan.

        :param pk: Only this partition key (checked), or ``None``.
        :param prefix: Only partition keys starting with this, or ``None``; never given
            together with ``pk``.
        :raises NotImplementedError: The handler cannot list entries.
        :return: An iterator of entries.
        """
        raise NotImplementedError(f"{self.location()} cannot list entries")

    @override
    def entries(self, pk: str | None = None, *, prefix: str | None = None) -> Iterator[CacheEntry]:
        """List stored entries lazily; see :meth:`BaseCache.entries`.

        :param pk: List only the entries with this partition key.
        :param prefix: List only the entries whose partition key starts with this.
        :raises NotImplementedError: The handler cannot list entries.
        :raises TypeError: ``pk`` or ``prefix`` is not a ``str``.
        :raises ValueError: Both were given, or ``pk`` breaks the key rules.
        :raises AccessException: The storage failed (raised while iterating).
        :return: An iterator of ``(pk, sk, value)`` entries.
        """
        if pk is not None and prefix is not None:
            raise ValueError("give pk or prefix, not both")
        if pk is not None:
            check_one_key(pk, what="pk")
        if prefix is not None:
            if not isinstance(prefix, str):
                raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
            utf8_size(prefix, what="prefix")
        if not self.supports_listing():
            raise NotImplementedError(f"{self.location()} cannot list entries")
        return self._entries(pk, prefix)

    def _entries(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        try:
            yield from self._scan(pk, prefix)
        except self.driver_errors as exc:
            scope = f"pk={pk!r}" if pk is not None else f"prefix={prefix!r}"
            raise self._failure(
                "listing", exc, where=scope if (pk or prefix) else "all entries"
            ) from exc

    def _write_expiring(
        self, pk: str, sk: str, value: str, expected: Expected, ttl: float
    ) -> Outcome:
        """Store a value that expires; the primitive of the expiry ability.

        :class:`ExpiringCache` declares it abstract; :meth:`set` calls it only on
        handlers that have the ability.

        :raises NotImplementedError: Always, here: :meth:`set` was given ``ttl`` on a
            handler without the expiry ability.
        """
        raise NotImplementedError(f"{self.location()} cannot expire entries (ttl given)")

    def _classify(self, operation: str, exc: Exception) -> tuple[type[GroveException], str]:
        """Say what a driver error means: the exception to raise and what to say.

        Handlers override this to declare how their driver's errors map (a missing
        table is a :class:`~grove.exceptions.ConfigurationException`, say); the message
        around it is :meth:`_failure`'s. The detail must not hold values or constraints.

        :param operation: What was being done, such as ``get`` or ``setup``.
        :param exc: The error, one of :attr:`driver_errors`.
        :return: The exception class, and the detail that ends its message.
        """
        return AccessException, f"{type(exc).__name__}: {exc}"

    def _failure(
        self,
        operation: str,
        exc: Exception,
        pk: str | None = None,
        sk: str | None = None,
        *,
        where: str | None = None,
    ) -> GroveException:
        """Translate a driver error into a grove exception: the one translation hook.

        Every public method (and a handler's own ``setup``, ``create_storage`` and
        ``maintain``) raises what this returns, from the driver error: one message
        format, ``<operation> of <key or scope> failed in <location>: <detail>``, and
        the exception class :meth:`_classify` declares. Keys are named, values never.

        :param operation: What was being done, such as ``get``.
        :param exc: The driver error.
        :param pk: The partition key of the entry, if the operation has one.
        :param sk: Its sort key.
        :param where: What the operation covered, when not one entry (``all entries``).
        :return: The exception to raise.
        """
        kind, detail = self._classify(operation, exc)
        if pk is not None and sk is not None:
            where = describe_key(pk, sk)
        subject = f"{operation} of {where}" if where else operation
        return kind(f"{subject} failed in {self.location()}: {detail}")

    @override
    def get(self, pk: str, sk: str) -> str:
        """Retrieve the value stored under a key.

        :param pk: Partition key of the value to retrieve.
        :param sk: Sort key of the value to retrieve.
        :raises TypeError: A key is not a ``str``.
        :raises ValueError: A key breaks the key rules.
        :raises NotFoundException: No value was found.
        :raises AccessException: The storage failed.
        :return: The value, exactly as it was stored.
        """
        if (
            type(pk) is not str
            or type(sk) is not str
            or pk not in KNOWN_KEYS
            or sk not in KNOWN_KEYS
        ):
            pk, sk = checked_key(pk, sk)
        try:
            value = self._read(pk, sk)
        except self.driver_errors as exc:
            raise self._failure("get", exc, pk, sk) from exc
        if value is ABSENT:
            raise NotFoundException(f"no value for {describe_key(pk, sk)} in {self.location()}")
        return value

    @override
    def set(
        self,
        pk: str,
        sk: str,
        value: str,
        not_set: bool = False,
        constraint: str | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> None:
        """Store a value under a key, optionally only if the entry is as expected.

        :param pk: Partition key of the value to store.
        :param sk: Sort key of the value to store.
        :param value: Value to store.
        :param not_set: Store only if no value is stored yet (``""`` is a stored value;
            an expired entry is not).
        :param constraint: Store only if the stored value equals this one.
        :param ttl: Let the entry expire this long after the write: seconds above zero,
            or a :class:`~datetime.timedelta`, at most ten years. ``None`` stores an
            entry that never expires, clearing any earlier expiry. Only handlers with
            the expiry ability (:meth:`~grove.caches.BaseCache.supports_expiry`) take it.
        :raises TypeError: A key, the value, the constraint or ``ttl`` is of the wrong
            type.
        :raises ValueError: A key, the value or ``ttl`` breaks the rules, or both
            ``not_set`` and ``constraint`` were given.
        :raises NotImplementedError: ``ttl`` was given to a handler without expiry.
        :raises DataFormatException: The entry was not as expected; nothing changed.
        :raises AccessException: The storage failed; nothing changed.
        """
        if (
            type(pk) is not str
            or type(sk) is not str
            or pk not in KNOWN_KEYS
            or sk not in KNOWN_KEYS
        ):
            pk, sk = checked_key(pk, sk)
        if (
            type(value) is not str
            or not value.isascii()
            or (self.max_value_bytes is not None and len(value) > self.max_value_bytes)
        ):
            check_value(value, max_bytes=self.max_value_bytes)
            value = str.__str__(value)
        expected: Expected
        if constraint is None:
            expected = ABSENT if not_set else ANY
        elif not_set:
            raise ValueError("not_set and constraint cannot be used together")
        elif type(constraint) is str and constraint.isascii():
            expected = constraint
        else:
            check_value(constraint, max_bytes=None, what="constraint")
            expected = str.__str__(constraint)
        if ttl is None:
            try:
                written = self._write(pk, sk, value, expected)
            except self.driver_errors as exc:
                raise self._failure("set", exc, pk, sk) from exc
        else:
            seconds = check_ttl(ttl)
            try:
                written = self._write_expiring(pk, sk, value, expected, seconds)
            except self.driver_errors as exc:
                raise self._failure("set", exc, pk, sk) from exc
        if not written:
            reason = (
                "a value is already stored (not_set)"
                if expected is ABSENT
                else "the stored value does not match the constraint, or none is stored"
            )
            raise _refusal(f"set of {describe_key(pk, sk)} refused: {reason}", written)

    @override
    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        """Remove the entry under a key, optionally only if its value is as expected.

        Removing an absent entry without a constraint is not an error.

        :param pk: Partition key of the value to delete.
        :param sk: Sort key of the value to delete.
        :param constraint: Remove only if the stored value equals this one.
        :raises TypeError: A key or the constraint is not a ``str``.
        :raises ValueError: A key breaks the key rules.
        :raises DataFormatException: The stored value did not match the constraint, or
            none is stored; nothing changed.
        :raises AccessException: The storage failed; nothing changed.
        """
        if (
            type(pk) is not str
            or type(sk) is not str
            or pk not in KNOWN_KEYS
            or sk not in KNOWN_KEYS
        ):
            pk, sk = checked_key(pk, sk)
        expected: ExpectedToRemove = ANY
        if constraint is not None:
            if type(constraint) is not str or not constraint.isascii():
                check_value(constraint, max_bytes=None, what="constraint")
            expected = str.__str__(constraint)
        try:
            removed = self._remove(pk, sk, expected)
        except self.driver_errors as exc:
            raise self._failure("delete", exc, pk, sk) from exc
        if not removed:
            raise _refusal(
                f"delete of {describe_key(pk, sk)} refused: the stored value does not "
                "match the constraint, or none is stored",
                removed,
            )


def _refusal(message: str, outcome: Outcome) -> DataFormatException:
    """The exception for a refused condition, with the stored value when the primitive saw it."""
    if isinstance(outcome, Refused):
        current = None if outcome.current is ABSENT else outcome.current
        return DataFormatException(message, current=current, current_known=True)
    return DataFormatException(message)


class ExpiringCache(AtomicCache, Expiring):
    """The expiry ability: entries that remove themselves a time to live after a write.

    An expired entry is absent for every call: ``get`` raises ``NotFoundException``,
    ``not_set`` succeeds over it, a ``constraint`` never matches it, a conditional delete
    of it is refused, an unconditional one is no error, and listing skips it. A handler
    with this ability implements :meth:`_write_expiring`, :meth:`_read_expiry` and
    :meth:`_sweep_expired`, and makes every primitive of :class:`AtomicCache` treat an
    expired entry as absent within the same atomic step. Its plain :meth:`_write` stores
    an entry that does not expire, clearing any earlier expiry.

    :attr:`clock_owner` says whose clock decides. A handler on which the caller's clock
    decides takes a :data:`Clock` in its constructor (``time.time`` by default), and
    says in its docstring what clock skew between hosts does to it.
    """

    clock_owner: ClassVar[Literal["caller", "server"]] = "caller"
    """``"server"`` when the backend's clock decides expiry (Redis, PostgreSQL),
    ``"caller"`` when the clock of the process making the call does."""

    @override
    @abc.abstractmethod
    def _write_expiring(
        self, pk: str, sk: str, value: str, expected: Expected, ttl: float
    ) -> Outcome:
        """Store a value that expires ``ttl`` seconds from now, as one atomic step.

        Like :meth:`AtomicCache._write`, with value and expiry replaced together.

        :param pk: The partition key, already checked.
        :param sk: The sort key, already checked.
        :param value: The value to store, already checked.
        :param expected: :data:`ANY`, :data:`ABSENT` (an expired entry is absent) or a
            value the stored, unexpired one must equal.
        :param ttl: Seconds from now, already checked (above zero, at most ten years).
        :return: ``True`` when stored; ``False`` or a :class:`Refused` when the entry was
            not as expected.
        """

    @abc.abstractmethod
    def _read_expiry(self, pk: str, sk: str) -> float | Literal[Sentinel.ABSENT] | None:
        """Return when an entry expires.

        :param pk: The partition key, already checked.
        :param sk: The sort key, already checked.
        :return: Seconds since the Unix epoch, ``None`` for an entry that does not
            expire, or :data:`ABSENT` for an absent or expired entry.
        """

    @abc.abstractmethod
    def _sweep_expired(self, limit: int) -> int:
        """Remove at most ``limit`` expired entries, in one bounded step.

        An entry written again meanwhile (so no longer expired) must survive.

        :param limit: The most entries to remove.
        :return: How many entries were removed.
        """

    def expires_at(self, pk: str, sk: str) -> datetime | None:
        """Tell when the entry under a key expires.

        :param pk: Partition key of the entry.
        :param sk: Sort key of the entry.
        :raises TypeError: A key is not a ``str``.
        :raises ValueError: A key breaks the key rules.
        :raises NotFoundException: No unexpired entry is stored.
        :raises AccessException: The storage failed.
        :return: The moment it expires (timezone-aware, UTC), or ``None`` when it never
            does.
        """
        pk, sk = checked_key(pk, sk)
        try:
            moment = self._read_expiry(pk, sk)
        except self.driver_errors as exc:
            raise self._failure("expires_at", exc, pk, sk) from exc
        if moment is ABSENT:
            raise NotFoundException(f"no value for {describe_key(pk, sk)} in {self.location()}")
        return None if moment is None else datetime.fromtimestamp(moment, UTC)

    def sweep_expired(
        self, batch_size: int = 1000, progress: Callable[[int], None] | None = None
    ) -> int:
        """Remove expired entries from the storage, in batches of bounded size.

        Expired entries are already absent for every call; this reclaims their space.
        Safe to run beside handlers in use: an entry written again is kept.

        :param batch_size: The most entries removed in one step (one transaction,
            request or scan page).
        :param progress: Called with the number removed after each batch.
        :raises ValueError: ``batch_size`` is below 1.
        :raises AccessException: The storage failed; batches already done stay done.
        :return: How many entries were removed.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        total = 0
        while True:
            try:
                removed = self._sweep_expired(batch_size)
            except self.driver_errors as exc:
                raise self._failure("sweep", exc, where="expired entries") from exc
            total += removed
            if progress is not None:
                progress(removed)
            if removed < batch_size:
                return total
