"""Commands over many entries: ``ls``, ``export``, ``import``, ``migrate``.

``import`` and ``migrate`` run their writes on a bounded thread pool
(:func:`_run_parallel`; lines of one key stay in order) and count outcomes in one
:class:`Tally`; the first failure decides the exit code.
"""

from __future__ import annotations

import codecs
import enum
import json
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import click
from rich.table import Table
from rich.text import Text

from grove.caches import (
    BaseCache,
    CacheEntry,
    Listing,
)
from grove.cli.app import (
    Context,
    Meter,
    R,
    Store,
    T,
    _anywhere,
    _message,
    _open_output,
    _storage_missing,
    _write_text,
    cli,
    exit_code_for,
    parse_settings,
    pass_context,
    plural,
)
from grove.exceptions import (
    DataFormatException,
    GroveException,
    NotFoundException,
)

# -- many entries --------------------------------------------------------------------


def _selection(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--prefix", metavar="P", help="Only partition keys starting with P.")(
        function
    )
    return click.option("--pk", metavar="PK", help="Only this partition key.")(function)


def _listed(cache: BaseCache, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
    if pk is not None and prefix is not None:
        raise click.UsageError("give --pk or --prefix, not both")
    if not isinstance(cache, Listing):
        raise NotImplementedError(
            f"{type(cache).__module__} cannot list entries, so this command cannot run on it"
        )
    return cache.entries(pk, prefix=prefix)


def _json_line(entry: CacheEntry) -> str:
    return json.dumps({"pk": entry.pk, "sk": entry.sk, "value": entry.value}, ensure_ascii=False)


def _shown(text: str, width: int = 60) -> Text:
    """Show stored text in a table cell: literally, never as markup.

    Cut to ``width`` characters; control and other invisible characters (ESC, BEL, a
    bidirectional override) are shown as escapes in reverse video, never sent raw.
    """
    cut = text if len(text) <= width else text[: width - 1] + "\u2026"
    shown = Text()
    for character in cut:
        if character.isprintable():
            shown.append(character)
        else:
            shown.append(character.encode("unicode_escape").decode("ascii"), style="reverse")
    return shown


@cli.command(name="ls")
@_selection
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
@_anywhere
@pass_context
def list_(context: Context, pk: str | None, prefix: str | None, as_json: bool) -> None:
    """List entries: a table on a terminal, JSON Lines with --json or in a pipe."""
    entries = _listed(context.cache(writes=False), pk, prefix)
    if as_json or not context.out.is_terminal:
        for entry in entries:
            _write_text(_json_line(entry) + "\n")
        return
    table = Table("pk", "sk", "value", "bytes", header_style="bold")
    count = 0
    for entry in entries:
        table.add_row(
            _shown(entry.pk),
            _shown(entry.sk),
            _shown(entry.value),
            f"{len(entry.value.encode('utf-8')):,}",
        )
        count += 1
    context.out.print(table)
    context.note(plural(count, "entry", "entries"))


@cli.command()
@_selection
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File (default stdout); written whole or not at all.",
)
@_anywhere
@pass_context
def export(context: Context, pk: str | None, prefix: str | None, output: Path | None) -> None:
    """Write entries as JSON Lines: {"pk": ..., "sk": ..., "value": ...}."""
    entries = _listed(context.cache(writes=False), pk, prefix)
    with _open_output(output) as stream, context.progress("exporting") as meter:
        for entry in entries:
            stream.write((_json_line(entry) + "\n").encode("utf-8"))
            meter.advance()
    exported = plural(meter.count, "entry", "entries")
    context.note(f"exported {exported}" + (f" to {output}" if output else ""))


class Mismatch(DataFormatException):
    """A copy read back from the destination differs from the source."""


K = TypeVar("K", bound=enum.Enum)


