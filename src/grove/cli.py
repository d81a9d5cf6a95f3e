"""grove-cache: the operator's command line for any Grove cache.

Read a pointer, move it back, clear a stale lock, copy a whole cache from one backend to
another, check that a backend is configured and reachable. Every command is a thin layer
over the public API of :mod:`grove.caches`, so it works with every handler, third-party
ones included.

The handler is ``--handler NAME`` or ``GROVE_CACHE_HANDLER``, configured by its own
environment variables or ``--config FIELD=VALUE``. With nothing configured the command
line uses an embedded durable store, ``local_sqlite`` at
``$XDG_STATE_HOME/grove/cache.db``, and says so on a terminal; never ``local_memory``,
whose entries would vanish when the command exits.

Commands that only read (``get``, ``ls``, ``export``, the source of ``migrate``, and
``migrate --dry-run``) do not call ``setup()`` on a handler that can create its storage,
because ``setup()`` creates a missing store: a mistyped path is reported, with the
``grove-cache init`` command that would create it, instead of becoming a new, empty store.

Exit codes: 0 success, 1 unexpected error, 2 usage error (including keys or values that
break the rules), 3 not found, 4 condition not met, 5 configuration error, 6 access
error. Errors are one line on stderr; ``--debug`` (before or after the command) adds the
traceback.
"""

from __future__ import annotations

import codecs
import contextlib
import enum
import json
import os
import shlex
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Generic, TypeVar

try:
    import click
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table
    from rich.text import Text
except ImportError as missing:  # without the cli extra
    # An ImportError, not SystemExit: documentation builds and test collection that
    # import this module go on, and the console script's last line says what to do.
    raise ImportError(
        f"grove-cache needs the 'cli' extra ({missing.name} is missing): "
        "pip install 'grove-caches[cli]'",
        name=missing.name,
    ) from missing

import pydantic

from grove.caches import (
    HANDLER_ENV,
    BaseCache,
    CacheEntry,
    CreatingStorage,
    Listing,
    Maintaining,
    create,
    local_sqlite,
    names,
)
from grove.caches.atomic import describe_key
from grove.caches.benchmark import OPERATIONS, Workload, measure
from grove.caches.configuration import handler_from_environment
from grove.caches.lease import FENCE_SUFFIX, LeaseValue, parse_value
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


class OutputError(AccessException):
    """The file a command writes to cannot be written (not the store's fault)."""


DEFAULT_STORE_HANDLER = "local_sqlite"
"""The embedded store the command line uses when no handler is configured."""


def default_store_path() -> Path:
    """Return where the embedded default store lives.

    :return: ``$XDG_STATE_HOME/grove/cache.db``, with ``~/.local/state`` when the
        variable is unset.
    """
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "grove" / "cache.db"


def parse_settings(pairs: Sequence[str], option: str = "--config") -> dict[str, str]:
    """Turn ``FIELD=VALUE`` options into handler settings.

    :param pairs: The options as given.
    :param option: The option they were given with, for messages.
    :raises click.BadParameter: An option has no ``=``.
    :return: Field name to value.
    """
    settings = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name.strip():
            raise click.BadParameter(f"{pair!r} is not FIELD=VALUE", param_hint=option)
        settings[name.strip().lower()] = value
    return settings


def plural(count: int, singular: str, plural_form: str) -> str:
    """Say a count with its noun: ``1 entry``, ``2,000 entries``."""
    return f"{count:,} {singular if count == 1 else plural_form}"


@dataclass
class Store:
    """A handler a command works on, how it was chosen, and the options that chose it."""

    name: str
    handler: BaseCache
    origin: str
    options: tuple[str, ...] = ()
    """The command-line options that select this store and its settings, as typed."""
    embedded_default: bool = False

    @classmethod
    def resolve(
        cls,
        name: str | None,
        settings: dict[str, str],
        *,
        handler_option: str = "--handler",
        config_option: str = "--config",
    ) -> Store:
        """Pick and construct the handler (without setup).

        :param name: The handler option's value, or ``None``.
        :param settings: The settings given with the config option.
        :param handler_option: The option that named the handler, for messages.
        :param config_option: The option that gave the settings, for messages.
        :raises ConfigurationException: The handler or its configuration is invalid; the
            message names the option or environment variable at fault.
        :return: The chosen store.
        """
        options: list[str] = []
        if name is not None:
            installed = names()
            if name not in installed:
                raise ConfigurationException(
                    f"{handler_option}: no cache handler named {name!r}; installed: "
                    + ", ".join(installed)
                )
            origin = f"from {handler_option}"
            options += ["--handler", name]
        else:
            name = handler_from_environment()
            origin = f"from {HANDLER_ENV}"
        for setting, value in settings.items():
            options += ["--config", f"{setting}={value}"]
        if name is None:
            settings = {"path": str(default_store_path()), **settings}
            handler = create(DEFAULT_STORE_HANDLER, settings=settings, settings_label=config_option)
            path = handler.path if isinstance(handler, local_sqlite.Handler) else settings["path"]
            return cls(
                DEFAULT_STORE_HANDLER,
                handler,
                f"embedded default at {path}; set {HANDLER_ENV} or --handler to choose another",
                tuple(options),
                embedded_default=True,
            )
        return cls(
            name,
            create(name, settings=settings, settings_label=config_option),
            origin,
            tuple(options),
        )

    def describe(self) -> str:
        """Say which store this is, for a status line."""
        return f"{self.name} ({self.origin})"

    def init_command(self) -> str | None:
        """Return the ``grove-cache init`` command that creates this store, if it can.

        :return: The command line, with the options that selected the store, or ``None``
            when the handler has nothing it can create.
        """
        if not isinstance(self.handler, CreatingStorage):
            return None
        return shlex.join(["grove-cache", *self.options, "init"])

    def add_init_hint(self, exc: BaseException) -> None:
        """When a failure says this store does not exist, add how to create it.

        The hint is an exception note (:pep:`678`), shown after the message.

        :param exc: The failure.
        """
        command = self.init_command()
        if (
            command is None
            or isinstance(exc, OutputError)
            or getattr(exc, "__notes__", None)
            or not _storage_missing(exc)
        ):
            return
        exc.add_note(f"create it with: {command}")


