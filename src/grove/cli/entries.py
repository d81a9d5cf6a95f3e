"""Commands on one entry: ``get``, ``set``, ``delete``, and the execution locks.

A lock is shown and broken by exactly the value that was read, so a holder that
renewed meanwhile keeps it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import click
from rich.table import Table
from rich.text import Text

from grove.caches import (
    CacheEntry,
)
from grove.caches.atomic import describe_key
from grove.caches.lease import FENCE_SUFFIX, LeaseValue, parse_value
from grove.cli.app import Context, _anywhere, _write_text, cli, pass_context, plural
from grove.cli.bulk import _listed, _shown
from grove.exceptions import (
    DataFormatException,
)

# -- single entries ------------------------------------------------------------------


@cli.command()
@click.argument("pk")
@click.argument("sk")
@click.option("-n", "--no-newline", is_flag=True, help="Write the value exactly, nothing after.")
@_anywhere
@pass_context
def get(context: Context, pk: str, sk: str, no_newline: bool) -> None:
    """Print the value stored under PK SK."""
    value = context.cache(writes=False).get(pk, sk)
    _write_text(value if no_newline else value + "\n")


@cli.command(name="set")
@click.argument("pk")
@click.argument("sk")
@click.argument("value")
@click.option("--not-set", is_flag=True, help="Only if nothing is stored yet (take a lock).")
@click.option("--constraint", metavar="OLD", help="Only if the stored value is exactly OLD.")
@_anywhere
@pass_context
def set_(
    context: Context, pk: str, sk: str, value: str, not_set: bool, constraint: str | None
) -> None:
    """Store VALUE under PK SK; VALUE '-' reads it from stdin, exactly.

    A VALUE that starts with '-' goes after '--': grove-cache set -- PK SK -1.
    """
    if not_set and constraint is not None:
        raise click.UsageError("--not-set and --constraint cannot be used together")
    if value == "-":
        data = sys.stdin.buffer.read()
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise click.UsageError(
                f"standard input is not UTF-8 text (byte {exc.start:,} of {len(data):,})"
            ) from exc
    context.cache(writes=True).set(pk, sk, value, not_set=not_set, constraint=constraint)


@cli.command()
@click.argument("pk")
@click.argument("sk")
@click.option("--constraint", metavar="OLD", help="Only if the stored value is exactly OLD.")
@_anywhere
@pass_context
def delete(context: Context, pk: str, sk: str, constraint: str | None) -> None:
    """Remove the entry under PK SK (no error when absent, unless --constraint)."""
    context.cache(writes=True).delete(pk, sk, constraint=constraint)


# -- locks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Lock:
    """An entry under a lock key, as ``locks`` reads it."""

    entry: CacheEntry
    found: LeaseValue | None
    """What the value says; ``None`` when it is neither a lease nor an upstream lock."""

    @classmethod
    def of(cls, entry: CacheEntry) -> Lock | None:
        """Read an entry; ``None`` for a lease's fencing counter, which is not a lock."""
        if entry.sk.endswith(FENCE_SUFFIX) and entry.value.isascii() and entry.value.isdigit():
            return None
        return cls(entry, parse_value(entry.value))

    @property
    def state(self) -> str:
        """``held``, ``released``, ``claiming``, ``upstream``, or ``other``."""
        return "other" if self.found is None else self.found.state

    def expires_in(self, now: float) -> float | None:
        """Seconds until it expires, negative once it has; ``None`` without an expiry."""
        if self.found is None or self.found.expires is None:
            return None
        return self.found.expires.timestamp() - now

    def describe(self, now: float) -> str:
        """Say what the lock is, for the operator deciding whether to break it."""
        parts = [f"{self.state} lock {describe_key(self.entry.pk, self.entry.sk)}"]
        if self.found is not None and self.found.owner is not None:
            parts.append(f"owner {self.found.owner!r}")
        if self.found is not None and self.found.token is not None:
            parts.append(f"token {self.found.token}")
        remaining = self.expires_in(now)
        if remaining is not None:
            parts.append(_expiry_text(remaining))
        elif self.found is None:
            parts.append("not a lease: never taken over")
        return ", ".join(parts)


