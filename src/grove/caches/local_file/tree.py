"""Walking the cache directory for listing, and tidying what crashed writers left.

Invariants
    - Reads take no lock: an entry removed while a walk reaches it is skipped.
    - Only names that escaping produces are walked into or listed; names starting with
      ``.`` (temporary files, other tools' files) are never entries.
    - A symlink with a name that the cache could have made is an error naming it; a
      symlink is never followed, not even one that appears while a walk or a tidy runs.
    - Tidying removes only temporary files, and empty directories, last changed before a
      deadline: a writer making a chain of directories for a long key changes each one as
      it goes, so the chain is never removed under it (and a writer whose directory is
      removed anyway starts again).
    - Sweeping removes an expired entry file only under the lock of its directory, after
      reading it again there: a file written meanwhile (a new value, or no expiry) is
      kept, as a conditional call would see it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from typing import Final

from grove.caches.local_file.boundary import O_DIRECTORY, O_READ, named, symlink_error
from grove.caches.local_file.framing import HEAD_BYTES, MalformedFrameError, expiry_of
from grove.caches.local_file.names import MORE, SUFFIX, TEMPORARY_PREFIX, decode_components

__all__ = ["STALE_TEMPORARY_SECONDS", "sweep_below", "tidy_below", "walk_chains", "walk_entries"]

STALE_TEMPORARY_SECONDS: Final = 600.0
"""Age after which tidying removes a temporary file as a crashed writer's.

A writer keeps its temporary file for the time one write takes; a temporary file removed
while a (stopped, not crashed) writer still needs it makes that write start again, never
the store inconsistent."""


def tidy_below(directory: int, deadline: float) -> int:
    """Remove stale temporary files below a directory, and its stale empty subdirectories.

    A directory is stale when it was last changed before ``deadline``, as seen before its
    own stale contents are removed.

    :param directory: A descriptor of the directory.
    :param deadline: Seconds since the epoch; what was changed at or before it is stale.
    :return: How many temporary files were removed.
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
            subdirectory = os.open(name, O_DIRECTORY, dir_fd=directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                continue  # replaced by a symlink meanwhile: never followed
            raise
        try:
            removed += tidy_below(subdirectory, deadline)
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
        return os.open(name, O_DIRECTORY, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise named(exc, path) from None


def walk_chains(directory: int, pieces: list[str], path: str) -> Iterator[tuple[str, int, str]]:
    """Yield the partition keys under ``directory`` with their open directories and paths.

    The caller closes each yielded descriptor.

    :param directory: A descriptor of the cache directory, or of a ``%+`` directory.
    :param pieces: The ``%+`` components walked so far.
    :param path: The path of ``directory``, for messages.
    :return: An iterator of ``(pk, descriptor, path)``.
    """
    subdirectories, _, links = _child_names(directory)
    for name in links:
        if name.startswith(MORE) or decode_components([*pieces, name], "") is not None:
            raise symlink_error(f"{path}/{name}")
    for name in subdirectories:
        opened = _open_listed(name, directory, f"{path}/{name}")
        if opened is None:
            continue
        if name.startswith(MORE):
            try:
                yield from walk_chains(opened, [*pieces, name], f"{path}/{name}")
            finally:
                os.close(opened)
            continue
        key = decode_components([*pieces, name], "")
        if key is None:
            os.close(opened)
            continue
        yield key, opened, f"{path}/{name}"


def walk_entries(
    directory: int, pieces: list[str], path: str
) -> Iterator[tuple[str, int, str, str]]:
    """Yield the entries under a partition's directory.

    :param directory: A descriptor of the partition's directory, or of a ``%+``
        directory below it.
    :param pieces: The ``%+`` components walked so far.
    :param path: The path of ``directory``, for messages.
    :return: An iterator of ``(sk, directory, file name, file path)``; the directory is
        open until the walk moves on.
    """
    subdirectories, files, links = _child_names(directory)
    for name in links:
        if name.startswith(MORE) or decode_components([*pieces, name], SUFFIX) is not None:
            raise symlink_error(f"{path}/{name}")
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
            yield from walk_entries(opened, [*pieces, name], f"{path}/{name}")
        finally:
            os.close(opened)


def sweep_below(
    root: int,
    path: str,
    limit: int,
    clock: Callable[[], float],
    flock: Callable[[int, int], None],
    fsync: bool,
) -> int:
    """Remove up to ``limit`` expired entry files below the cache directory.

    The walk reads the first bytes of each entry file without a lock; a file that has
    expired is read again under the lock of its directory (``flock`` on the walk's own
    descriptor, which excludes the calls as they exclude each other), and unlinked only
    if it still has. A directory removed meanwhile takes its files with it.

    :param root: A descriptor of the cache directory.
    :param path: Its path, for messages.
    :param limit: The most files to remove.
    :param clock: The clock that decides expiry.
    :param flock: Takes and releases a directory's lock (``fcntl.flock``).
    :param fsync: Sync each directory after removing a file from it.
    :return: How many files were removed.
    """
    removed = 0
    for _, partition, partition_path in walk_chains(root, [], path):
        try:
            for _, directory, name, _ in walk_entries(partition, [], partition_path):
                if removed >= limit:
                    return removed
                if not _expired(name, directory, clock):
                    continue
                flock(directory, fcntl.LOCK_EX)
                try:
                    if not _expired(name, directory, clock):
                        continue
                    os.unlink(name, dir_fd=directory)
                except FileNotFoundError:
                    continue
                finally:
                    flock(directory, fcntl.LOCK_UN)
                removed += 1
                if fsync:
                    os.fsync(directory)
        finally:
            os.close(partition)
    return removed


def _expired(name: str, directory: int, clock: Callable[[], float]) -> bool:
    """Tell from its first bytes whether an entry file has expired."""
    try:
        descriptor = os.open(name, O_READ, dir_fd=directory)
    except OSError:
        return False  # gone meanwhile, or not the cache's: the calls say what is wrong
    try:
        expires_at = expiry_of(os.read(descriptor, HEAD_BYTES))
    except (OSError, MalformedFrameError):
        return False
    finally:
        os.close(descriptor)
    return expires_at is not None and expires_at <= clock()
