"""Grove local file cache handler.

Layout
    One file per entry: ``<path>/<pk>/<sk>.cache`` holds the value as raw UTF-8 bytes,
    exactly the layout upstream Grove writes, so an existing cache directory keeps working.
    Each key becomes a file name by :func:`escape`: a key made of the characters
    ``A-Z a-z 0-9 - . _ ~`` that does not start with ``.`` is its own name; in any other key
    every UTF-8 byte outside that set, ``%`` included, becomes ``%XX`` (upper-case hex),
    and a leading ``.`` becomes ``%2E``. A name longer than the file system's 255-byte limit
    (``.cache`` counted) is cut into pieces of 240 bytes, each a directory named ``%+<piece>``
    except the last, which is named ``%=<piece>``. Escaping is one-to-one and no name it
    makes is ``.``, ``..``, contains ``/`` or NUL, or starts with ``.``, so distinct keys
    never share a file and names starting with ``.`` are free for the handler's temporary
    files (``.tmp.*``, beside the entries). Listing decodes the names back and skips any
    name that escaping would not have produced. Names are compared byte for byte, as Linux
    file systems do; on a case-insensitive file system (macOS, Windows shares) keys that
    differ only in case would share a file, so use a case-sensitive one.

The boundary
    Nothing outside ``<path>`` is ever created, changed, read or removed, whatever is
    planted inside it. The configured path is resolved once, when the handler is built
    (symlinks in it are followed then); below it no symlink is ever followed. On Linux 5.6
    and later every path below ``<path>`` is opened with ``openat2`` and
    ``RESOLVE_NO_SYMLINKS``, in one system call; elsewhere the directories are opened one by
    one with ``O_NOFOLLOW | O_DIRECTORY`` and entry files with ``O_NOFOLLOW``. Every
    creation, rename and unlink is made relative to a descriptor of the entry's directory,
    never through a path that the kernel would resolve again. A symlink, or a file that is
    not a directory, met where the cache keeps its own directory or reads its own file, is
    an :class:`~grove.exceptions.AccessException` naming that path. A plain ``set`` or
    ``delete`` replaces or removes a symlink planted as an entry file (the link, never its
    target), as it overwrites an entry that is not valid UTF-8.

Atomicity
    A write goes to a fresh temporary file in the entry's directory, which then replaces the
    entry with one ``rename``: a reader opens either the old file or the new one, whole,
    even if the writer is killed at any instant. A temporary file left by a killed writer
    is never read (its name is not an entry's); a write that fails or is interrupted
    (``KeyboardInterrupt`` included) removes its own. :meth:`Handler.setup` tidies the
    directory: it removes temporary files older than :data:`STALE_TEMPORARY_SECONDS` and
    directories left empty by deletes as long ago. Deletes leave directories in place, as upstream
    Grove does, so that taking and releasing a lock does not create and sync a directory
    each time.

    Every write and delete holds ``flock`` on the entry's directory, on a descriptor opened
    for that call (each open is its own lock, so the threads of a process exclude each
    other as processes do). The lock spans the check of a condition and the rename or
    unlink, so a conditional call is one step; unconditional writes and deletes take it
    too, so that none can land between another call's check and its write. An
    unconditional write makes its temporary file before it takes the lock, which it holds
    for the rename only; the directory is synced after the lock is released. Reads take no
    lock. ``flock`` does not work across hosts on network file systems (NFS, SMB): they are
    not supported.

    The lock is the directory that the call then changes, opened afresh by every call from
    the path: no lock outlives a call, and none is held on a directory that was not at its
    path when the call began. If that directory is removed meanwhile (a tidy, or
    ``rm -rf <path>``), creating or renaming anything in it fails, so the call starts again
    from the path; an entry found absent in it is reported absent only after checking that
    the directory is still the one at the path. So a lock on a removed or replaced
    directory never counts, however often ``<path>`` is removed, recreated or restored
    under running handlers (a directory moved away in the middle of a call takes that
    call's change with it, as it would a moment after the call). Earlier releases locked
    files in ``<path>/.locks/``, which this one neither uses nor removes: stop processes
    running an earlier release before starting this one on the same directory.

The root
    ``<path>`` and its missing parents are created (mode 0700) by :meth:`Handler.setup` and
    by the first write that needs them, never by a read, a refused condition or a delete.
    A ``<path>`` that has gone is never taken for an empty store: ``get``, ``set`` with a
    constraint, ``delete`` and listing raise :class:`~grove.exceptions.AccessException`
    rather than report an entry absent (``set`` and ``set(not_set=True)`` make it again, as
    a first write).

Durability
    With ``fsync`` on (the default), the temporary file is synced before the rename, and
    the directory after it, so a set that returned survives a power loss; new directories
    are synced into their parents too. ``GROVE_CACHE_LOCAL_FILE_FSYNC=false`` skips the
    syncs: writes stay atomic, but the last ones may be lost if the machine (not only the
    process) stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import itertools
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from typing import Final
from urllib.parse import unquote_to_bytes

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from typing_extensions import override

from grove.caches import CacheEntry
from grove.caches.atomic import ABSENT, ANY, AtomicCache, Expected, ExpectedToRemove, Stored
from grove.caches.atomic import describe_key as _describe_key
from grove.caches.configuration import ExpandedPath, HandlerConfiguration
from grove.exceptions import AccessException

__all__ = [
    "NAME_MAX",
    "STALE_TEMPORARY_SECONDS",
    "SUFFIX",
    "Configuration",
    "CorruptEntryError",
    "Handler",
    "decode_components",
    "encode_components",
    "escape",
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

STALE_TEMPORARY_SECONDS: Final = 600.0
"""Age after which :meth:`Handler.setup` removes a temporary file as a crashed writer's.