def _expiry_text(seconds: float) -> str:
    """``in 4m12s``, or ``expired 3s ago``."""
    hours, rest = divmod(int(abs(seconds)), 3600)
    minutes, whole = divmod(rest, 60)
    if hours:
        span = f"{hours}h{minutes:02d}m{whole:02d}s"
    elif minutes:
        span = f"{minutes}m{whole:02d}s"
    else:
        span = f"{whole}s"
    return f"expires in {span}" if seconds >= 0 else f"expired {span} ago"


@cli.group(invoke_without_command=True)
@click.option(
    "--prefix",
    default="execution_lock.",
    show_default=True,
    metavar="P",
    help="Only partition keys starting with P.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
@_anywhere
@click.pass_context
def locks(click_context: click.Context, prefix: str, as_json: bool) -> None:
    """List leases and upstream Grove locks: owner, fencing token, expiry.

    Fencing counters (sort keys ending in #fence) are left out; values that are neither
    a lease nor a lock show as 'other'. 'locks break' removes one.
    """
    if click_context.invoked_subcommand is not None:
        return
    context = click_context.find_object(Context)
    assert context is not None
    found = [
        lock
        for entry in _listed(context.cache(writes=False), None, prefix)
        if (lock := Lock.of(entry)) is not None
    ]
    found.sort(key=lambda lock: (lock.entry.pk, lock.entry.sk))
    now = time.time()
    if as_json or not context.out.is_terminal:
        for lock in found:
            expires = None if lock.found is None else lock.found.expires
            record = {
                "pk": lock.entry.pk,
                "sk": lock.entry.sk,
                "state": lock.state,
                "owner": None if lock.found is None else lock.found.owner,
                "token": None if lock.found is None else lock.found.token,
                "expires": None if expires is None else expires.isoformat(),
                "expires_in": lock.expires_in(now),
                "value": lock.entry.value,
            }
            _write_text(json.dumps(record, ensure_ascii=False) + "\n")
        return
    table = Table("pk", "sk", "state", "owner", "token", "expiry", header_style="bold")
    for lock in found:
        remaining = lock.expires_in(now)
        table.add_row(
            _shown(lock.entry.pk),
            _shown(lock.entry.sk),
            lock.state,
            _shown(lock.found.owner or "") if lock.found is not None else "",
            str(lock.found.token) if lock.found is not None and lock.found.token else "",
            "" if remaining is None else _expiry_text(remaining),
        )
    context.out.print(table)
    context.note(plural(len(found), "lock", "locks"))


@locks.command(name="break")
@click.argument("pk")
@click.argument("sk")
@click.option("--if-expired", is_flag=True, help="Refuse to break a lock that has not expired.")
@click.option("-y", "--yes", is_flag=True, help="Break it without asking.")
@_anywhere
@pass_context
def break_(context: Context, pk: str, sk: str, if_expired: bool, yes: bool) -> None:
    """Remove the lock under PK SK: exactly the value shown, so a renewal meanwhile wins.

    It shows the lock and asks first (--yes: it does not). A lease's fencing counter is
    kept, so the next holder still gets a larger token.
    """
    if sk.endswith(FENCE_SUFFIX):
        raise click.UsageError(f"{sk!r} names a lease's fencing counter, which is never removed")
    cache = context.cache(writes=True)
    value = cache.get(pk, sk)
    lock = Lock(CacheEntry(pk, sk, value), parse_value(value))
    now = time.time()
    context.err.print(Text(lock.describe(now)))
    remaining = lock.expires_in(now)
    live = lock.state != "released" and (remaining is None or remaining > 0)
    if if_expired and live:
        raise DataFormatException(
            f"locks break of {describe_key(pk, sk)} refused: it has not expired "
            "(--if-expired); nothing was removed"
        )
    if not yes and not click.confirm("break it?", err=True):
        context.note("nothing was removed")
        return
    try:
        cache.delete(pk, sk, constraint=value)
    except DataFormatException as exc:
        raise DataFormatException(
            f"locks break of {describe_key(pk, sk)} refused: it changed since it was shown "
            "(renewed, released or taken over); nothing was removed"
        ) from exc
    context.note(f"removed {describe_key(pk, sk)}")
