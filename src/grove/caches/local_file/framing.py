r"""How an entry file holds an expiry beside its value, without ever being misread.

Layout
    An entry file is either *plain* or a *frame*:

    - plain: the value's raw UTF-8 bytes, nothing else, exactly what upstream Grove writes;
    - frame: :data:`MAGIC`, then the expiry as ASCII (``repr`` of the epoch seconds, or
      ``never``), then ``\n``, then the value's raw UTF-8 bytes.

    A value is written framed when it expires, or when its bytes start with
    :data:`MAGIC` (then with ``never``); every other value is written plain. So a store
    whose entries never expire stays byte for byte in the upstream layout.

Why no value is ever taken for metadata
    A file is read as a frame exactly when it starts with :data:`MAGIC`, and written as
    one exactly when it expires or its value starts with :data:`MAGIC`. So:

    - a plain file never starts with :data:`MAGIC` (a value that does is framed), so it
      is read back as itself, whatever else its bytes hold (NUL, newlines, a header, a
      frame of another value that does not sit at its very start);
    - in a frame the header is fixed-length magic, then an expiry that contains no
      ``\n``, so the first ``\n`` after the magic ends the header; everything after it
      is the value, taken verbatim, even when it starts with :data:`MAGIC` itself.

    Hence ``decode(encode(value, expiry)) == (value, expiry)`` for every value and
    expiry: one file and one ``rename`` per write still carry value and expiry together.

Files written by upstream Grove
    Upstream writes every value plain, so a value of its own that starts with
    :data:`MAGIC` would be read as a frame. The magic starts with a NUL byte and names
    this library; upstream values are timestamps, page tokens and JSON, none of which
    starts with a NUL. Such a file is read as a frame; one whose header does not parse is
    a corrupt entry (an :class:`~grove.exceptions.AccessException` naming the key, as for
    bytes that are not UTF-8), which a plain ``set`` overwrites. Nothing is ever guessed.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "HEAD_BYTES",
    "MAGIC",
    "MalformedFrameError",
    "decode",
    "encode",
    "expiry_of",
    "split_frame",
]

MAGIC: Final = b"\x00grove.caches expiring entry v1\n"
"""The first bytes of every frame, and of no plain entry file."""

NEVER: Final = b"never"
"""The expiry of a frame that does not expire (a plain value that starts with the magic)."""

_HEADER_MAX = 40
"""The most bytes an expiry takes in a header: ``repr`` of a float is at most 24."""

_MAGIC_BYTES = len(MAGIC)
_isfinite = math.isfinite

HEAD_BYTES: Final = len(MAGIC) + _HEADER_MAX + 1
"""Enough of a file's first bytes for :func:`expiry_of`."""


class MalformedFrameError(ValueError):
    """A file starts with :data:`MAGIC` but its header does not parse."""


def encode(value: bytes, expires_at: float | None) -> bytes:
    """Make the content of an entry file.

    :param value: The value's UTF-8 bytes.
    :param expires_at: When the entry expires, in seconds since the epoch, or ``None``.
    :return: The value itself when it does not expire and does not start with
        :data:`MAGIC`; otherwise a frame.
    """
    if expires_at is None:
        if not value.startswith(MAGIC):
            return value
        return b"".join((MAGIC, NEVER, b"\n", value))
    return b"".join((MAGIC, repr(float(expires_at)).encode("ascii"), b"\n", value))


def split_frame(data: bytes) -> tuple[int, float | None]:
    """Parse the header of a frame.

    :param data: A file that starts with :data:`MAGIC` (the caller checked), or at least
        its first :data:`HEAD_BYTES` bytes.
    :raises MalformedFrameError: The header does not parse.
    :return: Where the value starts, and when it expires (``None``: never).
    """
    end = data.find(b"\n", _MAGIC_BYTES, _MAGIC_BYTES + _HEADER_MAX + 1)
    if end < 0:
        raise MalformedFrameError("a frame without the end of its header")
    header = data[_MAGIC_BYTES:end]
    try:
        moment = float(header)  # the read path: bytes parse as ASCII, with no decode
    except ValueError:
        if header == NEVER:
            return end + 1, None
        raise MalformedFrameError("a frame with an unreadable expiry") from None
    if not _isfinite(moment):
        raise MalformedFrameError("a frame with an unreadable expiry")
    return end + 1, moment


def decode(data: bytes) -> tuple[bytes, float | None]:
    """Split the content of an entry file into the value and its expiry.

    :param data: The whole file.
    :raises MalformedFrameError: It starts with :data:`MAGIC` but is no frame.
    :return: The value's bytes and when it expires (``None``: never).
    """
    if not data.startswith(MAGIC):
        return data, None
    start, moment = split_frame(data)
    return data[start:], moment


def expiry_of(head: bytes) -> float | None:
    """Read the expiry of an entry file from its first bytes, without its value.

    :param head: At least the first :data:`HEAD_BYTES` bytes of the file, or all of it.
    :raises MalformedFrameError: It starts with :data:`MAGIC` but is no frame.
    :return: When it expires, or ``None`` for a plain file or a frame that never does.
    """
    if not head.startswith(MAGIC):
        return None
    return split_frame(head)[1]
