"""The local_file handler: atomic, locked calls over the files of :mod:`.names`.

Atomicity
    A write goes to a fresh temporary file in the entry's directory, which then replaces the
    entry with one ``rename``: a reader opens either the old file or the new one, whole,
    even if the writer is killed at any instant. A temporary file left by a killed writer
    is never read (its name is not an entry's); a write that fails or is interrupted
    (``KeyboardInterrupt`` included) removes its own. :meth:`Handler.setup` tidies the
    directory: it removes temporary files older than
    :data:`~grove.caches.local_file.tree.STALE_TEMPORARY_SECONDS` and directories left
    empty by deletes as long ago. Deletes leave directories in place, as upstream Grove
    does, so that taking and releasing a lock does not create and sync a directory each
    time.

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

    A plain ``set`` or ``delete`` replaces or removes a symlink planted as an entry file
    (the link, never its target), as it overwrites an entry that is not valid UTF-8.

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

import ctypes
import errno
import fcntl
import os
import stat
import sys
import time
from collections.abc import Iterator
from typing import Literal

from typing_extensions import override

from grove.caches import CacheEntry, CreatingStorage, Listing, Maintaining
from grove.caches.atomic import (
    ABSENT,
    ANY,
    Clock,
    Expected,
    ExpectedToRemove,
    ExpiringCache,
    Sentinel,
    Stored,
)
from grove.caches.atomic import describe_key as _describe_key
from grove.caches.local_file.boundary import (
    AT_CWD,
    ATTEMPTS,
    FS_ENCODING,
    HOW_SIZE,
    NR_OPENAT2,
    READ_HOW_REFERENCE,
    Boundary,
    diagnose,
    make_directories,
    named,
)
from grove.caches.local_file.files import (
    read_descriptor,
    read_entry,
    unlink_quietly,
    write_temporary,
)
from grove.caches.local_file.framing import MAGIC, MalformedFrameError, decode, encode, split_frame
from grove.caches.local_file.names import SUFFIX, EntryPath, encode_components, plain_entry
from grove.caches.local_file.settings import Configuration, CorruptEntryError
from grove.caches.local_file.tree import (
    STALE_TEMPORARY_SECONDS,
    sweep_below,
    tidy_below,
    walk_chains,
    walk_entries,
)
from grove.exceptions import AccessException

__all__ = ["Handler"]

# Bound once: the locked paths are short enough that attribute lookups show in their cost.
_LOCK_EX = fcntl.LOCK_EX
_LOCK_UN = fcntl.LOCK_UN


class Handler(ExpiringCache, Listing, CreatingStorage, Maintaining):
    """A local file backed cache for pointers and other Grove data.

    Expiry: an entry written with ``ttl`` is a frame of :mod:`.framing` holding the
    moment it expires, in seconds since the epoch, by the writer's clock. The caller's
    clock decides (``time.time`` unless a clock is given): each call compares that moment
    with its own clock, so every process sharing the directory decides by its own. They
    share one host (``flock`` does not reach across hosts), so their clocks agree; a
    clock stepped by ``d`` seconds (or a container with its own clock offset) makes that
    process see entries expire ``d`` seconds early or late, and entries it writes expire
    ``d`` seconds early or late for the others. An expired file stays on disk, absent
    for every call, until its key is written or deleted, or :meth:`sweep_expired`,
    :meth:`tidy` or :meth:`maintain` (``grove-cache maintain``) removes it. :meth:`setup`
    does not: it runs at every start, and sweeping reads every entry file.

    :param config: The settings; when ``None``, read from the environment.
    :param clock: The clock that decides expiry; ``time.time`` when ``None``.
    """

    configuration = Configuration
    config: Configuration
    driver_errors = (OSError, CorruptEntryError)
    clock_owner = "caller"

    _flock = staticmethod(fcntl.flock)
    """Takes and releases a directory's lock; the benchmark replaces it to measure it."""

    def __init__(self, config: Configuration | None = None, *, clock: Clock | None = None) -> None:
        """Build a handler on a directory; nothing is touched until the first call.

        :param config: The settings; when ``None``, read from the environment.
        :param clock: The clock that decides expiry; ``time.time`` when ``None``.
        :raises ConfigurationException: The environment lacks the path or has an
            invalid setting.
        """
        super().__init__(config)
        self._path = os.path.abspath(self.config.path)
        self._root = os.path.realpath(self._path)
        self._prefix = self._root + "/"
        self._fsync = self.config.fsync
        self._boundary = Boundary(self._root, self._fsync)
        self._openat2 = self._boundary.openat2
        self._moved = self._boundary.moved
        self._clock = clock or time.time

    @override
    def location(self) -> str:
        return f"local_file cache at {self._path}"

    @override
    def setup(self) -> None:
        """Create the cache directory if it is missing, check it, and :meth:`tidy` it.

        The directory and its missing parents are created with mode 0700.

        :raises AccessException: The directory cannot be created, is not a directory, or
            is not writable; the message names it.
        """
        variable = Configuration.env_name("path")
        where = f"the directory ({variable})"
        try:
            make_directories(self._root, self._fsync)
            status = os.stat(self._root)
        except OSError as exc:
            raise self._failure("setup", exc, where=where) from exc
        if not stat.S_ISDIR(status.st_mode):
            raise AccessException(f"setup of {where} failed in {self.location()}: not a directory")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise AccessException(
                f"setup of {where} failed in {self.location()}: the directory is not writable"
            )
        try:
            self._remove_leftovers(STALE_TEMPORARY_SECONDS)
        except OSError as exc:
            raise self._failure("tidy", exc, where=where) from exc

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
        """Remove expired entries, temporary files of crashed writers, and empty directories.

        :meth:`maintain` calls this; :meth:`setup` removes only the temporary files and
        empty directories. It is safe while other handlers use the directory: an
        expired entry goes under its directory's lock, only if it has still expired (by
        this handler's clock); only temporary files and empty directories unchanged for
        ``older_than`` seconds go, which is longer than any write takes, and a writer
        whose directory is removed under it anyway starts again. Directories whose names
        start with ``.`` are not the cache's and are left alone.

        :param older_than: Remove temporary files and empty directories last changed this
            many seconds ago or more.
        :raises OSError: The directory cannot be read.
        :return: How many files were removed: expired entries and temporary files.
        """
        root = self._boundary.open_root()
        try:
            swept = sweep_below(
                root, self._root, sys.maxsize, self._clock, self._flock, self._fsync
            )
        finally:
            os.close(root)
        return swept + self._remove_leftovers(older_than)

    def _remove_leftovers(self, older_than: float) -> int:
        """Remove stale temporary files and empty directories; how many files went."""
        root = self._boundary.open_root()
        try:
            return tidy_below(root, time.time() - older_than)
        finally:
            os.close(root)

    @override
    def maintain(self, *, older_than: float | None = None) -> int:
        """Remove what the directory no longer needs: :meth:`tidy`, as a maintenance task.

        :param older_than: Remove temporary files and empty directories last changed this
            many seconds ago or more; :data:`STALE_TEMPORARY_SECONDS` when ``None``.
        :raises AccessException: The directory cannot be read or changed.
        :return: How many files were removed: expired entries and temporary files.
        """
        try:
            return self.tidy(STALE_TEMPORARY_SECONDS if older_than is None else older_than)
        except OSError as exc:
            raise self._failure("maintain", exc, where="the directory") from exc

    # -- primitives ------------------------------------------------------------------

    @override
    def _read(self, pk: str, sk: str) -> Stored:
        """Atomic: one ``open`` sees either the old or the new file of a rename; no lock."""
        joined = f"{pk}/{sk}"
        openat2 = self._openat2
        if openat2 is not None and plain_entry(joined):
            # The hot path, inlined: the keys Grove writes are their own file names, and
            # one openat2 call resolves the path without following a symlink.
            path = f"{self._prefix}{joined}{SUFFIX}"
            descriptor = openat2(
                NR_OPENAT2,
                AT_CWD,
                path.encode(FS_ENCODING, "surrogateescape"),
                READ_HOW_REFERENCE,
                HOW_SIZE,
            )
            if descriptor < 0:
                code = ctypes.get_errno()
                if code == errno.ENOENT:
                    return self._absent()
                raise diagnose(self._root, path, code)
            data = read_descriptor(descriptor, path)  # and closes it
        else:
            found = self._read_slowly(pk, sk)
            if found is None:
                return self._absent()
            data = found
        if data.startswith(MAGIC):
            unframed = self._unframe(data, pk, sk)
            if unframed is None:
                return ABSENT
            data = unframed
        try:
            return data.decode()  # UTF-8
        except UnicodeDecodeError:
            raise _corrupt(pk, sk, "is not valid UTF-8") from None

    def _read_slowly(self, pk: str, sk: str) -> bytes | None:
        """Read an entry file one directory at a time; ``None`` when it is absent."""
        entry = EntryPath(pk, sk)
        directory = self._boundary.open_directory(entry, create=False)
        if directory is None:
            return None
        try:
            return read_entry(entry.file, directory, entry.path(self._root))
        finally:
            os.close(directory)

    def _unframe(self, data: bytes, pk: str, sk: str) -> bytes | None:
        """Return the value of a frame, or ``None`` when it has expired."""
        try:
            start, expires_at = split_frame(data)
        except MalformedFrameError as exc:
            raise _corrupt(pk, sk, f"is {exc}") from None
        if expires_at is not None and expires_at <= self._clock():
            return None
        return data[start:]

    def _live(self, data: bytes | None) -> bytes | None:
        """The value of an entry file for a condition: ``None`` when absent or expired."""
        if data is None or not data.startswith(MAGIC):
            return data
        try:
            start, expires_at = split_frame(data)
        except MalformedFrameError:
            return _UNREADABLE
        if expires_at is not None and expires_at <= self._clock():
            return None
        return data[start:]

    def _absent(self) -> Stored:
        """Return :data:`ABSENT`, unless the cache directory itself is gone."""
        self._boundary.absent()
        return ABSENT

    @override
    def _write(self, pk: str, sk: str, value: str, expected: Expected) -> bool:
        """Atomic: the check and the rename happen under the lock of the entry's directory.

        An unconditional write makes its temporary file first and holds the lock only for
        the rename. A conditional one takes the lock, reads and compares, and only then
        writes, so a refused call writes nothing.
        """
        return self._store(EntryPath(pk, sk), encode(value.encode("utf-8"), None), expected)

    @override
    def _write_expiring(self, pk: str, sk: str, value: str, expected: Expected, ttl: float) -> bool:
        """Atomic as :meth:`_write`: value and expiry are one file, renamed once."""
        data = encode(value.encode("utf-8"), self._clock() + ttl)
        return self._store(EntryPath(pk, sk), data, expected)

    def _store(self, entry: EntryPath, data: bytes, expected: Expected) -> bool:
        """Write an entry file's content, starting again if its directory is removed."""
        for _ in range(ATTEMPTS):
            written = self._write_once(entry, data, expected)
            if written is not None:
                return written
        raise self._boundary.vanishing(entry)

    def _write_once(self, entry: EntryPath, data: bytes, expected: Expected) -> bool | None:
        """Make one attempt at a write; ``None`` when its directory was removed under it."""
        # A write that may store a value creates what it needs; a compare-and-set does not.
        directory = self._boundary.open_directory(entry, create=not isinstance(expected, str))
        if directory is None:
            self._absent()  # raises if the cache directory itself is gone
            return False
        made: list[str] = []  # temporary files to remove unless renamed
        try:
            if expected is ANY:
                temporary = write_temporary(directory, data, made, self._fsync)
            self._flock(directory, _LOCK_EX)
            try:
                if expected is not ANY:
                    current = self._live(read_entry(entry.file, directory, entry.path(self._root)))
                    if not _matches(current, expected):
                        return None if current is None and self._moved(entry, directory) else False
                    temporary = write_temporary(directory, data, made, self._fsync)
                try:
                    os.rename(temporary, entry.file, src_dir_fd=directory, dst_dir_fd=directory)
                except FileNotFoundError:
                    raise
                except OSError as exc:
                    raise named(exc, entry.path(self._root)) from None
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
                unlink_quietly(name, directory)
            os.close(directory)

    @override
    def _remove(self, pk: str, sk: str, expected: ExpectedToRemove) -> bool:
        """Atomic: the check and the unlink happen under the lock of the entry's directory."""
        entry = EntryPath(pk, sk)
        for _ in range(ATTEMPTS):
            removed = self._remove_once(entry, expected)
            if removed is not None:
                return removed
        raise self._boundary.vanishing(entry)

    def _remove_once(self, entry: EntryPath, expected: ExpectedToRemove) -> bool | None:
        """Make one attempt at a removal; ``None`` when its directory was removed under it."""
        directory = self._boundary.open_directory(entry, create=False)
        if directory is None:
            self._absent()  # raises if the cache directory itself is gone
            return expected is ANY
        try:
            self._flock(directory, _LOCK_EX)
            try:
                if expected is not ANY:
                    current = self._live(read_entry(entry.file, directory, entry.path(self._root)))
                    if not _matches(current, expected):
                        return None if current is None and self._moved(entry, directory) else False
                try:
                    os.unlink(entry.file, dir_fd=directory)
                except FileNotFoundError:
                    return None if self._moved(entry, directory) else expected is ANY
                except OSError as exc:
                    raise named(exc, entry.path(self._root)) from None
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
        root = self._boundary.open_root()
        try:
            if pk is not None:
                names = encode_components(pk, "")
                partition = self._boundary.open_chain(root, names, create=False)
                if partition is None:
                    return
                try:
                    path = "/".join([self._root, *names])
                    yield from self._scan_partition(partition, pk, path)
                finally:
                    os.close(partition)
                return
            for key, partition, path in walk_chains(root, [], self._root):
                try:
                    if prefix is None or key.startswith(prefix):
                        yield from self._scan_partition(partition, key, path)
                finally:
                    os.close(partition)
        finally:
            os.close(root)

    def _scan_partition(self, partition: int, pk: str, path: str) -> Iterator[CacheEntry]:
        """Yield a partition's live entries, decoded; expired ones are skipped."""
        for sk, directory, name, file_path in walk_entries(partition, [], path):
            data = read_entry(name, directory, file_path)
            if data is None:
                continue
            if data.startswith(MAGIC):
                live = self._unframe(data, pk, sk)
                if live is None:
                    continue
                data = live
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _corrupt(pk, sk, "is not valid UTF-8") from None
            yield CacheEntry(pk, sk, value)

    # -- expiry ----------------------------------------------------------------------

    @override
    def _read_expiry(self, pk: str, sk: str) -> float | Literal[Sentinel.ABSENT] | None:
        """Atomic: one ``open`` of the entry file, which holds value and expiry together."""
        data = self._read_slowly(pk, sk)
        if data is None:
            self._absent()
            return ABSENT
        try:
            value, expires_at = decode(data)
            value.decode("utf-8")
        except MalformedFrameError as exc:
            raise _corrupt(pk, sk, f"is {exc}") from None
        except UnicodeDecodeError:
            raise _corrupt(pk, sk, "is not valid UTF-8") from None
        if expires_at is not None and expires_at <= self._clock():
            return ABSENT
        return expires_at

    @override
    def _sweep_expired(self, limit: int) -> int:
        """Atomic per entry: an expired file is unlinked under its directory's lock.

        See :func:`~grove.caches.local_file.tree.sweep_below`; each batch walks from the
        start and stops after ``limit`` removals.
        """
        root = self._boundary.open_root()
        try:
            return sweep_below(root, self._root, limit, self._clock, self._flock, self._fsync)
        finally:
            os.close(root)


def _corrupt(pk: str, sk: str, what: str) -> CorruptEntryError:
    return CorruptEntryError(f"the file of {_describe_key(pk, sk)} {what}")


_UNREADABLE = b"\xff"
"""What a condition sees in a malformed frame: not UTF-8, so it equals no value."""


def _matches(current: bytes | None, expected: Expected) -> bool:
    """Tell whether stored bytes (``None``: absent) are what a conditional call expects."""
    if expected is ABSENT:
        return current is None
    if expected is ANY:
        return True
    return current is not None and current == expected.encode("utf-8")