def _storage_missing(exc: BaseException) -> bool:
    """Tell whether a failure, or one of its causes, says the storage itself is missing.

    A missing cache directory or database file (``FileNotFoundError``), a missing
    DynamoDB table (``ResourceNotFoundException``).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileNotFoundError) or _is_missing_table(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_missing_table(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError  # noqa: PLC0415 - the aws extra is optional
    except ImportError:
        return False
    return (
        isinstance(exc, ClientError)
        and exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException"
    )


def _message(exc: BaseException) -> str:
    """One line for an error: the first line of its message, then its notes."""
    text = str(exc)
    first = text.splitlines()[0] if text.strip() else type(exc).__name__
    return "; ".join([first, *getattr(exc, "__notes__", ())])


class Meter:
    """Advances a progress display, or does nothing when none is shown."""

    def __init__(self, progress: Progress | None = None, *, by_size: bool = False) -> None:
        self._progress = progress
        self._task = progress.add_task("", count=0) if progress is not None else None
        self._by_size = by_size
        self.count = 0

    def describe(self, description: str, total: int | None) -> None:
        """Set what is being done and how much of it there is."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description, total=total)

    def advance(self, count: int = 1, *, size: int = 0) -> None:
        """Count ``count`` entries done, and ``size`` bytes read when measuring bytes."""
        self.count += count
        if self._progress is not None and self._task is not None:
            step = size if self._by_size else count
            self._progress.update(self._task, advance=step, count=self.count)


@dataclass
class Context:
    """What every command shares: options, the consoles, the store."""

    handler_name: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    debug: bool = False
    quiet: bool = False
    out: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    err: Console = field(
        default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True)
    )
    _store: Store | None = None
    _set_up: bool = False
    _announced: bool = False

    def store(self) -> Store:
        """Resolve the store once, without setting it up or saying anything.

        :return: The store.
        """
        if self._store is None:
            self._store = Store.resolve(self.handler_name, self.settings)
        return self._store

    def cache(self, *, writes: bool, announce: bool = True) -> BaseCache:
        """The handler, set up as the command needs, after saying which one it is.

        :param writes: The command may write. ``setup()``, which may create a missing
            store, runs only then, or when the handler cannot create its storage (it may
            need ``setup()`` before any call, as Grove always calls it).
        :param announce: Say on a terminal that the embedded default store is used (once).
        :return: The handler.
        """
        store = self.store()
        if announce and store.embedded_default and not self._announced:
            self._announced = True
            if self.err.is_terminal:
                self.note(f"using {store.describe()}")
        if not self._set_up and (writes or store.init_command() is None):
            store.handler.setup()
            self._set_up = True
        return store.handler

    def note(self, message: str) -> None:
        """Tell the operator something on stderr, unless ``--quiet``."""
        if not self.quiet:
            self.err.print(Text(message))

    def report(self, exc: BaseException, store: Store | None = None) -> ExitCode:
        """Say why the command failed, in one line on stderr (``--debug``: the traceback).

        :param exc: The failure.
        :param store: The store that failed (default: the command's store, if resolved),
            whose ``grove-cache init`` command is named when the failure says it is missing.
        :return: The exit code for the failure.
        """
        if self.debug:
            traceback.print_exception(exc)
        store = store or self._store
        if store is not None:
            store.add_init_hint(exc)
        print(f"grove-cache: error: {_message(exc)}", file=sys.stderr)
        return exit_code_for(exc)

    @property
    def shows_progress(self) -> bool:
        """Whether progress is displayed: on a terminal, unless ``--quiet``."""
        return not self.quiet and self.err.is_terminal

    @contextlib.contextmanager
    def progress(
        self,
        description: str,
        *,
        total: int | None = None,
        unit: str = "entries",
        by_size: bool = False,
    ) -> Iterator[Meter]:
        """Show progress on a terminal; stay silent in pipes.

        :param description: What is being done.
        :param total: How many entries (or bytes, with ``by_size``) there are, when known:
            the display then has a bar, a percentage and the time remaining.
        :param unit: What is counted.
        :param by_size: ``total`` is a size in bytes (a file being read); the count of
            entries is shown beside it.
        :return: The meter to advance.
        """
        if not self.shows_progress:
            yield Meter()
            return
        columns: list[ProgressColumn | str] = [SpinnerColumn(), TextColumn("{task.description}")]
        count = TextColumn("{task.fields[count]:,} " + unit)
        if total is None:
            columns += [count, TimeElapsedColumn()]
        else:
            columns.append(BarColumn())
            if by_size:
                columns += [DownloadColumn(), count]
            else:
                columns.append(TextColumn("{task.completed:,}/{task.total:,} " + unit))
            columns += [TaskProgressColumn(), TextColumn("eta"), TimeRemainingColumn()]
        with Progress(*columns, console=self.err, transient=True) as display:
            meter = Meter(display, by_size=by_size)
            meter.describe(description, total)
            yield meter


