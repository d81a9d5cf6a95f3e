"""Opening directories and files below the cache directory, and never outside it.

Invariants
    - Nothing outside ``<path>`` is ever created, changed, read or removed, whatever is
      planted inside it. The configured path is resolved once, when the handler is built
      (symlinks in it are followed then); below it no symlink is ever followed.
    - On Linux 5.6 and later every path below ``<path>`` is opened with ``openat2`` and
      ``RESOLVE_NO_SYMLINKS``, in one system call; elsewhere the directories are opened
      one by one with ``O_NOFOLLOW | O_DIRECTORY`` and entry files with ``O_NOFOLLOW``.
    - Every creation, rename and unlink is made relative to a descriptor of the entry's
      directory, never through a path that the kernel would resolve again
      (:mod:`~grove.caches.local_file.files` reads and writes entry files that way).
    - A symlink, or a file that is not a directory, met where the cache keeps its own
      directory or reads its own file, is an ``OSError`` naming that path (the handler
      turns it into an :class:`~grove.exceptions.AccessException`).
    - Entry files are opened with ``O_NONBLOCK`` and only regular files are read to their
      end: a FIFO or a device planted as an entry never blocks a call.
    - Directories are made mode 0700, and synced into their parents when ``fsync`` is on.
    - A directory opened for a call that has since been removed or replaced is detected
      (:meth:`Boundary.moved`), so the call starts again from the path instead of
      trusting a lock on, or an absence in, a directory that is no longer the store's.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
import sys
from collections.abc import Callable
from typing import Final

from grove.caches.local_file.names import EntryPath

__all__ = [
    "ATTEMPTS",
    "AT_CWD",
    "DIRECTORY_MODE",
    "FILE_MODE",
    "FS_ENCODING",
    "HOW_SIZE",
    "NR_OPENAT2",
    "O_DIRECTORY",
    "O_READ",
    "O_TEMPORARY",
    "READ_CHUNK",
    "READ_HOW_REFERENCE",
    "Boundary",
    "diagnose",
    "make_directories",
    "missing_root",
    "named",
    "openat2",
    "symlink_error",
    "sync_directory",
]

ATTEMPTS: Final = 64
"""How often a call starts again when a directory it works in is removed under it."""

READ_CHUNK: Final = 65536
"""The size of the first read of an entry file; most entries fit in it."""

# O_NONBLOCK: a FIFO planted as an entry file must not block a read forever.
O_READ: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
O_DIRECTORY: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
O_TEMPORARY: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_O_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the configured path is trusted
DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600
FS_ENCODING: Final = sys.getfilesystemencoding()


class _OpenHow(ctypes.Structure):
    """``struct open_how``, the argument of ``openat2(2)``."""

    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


# openat2 is system call 437 on every architecture that shares the generic numbering
# (all added since Linux 5.1); the others (alpha, ia64, mips) use the fallback.
_SYS_OPENAT2 = 437
_OPENAT2_MACHINES = frozenset(
    {"x86_64", "i386", "i486", "i586", "i686", "aarch64", "arm64", "armv6l", "armv7l",
     "armv8l", "ppc64", "ppc64le", "s390x", "riscv64", "loongarch64"}
)  # fmt: skip
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_NO_MAGICLINKS = 0x02
_READ_HOW = _OpenHow(O_READ, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
_DIRECTORY_HOW = _OpenHow(O_DIRECTORY, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
# Arguments made once: converting Python ints on every call shows in a read's cost.
_OPENAT2_ARGUMENTS = (
    ctypes.c_long(_SYS_OPENAT2),
    ctypes.c_long(-100),  # AT_FDCWD: the paths are absolute
    ctypes.c_size_t(ctypes.sizeof(_OpenHow)),
)
NR_OPENAT2, AT_CWD, HOW_SIZE = _OPENAT2_ARGUMENTS
READ_HOW_REFERENCE: Final = ctypes.byref(_READ_HOW)
_DIRECTORY_HOW_REFERENCE = ctypes.byref(_DIRECTORY_HOW)


@functools.cache
def openat2() -> Callable[..., int] | None:
    """Return libc's ``syscall`` when ``openat2`` works here, else ``None``; probed once.

    A kernel older than 5.6 answers ``ENOSYS``; a seccomp filter may answer ``EPERM``.

    :return: The ``syscall`` function, called as ``syscall(NR_OPENAT2, AT_CWD, path,
        how, HOW_SIZE)``, or ``None``.
    """
    if sys.platform != "linux" or os.uname().machine not in _OPENAT2_MACHINES:
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    probe: int = syscall(NR_OPENAT2, AT_CWD, b"/", _DIRECTORY_HOW_REFERENCE, HOW_SIZE)
    if probe < 0:
        return None
    os.close(probe)
    return syscall


def symlink_error(path: str) -> OSError:
    """The error for a symlink met where the cache keeps its own file or directory."""
    return OSError(errno.ELOOP, "a symbolic link where the cache keeps its own file", path)


def _not_directory_error(path: str) -> OSError:
    return NotADirectoryError(errno.ENOTDIR, "not a directory, where the cache keeps one", path)


def missing_root(root: str) -> FileNotFoundError:
    """The error for a cache directory that does not exist."""
    return FileNotFoundError(errno.ENOENT, "the cache directory does not exist", root)


def diagnose(root: str, path: str, code: int) -> OSError:
    """Name what made an open of ``path`` (``root`` or below it) fail with ``code``.

    Only ``ELOOP`` (a symlink) and ``ENOTDIR`` (a file where a directory belongs) need a
    look at the path; ``lstat`` follows nothing, and the parts are looked at outermost
    first, so nothing outside the root is looked at through a link.

    :param root: The cache directory.
    :param path: What was opened.
    :param code: The ``errno`` of the failure.
    :return: The error to raise.
    """
    if code in (errno.ELOOP, errno.ENOTDIR):
        current = root
        names = path[len(root) + 1 :].split("/") if path != root else []
        for index in range(len(names) + 1):
            if index:
                current = f"{current}/{names[index - 1]}"
            try:
                mode = os.lstat(current).st_mode
            except OSError:
                break
            if stat.S_ISLNK(mode):
                return symlink_error(current)
            if not stat.S_ISDIR(mode) and current != path:
                return _not_directory_error(current)
    return OSError(code, os.strerror(code), path)


def named(exc: OSError, path: str) -> OSError:
    """Re-make an error of a call relative to a descriptor so that it names the path.

    :param exc: The error.
    :param path: The path of what the call worked on.
    :return: The error to raise.
    """
    if exc.errno == errno.ELOOP:
        return symlink_error(path)
    if exc.errno == errno.ENOTDIR:
        return _not_directory_error(path)
    if exc.errno == errno.EISDIR:
        return IsADirectoryError(errno.EISDIR, "a directory, where the cache keeps a file", path)
    return OSError(exc.errno, exc.strerror, path)


def make_directories(path: str, sync: bool) -> bool:
    """Create a directory and its missing parents, each mode 0700.

    :param path: The directory.
    :param sync: Sync each new directory into its parent.
    :return: Whether ``path`` was created.
    """
    try:
        os.mkdir(path, DIRECTORY_MODE)
    except FileExistsError:
        return False
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent == path:
            raise
        make_directories(parent, sync)
        try:
            os.mkdir(path, DIRECTORY_MODE)
        except FileExistsError:
            return False
    os.chmod(path, DIRECTORY_MODE)  # mkdir's mode is masked by the umask
    if sync:
        sync_directory(os.path.dirname(path))
    return True


def sync_directory(path: str) -> None:
    """Sync a directory (the configured path or above it) to disk.

    :param path: The directory.
    """
    descriptor = os.open(path, O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Boundary:
    """Opens the directories of entries below a cache directory, following no symlink.

    :param root: The cache directory, resolved (no symlink in it).
    :param fsync: Sync new directories into their parents.
    """

    def __init__(self, root: str, fsync: bool) -> None:
        self.root = root
        self.prefix = root + "/"
        self.fsync = fsync
        self.openat2 = openat2()

    def open_root(self) -> int:
        """Open ``<path>``.

        :raises FileNotFoundError: It is missing (the message names it).
        :return: A descriptor to close.
        """
        try:
            return self.open_below(self.root)
        except FileNotFoundError:
            raise missing_root(self.root) from None

    def open_below(self, path: str) -> int:
        """Open ``<path>``, or a directory right below it, following no symlink below it.

        :param path: The directory.
        :raises OSError: The directory is missing, or a symlink or a file is where it
            belongs (the message names it), or another failure.
        :return: A descriptor to close.
        """
        if self.openat2 is not None:
            descriptor = self.openat2(
                NR_OPENAT2,
                AT_CWD,
                path.encode(FS_ENCODING, "surrogateescape"),
                _DIRECTORY_HOW_REFERENCE,
                HOW_SIZE,
            )
            if descriptor >= 0:
                return descriptor
            code = ctypes.get_errno()
        else:
            try:
                return os.open(path, O_DIRECTORY if path != self.root else _O_ROOT)
            except OSError as exc:
                code = exc.errno or errno.EIO
        if code == errno.ENOENT:
            raise FileNotFoundError(code, os.strerror(code), path)
        raise diagnose(self.root, path, code)

    def open_directory(self, entry: EntryPath, *, create: bool) -> int | None:
        """Open the entry's directory, following no symlink below ``<path>``.

        :param entry: The entry.
        :param create: Create missing directories, ``<path>`` and its parents included
            (mode 0700, synced into their parents when ``fsync`` is on).
        :raises OSError: A symlink or a file is where a directory belongs (the message
            names it), or another failure.
        :return: A descriptor to close, or ``None`` when a directory is missing and
            ``create`` is false.
        """
        names = entry.directories
        for _ in range(ATTEMPTS):
            if len(names) == 1:
                path = self.prefix + names[0]
                try:
                    return self.open_below(path)
                except FileNotFoundError:
                    if not create:
                        return None
                try:
                    os.mkdir(path, DIRECTORY_MODE)
                except FileExistsError:
                    continue  # made by another writer, or not a directory: open says
                except FileNotFoundError:
                    make_directories(self.root, self.fsync)
                    continue
                if self.fsync:
                    sync_directory(self.root)
                continue  # and open what was made; tidy may remove it first, so loop
            try:
                root = self.open_root()
            except FileNotFoundError:
                if not create:
                    return None
                make_directories(self.root, self.fsync)
                continue
            try:
                return self.open_chain(root, names, create=create)
            except FileNotFoundError:
                continue  # a directory of the chain vanished between mkdir and open
            finally:
                os.close(root)
        raise self.vanishing(entry)

    def open_chain(self, root: int, names: list[str], *, create: bool) -> int | None:
        """Open the directories ``names`` below ``root`` in turn, without following links.

        :param root: A descriptor of the cache directory.
        :param names: The directories, outermost first.
        :param create: Create missing ones.
        :raises FileNotFoundError: A directory vanished after it was made (start again).
        :return: A descriptor of the last one (a new one when ``names`` is empty), or
            ``None`` when one is missing and ``create`` is false.
        """
        current = os.dup(root)
        try:
            for depth, name in enumerate(names, start=1):
                try:
                    child = os.open(name, O_DIRECTORY, dir_fd=current)
                except FileNotFoundError:
                    if not create:
                        return None
                    try:
                        os.mkdir(name, DIRECTORY_MODE, dir_fd=current)
                    except FileExistsError:
                        pass
                    else:
                        if self.fsync:
                            os.fsync(current)
                    child = os.open(name, O_DIRECTORY, dir_fd=current)
                except OSError as exc:
                    raise named(exc, "/".join([self.root, *names[:depth]])) from None
                os.close(current)
                current = child
            opened, current = current, -1
            return opened
        finally:
            if current >= 0:
                os.close(current)

    def moved(self, entry: EntryPath, directory: int) -> bool:
        """Tell whether a directory opened for a call is no longer the entry's directory.

        Removed (nothing can enter it again) or moved away, it says nothing about the
        entry: the call starts again rather than report the entry absent.

        :param entry: The entry.
        :param directory: The descriptor the call opened.
        :return: Whether the call must start again.
        """
        status = os.fstat(directory)
        if status.st_nlink == 0:
            return True
        try:
            current = self.open_directory(entry, create=False)
        except OSError:
            return True  # the next attempt says what is wrong
        if current is None:
            return True
        try:
            now = os.fstat(current)
        finally:
            os.close(current)
        return (now.st_dev, now.st_ino) != (status.st_dev, status.st_ino)

    def vanishing(self, entry: EntryPath) -> OSError:
        """The error for a call whose directory kept being removed under it.

        :param entry: The entry.
        :return: The error to raise.
        """
        return FileNotFoundError(
            errno.ENOENT,
            f"the entry's directory was removed {ATTEMPTS} times while the call used it",
            entry.path(self.root, 1),
        )

    def absent(self) -> None:
        """Check, after finding an entry absent, that the cache directory itself is there.

        :raises FileNotFoundError: It has gone (the message names it).
        """
        if not os.path.isdir(self.root):
            raise missing_root(self.root)
