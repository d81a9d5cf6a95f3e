"""grove-cache: the operator's command line for any Grove cache.

Read a pointer, move it back, clear a stale lock, copy a whole cache from one backend to
another, check that a backend is configured and reachable. Every command is a thin layer
over the public API of :mod:`grove.caches`, so it works with every handler, third-party
ones included.

The handler is ``--handler NAME`` or ``GROVE_CACHE_HANDLER``, configured by its own
environment variables or ``--config FIELD=VALUE``. With nothing configured the command
line uses an embedded durable store, ``local_sqlite`` at
``$XDG_STATE_HOME/grove/cache.db``, and says so; never ``local_memory``, whose entries
would vanish when the command exits.

Exit codes: 0 success, 1 unexpected error, 2 usage error (including keys or values that
break the rules), 3 not found, 4 condition not met, 5 configuration error, 6 access
error. Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

try:
    import click
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError as missing:  # pragma: no cover - depends on the install
    raise SystemExit(
        f"grove-cache needs the 'cli' extra ({missing.name} is missing): "
        "pip install 'grove-caches[cli]'"
    ) from missing

import pydantic

from grove.caches import HANDLER_ENV, BaseCache, CacheEntry, create
from grove.caches.benchmark import OPERATIONS, Workload, measure
from grove.exceptions import (
    AccessException,
    ConfigurationException,
    DataFormatException,
    GroveException,
    NotFoundException,
)

T = TypeVar("T")
R = TypeVar("R")


class ExitCode(enum.IntEnum):
    """The command line's exit codes, one per kind of outcome."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    NOT_FOUND = 3
    CONDITION_NOT_MET = 4
    CONFIGURATION = 5
    ACCESS = 6


def exit_code_for(exc: BaseException) -> ExitCode:
    """Map an exception to the exit code of its kind.

    :param exc: The exception a command raised.
    :return: Its exit code.
    """
    if isinstance(exc, NotFoundException):
        return ExitCode.NOT_FOUND
    if isinstance(exc, DataFormatException):
        return ExitCode.CONDITION_NOT_MET
    if isinstance(exc, ConfigurationException):
        return ExitCode.CONFIGURATION
    if isinstance(exc, AccessException):
        return ExitCode.ACCESS
    if isinstance(exc, click.UsageError | ValueError | TypeError | NotImplementedError):
        return ExitCode.USAGE
    return ExitCode.UNEXPECTED


DEFAULT_STORE_HANDLER = "local_sqlite"
"""The embedded store the command line uses when no handler is configured."""


def default_store_path() -> Path:
    """Return where the embedded default store lives.

    :return: ``$XDG_STATE_HOME/grove/cache.db``, with ``~/.local/state`` when the
        variable is unset.
    """
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "grove" / "cache.db"