@dataclass
class Tally(Generic[K]):
    """What a command over many entries did: each entry one outcome, or a failure.

    ``import`` and ``migrate`` count into one; the first failure decides the exit code.
    """

    counts: Counter[K] = field(default_factory=Counter)
    failed: int = 0
    mismatched: int = 0
    """Failures that were copies read back different (:class:`Mismatch`)."""
    first_failure: BaseException | None = None

    def count(self, outcome: K) -> None:
        """Count an entry that ended as ``outcome``."""
        self.counts[outcome] += 1

    def fail(self, where: str, exc: BaseException, context: Context) -> None:
        """Count a failed entry and say why on stderr."""
        self.failed += 1
        self.mismatched += isinstance(exc, Mismatch)
        self.first_failure = self.first_failure or exc
        context.err.print(Text(f"grove-cache: {where}: {_message(exc)}"))

    @property
    def done(self) -> int:
        """How many entries ended, one way or another."""
        return sum(self.counts.values()) + self.failed

    def exit_on_failure(self) -> None:
        """End the command with the exit code of the first failure, if any."""
        if self.first_failure is not None:
            raise SystemExit(exit_code_for(self.first_failure))


class Imported(enum.Enum):
    """What ``import`` did with one line."""

    WRITTEN = "written"
    SKIPPED = "skipped"
    """``--not-set``: a value was stored already; left as it was."""


def _read_entries(
    lines: Iterable[bytes], report: Tally[Imported], context: Context, meter: Meter
) -> Iterator[tuple[int, CacheEntry]]:
    for number, read in enumerate(lines, start=1):
        meter.advance(0, size=len(read))
        line = read.removeprefix(codecs.BOM_UTF8) if number == 1 else read
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            entry = CacheEntry(record["pk"], record["sk"], record["value"])
            if not all(isinstance(part, str) for part in entry):
                raise TypeError("pk, sk and value must be strings")
        # RecursionError: JSON nested too deeply, a bad line like any other.
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            report.fail(f"line {number}", ValueError(f"not an entry ({_message(exc)})"), context)
            continue
        yield number, entry


def _size_of(stream: IO[bytes]) -> int | None:
    """Return how many bytes are left to read, when the stream is a regular file."""
    try:
        status = os.fstat(stream.fileno())
        return status.st_size - stream.tell() if stat.S_ISREG(status.st_mode) else None
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


@cli.command(name="import")
@click.argument("source", type=click.File("rb"))
@click.option(
    "--not-set", is_flag=True, help="Never overwrite: skip entries already stored (first wins)."
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=8, show_default=True, help="Parallel writes."
)
@_anywhere
@pass_context
def import_(context: Context, source: IO[bytes], not_set: bool, workers: int) -> None:
    """Store the entries of a JSON Lines file (as written by export); '-' is stdin.

    Lines are stored as if one after another: for a key given more than once the last
    line wins (with --not-set, the first).
    """
    cache = context.cache(writes=True)
    report = Tally[Imported]()

    def write(item: tuple[int, CacheEntry]) -> None:
        _, entry = item
        cache.set(entry.pk, entry.sk, entry.value, not_set=not_set)

    with context.progress("importing", total=_size_of(source), by_size=True) as meter:
        items = _read_entries(source, report, context, meter)
        for (number, _entry), error in _run_parallel(
            write, items, workers, key=lambda item: item[1][:2]
        ):
            meter.advance()
            if error is None:
                report.count(Imported.WRITTEN)
            elif isinstance(error, DataFormatException) and not_set:
                report.count(Imported.SKIPPED)
            else:
                report.fail(f"line {number}", error, context)
    written, skipped = report.counts[Imported.WRITTEN], report.counts[Imported.SKIPPED]
    context.err.print(
        Text(
            f"imported: {written:,} written, {skipped:,} skipped (already set), "
            f"{report.failed:,} failed"
        )
    )
    report.exit_on_failure()


