"""Leases: execution locks that are never held twice, with fencing tokens.

A :class:`Lease` is an execution lock on one key of any cache, built only on the
conditional calls of the contract (``get``, ``set`` with ``not_set`` or ``constraint``),
so it works the same on every handler::

    from datetime import timedelta
    from grove.caches.lease import Lease

    lease = Lease(cache, "execution_lock.okta", "all", duration=timedelta(minutes=5))
    if lease.acquire(wait=30):
        try:
            write_pointer(..., fencing_token=lease.token)  # checks lease.held first
            lease.renew()
        finally:
            lease.release()

    # or: acquire, renew every minute in the background, release on exit
    with Lease(cache, pk, sk, duration=timedelta(minutes=5),
               renew_every=timedelta(minutes=1), wait=30) as lease:
        ...

A holder that loses its lease finds out in a way it cannot miss: :meth:`Lease.renew`
raises :class:`LeaseLost`, the :attr:`Lease.lost` event is set (by the background
renewer too), and the ``with`` block raises :class:`LeaseLost` on exit when the lease was
lost or lapsed while the body ran.

Entries
-------
A lease on ``(pk, sk)`` uses two entries of the same partition:

- the *lease entry* ``(pk, sk)``, holding one of the values below;
- the *fencing counter* ``(pk, sk + "#fence")`` (:data:`FENCE_SUFFIX`): a decimal
  integer, written without ``ttl`` and never deleted by this module. A lease's sort key
  may not end with the suffix, so no lease key is ever another lease's counter. Do not
  delete counters by hand: a deleted counter lets tokens start again from 1.

Values of the lease entry are compact JSON objects (:data:`FORMAT_VERSION` 1, keys in
this order, times in UTC ISO 8601 with microseconds, as upstream Grove writes them)::

    {"grove_lease":1,"state":"held","owner":"host:1234:9f3a","token":7,"high":1048576,
     "expires":"2024-05-01T12:00:00.000000Z"}
    {"grove_lease":1,"state":"released","owner":"host:1234:9f3a","token":7,"high":1048576}
    {"grove_lease":1,"state":"claiming","owner":"host:1234:9f3a",
     "expires":"2024-05-01T12:00:00.000000Z","nonce":"5b0c...32 hex digits"}

``held``: ``owner`` holds fencing token ``token`` until ``expires``; ``high`` is the end
of the block of tokens reserved in the counter (see below). ``released``: the last
holder released it; the entry stays (without ``ttl``) so the next holder continues its
token sequence. ``claiming``: an acquisition in progress that has not got its token yet.
A bare ``%Y-%m-%dT%H:%M:%S.%fZ`` timestamp is an upstream Grove lock, held by someone
else until that time. Any other value is not a lease and is never taken over: an
operator removes it (``grove-cache locks break``). No two acquisitions write the same
value: held and released values carry a token no other acquisition has, a holder's
renewals carry strictly later expiries, and claims carry a random 128-bit nonce. So a
compare-and-set on a value can never succeed for a holder it was not meant for.

Protocol
--------
Tokens are reserved in blocks of :data:`TOKEN_BLOCK` (the hi/lo scheme): the counter
holds the end of the last block reserved, and a held or released value carries its
token and its block's end (``high``). Taking a lease:

1. Look at the lease entry: read it, or, on handlers whose refusals report the stored
   value (:attr:`~grove.caches.atomic.AtomicCache.reports_current`), try to write a claim
   with ``not_set`` and learn the value from the refusal.
2. A ``held`` or ``claiming`` value or an upstream timestamp is busy until its expiry
   plus the skew margin, by the taker's clock. A busy lease is not taken.
3. A ``released`` or expired ``held`` value with token ``T`` is taken with one
   compare-and-set to ``held`` with token ``T + 1``. When ``T + 1`` is past the block,
   the counter is first advanced by a block (compare-and-set), and ``high`` moves too.
4. Anything else that is free (no entry, an expired claim or upstream lock) is taken in
   three steps: write a claim (``not_set``, or compare-and-set over the old value);
   advance the counter from ``F`` to ``F + TOKEN_BLOCK``; replace the claim, by
   compare-and-set, with ``held`` with token ``F + 1``.

Renewing is one compare-and-set of the holder's value to the same token with a later
expiry; releasing is one compare-and-set of it to ``released``. On handlers with expiry
(:meth:`~grove.caches.BaseCache.supports_expiry`) claims and held values are written with
``ttl = duration + skew``, so an abandoned lease disappears on its own; released values
and counters never expire.

Costs, in calls to the cache: renew 1, release 1. Acquire when the lease is free and
was held before (released or expired): 2 (a read or a refused claim, then the
compare-and-set), plus 1 once per :data:`TOKEN_BLOCK` acquisitions. The first
acquisition of a key ever, or one after an abandoned lease's entry expired away or was
broken: 3 on handlers that report refused values, 4 on others, plus 1 or 2 when the
counter already exists. A busy lease costs 1 call per attempt.

Safety
------
*One holder at a time.* A holder acts only while :attr:`Lease.held`: until ``skew``
before the expiry it wrote, by its own wall clock, and never longer than
``duration - skew`` after it started the write, by its monotonic clock (so a stepped
wall clock cannot extend it). A taker takes over an unreleased value only once its own
clock is ``skew`` past that expiry, and a released value only after the holder stopped
(it releases after its last act). So the two never act at once as long as the wall
clocks of any two hosts differ by less than ``2 * skew`` and run at the same rate over a
lease's duration. An entry that expires through ``ttl`` goes at least
``duration + skew`` after its write started, which is after the holder stopped, by
whichever clock decides expiry. Claims and upstream locks are busy until their expiry
plus the skew in the same way.

*Fencing, which needs no clock at all.* Every successful acquisition gets a token
strictly greater than every earlier acquisition's, across releases, expiries, broken
entries and restarts, because these invariants hold after every step:

- (I1) the counter is at least every token ever issued and every ``high`` ever written;
- (I2) while the lease entry holds a ``held`` or ``released`` value with token ``T`` and
  block end ``H``, ``T`` is the largest token ever issued and ``T <= H``;
- (I3) a token is issued only by a compare-and-set of the lease entry from a value seen
  after the counter covered it.

Step 3 issues ``T + 1``, greater than every token by (I2), and never past a block the
counter covers (I1). Step 4 issues ``F + 1`` where ``F``, read after the claim was
written and held by the counter when it was advanced, is at least every token issued
before (I1); none can be issued while the claim stands, as issuing replaces the entry,
and a claim value is never written twice, so the final compare-and-set succeeds only if
the claim stood throughout. An entry that expires or is deleted takes no token with it
that the counter does not cover (I1). Renewals keep the token. A paused holder
therefore carries a token smaller than its successor's, and a protected resource that
remembers the largest token it accepted and refuses smaller ones never accepts a write
from a holder superseded by one that has already written there.

*What fencing needs from the protected resource:* the comparison of the token with the
largest one seen and the write must be one atomic step at the resource (a conditional
write, a transaction, a file under a lock), and the token must be stored with the data.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final, Literal

from grove.caches import BaseCache
from grove.caches.atomic import Clock, describe_key
from grove.caches.validation import check_key, check_ttl
from grove.exceptions import DataFormatException, GroveException, NotFoundException

__all__ = [
    "FENCE_SUFFIX",
    "FORMAT_VERSION",
    "TOKEN_BLOCK",
    "UPSTREAM_TIME_FORMAT",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseUnavailable",
    "LeaseValue",
    "default_owner",
    "parse_value",
]

FORMAT_VERSION: Final = 1
"""The ``grove_lease`` field of the values this module writes."""

FENCE_SUFFIX: Final = "#fence"
"""Appended to a lease's sort key to name its fencing counter."""

