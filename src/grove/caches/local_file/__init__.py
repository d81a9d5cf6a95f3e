"""Grove local file cache handler.

One file per entry: ``<path>/<pk>/<sk>.cache`` holds the value as raw UTF-8 bytes,
exactly the layout upstream Grove writes, so an existing cache directory keeps working.
The package is made of parts with one job each; each module's docstring states the
invariants it keeps:

- :mod:`~grove.caches.local_file.names`: how keys become file names and back
  (:func:`escape`, :func:`encode_components`, :class:`EntryPath`);
- :mod:`~grove.caches.local_file.boundary`: opening directories and files below the
  cache directory without ever following a symlink out of it;
- :mod:`~grove.caches.local_file.files`: reading and writing entry files relative to
  their directory, temporary files included;
- :mod:`~grove.caches.local_file.framing`: how an entry file holds an expiry beside its
  value, without a value ever being taken for metadata;
- :mod:`~grove.caches.local_file.tree`: walking the directories for listing, and tidying
  what crashed writers left;
- :mod:`~grove.caches.local_file.settings`: its :class:`Configuration`;
- :mod:`~grove.caches.local_file.handler`: the :class:`Handler` itself, its locking,
  atomicity and durability.
"""

from __future__ import annotations

from grove.caches.local_file.handler import Handler
from grove.caches.local_file.names import (
    NAME_MAX,
    SUFFIX,
    EntryPath,
    decode_components,
    encode_components,
    escape,
    unescape,
)
from grove.caches.local_file.settings import Configuration, CorruptEntryError
from grove.caches.local_file.tree import STALE_TEMPORARY_SECONDS

# Named from the package, where users import them: messages that name a handler by its
# module (``grove.caches.local_file cannot ...``) and pickles stay as they were.
for _public in (Configuration, CorruptEntryError, Handler):
    _public.__module__ = __name__
del _public

__all__ = [
    "NAME_MAX",
    "STALE_TEMPORARY_SECONDS",
    "SUFFIX",
    "Configuration",
    "CorruptEntryError",
    "EntryPath",
    "Handler",
    "decode_components",
    "encode_components",
    "escape",
    "unescape",
]
