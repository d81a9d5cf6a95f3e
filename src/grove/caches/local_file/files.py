"""Reading and writing entry files, relative to a descriptor of their directory.

Invariants
    - An entry file is opened with ``O_NOFOLLOW | O_NONBLOCK`` relative to its directory:
      a symlink planted as an entry is an error naming it, and a FIFO never blocks.
    - Only a regular file is read to its end; an entry file is never changed once it has
      its name (writes replace it), so a short first read is the whole file.
    - A temporary file has a name unique to its process and call (``.tmp.<pid>.<n>``, never
      an entry's), is created with ``O_EXCL`` (a name left by an earlier process with the
      same PID is never written over), and is recorded before it exists, so the caller
      can remove it whatever happens next.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat

from grove.caches.local_file.boundary import (
    FILE_MODE,
    O_READ,
    O_TEMPORARY,
    READ_CHUNK,
    named,
)
from grove.caches.local_file.names import TEMPORARY_PREFIX

__all__ = ["read_descriptor", "read_entry", "read_rest", "unlink_quietly", "write_temporary"]

# Bound once: the read path is short enough that attribute lookups show in its cost.
_os_read = os.read
_os_close = os.close


def read_rest(descriptor: int, first: bytes, path: str) -> bytes:
    """Read what follows a first read that filled its buffer, or check an empty one.

    Only a regular file ends: a device planted as an entry file could be read forever, and
    a FIFO reads as empty.

    :param descriptor: The open entry file.
    :param first: What the first read returned.
    :param path: The file's path, for messages.
    :raises OSError: It is not a regular file.
    :return: The whole content.
    """
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        raise OSError(errno.EINVAL, "not a regular file, where the cache keeps an entry", path)
    chunks = [first]
    while chunk := os.read(descriptor, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def read_descriptor(descriptor: int, path: str) -> bytes:
    """Read a whole entry file from its descriptor, and close it.

    An entry file is never changed once it has its name (writes replace it), and a regular
    file returns fewer bytes than asked for only at its end, so a short first read is all.

    :param descriptor: The open entry file.
    :param path: The file's path, for messages.
    :return: The whole content.
    """
    try:
        data = _os_read(descriptor, READ_CHUNK)
        if len(data) == READ_CHUNK or not data:
            data = read_rest(descriptor, data, path)
    except OSError as exc:
        raise named(exc, path) from None
    finally:
        _os_close(descriptor)
    return data


def read_entry(name: str, directory: int, path: str) -> bytes | None:
    """Read an entry file relative to its directory, or return ``None`` if it is absent.

    :param name: The file's name.
    :param directory: A descriptor of its directory.
    :param path: The file's path, for messages.
    :return: The whole content, or ``None``.
    """
    try:
        descriptor = os.open(name, O_READ, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise named(exc, path) from None
    return read_descriptor(descriptor, path)


def unlink_quietly(name: str, dir_fd: int | None) -> None:
    """Remove a file if it can be removed, ignoring any failure.

    :param name: The file's name.
    :param dir_fd: A descriptor of its directory.
    """
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


_temporary_counter = itertools.count()
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid  # noqa: PLW0603 - per-process state, reset by fork.
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def write_temporary(directory: int, data: bytes, made: list[str], fsync: bool) -> str:
    """Write data to a new temporary file in a directory; return its name.

    The name is unique to this process and call; ``O_EXCL`` makes sure that a name
    left by another process (after a PID was reused) is never written over. The name
    goes into ``made`` before the file is created, so that the caller removes it
    whatever happens next.

    :param directory: A descriptor of the entry's directory.
    :param data: The file's content.
    :param made: Names of the call's temporary files, to remove unless renamed.
    :param fsync: Sync the file before returning.
    :return: The file's name.
    """
    while True:
        temporary = f"{TEMPORARY_PREFIX}{_pid}.{next(_temporary_counter)}"
        made.append(temporary)
        try:
            descriptor = os.open(temporary, O_TEMPORARY, FILE_MODE, dir_fd=directory)
            break
        except FileExistsError:
            made.remove(temporary)
    try:
        written = os.write(descriptor, data)
        if written < len(data):
            view = memoryview(data)
            while written < len(data):
                written += os.write(descriptor, view[written:])
        if fsync:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return temporary