def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``FIELD=VALUE`` options into handler settings.

    :param pairs: The options as given.
    :raises click.BadParameter: An option has no ``=``.
    :return: Field name to value.
    """
    settings = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise click.BadParameter(f"{pair!r} is not FIELD=VALUE", param_hint="--config")
        settings[name.strip().lower()] = value
    return settings


@dataclass
class Store:
    """The handler a command works on, and how it was chosen."""

    name: str
    handler: BaseCache
    origin: str
    embedded_default: bool = False

    @classmethod
    def resolve(cls, name: str | None, settings: dict[str, str]) -> Store:
        """Pick and construct the handler (without setup).

        :param name: ``--handler``, or ``None``.
        :param settings: ``--config`` settings.
        :raises ConfigurationException: The handler or its configuration is invalid.
        :return: The chosen store.
        """
        if name is None:
            name = os.environ.get(HANDLER_ENV, "").strip() or None
            origin = f"from {HANDLER_ENV}"
        else:
            origin = "from --handler"
        if name is None:
            path = default_store_path()
            settings = {"path": str(path), **settings}
            return cls(
                DEFAULT_STORE_HANDLER,
                create(DEFAULT_STORE_HANDLER, settings=settings),
                f"embedded default at {path}; set {HANDLER_ENV} or --handler to choose another",
                embedded_default=True,
            )
        return cls(name, create(name, settings=settings), origin)

    def describe(self) -> str:
        """Say which store this is, for a status line."""
        return f"{self.name} ({self.origin})"


@dataclass
class Context:
    """What every command shares: options and the consoles."""

    handler_name: str | None
    settings: dict[str, str]
    debug: bool
    quiet: bool
    out: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    err: Console = field(
        default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True)
    )
    _store: Store | None = None

    def store(self, *, set_up: bool = True) -> Store:
        """Resolve the store once; set it up unless told not to.

        :param set_up: Call the handler's ``setup()`` (``init`` does not: the storage
            may not exist yet).
        :return: The store.
        """
        if self._store is None:
            self._store = Store.resolve(self.handler_name, self.settings)
            if self._store.embedded_default:
                self.note(f"using {self._store.describe()}")
            if set_up:
                self._store.handler.setup()
        return self._store

    def cache(self) -> BaseCache:
        """The ready handler."""
        return self.store().handler

    def note(self, message: str) -> None:
        """Tell the operator something on stderr, unless ``--quiet``."""
        if not self.quiet:
            self.err.print(message, markup=False)

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[Callable[[int], None]]:
        """Show a progress counter on a terminal; stay silent in pipes.

        :param description: What is being counted.
        :return: A function that advances the counter by n.
        """
        if self.quiet or not self.err.is_terminal:
            yield lambda _n: None
            return
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,} entries"),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=None)
            yield lambda n: bar.advance(task, n)


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--handler",
    "handler_name",
    metavar="NAME",
    help=f"Handler to use (default: ${HANDLER_ENV}, else the embedded local_sqlite store).",
)
@click.option(
    "--config",
    "config_pairs",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A handler setting that wins over its environment variable (repeatable).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No status lines or progress on stderr.")
@click.version_option(package_name="grove-caches", prog_name="grove-cache")
@click.pass_context
def cli(
    context: click.Context,
    handler_name: str | None,
    config_pairs: tuple[str, ...],
    debug: bool,
    quiet: bool,
) -> None:
    """Inspect, repair, move and check a Grove cache."""
    context.obj = Context(handler_name, parse_settings(config_pairs), debug, quiet)


# -- single entries ------------------------------------------------------------------


@cli.command()
@click.argument("pk")
@click.argument("sk")
@click.option("-n", "--no-newline", is_flag=True, help="Write the value exactly, nothing after.")
@pass_context
def get(context: Context, pk: str, sk: str, no_newline: bool) -> None:
    """Print the value stored under PK SK."""
    value = context.cache().get(pk, sk)
    _write_text(value if no_newline else value + "\n")


@cli.command(name="set")
@click.argument("pk")
@click.argument("sk")
@click.argument("value")
@click.option("--not-set", is_flag=True, help="Only if nothing is stored yet (take a lock).")
@click.option("--constraint", metavar="OLD", help="Only if the stored value is exactly OLD.")
@pass_context
def set_(
    context: Context, pk: str, sk: str, value: str, not_set: bool, constraint: str | None
) -> None:
    """Store VALUE under PK SK; VALUE '-' reads it from stdin, exactly."""
    if value == "-":
        value = sys.stdin.buffer.read().decode("utf-8")
    context.cache().set(pk, sk, value, not_set=not_set, constraint=constraint)


@cli.command()
@click.argument("pk")
@click.argument("sk")
@click.option("--constraint", metavar="OLD", help="Only if the stored value is exactly OLD.")
@pass_context
def delete(context: Context, pk: str, sk: str, constraint: str | None) -> None:
    """Remove the entry under PK SK (no error when absent, unless --constraint)."""
    context.cache().delete(pk, sk, constraint=constraint)


# -- many entries --------------------------------------------------------------------


def _selection(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--prefix", metavar="P", help="Only partition keys starting with P.")(
        function
    )
    return click.option("--pk", metavar="PK", help="Only this partition key.")(function)


def _listed(cache: BaseCache, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
    if not cache.supports_listing():
        raise NotImplementedError(
            f"{type(cache).__module__} cannot list entries, so this command cannot run on it"
        )
    return cache.entries(pk, prefix=prefix)


def _json_line(entry: CacheEntry) -> str:
    return json.dumps({"pk": entry.pk, "sk": entry.sk, "value": entry.value}, ensure_ascii=False)


def _preview(text: str, width: int = 60) -> str:
    shown = text if len(text) <= width else text[: width - 1] + "\u2026"
    return shown.encode("unicode_escape").decode("ascii") if not shown.isprintable() else shown


@cli.command(name="ls")
@_selection
@click.option("--json", "as_json", is_flag=True, help="JSON Lines instead of a table.")
@pass_context
def list_(context: Context, pk: str | None, prefix: str | None, as_json: bool) -> None:
    """List entries: a table on a terminal, JSON Lines with --json or in a pipe."""
    entries = _listed(context.cache(), pk, prefix)
    if as_json or not context.out.is_terminal:
        for entry in entries:
            _write_text(_json_line(entry) + "\n")
        return
    table = Table("pk", "sk", "value", "bytes", header_style="bold")
    count = 0
    for entry in entries:
        table.add_row(
            _preview(entry.pk), _preview(entry.sk), _preview(entry.value), str(len(entry.value))
        )
        count += 1
    context.out.print(table)
    context.note(f"{count:,} entries")


@cli.command()
@_selection
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File (default stdout)."
)
@pass_context
def export(context: Context, pk: str | None, prefix: str | None, output: Path | None) -> None:
    """Write entries as JSON Lines: {"pk": ..., "sk": ..., "value": ...}."""
    entries = _listed(context.cache(), pk, prefix)
    count = 0
    with (
        _open_output(output) as stream,
        context.progress("exporting") as advance,
    ):
        for entry in entries:
            stream.write((_json_line(entry) + "\n").encode("utf-8"))
            count += 1
            advance(1)
    context.note(f"exported {count:,} entries" + (f" to {output}" if output else ""))


@dataclass
class ImportReport:
    """What ``import`` did, entry by entry."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    first_failure: BaseException | None = None

    def fail(self, where: str, exc: BaseException, context: Context) -> None:
        """Count a failed entry and say why on stderr."""
        self.failed += 1
        self.first_failure = self.first_failure or exc
        context.err.print(f"grove-cache: {where}: {exc}", markup=False)