class Copied(enum.Enum):
    """What ``migrate`` did with one entry."""

    NEW = "new"
    """The destination lacked it; copied."""
    UNCHANGED = "unchanged"
    """The destination held the same value; nothing written."""
    OVERWRITTEN = "overwritten"
    """The destination held a different value; replaced."""
    KEPT = "kept"
    """``--not-set``: the destination held a value; left as it was."""


def _copy(target: BaseCache, entry: CacheEntry, *, not_set: bool, dry_run: bool) -> Copied:
    """Copy one entry; with ``dry_run``, only read the destination and say what would happen.

    A first ``not_set`` write both copies an entry the destination lacks and finds out,
    without a read, whether it was there: a fresh destination costs one write and one
    verifying read per entry, as a plain copy would.
    """
    pk, sk, value = entry
    if dry_run:
        try:
            found = target.get(pk, sk)
        except NotFoundException:
            return Copied.NEW
        if found == value:
            return Copied.UNCHANGED
        return Copied.KEPT if not_set else Copied.OVERWRITTEN
    try:
        target.set(pk, sk, value, not_set=True)
    except DataFormatException:
        if not_set:
            return Copied.KEPT
        try:
            if target.get(pk, sk) == value:
                return Copied.UNCHANGED
            outcome = Copied.OVERWRITTEN
        except NotFoundException:  # deleted meanwhile
            outcome = Copied.NEW
        target.set(pk, sk, value)
    else:
        outcome = Copied.NEW
    if target.get(pk, sk) != value:
        raise Mismatch(f"{pk!r} {sk!r} differs at the destination after the copy")
    return outcome


def _migrate_summary(report: Tally[Copied], *, not_set: bool, dry_run: bool, seconds: float) -> str:
    """Say what ``migrate`` did, in one line."""
    tally, done = report.counts, report.done
    new, unchanged = tally[Copied.NEW], tally[Copied.UNCHANGED]
    overwritten, kept = tally[Copied.OVERWRITTEN], tally[Copied.KEPT]
    would = "would be " if dry_run else ""
    parts = [f"{new:,} {would}new"]
    if not_set:
        parts.append(f"{unchanged + kept:,} {would}skipped (already at the destination)")
    else:
        parts += [
            f"{unchanged:,} {'already equal' if dry_run else 'unchanged'}",
            f"{overwritten:,} {would}overwritten (the destination held a different value)",
        ]
    parts.append(f"{report.failed:,} failed")
    if dry_run:
        return f"dry run: {plural(done, 'entry', 'entries')}: {', '.join(parts)}"
    rate = done / seconds if seconds > 0 else float(done)
    return (
        f"migrated {plural(done, 'entry', 'entries')} in {seconds:.1f} s "
        f"({rate:,.0f} entries/s): {', '.join(parts)}; "
        f"verified {new + overwritten:,}, {report.mismatched:,} mismatched"
    )


