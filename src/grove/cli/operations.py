"""Commands that look after a store: ``doctor``, ``init``, ``maintain``, ``bench``."""

from __future__ import annotations

import contextlib
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from types import FrameType

import click
import pydantic
from rich.table import Table
from rich.text import Text

from grove.caches import (
    BaseCache,
    Expiring,
    Listing,
    Maintaining,
)
from grove.caches.benchmark import OPERATIONS, Workload, measure
from grove.cli.app import Context, _anywhere, _message, cli, exit_code_for, pass_context, plural
from grove.exceptions import (
    AccessException,
    DataFormatException,
    NotFoundException,
)

# -- operations ----------------------------------------------------------------------


def _masked_settings(handler: BaseCache) -> list[tuple[str, str]]:
    if handler.config is None:
        return []
    shown = []
    for name, value in handler.config:
        if isinstance(value, pydantic.SecretStr | pydantic.SecretBytes):
            text = "********" if value.get_secret_value() else ""
        else:
            text = str(value)
        shown.append((name, text))
    return shown


def _ignored_variables(handler: BaseCache) -> list[str]:
    if handler.config is None:
        return []
    return type(handler.config).unknown_variables()


@cli.command()
@_anywhere
@pass_context
def doctor(context: Context) -> None:
    """Show the configuration and check the store with a scratch round trip."""
    out = context.out
    store = context.store()
    out.print(Text(f"handler: {store.describe()}"))
    for name, text in _masked_settings(store.handler):
        out.print(Text(f"  {name} = {text}"))
    for variable in _ignored_variables(store.handler):
        out.print(
            Text(f"  warning: {variable} is set, but {store.name} has no such setting (ignored)")
        )
    cache = store.handler
    pk, sk = f"grove-cache.doctor.{uuid.uuid4().hex}", "check"
    steps: list[tuple[str, Callable[[], object]]] = [
        ("setup (reachability)", cache.setup),
        ("set with not_set", lambda: cache.set(pk, sk, "1", not_set=True)),
        (
            "not_set refuses a stored key",
            lambda: _expect_refusal(lambda: cache.set(pk, sk, "x", not_set=True)),
        ),
        ("set with constraint", lambda: cache.set(pk, sk, "2", constraint="1")),
        ("get", lambda: _expect_equal(cache.get(pk, sk), "2")),
        ("delete with constraint", lambda: cache.delete(pk, sk, constraint="2")),
        (
            "get after delete",
            lambda: _expect_refusal(lambda: cache.get(pk, sk), NotFoundException),
        ),
    ]
    if isinstance(cache, Listing):
        steps.append(("listing", lambda: list(cache.entries(pk))))
    failure: BaseException | None = None
    for label, step in steps:
        try:
            step()
        except Exception as exc:
            store.add_init_hint(exc)
            out.print(Text.assemble(("FAIL", "red"), f" {label}: {_message(exc)}"))
            failure = exc
            break
        out.print(Text.assemble(("ok", "green"), f"   {label}"))
    if failure is not None:
        with contextlib.suppress(Exception):
            cache.delete(pk, sk)
        raise SystemExit(exit_code_for(failure))
    out.print("the store works")


def _expect_refusal(
    call: Callable[[], object], kind: type[Exception] = DataFormatException
) -> None:
    try:
        call()
    except kind:
        return
    raise AccessException(f"expected {kind.__name__}, but the call succeeded")


def _expect_equal(found: str, expected: str) -> None:
    if found != expected:
        raise AccessException("the value read back differs from the value written")


@cli.command()
@_anywhere
@pass_context
def init(context: Context) -> None:
    """Create what the handler needs: a table, a database file, a directory."""
    store = context.store()
    outcome = store.handler.create_storage()
    store.handler.setup()
    context.out.print(Text(outcome))


@cli.command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Leave leftovers younger than this (default: the handler's, safe beside writers).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Expired entries removed per step (one transaction, request or scan page).",
)
@_anywhere
@pass_context
def maintain(context: Context, older_than: float | None, batch_size: int) -> None:
    """Remove expired entries, in batches, and what interrupted writes left behind.

    Expired entries are already absent for every call; this reclaims their space, one
    bounded batch at a time, so a store with millions of them is cleaned without one
    giant transaction. Then the leftovers of interrupted writes go (temporary files,
    orphaned chunks). Safe beside running collectors.
    """
    cache = context.cache(writes=True)
    if not isinstance(cache, Expiring | Maintaining):
        raise NotImplementedError(
            f"{context.store().name} has nothing to maintain "
            "(its entries do not expire and it leaves no leftovers)"
        )
    if isinstance(cache, Expiring):
        with context.progress("removing expired entries", unit="removed") as meter:
            swept = cache.sweep_expired(batch_size=batch_size, progress=meter.advance)
        context.out.print(Text(f"removed {plural(swept, 'expired entry', 'expired entries')}"))
    if isinstance(cache, Maintaining):
        removed = cache.maintain(older_than=older_than)
        context.out.print(Text(f"removed {plural(removed, 'leftover', 'leftovers')}"))


MAX_BENCH_VALUE_BYTES = 4 * 1024 * 1024
"""The largest ``bench --value-bytes``: the value size every handler promises."""


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` meanwhile, so ``finally`` blocks run (as for SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signal_number: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signal_number)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@cli.command()
@click.option(
    "--keys",
    type=click.IntRange(min=1),
    default=1_000,
    show_default=True,
    help="Entries stored while measuring.",
)
@click.option(
    "--calls",
    type=click.IntRange(min=2),
    default=500,
    show_default=True,
    help="Calls per operation and run (2 at least, for percentiles).",
)
@click.option(
    "--value-bytes",
    type=click.IntRange(0, MAX_BENCH_VALUE_BYTES),
    default=64,
    show_default=True,
    help="Size of each value.",
)
@_anywhere
@pass_context
def bench(context: Context, keys: int, calls: int, value_bytes: int) -> None:
    """Measure the configured handler: ops/s and latency per operation.

    It writes only under its own partition keys and removes them however it ends
    (an error, Ctrl-C, SIGTERM).
    """
    cache = context.cache(writes=True)
    workload = Workload(
        keys=keys,
        calls=calls,
        value_bytes=value_bytes,
        repeats=1,
        namespace=f"grove-cache-bench-{uuid.uuid4().hex[:12]}",
        remove_after=True,
    )
    with (
        _terminate_unwinds(),
        context.progress("benchmarking", total=len(OPERATIONS), unit="operations") as meter,
    ):
        results = measure({"handler": cache}, workload, on_operation=lambda _op: meter.advance())
    table = Table("operation", title=Text(context.store().describe()))
    for column in ("ops/s", "p50 us", "p99 us"):
        table.add_column(column, justify="right")
    for operation in OPERATIONS:
        measured = results["handler"][operation]
        table.add_row(
            operation,
            f"{measured.ops_per_second:,.0f}",
            f"{measured.p50_us:.1f}",
            f"{measured.p99_us:.1f}",
        )
    context.out.print(table)
