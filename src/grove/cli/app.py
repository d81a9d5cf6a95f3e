"""The frame of grove-cache: exit codes, choosing the store, the shared context, main().

Every command module registers its commands on :data:`cli`; :mod:`grove.cli` imports them
all before :func:`run` parses a command line.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

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
from rich.text import Text

from grove.caches import (
    HANDLER_ENV,
    BaseCache,
    CreatingStorage,
    create,
    local_sqlite,
    names,
)
from grove.caches.configuration import handler_from_environment
from grove.exceptions import (
    AccessException,
    ConfigurationException,
    DataFormatException,
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