@cli.command()
@click.option("--to", "target_name", required=True, metavar="NAME", help="Destination handler.")
@click.option(
    "--to-config",
    "target_pairs",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A destination setting that wins over its environment variable (repeatable).",
)
@click.option(
    "--not-set",
    is_flag=True,
    help="Copy only entries the destination lacks; never overwrite one it holds.",
)
@click.option(
    "--dry-run", is_flag=True, help="Compare with the destination and report; write nothing."
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=8, show_default=True, help="Parallel copies."
)
@_anywhere
@pass_context
def migrate(
    context: Context,
    target_name: str,
    target_pairs: tuple[str, ...],
    not_set: bool,
    dry_run: bool,
    workers: int,
) -> None:
    """Copy every entry to another handler, reading each copy back to verify it.

    Reports how many entries were new at the destination, unchanged, and overwritten
    because the destination held a different value (or, with --not-set, kept).
    """
    source_store = context.store()
    source = context.cache(writes=False, announce=False)
    target = Store.resolve(
        target_name,
        parse_settings(target_pairs, "--to-config"),
        handler_option="--to",
        config_option="--to-config",
    )
    if not dry_run:
        try:
            target.handler.setup()
        except GroveException as exc:
            raise SystemExit(context.report(exc, target)) from exc
    context.note(f"from {source_store.describe()} to {target.describe()}")

    total = None
    if context.shows_progress:
        with context.progress("counting") as meter:
            for _ in _listed(source, None, None):
                meter.advance()
        total = meter.count

    def copy(entry: CacheEntry) -> Copied:
        return _copy(target.handler, entry, not_set=not_set, dry_run=dry_run)

    report = Tally[Copied]()
    started = time.perf_counter()
    with context.progress("comparing" if dry_run else "copying", total=total) as meter:
        for entry, outcome in _run_parallel(copy, _listed(source, None, None), workers):
            meter.advance()
            if isinstance(outcome, Copied):
                report.count(outcome)
                continue
            if _storage_missing(outcome):  # every other entry would fail the same way
                raise SystemExit(context.report(outcome, target))
            report.fail(f"copy of {entry.pk!r} {entry.sk!r}", outcome, context)
    seconds = time.perf_counter() - started
    context.err.print(
        Text(_migrate_summary(report, not_set=not_set, dry_run=dry_run, seconds=seconds))
    )
    report.exit_on_failure()


_OUTCOMES = (GroveException, ValueError, TypeError)
"""Exceptions that :func:`_run_parallel` reports as an item's outcome; others are bugs."""


def _run_parallel(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    key: Callable[[T], Hashable] | None = None,
) -> Iterator[tuple[T, R | BaseException]]:
    """Apply ``function`` to each item on a thread pool, a bounded number in flight.

    Grove errors, ``ValueError`` and ``TypeError`` are outcomes; anything else is a bug
    and propagates.

    :param key: When given, items with equal keys run one after another, in the order
        given (the last one's effect stays), while items with other keys run in parallel.
    :return: Each item with what the function returned or the exception it raised, in
        completion order.
    """
    if workers <= 1:
        for item in items:
            try:
                yield item, function(item)
            except _OUTCOMES as exc:
                yield item, exc
        return
    flight = _InFlight[T, R](key)
    with ThreadPoolExecutor(workers) as pool:
        for item in items:
            earlier = flight.latest_of(item)
            if earlier is not None:
                # Its key is in flight: wait for that write, so the later line wins.
                yield from flight.collect(wait([earlier]).done)
            flight.add(item, pool.submit(function, item))
            if len(flight.pending) >= workers * 4:
                yield from flight.collect(wait(flight.pending, return_when=FIRST_COMPLETED).done)
        yield from flight.collect(set(flight.pending))


class _InFlight(Generic[T, R]):
    """The futures of :func:`_run_parallel` in flight, and the latest one of each key."""

    def __init__(self, key: Callable[[T], Hashable] | None) -> None:
        self.key = key
        self.pending: dict[Future[R], T] = {}
        self.latest: dict[Hashable, Future[R]] = {}

    def latest_of(self, item: T) -> Future[R] | None:
        """The future in flight for an item with the same key, if any."""
        return None if self.key is None else self.latest.get(self.key(item))

    def add(self, item: T, future: Future[R]) -> None:
        """Track a submitted item."""
        self.pending[future] = item
        if self.key is not None:
            self.latest[self.key(item)] = future

    def collect(self, done: Iterable[Future[R]]) -> Iterator[tuple[T, R | BaseException]]:
        """Yield each finished item with its outcome; raise an error that is a bug."""
        for future in list(done):
            item = self.pending.pop(future)
            if self.key is not None and self.latest.get(self.key(item)) is future:
                del self.latest[self.key(item)]
            error = future.exception()
            if error is None:
                yield item, future.result()
            elif isinstance(error, _OUTCOMES):
                yield item, error
            else:
                raise error
