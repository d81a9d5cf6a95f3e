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

# Checked before any part is imported, so that importing this package without the cli
# extra raises ImportError naming it, whatever parts an earlier import left loaded.
try:
    import click  # noqa: F401 - the extra's presence
    import rich  # noqa: F401 - likewise
except ImportError as missing:  # without the cli extra
    # An ImportError, not SystemExit: documentation builds and test collection that
    # import this package go on, and the console script's last line says what to do.
    raise ImportError(
        f"grove-cache needs the 'cli' extra ({missing.name} is missing): "
        "pip install 'grove-caches[cli]'",
        name=missing.name,
    ) from missing

# The command modules register their commands on cli when imported.
from grove.cli import bulk, entries, operations
from grove.cli.app import ExitCode, cli, exit_code_for, main, run
from grove.cli.operations import _masked_settings

__all__ = [
    "ExitCode",
    "_masked_settings",
    "bulk",
    "cli",
    "entries",
    "exit_code_for",
    "main",
    "operations",
    "run",
]
