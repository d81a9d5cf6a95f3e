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
    never share a file, nothing is created outside ``<path>``, and names starting with
    ``.`` are free for the handler's own files: temporary files ``.tmp.*`` beside the
    entries and lock files in ``<path>/.locks/``. Listing decodes the names back and skips
    any name that escaping would not have produced. Names are compared byte for byte, as
    Linux file systems do; on a case-insensitive file system (macOS, Windows shares) keys
    that differ only in case would share a file, so use a case-sensitive one.

Atomicity
    A write goes to a fresh temporary file in the entry's directory, which then replaces the
    entry with ``os.replace`` (one ``rename``): a reader opens either the old file or the
    new one, whole, even if the writer is killed at any instant. A temporary file left by a
    killed writer is never read (its name is not an entry's). :meth:`Handler.setup` tidies
    the directory: it removes temporary files older than :data:`STALE_TEMPORARY_SECONDS`
    and directories left empty by deletes. Deletes leave directories in place, as upstream
    Grove does, so that taking and releasing a lock does not create and sync a directory
    each time.

    Every write and delete holds a lock on the key's stripe, one of :data:`LOCK_STRIPES`
    lock files chosen by a hash of the key: ``fcntl.flock`` on the file, which excludes
    other processes, under a ``threading.Lock`` that excludes other threads of this process
    (they share the lock file's descriptor, so ``flock`` alone would not). The lock spans
    the check of a condition and the rename or unlink, so a conditional call is one step;
    unconditional writes and deletes take it too, so that none can land between another
    call's check and its write. An unconditional write makes its temporary file before it
    takes the lock, which it holds for the rename only; the directory is synced after the
    lock is released. Reads take no lock. ``flock`` does not work across hosts on network
    file systems (NFS, SMB): they are not supported.

Durability
    With ``fsync`` on (the default), the temporary file is synced before the rename, and
    the directory after it, so a set that returned survives a power loss; new directories
    are synced into their parents too. ``GROVE_CACHE_LOCAL_FILE_FSYNC=false`` skips the
    syncs: writes stay atomic, but the last ones may be lost if the machine (not only the
    process) stops.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import stat
import threading
import time
import zlib
from collections.abc import Iterator
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
    "LOCK_STRIPES",
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

LOCK_STRIPES: Final = 64
"""How many lock files guard the entries; a key's stripe is a hash of its file name."""

LOCKS_DIRECTORY: Final = ".locks"
"""The directory under ``<path>`` holding the lock files."""

TEMPORARY_PREFIX: Final = ".tmp."
"""The prefix of temporary files, which escaped names never start with."""

STALE_TEMPORARY_SECONDS: Final = 600.0
"""Age after which :meth:`Handler.setup` removes a temporary file as a crashed writer's.

A writer keeps its temporary file for the time one write takes; a temporary file removed
while a (stopped, not crashed) writer still needs it makes that write fail, never the
store inconsistent."""

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
_O_READ = os.O_RDONLY | os.O_CLOEXEC
_O_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_O_TEMPORARY = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_O_LOCK = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_DIRECTORY_MODE = 0o700
_FILE_MODE = 0o600


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


class _StripeLocks:
    """The lock files of one cache directory, shared by all handlers on it in a process.

    A stripe's lock is its ``threading.Lock`` (for the threads of this process, which share
    one descriptor per lock file) and then ``flock`` on that descriptor (for processes).
    """

    def __init__(self, root: str) -> None:
        self.directory = os.path.join(root, LOCKS_DIRECTORY)
        self.root = root
        self.mutexes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self.descriptors = [-1] * LOCK_STRIPES

    def acquire(self, stripe: int) -> int:
        """Take a stripe's lock, waiting as long as it takes.

        :param stripe: The stripe, below :data:`LOCK_STRIPES`.
        :raises OSError: The lock file cannot be created or locked.
        :return: The descriptor to pass to :meth:`release`.
        """
        mutex = self.mutexes[stripe]
        mutex.acquire()
        try:
            descriptor = self.descriptors[stripe]
            if descriptor < 0:
                descriptor = self.descriptors[stripe] = self._open(stripe)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except BaseException:
            mutex.release()
            raise
        return descriptor

    def release(self, stripe: int, descriptor: int) -> None:
        """Release a stripe's lock taken with :meth:`acquire`.

        :param stripe: The stripe.
        :param descriptor: What :meth:`acquire` returned.
        """
        try:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            self.mutexes[stripe].release()

    def _open(self, stripe: int) -> int:
        path = f"{self.directory}/{stripe:02x}"
        try:
            return os.open(path, _O_LOCK, _FILE_MODE)
        except FileNotFoundError:
            _make_directory(self.directory, self.root)
            return os.open(path, _O_LOCK, _FILE_MODE)

    def forget(self) -> None:
        """Drop the descriptors and locks inherited through ``fork``.

        A child shares its parent's open lock files, and so its ``flock`` locks: it must
        open its own. Closing the inherited copies releases nothing the parent holds.
        """
        for descriptor in self.descriptors:
            if descriptor >= 0:
                os.close(descriptor)
        self.descriptors = [-1] * LOCK_STRIPES
        self.mutexes = [threading.Lock() for _ in range(LOCK_STRIPES)]


_stripe_locks: dict[str, _StripeLocks] = {}
_stripe_locks_guard = threading.Lock()
_temporary_counter = itertools.count()
_pid = os.getpid()


def _locks_for(root: str) -> _StripeLocks:
    with _stripe_locks_guard:
        locks = _stripe_locks.get(root)
        if locks is None:
            locks = _stripe_locks[root] = _StripeLocks(root)
        return locks


def _after_fork_in_child() -> None:
    global _stripe_locks_guard, _pid  # noqa: PLW0603 - per-process state, reset by fork.
    _pid = os.getpid()
    _stripe_locks_guard = threading.Lock()
    for locks in _stripe_locks.values():
        locks.forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _make_directory(path: str, root: str) -> bool:
    """Create one directory (mode 0700) whose parent exists; say whether it was created."""
    try:
        os.mkdir(path, _DIRECTORY_MODE)
    except FileExistsError:
        return False
    except FileNotFoundError:
        if not os.path.isdir(root):
            raise _missing_root(root) from None
        raise
    return True


def _missing_root(root: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "the cache directory does not exist", root)


def _read_rest(descriptor: int, first: bytes) -> bytes:
    chunks = [first]
    while chunk := os.read(descriptor, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_file(path: str, dir_fd: int | None) -> bytes | None:
    """Read a whole entry file, or return ``None`` when it does not exist.

    An entry file is never changed once it has its name (writes replace it), and a regular
    file returns fewer bytes than asked for only at its end, so a short first read is all.
    """
    try:
        descriptor = os.open(path, _O_READ, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        data = os.read(descriptor, _READ_CHUNK)
        if len(data) == _READ_CHUNK:
            data = _read_rest(descriptor, data)
    finally:
        os.close(descriptor)
    return data


def _sync_directory(path: str, dir_fd: int | None = None) -> None:
    descriptor = os.open(path, _O_DIRECTORY, dir_fd=dir_fd)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _Spot:
    """Where one entry lives: its directory, its file, and its lock stripe.

    For keys whose names fit in single components the directory is a path string. For
    longer keys the full path may exceed ``PATH_MAX``, so the directories are opened one by
    one from ``<path>`` and every call is made relative to the innermost descriptor.
    """

    __slots__ = ("chain", "descriptors", "dir_fd", "directory", "file", "names", "prefix", "stripe")

    def __init__(self, root: str, pk: str, sk: str) -> None:
        joined = f"{pk}/{sk}"
        self.dir_fd: int | None = None
        self.descriptors: list[int] = []
        if _plain_entry(joined):
            self.chain = False
            self.names = [pk]
            self.directory = directory = f"{root}/{pk}"
            self.prefix = f"{directory}/"
            self.file = f"{directory}/{sk}.cache"
            self.stripe = zlib.crc32(joined.encode()) % LOCK_STRIPES
            return
        files = encode_components(sk, SUFFIX)
        self.names = [*encode_components(pk, ""), *files[:-1]]
        self.chain = len(self.names) > 1
        relative = "/".join([*self.names, files[-1]])
        self.stripe = zlib.crc32(relative.encode("ascii")) % LOCK_STRIPES
        if self.chain:
            self.directory = self.prefix = ""
            self.file = files[-1]
        else:
            self.directory = f"{root}/{self.names[0]}"
            self.prefix = self.directory + "/"
            self.file = self.prefix + files[-1]

    def open(self, root: str, *, create: bool, sync: bool) -> bool:
        """Open the chain of directories of a long key, creating them if asked.

        :param root: The cache directory.
        :param create: Create missing directories (mode 0700).
        :param sync: Sync each created directory into its parent.
        :return: ``False`` when a directory is missing and ``create`` is false.
        """
        if not self.chain:
            return True
        self.close()
        try:
            self.descriptors.append(os.open(root, _O_DIRECTORY))
            self.dir_fd = self.descriptors[-1]
        except FileNotFoundError:
            raise _missing_root(root) from None
        for name in self.names:
            parent = self.descriptors[-1]
            try:
                self.descriptors.append(os.open(name, _O_DIRECTORY, dir_fd=parent))
                self.dir_fd = self.descriptors[-1]
                continue
            except FileNotFoundError:
                if not create:
                    self.close()
                    return False
            try:
                os.mkdir(name, _DIRECTORY_MODE, dir_fd=parent)
            except FileExistsError:
                pass
            else:
                if sync:
                    os.fsync(parent)
            self.descriptors.append(os.open(name, _O_DIRECTORY, dir_fd=parent))
        self.dir_fd = self.descriptors[-1]
        return True

    def make_directories(self, root: str, *, sync: bool) -> None:
        """Create the entry's directories, after a write found them missing."""
        if self.chain:
            self.open(root, create=True, sync=sync)
        elif _make_directory(self.directory, root) and sync:
            _sync_directory(root)

    def sync_directory(self) -> None:
        """Sync the entry's directory, making a rename or unlink in it durable."""
        if self.chain:
            os.fsync(self.descriptors[-1])
        else:
            _sync_directory(self.directory)

    def close(self) -> None:
        """Close the descriptors of a long key's directories."""
        for descriptor in self.descriptors:
            os.close(descriptor)
        self.descriptors.clear()
        self.dir_fd = None


class Handler(AtomicCache):
    """A local file backed cache for pointers and other Grove data."""

    driver_errors = (OSError, CorruptEntryError)

    def __init__(self, config: Configuration | None = None) -> None:
        """Build a handler on a directory; nothing is touched until the first call.

        :param config: The settings; when ``None``, read from the environment.
        :raises ConfigurationException: The environment lacks the path or has an
            invalid setting.
        """
        self.config = config if config is not None else Configuration.from_environment()
        self._root = os.path.abspath(self.config.path)
        self._prefix = self._root + "/"
        self._fsync = self.config.fsync
        self._locks = _locks_for(self._root)

    @override
    def location(self) -> str:
        return f"local_file cache at {self._root}"

    @override
    def setup(self) -> None:
        """Check that the cache directory exists and is writable; remove stale temporaries.

        :raises AccessException: The directory is missing, not a directory, or not
            writable; the message names it.
        """
        variable = Configuration.env_name("path")
        try:
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
        if not existed:
            try:
                os.makedirs(self._root, mode=0o700, exist_ok=True)
                os.chmod(self._root, 0o700)  # makedirs' mode is masked by the umask
            except OSError as exc:
                raise AccessException(
                    f"{self.location()}: the directory cannot be created: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        self.setup()
        return f"{'found' if existed else 'created'} {self.location()}"

    def tidy(self, older_than: float = STALE_TEMPORARY_SECONDS) -> int:
        """Remove the temporary files of crashed writers, and directories left empty.

        :meth:`setup` calls this. It is safe while other handlers use the directory: a
        writer recreates a directory removed under it, and a temporary file is removed only
        when it is older than any write takes.

        :param older_than: Remove temporary files last modified this many seconds ago or
            more.
        :raises OSError: The directory cannot be read.
        :return: How many temporary files were removed.
        """
        root = os.open(self._root, _O_DIRECTORY)
        try:
            return _tidy(root, time.time() - older_than)
        finally:
            os.close(root)

    # -- primitives ------------------------------------------------------------------

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one ``open`` sees either the old or the new file of a rename; no lock."""
        joined = f"{pk}/{sk}"
        if _plain_entry(joined):
            # The hot path, inlined: the keys Grove writes are their own file names.
            try:
                descriptor = _os_open(f"{self._prefix}{joined}.cache", _O_READ)
            except FileNotFoundError:
                return self._absent()
            try:
                data = _os_read(descriptor, 65536)
                if len(data) == 65536:
                    data = _read_rest(descriptor, data)
            finally:
                _os_close(descriptor)
        else:
            spot = _Spot(self._root, pk, sk)
            try:
                if not spot.open(self._root, create=False, sync=False):
                    return self._absent()
                found = _read_file(spot.file, spot.dir_fd)
            finally:
                spot.close()
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
        """Atomic: the check and the rename happen under the key's stripe lock.

        An unconditional write makes its temporary file first and holds the lock only for
        the rename. A conditional one takes the lock, reads and compares, and only then
        writes, so a refused call writes nothing.
        """
        spot = _Spot(self._root, pk, sk)
        locks = self._locks
        try:
            data = value.encode("utf-8")
            if expected is ANY:
                temporary = self._write_temporary(spot, data)
                descriptor = locks.acquire(spot.stripe)
                try:
                    if spot.chain:
                        os.replace(
                            temporary, spot.file, src_dir_fd=spot.dir_fd, dst_dir_fd=spot.dir_fd
                        )
                    else:
                        os.replace(temporary, spot.file)
                except BaseException:
                    _unlink_quietly(temporary, spot.dir_fd)
                    raise
                finally:
                    locks.release(spot.stripe, descriptor)
            else:
                descriptor = locks.acquire(spot.stripe)
                try:
                    current = (
                        _read_file(spot.file, spot.dir_fd)
                        if spot.open(self._root, create=False, sync=False)
                        else None
                    )
                    if not _matches(current, expected):
                        return False
                    temporary = self._write_temporary(spot, data)
                    try:
                        os.replace(
                            temporary, spot.file, src_dir_fd=spot.dir_fd, dst_dir_fd=spot.dir_fd
                        )
                    except BaseException:
                        _unlink_quietly(temporary, spot.dir_fd)
                        raise
                finally:
                    locks.release(spot.stripe, descriptor)
            if self._fsync:
                spot.sync_directory()
            return True
        finally:
            if spot.chain:
                spot.close()

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: the check and the unlink happen under the key's stripe lock."""
        spot = _Spot(self._root, pk, sk)
        try:
            if not spot.open(self._root, create=False, sync=False):
                self._absent()  # raises if the cache directory itself is gone
                return expected is ANY
            descriptor = self._locks.acquire(spot.stripe)
            try:
                if expected is not ANY and not _matches(
                    _read_file(spot.file, spot.dir_fd), expected
                ):
                    return False
                try:
                    os.unlink(spot.file, dir_fd=spot.dir_fd)
                except FileNotFoundError:
                    return expected is ANY
            finally:
                self._locks.release(spot.stripe, descriptor)
            if self._fsync:
                spot.sync_directory()
            return True
        finally:
            spot.close()

    @override
    def _scan(self, pk: str | None, prefix: str | None) -> Iterator[CacheEntry]:
        """Walk the directories, decoding names back into keys; reads take no lock.

        Files whose names escaping does not produce (temporary and lock files, strays) are
        skipped. An entry removed while the walk reaches it is skipped too.
        """
        root = os.open(self._root, _O_DIRECTORY)
        try:
            if pk is not None:
                directories = encode_components(pk, "")
                partition = _open_chain(root, directories)
                if partition is None:
                    return
                try:
                    yield from self._scan_partition(partition, pk)
                finally:
                    os.close(partition)
                return
            for key, partition in _walk_chains(root, [], ""):
                try:
                    if prefix is None or key.startswith(prefix):
                        yield from self._scan_partition(partition, key)
                finally:
                    os.close(partition)
        finally:
            os.close(root)

    # -- helpers ---------------------------------------------------------------------

    def _write_temporary(self, spot: _Spot, data: bytes) -> str:
        """Write data to a new temporary file beside the entry; return its path.

        The name is unique to this process and call; ``O_EXCL`` makes sure that a name
        left by another process (after a PID was reused) is never written over.
        """
        if spot.chain and not spot.descriptors:
            spot.open(self._root, create=True, sync=self._fsync)
        for attempt in itertools.count():
            temporary = f"{spot.prefix}{TEMPORARY_PREFIX}{_pid}.{next(_temporary_counter)}"
            try:
                if spot.chain:
                    descriptor = os.open(temporary, _O_TEMPORARY, _FILE_MODE, dir_fd=spot.dir_fd)
                else:
                    descriptor = os.open(temporary, _O_TEMPORARY, _FILE_MODE)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:
                # The directory is new, or was removed with its last entry meanwhile.
                if attempt >= 16:
                    raise
                spot.make_directories(self._root, sync=self._fsync)
        try:
            written = os.write(descriptor, data)
            if written < len(data):
                view = memoryview(data)
                while written < len(data):
                    written += os.write(descriptor, view[written:])
            if self._fsync:
                os.fsync(descriptor)
        except BaseException:
            os.close(descriptor)
            _unlink_quietly(temporary, spot.dir_fd)
            raise
        os.close(descriptor)
        return temporary

    def _scan_partition(self, partition: int, pk: str) -> Iterator[CacheEntry]:
        for sk, directory, name in _walk_entries(partition, []):
            data = _read_file(name, directory)
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
    """Remove stale temporary files below a directory, and its empty subdirectories."""
    removed = 0
    with os.scandir(directory) as listing:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
    for name, is_directory in entries:
        if is_directory:
            if name == LOCKS_DIRECTORY:
                continue
            try:
                subdirectory = os.open(name, _O_DIRECTORY, dir_fd=directory)
            except FileNotFoundError:
                continue
            try:
                removed += _tidy(subdirectory, deadline)
            finally:
                os.close(subdirectory)
            try:
                os.rmdir(name, dir_fd=directory)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
                    raise
        elif name.startswith(TEMPORARY_PREFIX):
            try:
                if os.stat(name, dir_fd=directory, follow_symlinks=False).st_mtime <= deadline:
                    os.unlink(name, dir_fd=directory)
                    removed += 1
            except FileNotFoundError:
                continue
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


def _open_chain(root: int, names: list[str]) -> int | None:
    """Open the directories ``names`` below ``root`` in turn; ``None`` if one is missing."""
    current = root
    for name in names:
        try:
            opened = os.open(name, _O_DIRECTORY, dir_fd=current)
        except (FileNotFoundError, NotADirectoryError):
            opened = -1
        if current != root:
            os.close(current)
        if opened < 0:
            return None
        current = opened
    return current if current != root else os.dup(root)


def _child_names(directory: int) -> tuple[list[str], list[str]]:
    """List a directory's subdirectories and files, leaving out the handler's own names."""
    directories: list[str] = []
    files: list[str] = []
    with os.scandir(directory) as listing:
        for entry in listing:
            if entry.name.startswith("."):
                continue
            try:
                is_directory = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            (directories if is_directory else files).append(entry.name)
    return directories, files


def _walk_chains(directory: int, pieces: list[str], suffix: str) -> Iterator[tuple[str, int]]:
    """Yield the partition keys under ``directory`` with their open directories.

    The caller closes each yielded descriptor. ``pieces`` are the ``%+`` components walked
    so far.
    """
    subdirectories, _ = _child_names(directory)
    for name in subdirectories:
        try:
            opened = os.open(name, _O_DIRECTORY, dir_fd=directory)
        except FileNotFoundError:
            continue
        if name.startswith(MORE):
            try:
                yield from _walk_chains(opened, [*pieces, name], suffix)
            finally:
                os.close(opened)
            continue
        key = decode_components([*pieces, name], suffix)
        if key is None:
            os.close(opened)
            continue
        yield key, opened


def _walk_entries(directory: int, pieces: list[str]) -> Iterator[tuple[str, int, str]]:
    """Yield ``(sk, directory, file name)`` for the entries under a partition directory.

    The directory is ``directory`` itself or a ``%+`` directory below it, open until the
    walk moves on. ``pieces`` are the ``%+`` components walked so far.
    """
    subdirectories, files = _child_names(directory)
    for name in files:
        key = decode_components([*pieces, name], SUFFIX)
        if key is not None:
            yield key, directory, name
    for name in subdirectories:
        if not name.startswith(MORE):
            continue
        try:
            opened = os.open(name, _O_DIRECTORY, dir_fd=directory)
        except FileNotFoundError:
            continue
        try:
            yield from _walk_entries(opened, [*pieces, name])
        finally:
            os.close(opened)