A writer keeps its temporary file for the time one write takes; a temporary file removed
while a (stopped, not crashed) writer still needs it makes that write start again, never
the store inconsistent."""

ATTEMPTS: Final = 64
"""How often a call starts again when a directory it works in is removed under it."""

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPES = tuple(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in range(256))
_ESCAPED_NAME = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+")
# pk and sk, each its own file name (sk with SUFFIX) and in no need of escaping: the keys
# Grove writes. Anything else goes the long way through encode_components.
_PLAIN_ENTRY = re.compile(
    r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,254}"  # pk: at most NAME_MAX bytes
    r"/[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,248}"  # sk: at most NAME_MAX bytes with SUFFIX
)

_plain_entry = _PLAIN_ENTRY.fullmatch

_READ_CHUNK = 65536  # written out in Handler._read, the hot path
# Bound once: the read path is short enough that attribute lookups show in its cost.
_os_open = os.open
_os_read = os.read
_os_close = os.close
_LOCK_EX = fcntl.LOCK_EX
_LOCK_UN = fcntl.LOCK_UN
# O_NONBLOCK: a FIFO planted as an entry file must not block a read forever.
_O_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_O_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_O_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the configured path is trusted
_O_TEMPORARY = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_DIRECTORY_MODE = 0o700
_FILE_MODE = 0o600


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
_READ_HOW = _OpenHow(_O_READ, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
_DIRECTORY_HOW = _OpenHow(_O_DIRECTORY, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
# Arguments made once: converting Python ints on every call shows in a read's cost.
_OPENAT2_ARGUMENTS = (
    ctypes.c_long(_SYS_OPENAT2),
    ctypes.c_long(-100),  # AT_FDCWD: the paths are absolute
    ctypes.c_size_t(ctypes.sizeof(_OpenHow)),
)
_READ_HOW_REFERENCE = ctypes.byref(_READ_HOW)
_DIRECTORY_HOW_REFERENCE = ctypes.byref(_DIRECTORY_HOW)


@functools.cache
def _openat2() -> Callable[..., int] | None:
    """Return libc's ``syscall`` when ``openat2`` works here, else ``None``; probed once.

    A kernel older than 5.6 answers ``ENOSYS``; a seccomp filter may answer ``EPERM``.
    """
    if sys.platform != "linux" or os.uname().machine not in _OPENAT2_MACHINES:
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    number, at_cwd, size = _OPENAT2_ARGUMENTS
    probe: int = syscall(number, at_cwd, b"/", _DIRECTORY_HOW_REFERENCE, size)
    if probe < 0:
        return None
    os.close(probe)
    return syscall


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


class CorruptEntryError(Exception):
    """An entry file holds bytes that are not UTF-8; the message names the key, not them."""


class Configuration(HandlerConfiguration):
    """Defines environment variables used to configure the local file cache handler.

    As an example the field ``path`` is set using the environment variable
    ``GROVE_CACHE_LOCAL_FILE_PATH``.
    """

    model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_LOCAL_FILE_")

    path: ExpandedPath = Field(
        min_length=1, description="The directory holding the cache; it must exist."
    )
    fsync: bool = Field(
        default=True,
        description="Sync each written file and its directory to disk before returning.",
    )


_temporary_counter = itertools.count()
_pid = os.getpid()
_FS_ENCODING = sys.getfilesystemencoding()
_NR_OPENAT2, _AT_CWD, _HOW_SIZE = _OPENAT2_ARGUMENTS


def _after_fork_in_child() -> None:
    global _pid  # noqa: PLW0603 - per-process state, reset by fork.
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _symlink_error(path: str) -> OSError:
    return OSError(errno.ELOOP, "a symbolic link where the cache keeps its own file", path)


def _not_directory_error(path: str) -> OSError:
    return NotADirectoryError(errno.ENOTDIR, "not a directory, where the cache keeps one", path)


def _missing_root(root: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "the cache directory does not exist", root)


def _diagnose(root: str, path: str, code: int) -> OSError:
    """Name what made an open of ``path`` (``root`` or below it) fail with ``code``.

    Only ``ELOOP`` (a symlink) and ``ENOTDIR`` (a file where a directory belongs) need a
    look at the path; ``lstat`` follows nothing, and the parts are looked at outermost
    first, so nothing outside the root is looked at through a link.
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
                return _symlink_error(current)
            if not stat.S_ISDIR(mode) and current != path:
                return _not_directory_error(current)
    return OSError(code, os.strerror(code), path)


