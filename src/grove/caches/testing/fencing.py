"""What the lease tests measure with: a call counter, a fenced resource, holds and contenders.

:class:`FencedResource` and :func:`lease_violations` judge a run of contenders from what
they report; the contender and holder functions run in worker processes (or threads)
and are module level so that a spawned process can unpickle them.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

from grove.caches import BaseCache
from grove.caches.lease import (
    Lease,
    LeaseLost,
    LeaseUnavailable,
)


class CallCounter(BaseCache):
    """A handler that passes every call to another one and counts them, by method.

    For measuring what a protocol on top of a cache costs (a lease's acquire, say); it
    has the wrapped handler's abilities.

    :param inner: The handler that does the work.
    """

    def __init__(self, inner: BaseCache) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.reports_current = bool(getattr(inner, "reports_current", False))

    def supports_expiry(self) -> bool:  # type: ignore[override]
        """Answer for the wrapped handler (an instance method, unlike the classmethod)."""
        return self.inner.supports_expiry()

    def get(self, pk: str, sk: str) -> str:
        self.calls["get"] += 1
        return self.inner.get(pk, sk)

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
        self.calls["set"] += 1
        store: Callable[..., None] = self.inner.set
        if ttl is None:
            store(pk, sk, value, not_set, constraint)
        else:
            store(pk, sk, value, not_set, constraint, ttl=ttl)

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        self.calls["delete"] += 1
        self.inner.delete(pk, sk, constraint)

    @property
    def total(self) -> int:
        """Calls made so far, all methods together."""
        return sum(self.calls.values())


class FencedResource:
    """A protected resource that refuses writers with a token older than one it accepted.

    What fencing needs from a resource, in a directory: ``highest`` holds the largest
    token accepted, ``accepted`` one line per accepted write, ``rejected`` one per refused
    one; every write runs under an exclusive ``flock`` of ``lock`` (opened anew per
    write, so threads exclude each other too).

    :param directory: An existing directory, shared by every writer.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def write(self, token: int, writer: str) -> bool:
        """Accept a write under ``token`` unless a larger token was accepted before.

        :param token: The writer's fencing token.
        :param writer: Who writes, recorded with the write.
        :return: Whether the write was accepted.
        """
        descriptor = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            highest_file = self.directory / "highest"
            highest = int(highest_file.read_text()) if highest_file.exists() else 0
            accepted = token >= highest
            if accepted:
                highest_file.write_text(str(token))
            with open(self.directory / ("accepted" if accepted else "rejected"), "a") as log:
                log.write(f"{token} {writer}\n")
            return accepted
        finally:
            os.close(descriptor)

    def _lines(self, name: str) -> list[tuple[int, str]]:
        path = self.directory / name
        if not path.exists():
            return []
        pairs = [line.split(" ", 1) for line in path.read_text().splitlines()]
        return [(int(token), writer) for token, writer in pairs]

    def accepted(self) -> list[tuple[int, str]]:
        """The accepted writes, in order: ``(token, writer)``."""
        return self._lines("accepted")

    def rejected(self) -> list[tuple[int, str]]:
        """The refused writes, in order: ``(token, writer)``."""
        return self._lines("rejected")


class Hold(NamedTuple):
    """One acquisition in a contention run, as its holder saw it."""

    writer: str
    """Who held it: ``worker.n``, the n-th hold of a worker."""
    token: int
    start: float
    """When the acquiring write started (its expiry minus the duration), epoch seconds."""
    end: float
    """When its validity ended: the holder stopped, or ``skew`` before its last expiry."""
    froze: bool
    """Whether the holder was frozen (SIGSTOP, or a sleep for threads) during it."""


def lease_violations(holds: list[Hold], accepted: list[tuple[int, str]]) -> list[str]:
    """Check a contention run: what a lease with fencing must never let happen.

    :param holds: Every hold of the run, from every worker.
    :param accepted: The writes the protected resource accepted, in order.
    :return: One line per violation; empty when the run was sound.
    """
    violations = []
    ordered = sorted(holds, key=lambda hold: hold.start)
    for token, count in Counter(hold.token for hold in holds).items():
        if count > 1:
            violations.append(f"token {token} was issued to {count} holds")
    for earlier, later in itertools.pairwise(ordered):
        if later.token <= earlier.token:
            violations.append(
                f"hold {later.writer} got token {later.token} after hold {earlier.writer} "
                f"got {earlier.token}"
            )
        if earlier.end > later.start:
            violations.append(
                f"holds {earlier.writer} and {later.writer} were valid at once for "
                f"{earlier.end - later.start:.3f} s"
            )
    position = {hold.writer: index for index, hold in enumerate(ordered)}
    newest = -1
    for token, writer in accepted:
        if position[writer] < newest:
            violations.append(
                f"the resource accepted a stale write (token {token}) from hold {writer} "
                f"after hold {ordered[newest].writer} had written"
            )
        newest = max(newest, position[writer])
    return violations


class UnfencedLease(Lease):
    """The negative control: a lease whose token never advances (it skips fencing)."""

    def _write_held(self, token: int, high: int, expected: str | None) -> tuple[bool, str | None]:
        return super()._write_held(1, high, expected)


def _freeze(seconds: float, freezer: str | None) -> None:
    """Stop this process with SIGSTOP until the parent resumes it, or sleep (threads)."""
    if freezer is None:
        time.sleep(seconds)
        return
    (Path(freezer) / str(os.getpid())).write_text(str(seconds))
    os.kill(os.getpid(), signal.SIGSTOP)


def resume_frozen(freezer: Path, stop: threading.Event) -> None:
    """Resume each process that froze itself once its freeze is over; all at the end."""
    stopped_since: dict[int, float] = {}
    while True:
        finishing = stop.wait(0.01)
        for marker in list(freezer.iterdir()):
            pid = int(marker.name)
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                marker.unlink()
                continue
            if state != "T":
                continue
            since = stopped_since.setdefault(pid, time.monotonic())
            if finishing or time.monotonic() - since >= float(marker.read_text()):
                marker.unlink()
                del stopped_since[pid]
                os.kill(pid, signal.SIGCONT)
        if finishing and not any(freezer.iterdir()):
            return


def contend_for_lease(
    cache: BaseCache | Callable[[], BaseCache],
    lease_class: type[Lease],
    key: tuple[str, str],
    worker: int,
    timing: tuple[float, float, float],
    resource: str,
    freezer: str | None,
    barrier: Any,
    results: Any,
) -> None:
    """One contender: take the lease again and again, write under it, sometimes freeze.

    Each hold lasts a random time up to one and a half times the lease's duration, and
    writes to the resource at once and then every few milliseconds, each time after
    checking :attr:`Lease.held`. The worker's first hold that leaves the run time for it
    freezes between the check and a write, long enough for another worker to take the
    lease over and write: the paused-holder case. Of the other holds, a third renew in
    the background (the ``with`` block's renewer), the rest by hand. Between holds the
    worker idles a random while. Reports its holds on ``results``.
    """
    if not isinstance(cache, BaseCache):
        cache = cache()
    duration, skew, seconds = timing
    rng = random.Random(worker)
    fenced = FencedResource(resource)
    freeze_for = duration * 2 + skew * 2
    holds: list[Hold] = []
    froze = False
    barrier.wait()
    end = time.time() + seconds
    while time.time() < end:
        freeze = not froze and time.time() + freeze_for * 2 < end
        froze |= freeze
        background = not freeze and rng.random() < 1 / 3
        lease = lease_class(
            cache,
            *key,
            duration=timedelta(seconds=duration),
            skew=timedelta(seconds=skew),
            owner=f"worker-{worker}",
            renew_every=timedelta(seconds=duration / 4) if background else None,
            wait=max(0.0, end - time.time()),
        )
        writer = f"{worker}.{len(holds)}"
        hold_for = rng.uniform(0, duration * 1.5)
        try:
            with lease:
                expires = lease.expires_at
                assert expires is not None and lease.token is not None
                start = expires.timestamp() - duration
                renew = not background
                frozen_for = freeze_for if freeze else None
                last = _hold(lease, fenced, writer, hold_for, renew, frozen_for, freezer, rng)
        except LeaseUnavailable:
            break
        except LeaseLost:
            pass
        assert lease.token is not None
        holds.append(Hold(writer, lease.token, start, min(last[0], last[1] - skew), freeze))
        time.sleep(rng.uniform(0, duration / 4))
    results.put(holds)


def _hold(
    lease: Lease,
    fenced: FencedResource,
    writer: str,
    hold_for: float,
    renew_by_hand: bool,
    freeze_for: float | None,
    freezer: str | None,
    rng: random.Random,
) -> tuple[float, float]:
    """Act under a held lease for ``hold_for`` seconds or until it is lost.

    A hold that freezes (for ``freeze_for`` seconds) does so before its second write,
    however short ``hold_for``.

    :return: When it stopped acting and the last expiry it wrote, in epoch seconds.
    """
    assert lease.token is not None
    started = time.monotonic()
    renewed = started
    duration = lease.duration.total_seconds()
    writes = 0
    while (freeze_for is not None or time.monotonic() - started < hold_for) and lease.held:
        if freeze_for is not None and writes == 1:
            _freeze(freeze_for, freezer)  # between the check and the write
            freeze_for = None
        fenced.write(lease.token, writer)
        writes += 1
        if renew_by_hand and time.monotonic() - renewed > duration / 4:
            renewed = time.monotonic()
            try:
                lease.renew()
            except LeaseLost:
                break
        time.sleep(rng.uniform(0.002, 0.02))
    stopped = time.time()
    expires = lease.expires_at
    assert expires is not None
    return stopped, expires.timestamp()