TOKEN_BLOCK: Final = 1 << 20
"""Tokens reserved in the fencing counter at once."""

UPSTREAM_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
"""The time format of upstream Grove's lock values, and of expiries in lease values."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIRST_BACKOFF = 0.01
"""Seconds before the second attempt of :meth:`Lease.acquire`; doubles up to a cap."""
_ROUNDS = 4
"""Times one attempt looks again at an entry that changed under it and seems free."""

State = Literal["held", "released", "claiming", "upstream"]


class LeaseError(GroveException):
    """A lease could not be used as asked."""


class LeaseLost(LeaseError):  # noqa: N818 - named for what happened to the holder
    """The holder no longer holds its lease: a renewal or release was refused, or it lapsed.

    The holder must stop acting under the lease's token at once.

    :param message: What happened, naming the key.
    :param pk: The lease's partition key.
    :param sk: The lease's sort key.
    :param token: The fencing token that was lost.
    """

    def __init__(self, message: str, *, pk: str, sk: str, token: int | None) -> None:
        super().__init__(message)
        self.pk = pk
        self.sk = sk
        self.token = token


class LeaseUnavailable(LeaseError):  # noqa: N818 - as LeaseLost
    """A ``with`` block could not acquire its lease within its ``wait``."""


@dataclass(frozen=True)
class LeaseValue:
    """A lease entry's value, as :func:`parse_value` reads it.

    :param state: ``held``, ``released``, ``claiming``, or ``upstream`` for an upstream
        Grove lock.
    :param owner: Who wrote it; ``None`` for an upstream lock.
    :param token: The fencing token, for ``held`` and ``released``.
    :param high: The end of the token block, for ``held`` and ``released``.
    :param expires: When it expires (timezone-aware, UTC); ``None`` for ``released``.
    """

    state: State
    owner: str | None
    token: int | None
    high: int | None
    expires: datetime | None


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _format_micros(micros: int) -> str:
    return (_EPOCH + micros * _MICROSECOND).strftime(UPSTREAM_TIME_FORMAT)


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, UPSTREAM_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _count(data: dict[str, object], name: str) -> int | None:
    number = data.get(name)
    return number if type(number) is int and number > 0 else None


def parse_value(value: str) -> LeaseValue | None:
    """Read a lease entry's value.

    :param value: The stored value.
    :return: What it says, or ``None`` when it is neither a lease value of
        :data:`FORMAT_VERSION` nor an upstream Grove lock.
    """
    if not value.startswith("{"):
        moment = _parse_time(value)
        return None if moment is None else LeaseValue("upstream", None, None, None, moment)
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("grove_lease") != FORMAT_VERSION:
        return None
    state, owner = data.get("state"), data.get("owner")
    if type(data["grove_lease"]) is not int or not isinstance(owner, str):
        return None
    expires = _parse_time(data.get("expires"))
    if state == "claiming":
        nonce = data.get("nonce")
        if expires is None or not isinstance(nonce, str):
            return None
        return LeaseValue("claiming", owner, None, None, expires)
    token, high = _count(data, "token"), _count(data, "high")
    if token is None or high is None:
        return None
    if state == "held" and expires is not None:
        return LeaseValue("held", owner, token, high, expires)
    if state == "released":
        return LeaseValue("released", owner, token, high, None)
    return None


def _encode(
    state: State,
    owner: str,
    *,
    token: int | None = None,
    high: int | None = None,
    expires: int | None = None,
    nonce: str | None = None,
) -> str:
    fields: dict[str, object] = {"grove_lease": FORMAT_VERSION, "state": state, "owner": owner}
    if token is not None:
        fields["token"] = token
        fields["high"] = high
    if expires is not None:
        fields["expires"] = _format_micros(expires)
    if nonce is not None:
        fields["nonce"] = nonce
    return json.dumps(fields, separators=(",", ":"))


def _counter(raw: str | None, pk: str, fence_sk: str) -> int:
    if raw is None:
        return 0
    if raw.isascii() and raw.isdigit():
        return int(raw)
    raise LeaseError(f"fencing counter {describe_key(pk, fence_sk)} is not a number")


def default_owner() -> str:
    """Name this process as a lease owner: host, process id and a random part.

    :return: For example ``collector-3:4711:9f3a0c1d``.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """A lease on one key of a cache: an execution lock with a fencing token.

    One :class:`Lease` object stands for one would-be holder; use it from one thread (its
    background renewer is its own business). It can be acquired again after a release.

    :param cache: Any handler; one with the expiry ability lets abandoned leases vanish.
    :param pk: The partition key, e.g. ``execution_lock.okta``.
    :param sk: The sort key; it may not end with :data:`FENCE_SUFFIX`.
    :param duration: How long an acquisition or renewal lasts; more than ``skew``.
    :param owner: Who holds it, shown to operators; :func:`default_owner` by default.
        Informational only: two leases with the same owner still exclude each other.
    :param skew: The clock margin: the holder stops this long before the expiry, a taker
        waits this long after it.
    :param wait: Seconds a ``with`` block waits to acquire; ``None`` tries once.
    :param renew_every: Renew in the background this often while a ``with`` block runs;
        ``None`` (the default) does not. Less than ``duration - skew``.
    :param clock: The wall clock, like :func:`time.time`; for tests.
    :raises TypeError: A key is not a ``str``, or a duration not a ``timedelta``.
    :raises ValueError: A key breaks the key rules or ends with the suffix, or a
        duration is out of range.
    """

    def __init__(
        self,
        cache: BaseCache,
        pk: str,
        sk: str,
        *,
        duration: timedelta,
        owner: str | None = None,
        skew: timedelta = timedelta(seconds=5),
        wait: float | None = None,
        renew_every: timedelta | None = None,
        clock: Clock | None = None,
    ) -> None:
        check_key(pk, sk)
        fence_sk = sk + FENCE_SUFFIX
        check_key(pk, fence_sk)
        if sk.endswith(FENCE_SUFFIX):
            raise ValueError(f"a lease's sort key may not end with {FENCE_SUFFIX!r}")
        for name, span in (("duration", duration), ("skew", skew), ("renew_every", renew_every)):
            if span is not None and not isinstance(span, timedelta):
                raise TypeError(f"{name} must be a timedelta, not {type(span).__name__}")
        if skew < timedelta(0) or duration <= skew:
            raise ValueError("duration must be longer than skew, and skew not negative")
        if renew_every is not None and not timedelta(0) < renew_every < duration - skew:
            raise ValueError("renew_every must be above zero and less than duration - skew")
        if wait is not None and not wait >= 0:
            raise ValueError(f"wait must be at least 0 seconds, not {wait!r}")
        self._ttl = check_ttl(duration + skew) if cache.supports_expiry() else None
        self.cache = cache
        self.pk = pk
        self.sk = sk
        self.fence_sk = fence_sk
        self.owner = default_owner() if owner is None else owner
        self.duration = duration
        self.skew = skew
        self.lost = threading.Event()
        """Set when the lease is found lost: by :meth:`renew`, :meth:`release` or the
        background renewer. Cleared by the next successful :meth:`acquire`."""
        self._wait = wait
        self._renew_every = renew_every
        self._clock = clock or time.time
        self._write_first = bool(getattr(cache, "reports_current", False))
        self._max_backoff = min(1.0, max(_FIRST_BACKOFF, (duration - skew).total_seconds() / 8))
        self._mutex = threading.Lock()
        self._state: Literal["idle", "held", "lost"] = "idle"
        self._value: str | None = None
        self._unsure: str | None = None
        self._token: int | None = None
        self._high = 0
        self._expires = 0
        self._valid_until = 0.0
        self._renewer: threading.Thread | None = None
        self._stop_renewing = threading.Event()
        self._renewer_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"Lease({describe_key(self.pk, self.sk)}, owner={self.owner!r})"

    # -- what the holder sees -------------------------------------------------------------

    @property
    def held(self) -> bool:
        """Whether this lease is held and may be acted on now.

        ``False`` from ``skew`` before the expiry on, by the wall clock, or once
        ``duration - skew`` has passed since the last acquisition or renewal started, by
        the monotonic clock, whichever comes first.
        """
        return self._state == "held" and self._valid()

    @property
    def token(self) -> int | None:
        """The fencing token of the latest acquisition, ``None`` before the first.

        Hand it to the protected resource with every write.
        """
        return self._token

    @property
    def expires_at(self) -> datetime | None:
        """When the lease expires, as last written (timezone-aware, UTC).

        ``None`` when it is not held: never acquired, or released.
        """
        if self._state == "idle":
            return None
        return _EPOCH + self._expires * _MICROSECOND

    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    def _valid(self) -> bool:
        margin = self.skew // _MICROSECOND
        return self._now() < self._expires - margin and time.monotonic() < self._valid_until

    # -- calls to the cache ----------------------------------------------------------------

    def _get(self, sk: str) -> str | None:
        try:
            return self.cache.get(self.pk, sk)
        except NotFoundException:
            return None

    def _put(
        self, sk: str, value: str, expected: str | None, *, expires: bool
    ) -> tuple[bool, str | None]:
        """Write ``value`` if the entry holds ``expected`` (``None``: nothing).

        A value for the lease entry whose call raised is remembered as possibly written,
        until a later write of the lease entry succeeds.

        :return: ``(True, None)`` when written, else ``(False, what is stored)``, from the
            refusal when the handler reported it, else from one read.
        """
        store: Callable[..., None] = self.cache.set
        options: dict[str, object] = {}
        if expires and self._ttl is not None:
            options["ttl"] = self._ttl
        if expected is None:
            options["not_set"] = True
        else:
            options["constraint"] = expected
        try:
            store(self.pk, sk, value, **options)
        except DataFormatException as refusal:
            return False, refusal.current if refusal.current_known else self._get(sk)
        except Exception:
            if sk == self.sk:
                self._unsure = value
            raise
        if sk == self.sk:
            self._unsure = None
        return True, None

    def _write_held(self, token: int, high: int, expected: str | None) -> tuple[bool, str | None]:
        started = time.monotonic()
        expires = self._now() + self.duration // _MICROSECOND
        value = _encode("held", self.owner, token=token, high=high, expires=expires)
        written, seen = self._put(self.sk, value, expected, expires=True)
        if written:
            self._state, self._value, self._token = "held", value, token
            self._high, self._expires = high, expires
            self._valid_until = started + (self.duration - self.skew).total_seconds()
            self.lost.clear()
        return written, seen

    def _advance_counter(self, believed: str | None, floor: int) -> tuple[int, int]:
        """Reserve the next block of tokens in the fencing counter.

        :param believed: The counter's value as last seen, ``None`` for absent.
        :param floor: A token the block must start above.
        :return: The largest token the block starts above, and the block's end.
        """
        expected = believed
        while True:
            base = max(_counter(expected, self.pk, self.fence_sk), floor)
            high = base + TOKEN_BLOCK
            written, expected = self._put(self.fence_sk, str(high), expected, expires=False)
            if written:
                return base, high

    # -- acquire ---------------------------------------------------------------------------

    def acquire(self, wait: float | None = None) -> bool:
        """Take the lease if it is free, optionally retrying until a deadline.

        :param wait: Seconds to keep trying, with jittered exponential backoff; ``None``
            or ``0`` tries once.
        :raises RuntimeError: This object holds the lease already.
        :raises ValueError: ``wait`` is negative.
        :raises LeaseError: The fencing counter holds something other than a number.
        :raises AccessException: The storage failed; the lease may be left claimed until
            it expires.
        :return: ``True`` when acquired (see :attr:`token`), ``False`` when it stayed
            busy.
        """
        if wait is not None and not wait >= 0:
            raise ValueError(f"wait must be at least 0 seconds, not {wait!r}")
        if self.held:
            raise RuntimeError(f"{self!r} is already held")
        deadline = time.monotonic() + (wait or 0.0)
        delay = _FIRST_BACKOFF
        while True:
            with self._mutex:
                if self._attempt():
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, random.uniform(delay / 2, delay)))
            delay = min(delay * 2, self._max_backoff)

    def _ours(self, seen: str) -> bool:
        """Whether ``seen`` is a value this object wrote (or may have) and does not act under.

        Called only when the lease is not :attr:`held`, so taking over such a value at
        once, with a new token, is safe.
        """
        return seen in (self._value, self._unsure)

    def _busy(self, seen: str, found: LeaseValue | None) -> bool:
        if found is None:
            return True  # not a lease: an operator has to look at it
        if found.expires is None or self._ours(seen):
            return False
        return self._now() < _micros(found.expires + self.skew)

    def _attempt(self) -> bool:
        seen: str | None
        if self._write_first:
            claim, seen = self._claim(None)
            if claim is not None:
                return self._complete(claim)
        else:
            seen = self._get(self.sk)
        for _ in range(_ROUNDS):
            found = None if seen is None else parse_value(seen)
            if seen is not None and self._busy(seen, found):
                return False
            if found is not None and found.token is not None and found.high is not None:
                token, high = found.token + 1, found.high
                if token > high:
                    _, high = self._advance_counter(str(high), found.token)
                written, seen = self._write_held(token, high, seen)
                if written:
                    return True
            else:
                claim, seen = self._claim(seen)
                if claim is not None:
                    return self._complete(claim)
        return False

    def _claim(self, expected: str | None) -> tuple[str | None, str | None]:
        """Write a claim over ``expected``; return it when written, else what is stored."""
        expires = self._now() + self.duration // _MICROSECOND
        claim = _encode("claiming", self.owner, expires=expires, nonce=secrets.token_hex(16))
        written, seen = self._put(self.sk, claim, expected, expires=True)
        return (claim, None) if written else (None, seen)

    def _complete(self, claim: str) -> bool:
        """Get a token for a standing claim and replace the claim with it."""
        base, high = self._advance_counter(None, 0)
        written, _ = self._write_held(base + 1, high, claim)
        return written

    # -- renew and release ----------------------------------------------------------------

    def _loss(self, reason: str) -> LeaseLost:
        """Mark the lease lost and describe why."""
        self._state = "lost"
        self.lost.set()
        return LeaseLost(
            f"lease {describe_key(self.pk, self.sk)} in {type(self.cache).__module__} was "
            f"lost: {reason}",
            pk=self.pk,
            sk=self.sk,
            token=self._token,
        )

    def renew(self) -> None:
        """Extend the held lease by ``duration`` from now, keeping its token.

        :raises RuntimeError: The lease is not held (never acquired, or released).
        :raises LeaseLost: It lapsed (``skew`` before its expiry) or the renewal was
            refused: another holder took it, or an operator broke it. Stop acting.
        :raises AccessException: The storage failed; the lease is still held until it
            lapses, and the next renewal sorts out whether this one was written.
        """
        with self._mutex:
            if self._state == "idle":
                raise RuntimeError(f"{self!r} is not held")
            if self._state == "lost" or not self._valid():
                raise self._loss("it lapsed before it was renewed")
            assert self._value is not None and self._token is not None
            started = time.monotonic()
            expires = max(self._now() + self.duration // _MICROSECOND, self._expires + 1)
            value = _encode("held", self.owner, token=self._token, high=self._high, expires=expires)
            if not self._replace(value, expires=True):
                raise self._loss("its renewal was refused: another holder took it or it was broken")
            self._expires = expires
            self._valid_until = started + (self.duration - self.skew).total_seconds()

    def _replace(self, value: str, *, expires: bool) -> bool:
        """Compare-and-set our value to ``value``, or the value of a write that raised."""
        assert self._value is not None
        earlier = self._unsure
        written, seen = self._put(self.sk, value, self._value, expires=expires)
        if not written and earlier is not None and seen == earlier:
            # The earlier call raised, but its value had been written.
            written, _ = self._put(self.sk, value, earlier, expires=expires)
        if written:
            self._value = value
        return written

    def release(self) -> None:
        """Give the lease up, keeping its token sequence for the next holder.

        Safe to call when not held (nothing happens) or after a loss (the entry is
        released only if it is still this holder's).

        :raises LeaseLost: The lease was held and valid, yet its entry had been taken over
            or broken: someone else may have acted under it meanwhile.
        :raises AccessException: The storage failed; the lease expires by itself.
        """
        with self._mutex:
            if self._state == "idle":
                return
            valid = self._state == "held" and self._valid()
            assert self._token is not None
            value = _encode("released", self.owner, token=self._token, high=self._high)
            released = self._replace(value, expires=False)
            error = None if released or not valid else self._loss("its release was refused")
            self._state = "idle"
            if error is not None:
                raise error

    # -- the with block --------------------------------------------------------------------

    def __enter__(self) -> Lease:
        """Acquire (waiting up to ``wait``) and start the background renewer if asked.

        :raises LeaseUnavailable: The lease stayed busy.
        :return: This lease.
        """
        if not self.acquire(self._wait):
            raise LeaseUnavailable(
                f"lease {describe_key(self.pk, self.sk)} in {type(self.cache).__module__} "
                "is held by another owner"
            )
        if self._renew_every is not None:
            self._stop_renewing.clear()
            self._renewer_error = None
            self._renewer = threading.Thread(
                target=self._renew_in_background,
                args=(self._renew_every.total_seconds(),),
                name=f"lease-renewer {self.pk}",
                daemon=True,
            )
            self._renewer.start()
        return self

    def _renew_in_background(self, interval: float) -> None:
        while not self._stop_renewing.wait(interval):
            try:
                self.renew()
            except LeaseLost:
                return
            except GroveException:
                continue  # a storage failure: the next renewal tries again before the lapse
            except Exception as error:
                if self._state == "idle":
                    return  # the body released the lease
                self._renewer_error = error  # raised from the with block's exit
                self.lost.set()
                return

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the renewer and release; raise :class:`LeaseLost` if it did not hold.

        :raises LeaseLost: The lease was lost or lapsed before the block ended, so part
            of the block may have run without it.
        """
        if self._renewer is not None:
            self._stop_renewing.set()
            self._renewer.join()
            self._renewer = None
        if self._state == "idle" and not self.lost.is_set():
            return  # the body released it
        intact = self.held and not self.lost.is_set()
        self.release()
        if intact or isinstance(exc, LeaseLost):
            return
        error = self._loss("it was lost or lapsed while the with block ran")
        self._state = "idle"
        if self._renewer_error is not None:
            raise error from self._renewer_error
        raise error