def _named(exc: OSError, path: str) -> OSError:
    """Re-make an error of a call relative to a descriptor so that it names the path."""
    if exc.errno == errno.ELOOP:
        return _symlink_error(path)
    if exc.errno == errno.ENOTDIR:
        return _not_directory_error(path)
    if exc.errno == errno.EISDIR:
        return IsADirectoryError(errno.EISDIR, "a directory, where the cache keeps a file", path)
    return OSError(exc.errno, exc.strerror, path)


def _make_directories(path: str, sync: bool) -> bool:
    """Create a directory and its missing parents, each mode 0700; say if it was created."""
    try:
        os.mkdir(path, _DIRECTORY_MODE)
    except FileExistsError:
        return False
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent == path:
            raise
        _make_directories(parent, sync)
        try:
            os.mkdir(path, _DIRECTORY_MODE)
        except FileExistsError:
            return False
    os.chmod(path, _DIRECTORY_MODE)  # mkdir's mode is masked by the umask
    if sync:
        _sync_directory(os.path.dirname(path))
    return True


def _read_rest(descriptor: int, first: bytes, path: str) -> bytes:
    """Read what follows a first read that filled its buffer, or check an empty one.

    Only a regular file ends: a device planted as an entry file could be read forever, and
    a FIFO reads as empty.
    """
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        raise OSError(errno.EINVAL, "not a regular file, where the cache keeps an entry", path)
    chunks = [first]
    while chunk := os.read(descriptor, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_descriptor(descriptor: int, path: str) -> bytes:
    """Read a whole entry file from its descriptor, and close it.

    An entry file is never changed once it has its name (writes replace it), and a regular
    file returns fewer bytes than asked for only at its end, so a short first read is all.
    """
    try:
        data = _os_read(descriptor, _READ_CHUNK)
        if len(data) == _READ_CHUNK or not data:
            data = _read_rest(descriptor, data, path)
    except OSError as exc:
        raise _named(exc, path) from None
    finally:
        _os_close(descriptor)
    return data


def _read_entry(name: str, directory: int, path: str) -> bytes | None:
    """Read an entry file relative to its directory, or return ``None`` if it is absent.

    :param name: The file's name.
    :param directory: A descriptor of its directory.
    :param path: The file's path, for messages.
    """
    try:
        descriptor = os.open(name, _O_READ, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _named(exc, path) from None
    return _read_descriptor(descriptor, path)


def _sync_directory(path: str) -> None:
    descriptor = os.open(path, _O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _Spot:
    """Where one entry lives: the directories from ``<path>`` down to it, and its file.

    Keys whose names fit in single components have one directory. Longer keys have a chain
    of them, whose full path may exceed ``PATH_MAX``; they are opened one by one.
    """

    __slots__ = ("directories", "file")

    def __init__(self, pk: str, sk: str) -> None:
        if _plain_entry(f"{pk}/{sk}"):
            self.directories = [pk]
            self.file = f"{sk}{SUFFIX}"
            return
        files = encode_components(sk, SUFFIX)
        self.directories = [*encode_components(pk, ""), *files[:-1]]
        self.file = files[-1]

    def path(self, root: str, depth: int | None = None) -> str:
        """Return the path of the entry's file, or of its ``depth``-th directory."""
        if depth is None:
            return "/".join([root, *self.directories, self.file])
        return "/".join([root, *self.directories[:depth]])


class Handler(AtomicCache):
    """A local file backed cache for pointers and other Grove data."""

    driver_errors = (OSError, CorruptEntryError)

    _flock = staticmethod(fcntl.flock)
    """Takes and releases a directory's lock; the benchmark replaces it to measure it."""

    def __init__(self, config: Configuration | None = None) -> None:
        """Build a handler on a directory; nothing is touched until the first call.

        :param config: The settings; when ``None``, read from the environment.
        :raises ConfigurationException: The environment lacks the path or has an
            invalid setting.
        """
        self.config = config if config is not None else Configuration.from_environment()
        self._path = os.path.abspath(self.config.path)
        self._root = os.path.realpath(self._path)
        self._prefix = self._root + "/"
        self._fsync = self.config.fsync
        self._openat2 = _openat2()

    @override
    def location(self) -> str:
        return f"local_file cache at {self._path}"

    @override
    def setup(self) -> None:
        """Create the cache directory if it is missing, check it, remove stale temporaries.

        The directory and its missing parents are created with mode 0700.

        :raises AccessException: The directory cannot be created, is not a directory, or
            is not writable; the message names it.
        """
        variable = Configuration.env_name("path")
        try:
            _make_directories(self._root, self._fsync)
            status = os.stat(self._root)
        except OSError as exc:
            raise AccessException(
                f"{self.location()}: the directory cannot be used ({variable}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not stat.S_ISDIR(status.st_mode):
            raise AccessException(f"{self.location()}: not a directory ({variable})")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise AccessException(f"{self.location()}: the directory is not writable ({variable})")
        try:
            self.tidy()
        except OSError as exc:
            raise AccessException(
                f"{self.location()}: tidying the directory failed: {type(exc).__name__}: {exc}"
            ) from exc

    @override
    def create_storage(self) -> str:
        """Create the cache directory (0700, with missing parents) if it is missing.

        :raises AccessException: The directory cannot be created or used.
        :return: What was done, in one line.
        """
        existed = os.path.isdir(self._root)
        self.setup()
        return f"{'found' if existed else 'created'} {self.location()}"

    def tidy(self, older_than: float = STALE_TEMPORARY_SECONDS) -> int:
        """Remove the temporary files of crashed writers, and directories left empty.

        :meth:`setup` calls this. It is safe while other handlers use the directory: only
        temporary files and empty directories unchanged for ``older_than`` seconds go,
        which is longer than any write takes, and a writer whose directory is removed
        under it anyway starts again. Directories whose names start with ``.`` are not the
        cache's and are left alone.

        :param older_than: Remove temporary files and empty directories last changed this
            many seconds ago or more.
        :raises OSError: The directory cannot be read.
        :return: How many temporary files were removed.
        """
        root = self._open_root()
        try:
            return _tidy(root, time.time() - older_than)
        finally:
            os.close(root)

    # -- primitives ------------------------------------------------------------------

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one ``open`` sees either the old or the new file of a rename; no lock."""
        joined = f"{pk}/{sk}"
        openat2 = self._openat2
        if openat2 is not None and _plain_entry(joined):
            # The hot path, inlined: the keys Grove writes are their own file names, and
            # one openat2 call resolves the path without following a symlink.
            path = f"{self._prefix}{joined}{SUFFIX}"
            descriptor = openat2(
                _NR_OPENAT2,
                _AT_CWD,
                path.encode(_FS_ENCODING, "surrogateescape"),
                _READ_HOW_REFERENCE,
                _HOW_SIZE,
            )
            if descriptor < 0:
                code = ctypes.get_errno()
                if code == errno.ENOENT:
                    return self._absent()
                raise _diagnose(self._root, path, code)
            try:
                data = _os_read(descriptor, 65536)
                if len(data) == 65536 or not data:
                    data = _read_rest(descriptor, data, path)
            except OSError as exc:
                raise _named(exc, path) from None
            finally:
                _os_close(descriptor)
        else:
            spot = _Spot(pk, sk)
            directory = self._open_directory(spot, create=False)
            if directory is None:
                return self._absent()
            try:
                found = _read_entry(spot.file, directory, spot.path(self._root))
            finally:
                os.close(directory)
            if found is None:
                return self._absent()
            data = found
        try:
            return data.decode()  # UTF-8
        except UnicodeDecodeError:
            raise CorruptEntryError(
                f"the file of {_describe_key(pk, sk)} is not valid UTF-8"
            ) from None

    def _absent(self) -> Stored:
        """Return :data:`ABSENT`, unless the cache directory itself is gone."""
        if not os.path.isdir(self._root):
            raise _missing_root(self._root)
        return ABSENT

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: the check and the rename happen under the lock of the entry's directory.

        An unconditional write makes its temporary file first and holds the lock only for
        the rename. A conditional one takes the lock, reads and compares, and only then
        writes, so a refused call writes nothing.
        """
        spot = _Spot(pk, sk)
        data = value.encode("utf-8")
        for _ in range(ATTEMPTS):
            written = self._write_once(spot, data, expected)
            if written is not None:
                return written
        raise self._vanishing(spot)

    def _write_once(self, spot: _Spot, data: bytes, expected: Expected) -> bool | None:
        """Make one attempt at a write; ``None`` when its directory was removed under it."""
        # A write that may store a value creates what it needs; a compare-and-set does not.
        directory = self._open_directory(spot, create=not isinstance(expected, str))
        if directory is None:
            self._absent()  # raises if the cache directory itself is gone
            return False
        made: list[str] = []  # temporary files to remove unless renamed
        try:
            if expected is ANY:
                temporary = self._write_temporary(directory, data, made)
            self._flock(directory, _LOCK_EX)
            try:
                if expected is not ANY:
                    current = _read_entry(spot.file, directory, spot.path(self._root))
                    if not _matches(current, expected):
                        return None if current is None and self._moved(spot, directory) else False
                    temporary = self._write_temporary(directory, data, made)
                try:
                    os.rename(temporary, spot.file, src_dir_fd=directory, dst_dir_fd=directory)
                except FileNotFoundError:
                    raise
                except OSError as exc:
                    raise _named(exc, spot.path(self._root)) from None
                made.clear()
            finally:
                self._flock(directory, _LOCK_UN)
            if self._fsync:
                os.fsync(directory)
            return True
        except FileNotFoundError:
            # Creating or renaming a file fails only in a directory removed meanwhile.
            return None
        finally:
            for name in made:
                _unlink_quietly(name, directory)
            os.close(directory)

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: the check and the unlink happen under the lock of the entry's directory."""
        spot = _Spot(pk, sk)
        for _ in range(ATTEMPTS):
            removed = self._remove_once(spot, expected)
            if removed is not None:
                return removed
        raise self._vanishing(spot)

    def _remove_once(self, spot: _Spot, expected: ExpectedToRemove) -> bool | None:
        """Make one attempt at a removal; ``None`` when its directory was removed under it."""
        directory = self._open_directory(spot, create=False)
        if directory is None:
            self._absent()  # raises if the cache directory itself is gone
            return expected is ANY
        try:
            self._flock(directory, _LOCK_EX)
            try:
                if expected is not ANY:
                    current = _read_entry(spot.file, directory, spot.path(self._root))
                    if not _matches(current, expected):
                        return None if current is None and self._moved(spot, directory) else False
                try:
                    os.unlink(spot.file, dir_fd=directory)
                except FileNotFoundError:
                    return None if self._moved(spot, directory) else expected is ANY
                except OSError as exc:
                    raise _named(exc, spot.path(self._root)) from None
            finally:
                self._flock(directory, _LOCK_UN)
            if self._fsync:
                os.fsync(directory)
            return True
        finally:
            os.close(directory)

    @override
    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """Walk the directories, decoding names back into keys; reads take no lock.

        Files whose names escaping does not produce (temporary files, strays) are skipped.
        An entry removed while the walk reaches it is skipped too. A symlink with a name
        that the cache could have made is an error naming it.
        """
        root = self._open_root()
        try:
            if pk is not None:
                names = encode_components(pk, "")
                partition = self._open_chain(root, names, create=False)
                if partition is None:
                    return
                try:
                    yield from _scan_partition(partition, pk, "/".join([self._root, *names]))
                finally:
                    os.close(partition)
                return
            for key, partition, path in _walk_chains(root, [], self._root):
                try:
                    if prefix is None or key.startswith(prefix):
                        yield from _scan_partition(partition, key, path)
                finally:
                    os.close(partition)
        finally:
            os.close(root)

    # -- helpers ---------------------------------------------------------------------

    def _open_root(self) -> int:
        """Open ``<path>``; raise ``FileNotFoundError`` naming it when it is missing."""
        try:
            return self._open_below(self._root)
        except FileNotFoundError:
            raise _missing_root(self._root) from None

    def _open_below(self, path: str) -> int:
        """Open ``<path>``, or a directory right below it, following no symlink below it.

        :raises OSError: The directory is missing, or a symlink or a file is where it
            belongs (the message names it), or another failure.
        """
        if self._openat2 is not None:
            descriptor = self._openat2(
                _NR_OPENAT2,
                _AT_CWD,
                path.encode(_FS_ENCODING, "surrogateescape"),
                _DIRECTORY_HOW_REFERENCE,
                _HOW_SIZE,
            )
            if descriptor >= 0:
                return descriptor
            code = ctypes.get_errno()
        else:
            try:
                return os.open(path, _O_DIRECTORY if path != self._root else _O_ROOT)
            except OSError as exc:
                code = exc.errno or errno.EIO
        if code == errno.ENOENT:
            raise FileNotFoundError(code, os.strerror(code), path)
        raise _diagnose(self._root, path, code)

    def _open_directory(self, spot: _Spot, *, create: bool) -> int | None:
        """Open the entry's directory, following no symlink below ``<path>``.

        :param spot: The entry.
        :param create: Create missing directories, ``<path>`` and its parents included
            (mode 0700, synced into their parents when ``fsync`` is on).
        :raises OSError: A symlink or a file is where a directory belongs (the message
            names it), or another failure.
        :return: A descriptor to close, or ``None`` when a directory is missing and
            ``create`` is false.
        """
        names = spot.directories
        for _ in range(ATTEMPTS):
            if len(names) == 1:
                path = self._prefix + names[0]
                try:
                    return self._open_below(path)
                except FileNotFoundError:
                    if not create:
                        return None
                try:
                    os.mkdir(path, _DIRECTORY_MODE)
                except FileExistsError:
                    continue  # made by another writer, or not a directory: open says
                except FileNotFoundError:
                    _make_directories(self._root, self._fsync)
                    continue
                if self._fsync:
                    _sync_directory(self._root)
                continue  # and open what was made; tidy may remove it first, so loop
            try:
                root = self._open_root()
            except FileNotFoundError:
                if not create:
                    return None
                _make_directories(self._root, self._fsync)
                continue
            try:
                return self._open_chain(root, names, create=create)
            except FileNotFoundError:
                continue  # a directory of the chain vanished between mkdir and open
            finally:
                os.close(root)
        raise self._vanishing(spot)

    def _open_chain(self, root: int, names: list[str], *, create: bool) -> int | None:
        """Open the directories ``names`` below ``root`` in turn, without following links.

        :raises FileNotFoundError: A directory vanished after it was made (start again).
        :return: A descriptor of the last one (a new one when ``names`` is empty), or
            ``None`` when one is missing and ``create`` is false.
        """
        current = os.dup(root)
        try:
            for depth, name in enumerate(names, start=1):
                try:
                    child = os.open(name, _O_DIRECTORY, dir_fd=current)
                except FileNotFoundError:
                    if not create:
                        return None
                    try:
                        os.mkdir(name, _DIRECTORY_MODE, dir_fd=current)
                    except FileExistsError:
                        pass
                    else:
                        if self._fsync:
                            os.fsync(current)
                    child = os.open(name, _O_DIRECTORY, dir_fd=current)
                except OSError as exc:
                    raise _named(exc, "/".join([self._root, *names[:depth]])) from None
                os.close(current)
                current = child
            opened, current = current, -1
            return opened
        finally:
            if current >= 0:
                os.close(current)

    def _moved(self, spot: _Spot, directory: int) -> bool:
        """Tell whether a directory opened for a call is no longer the entry's directory.

        Removed (nothing can enter it again) or moved away, it says nothing about the
        entry: the call starts again rather than report the entry absent.
        """
        status = os.fstat(directory)
        if status.st_nlink == 0:
            return True
        try:
            current = self._open_directory(spot, create=False)
        except OSError:
            return True  # the next attempt says what is wrong
        if current is None:
            return True
        try:
            now = os.fstat(current)
        finally:
            os.close(current)
        return (now.st_dev, now.st_ino) != (status.st_dev, status.st_ino)

    def _vanishing(self, spot: _Spot) -> OSError:
        return FileNotFoundError(
            errno.ENOENT,
            f"the entry's directory was removed {ATTEMPTS} times while the call used it",
            spot.path(self._root, 1),
        )

    def _write_temporary(self, directory: int, data: bytes, made: list[str]) -> str:
        """Write data to a new temporary file in a directory; return its name.

        The name is unique to this process and call; ``O_EXCL`` makes sure that a name
        left by another process (after a PID was reused) is never written over. The name
        goes into ``made`` before the file is created, so that the caller removes it
        whatever happens next.
        """
        while True:
            temporary = f"{TEMPORARY_PREFIX}{_pid}.{next(_temporary_counter)}"
            made.append(temporary)
            try:
                descriptor = os.open(temporary, _O_TEMPORARY, _FILE_MODE, dir_fd=directory)
                break
            except FileExistsError:
                made.remove(temporary)
        try:
            written = os.write(descriptor, data)
            if written < len(data):
                view = memoryview(data)
                while written < len(data):
                    written += os.write(descriptor, view[written:])
            if self._fsync:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return temporary


def _scan_partition(partition: int, pk: str, path: str) -> Iterator[CacheEntry]:
    for sk, directory, name, file_path in _walk_entries(partition, [], path):
        data = _read_entry(name, directory, file_path)
        if data is None:
            continue
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptEntryError(
                f"the file of {_describe_key(pk, sk)} is not valid UTF-8"
            ) from None
        yield CacheEntry(pk, sk, value)


def _tidy(directory: int, deadline: float) -> int:
    """Remove stale temporary files below a directory, and its stale empty subdirectories.

    A directory is stale when it was last changed before ``deadline``, as seen before its
    own stale contents are removed: a writer making a chain of directories for a long key
    changes each one as it goes, so the chain is never removed under it.
    """
    removed = 0
    with os.scandir(directory) as listing:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
    for name, is_directory in entries:
        if not is_directory and not name.startswith(TEMPORARY_PREFIX):
            continue
        if is_directory and name.startswith("."):
            continue  # not a directory that escaping makes
        try:
            stale = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mtime <= deadline
            if not is_directory:
                if stale:
                    os.unlink(name, dir_fd=directory)
                    removed += 1
                continue
            subdirectory = os.open(name, _O_DIRECTORY, dir_fd=directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                continue  # replaced by a symlink meanwhile: never followed
            raise
        try:
            removed += _tidy(subdirectory, deadline)
        finally:
            os.close(subdirectory)
        if not stale:
            continue
        try:
            os.rmdir(name, dir_fd=directory)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
                raise
    return removed


def _matches(current: bytes | None, expected: Expected) -> bool:
    """Tell whether stored bytes (``None``: absent) are what a conditional call expects."""
    if expected is ABSENT:
        return current is None
    if expected is ANY:
        return True
    return current is not None and current == expected.encode("utf-8")


def _unlink_quietly(path: str, dir_fd: int | None) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path, dir_fd=dir_fd)


def _child_names(directory: int) -> tuple[list[str], list[str], list[str]]:
    """List a directory's subdirectories, files and symlinks, leaving out ``.`` names."""
    directories: list[str] = []
    files: list[str] = []
    links: list[str] = []
    with os.scandir(directory) as listing:
        for entry in listing:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink():
                    links.append(entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    directories.append(entry.name)
                else:
                    files.append(entry.name)
            except FileNotFoundError:
                continue
    return directories, files, links


def _open_listed(name: str, directory: int, path: str) -> int | None:
    """Open a subdirectory found by a listing; ``None`` if it has gone since."""
    try:
        return os.open(name, _O_DIRECTORY, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _named(exc, path) from None


def _walk_chains(directory: int, pieces: list[str], path: str) -> Iterator[tuple[str, int, str]]:
    """Yield the partition keys under ``directory`` with their open directories and paths.

    The caller closes each yielded descriptor. ``pieces`` are the ``%+`` components walked
    so far, ``path`` the path of ``directory``.
    """
    subdirectories, _, links = _child_names(directory)
    for name in links:
        if name.startswith(MORE) or decode_components([*pieces, name], "") is not None:
            raise _symlink_error(f"{path}/{name}")
    for name in subdirectories:
        opened = _open_listed(name, directory, f"{path}/{name}")
        if opened is None:
            continue
        if name.startswith(MORE):
            try:
                yield from _walk_chains(opened, [*pieces, name], f"{path}/{name}")
            finally:
                os.close(opened)
            continue
        key = decode_components([*pieces, name], "")
        if key is None:
            os.close(opened)
            continue
        yield key, opened, f"{path}/{name}"


def _walk_entries(
    directory: int, pieces: list[str], path: str
) -> Iterator[tuple[str, int, str, str]]:
    """Yield ``(sk, directory, file name, file path)`` for the entries under a partition.

    The directory is ``directory`` itself or a ``%+`` directory below it, open until the
    walk moves on. ``pieces`` are the ``%+`` components walked so far, ``path`` the path of
    ``directory``.
    """
    subdirectories, files, links = _child_names(directory)
    for name in links:
        if name.startswith(MORE) or decode_components([*pieces, name], SUFFIX) is not None:
            raise _symlink_error(f"{path}/{name}")
    for name in files:
        key = decode_components([*pieces, name], SUFFIX)
        if key is not None:
            yield key, directory, name, f"{path}/{name}"
    for name in subdirectories:
        if not name.startswith(MORE):
            continue
        opened = _open_listed(name, directory, f"{path}/{name}")
        if opened is None:
            continue
        try:
            yield from _walk_entries(opened, [*pieces, name], f"{path}/{name}")
        finally:
            os.close(opened)
