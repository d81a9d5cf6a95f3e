"""How keys become file names below the cache directory, and back.

Invariants
    - A key made of the characters ``A-Z a-z 0-9 - . _ ~`` that does not start with ``.``
      is its own name, so the keys upstream Grove writes keep the upstream layout
      ``<path>/<pk>/<sk>.cache``.
    - In any other key every UTF-8 byte outside that set, ``%`` included, becomes ``%XX``
      (upper-case hex), and a leading ``.`` becomes ``%2E``.
    - A name longer than the file system's 255-byte limit (``.cache`` counted) is cut into
      pieces of 240 bytes, each a directory named ``%+<piece>`` except the last, which is
      named ``%=<piece>``.
    - Escaping is one-to-one, and no name it makes is ``.``, ``..``, contains ``/`` or NUL,
      or starts with ``.``: distinct keys never share a file, and names starting with
      ``.`` are free for the handler's temporary files (``.tmp.*``, beside the entries).
    - Decoding accepts only names that escaping produces, so a stray file is never
      listed as an entry.

Names are compared byte for byte, as Linux file systems do; on a case-insensitive file
system (macOS, Windows shares) keys that differ only in case would share a file, so use a
case-sensitive one.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

__all__ = [
    "LAST",
    "MORE",
    "NAME_MAX",
    "PIECE_BYTES",
    "SUFFIX",
    "TEMPORARY_PREFIX",
    "EntryPath",
    "decode_components",
    "encode_components",
    "escape",
    "plain_entry",
    "unescape",
]

SUFFIX: Final = ".cache"
"""The suffix of every entry file, after the escaped sort key."""

NAME_MAX: Final = 255
"""The longest file name, in bytes, that the handler creates (ext4, XFS, btrfs, tmpfs)."""

PIECE_BYTES: Final = 240
"""The length of each piece of an escaped name too long for one file name."""

MORE: Final = "%+"
"""The prefix of a directory holding one piece of a long name, with more to follow."""

LAST: Final = "%="
"""The prefix of the last piece of a long name."""

TEMPORARY_PREFIX: Final = ".tmp."
"""The prefix of temporary files, which escaped names never start with."""

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPES = tuple(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in range(256))
_ESCAPED_NAME = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+")
# pk and sk, each its own file name (sk with SUFFIX) and in no need of escaping: the keys
# Grove writes. Anything else goes the long way through encode_components.
_PLAIN_ENTRY = re.compile(
    r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,254}"  # pk: at most NAME_MAX bytes
    r"/[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,248}"  # sk: at most NAME_MAX bytes with SUFFIX
)

plain_entry = _PLAIN_ENTRY.fullmatch
"""Match ``"<pk>/<sk>"`` when both keys are their own file names (the fast path)."""


def escape(key: str) -> str:
    """Turn a key into its file name, without the suffix or the length limit.

    :param key: A non-empty key that UTF-8 can encode.
    :return: The key itself when it is made of ``A-Z a-z 0-9 - . _ ~`` and does not start
        with ``.``; otherwise its UTF-8 bytes, each outside that set as ``%XX``, with a
        leading ``.`` as ``%2E``. Always ASCII, so its length is its size in bytes.
    """
    name = "".join([_ESCAPES[byte] for byte in key.encode("utf-8")])
    if name.startswith("."):
        name = "%2E" + name[1:]
    return name


def unescape(name: str) -> str | None:
    """Turn a file name made by :func:`escape` back into its key.

    :param name: A file name, without the suffix.
    :return: The key, or ``None`` when :func:`escape` makes no such name (a stray file, a
        lower-case or needless escape, bytes that are not UTF-8).
    """
    if not _ESCAPED_NAME.fullmatch(name):
        return None
    try:
        key = unquote_to_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return key if key and escape(key) == name else None


def encode_components(key: str, suffix: str) -> list[str]:
    """Turn a key into the path components that hold it, each a valid file name.

    :param key: A non-empty key that UTF-8 can encode.
    :param suffix: Appended to the last component: :data:`SUFFIX` for a sort key, ``""``
        for a partition key.
    :return: One component when the escaped name and the suffix fit in :data:`NAME_MAX`
        bytes; otherwise the name cut into :data:`PIECE_BYTES`-byte pieces, ``%+<piece>``
        for all but the last and ``%=<piece><suffix>`` for the last.
    """
    name = escape(key)
    if len(name) + len(suffix) <= NAME_MAX:
        return [name + suffix]
    pieces = [name[start : start + PIECE_BYTES] for start in range(0, len(name), PIECE_BYTES)]
    return [MORE + piece for piece in pieces[:-1]] + [LAST + pieces[-1] + suffix]


def decode_components(components: list[str], suffix: str) -> str | None:
    """Turn path components back into their key; the inverse of :func:`encode_components`.

    :param components: The components, outermost first.
    :param suffix: The suffix the last component must end with.
    :return: The key, or ``None`` when :func:`encode_components` makes no such components.
    """
    if not components or not components[-1].endswith(suffix):
        return None
    last = components[-1][: len(components[-1]) - len(suffix)]
    if len(components) == 1:
        name = last
    else:
        if not last.startswith(LAST) or not all(c.startswith(MORE) for c in components[:-1]):
            return None
        name = "".join(c[len(MORE) :] for c in components[:-1]) + last[len(LAST) :]
    key = unescape(name)
    if key is None or encode_components(key, suffix) != components:
        return None
    return key


class EntryPath:
    """Where one entry lives: the directories from ``<path>`` down to it, and its file.

    Keys whose names fit in single components have one directory. Longer keys have a chain
    of them, whose full path may exceed ``PATH_MAX``; they are opened one by one.

    :param pk: The partition key.
    :param sk: The sort key.
    """

    __slots__ = ("directories", "file")

    def __init__(self, pk: str, sk: str) -> None:
        if plain_entry(f"{pk}/{sk}"):
            self.directories = [pk]
            self.file = f"{sk}{SUFFIX}"
            return
        files = encode_components(sk, SUFFIX)
        self.directories = [*encode_components(pk, ""), *files[:-1]]
        self.file = files[-1]

    def path(self, root: str, depth: int | None = None) -> str:
        """Return the path of the entry's file, or of its ``depth``-th directory.

        :param root: The cache directory.
        :param depth: How many of the entry's directories to include; all and the file
            when ``None``.
        :return: The path, for messages.
        """
        if depth is None:
            return "/".join([root, *self.directories, self.file])
        return "/".join([root, *self.directories[:depth]])