pass_context = click.make_pass_decorator(Context)


def _set_flag(name: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(context: click.Context, _parameter: click.Parameter, value: bool) -> None:
        if value:
            setattr(context.ensure_object(Context), name, True)

    return callback


def _anywhere(function: Callable[..., Any]) -> Callable[..., Any]:
    """Accept ``--debug`` and ``-q`` after the command too (``grove-cache bench --debug``)."""
    function = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_set_flag("quiet"),
        help="No status lines or progress on stderr.",
    )(function)
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        callback=_set_flag("debug"),
        help="Show tracebacks.",
    )(function)


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
@_anywhere
@click.version_option(package_name="grove-caches", prog_name="grove-cache")
@click.pass_context
def cli(context: click.Context, handler_name: str | None, config_pairs: tuple[str, ...]) -> None:
    """Inspect, repair, move and check a Grove cache.

    --debug and -q go before or after the command.
    """
    state = context.ensure_object(Context)
    state.handler_name = handler_name
    state.settings = parse_settings(config_pairs)


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
@_anywhere
@pass_context
def maintain(context: Context, older_than: float | None) -> None:
    """Remove what interrupted writes left behind (temporary files, orphaned chunks)."""
    cache = context.cache(writes=True)
    if not isinstance(cache, Maintaining):
        raise NotImplementedError(
            f"{context.store().name} has nothing to maintain (it leaves no leftovers)"
        )
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


# -- plumbing ------------------------------------------------------------------------


def _write_text(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


@contextlib.contextmanager
def _open_output(path: Path | None) -> Iterator[IO[bytes]]:
    """Open where an export goes: stdout, or a file written whole or not at all.

    A regular file is written to a temporary file beside it (0600: exports hold pointers
    and tokens) that replaces it only when everything was written, so a failed export
    never leaves a truncated backup. A device or a pipe is written to directly.

    :raises OutputError: The file cannot be created or written; the message names it.
    """
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        if path.exists() and not path.is_file():
            with path.open("wb") as stream:
                yield stream
            return
        real = Path(os.path.realpath(path))
        descriptor, temporary = tempfile.mkstemp(prefix=f".{real.name}.", dir=real.parent)
        try:
            with os.fdopen(descriptor, "wb") as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


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


def _no_such_option_hint(option: str) -> str:
    group_options = {name for parameter in cli.params for name in parameter.opts}
    if option in group_options:
        return f"{option} goes before the command (grove-cache {option} ... COMMAND)"
    return "put -- before a value that starts with -"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    :param argv: The arguments, without the program name (default: ``sys.argv[1:]``).
    :return: The exit code.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    state = Context()
    try:
        outcome = cli.main(
            args=arguments, prog_name="grove-cache", standalone_mode=False, obj=state
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        print("grove-cache: aborted", file=sys.stderr)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        return ExitCode.USAGE
    except click.ClickException as exc:
        message = exc.format_message()
        if isinstance(exc, click.NoSuchOption):
            message = message.rstrip(".") + "; " + _no_such_option_hint(exc.option_name)
        print(f"grove-cache: error: {message}", file=sys.stderr)
        return ExitCode.USAGE
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else ExitCode.UNEXPECTED
    except Exception as exc:
        return state.report(exc)
    return outcome if isinstance(outcome, int) else ExitCode.OK


def run() -> None:
    """The ``grove-cache`` console script."""
    sys.exit(main())