def _read_entries(
    lines: Iterable[bytes], report: ImportReport, context: Context
) -> Iterator[tuple[int, CacheEntry]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            entry = CacheEntry(record["pk"], record["sk"], record["value"])
            if not all(isinstance(part, str) for part in entry):
                raise TypeError("pk, sk and value must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            report.fail(f"line {number}", ValueError(f"not an entry ({exc})"), context)
            continue
        yield number, entry


@cli.command(name="import")
@click.argument("source", type=click.File("rb"))
@click.option("--not-set", is_flag=True, help="Never overwrite: skip entries already stored.")
@click.option("--workers", default=8, show_default=True, help="Parallel writes.")
@pass_context
def import_(context: Context, source: IO[bytes], not_set: bool, workers: int) -> None:
    """Store the entries of a JSON Lines file (as written by export); '-' is stdin."""
    cache = context.cache()
    report = ImportReport()

    def write(item: tuple[int, CacheEntry]) -> None:
        _, entry = item
        cache.set(entry.pk, entry.sk, entry.value, not_set=not_set)

    with context.progress("importing") as advance:
        items = _read_entries(source, report, context)
        for (number, _entry), error in _run_parallel(write, items, workers):
            advance(1)
            if error is None:
                report.written += 1
            elif isinstance(error, DataFormatException) and not_set:
                report.skipped += 1
            else:
                report.fail(f"line {number}", error, context)
    context.err.print(
        f"imported: {report.written:,} written, {report.skipped:,} skipped (already set), "
        f"{report.failed:,} failed",
        markup=False,
    )
    if report.first_failure is not None:
        raise SystemExit(exit_code_for(report.first_failure))


@cli.command()
@click.option("--to", "target_name", required=True, metavar="NAME", help="Destination handler.")
@click.option(
    "--to-config",
    "target_pairs",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A destination setting that wins over its environment variable (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be copied; write nothing.")
@click.option("--workers", default=8, show_default=True, help="Parallel copies.")
@pass_context
def migrate(
    context: Context,
    target_name: str,
    target_pairs: tuple[str, ...],
    dry_run: bool,
    workers: int,
) -> None:
    """Copy every entry to another handler, then re-read each one to verify it."""
    source = context.cache()
    target = create(target_name, settings=parse_settings(target_pairs))
    target.setup()
    context.note(f"from {context.store().describe()} to {target_name}")

    started = time.perf_counter()
    copied = failed = 0
    if dry_run:
        with context.progress("counting") as advance:
            for _ in _listed(source, None, None):
                copied += 1
                advance(1)
        context.err.print(f"dry run: {copied:,} entries would be copied", markup=False)
        return

    def copy(entry: CacheEntry) -> None:
        target.set(entry.pk, entry.sk, entry.value)

    def verify(entry: CacheEntry) -> None:
        if target.get(entry.pk, entry.sk) != entry.value:
            raise DataFormatException(f"{entry.pk!r} {entry.sk!r} differs after the copy")

    first_failure: BaseException | None = None
    with context.progress("copying") as advance:
        for entry, error in _run_parallel(copy, _listed(source, None, None), workers):
            advance(1)
            if error is None:
                copied += 1
            else:
                failed += 1
                first_failure = first_failure or error
                context.err.print(
                    f"grove-cache: copy of {entry.pk!r} {entry.sk!r}: {error}", markup=False
                )
    copy_seconds = time.perf_counter() - started

    verified = mismatched = 0
    with context.progress("verifying") as advance:
        for _entry, error in _run_parallel(verify, _listed(source, None, None), workers):
            advance(1)
            if error is None:
                verified += 1
            else:
                mismatched += 1
                first_failure = first_failure or error
                context.err.print(f"grove-cache: verify: {error}", markup=False)
    rate = copied / copy_seconds if copy_seconds > 0 else float(copied)
    context.err.print(
        f"migrated: {copied:,} copied in {copy_seconds:.1f} s ({rate:,.0f} entries/s), "
        f"{failed:,} failed; verified {verified:,}, {mismatched:,} mismatched",
        markup=False,
    )
    if first_failure is not None:
        raise SystemExit(exit_code_for(first_failure))


# -- operations ----------------------------------------------------------------------


def _masked_settings(handler: BaseCache) -> list[tuple[str, str]]:
    config = getattr(handler, "config", None)
    if not isinstance(config, pydantic.BaseModel):
        return []
    shown = []
    for name, value in config:
        if isinstance(value, pydantic.SecretStr | pydantic.SecretBytes):
            text = "********" if value.get_secret_value() else ""
        else:
            text = str(value)
        shown.append((name, text))
    return shown


@cli.command()
@pass_context
def doctor(context: Context) -> None:
    """Show the configuration and check the store with a scratch round trip."""
    out = context.out
    store = context.store(set_up=False)
    out.print(f"handler: {store.describe()}", markup=False)
    for name, text in _masked_settings(store.handler):
        out.print(f"  {name} = {text}", markup=False)
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
    if cache.supports_listing():
        steps.append(("listing", lambda: list(cache.entries(pk))))
    failure: BaseException | None = None
    for label, step in steps:
        try:
            step()
        except Exception as exc:
            out.print(f"[red]FAIL[/red] {label}: {exc}")
            failure = exc
            break
        out.print(f"[green]ok[/green]   {label}")
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
        raise AccessException(f"read {found!r} back, expected {expected!r}")


@cli.command()
@pass_context
def init(context: Context) -> None:
    """Create what the handler needs: a table, a database file, a directory."""
    store = context.store(set_up=False)
    outcome = store.handler.create_storage()
    store.handler.setup()
    context.out.print(outcome, markup=False)


@cli.command()
@click.option("--keys", default=1_000, show_default=True, help="Entries stored while measuring.")
@click.option("--calls", default=500, show_default=True, help="Calls per operation and run.")
@click.option("--value-bytes", default=64, show_default=True, help="Size of each value.")
@pass_context
def bench(context: Context, keys: int, calls: int, value_bytes: int) -> None:
    """Measure the configured handler: ops/s and latency per operation.

    It writes only under its own partition keys and removes them when done.
    """
    cache = context.cache()
    workload = Workload(
        keys=keys,
        calls=calls,
        value_bytes=value_bytes,
        repeats=1,
        namespace=f"grove-cache-bench-{uuid.uuid4().hex[:12]}",
        remove_after=True,
    )
    with context.progress("benchmarking") as advance:
        results = measure({"handler": cache}, workload, on_operation=lambda _op: advance(1))
    table = Table("operation", title=context.store().describe())
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


# -- plumbing ------------------------------------------------------------------------


def _write_text(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


@contextlib.contextmanager
def _open_output(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with path.open("wb") as stream:
        yield stream


def _run_parallel(
    function: Callable[[T], None], items: Iterable[T], workers: int
) -> Iterator[tuple[T, BaseException | None]]:
    """Apply ``function`` to each item on a thread pool, a bounded number in flight.

    :return: Each item with the exception it raised, or ``None``, in completion order.
    """
    if workers <= 1:
        for item in items:
            try:
                function(item)
            except (GroveException, ValueError, TypeError) as exc:
                yield item, exc
            else:
                yield item, None
        return
    pending: dict[Future[None], T] = {}
    with ThreadPoolExecutor(workers) as pool:
        for item in items:
            pending[pool.submit(function, item)] = item
            if len(pending) >= workers * 4:
                yield from _collect(pending, wait(pending, return_when=FIRST_COMPLETED).done)
        yield from _collect(pending, set(pending))


def _collect(
    pending: dict[Future[None], T], done: Iterable[Future[None]]
) -> Iterator[tuple[T, BaseException | None]]:
    for future in list(done):
        item = pending.pop(future)
        error = future.exception()
        if error is not None and not isinstance(error, GroveException | ValueError | TypeError):
            raise error
        yield item, error


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    :param argv: The arguments, without the program name (default: ``sys.argv[1:]``).
    :return: The exit code.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        outcome = cli.main(args=arguments, prog_name="grove-cache", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        print("grove-cache: aborted", file=sys.stderr)
        return 130
    except click.ClickException as exc:
        print(f"grove-cache: error: {exc.format_message()}", file=sys.stderr)
        return ExitCode.USAGE
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else ExitCode.UNEXPECTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"grove-cache: error: {message}", file=sys.stderr)
        return exit_code_for(exc)
    return outcome if isinstance(outcome, int) else ExitCode.OK


def run() -> None:
    """The ``grove-cache`` console script."""
    sys.exit(main())
