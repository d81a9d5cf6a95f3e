"""local_file against raw file calls in the same layout, fsync off and on.

The floors store ``<dir>/<pk>/<sk>.cache`` like the handler, with no escaping, locking or
validation, and read with the same least work (``open``, one ``read``, ``close``); a
conditional set reads and compares first. They differ in how they write:

- ``RawWrite``: ``open(O_TRUNC)``, ``write``, ``close`` in place, as upstream Grove does
  (not atomic: a crash leaves a torn file);
- ``RawRename``: a temporary file, ``write``, ``close``, ``rename`` (atomic, not durable);
- ``RawDurable``: the same with ``fsync`` of the file before the rename and of the
  directory after it (and of the parent after creating a directory).

The fsync-off table also measures the handler with its lock replaced by a no-op, so the
ratio to it is what the lock costs, and is followed by the price of expiry
(:mod:`benchmarks.expiry`). Scratch directories are made under ``$TMPDIR`` (or
``GROVE_BENCH_DIR``), which should be on a disk-backed file system: on tmpfs ``fsync`` is
free. A durable write costs a disk flush, so the fsync-on tables hold at most
:data:`DURABLE_KEYS` entries: filling 100,000 would take minutes and measure nothing
new, since the cost of a flush does not depend on how many files there are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator

from typing_extensions import override

from benchmarks.expiry import expiry_report
from benchmarks.suite import Suite
from grove.caches.benchmark import Workload
from grove.caches.local_file import Configuration, Handler

DURABLE_KEYS = 10_000
"""The most entries an fsync-on table holds."""

_O_READ = os.O_RDONLY | os.O_CLOEXEC
_O_TEMPORARY = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_O_IN_PLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _scratch(owner: object, root: str) -> None:
    weakref.finalize(owner, shutil.rmtree, root, True)


def _new_directory() -> str:
    return tempfile.mkdtemp(prefix="grove-bench-local_file-", dir=os.environ.get("GROVE_BENCH_DIR"))


class RawRename:
    """The fsync-off floor: write a temporary file and rename it over the entry."""

    fsync = False

    def __init__(self) -> None:
        self.root = _new_directory()
        self.counter = 0
        _scratch(self, self.root)

    def get(self, pk: str, sk: str) -> str:
        descriptor = os.open(f"{self.root}/{pk}/{sk}.cache", _O_READ)
        try:
            data = os.read(descriptor, 65536)
        finally:
            os.close(descriptor)
        return data.decode("utf-8")

    def _current(self, path: str) -> bytes | None:
        try:
            descriptor = os.open(path, _O_READ)
        except FileNotFoundError:
            return None
        try:
            return os.read(descriptor, 65536)
        finally:
            os.close(descriptor)

    def set(
        self, pk: str, sk: str, value: str, not_set: bool = False, constraint: str | None = None
    ) -> None:
        directory = f"{self.root}/{pk}"
        path = f"{directory}/{sk}.cache"
        if not_set or constraint is not None:
            current = self._current(path)
            if not_set and current is not None:
                raise KeyError((pk, sk))
            if constraint is not None and current != constraint.encode("utf-8"):
                raise KeyError((pk, sk))
        self.store(directory, path, value.encode("utf-8"))

    def store(self, directory: str, path: str, data: bytes) -> None:
        self.counter += 1
        temporary = f"{directory}/.tmp.{self.counter}"
        try:
            descriptor = os.open(temporary, _O_TEMPORARY, 0o600)
        except FileNotFoundError:
            self.make_directory(directory)
            descriptor = os.open(temporary, _O_TEMPORARY, 0o600)
        try:
            os.write(descriptor, data)
            if self.fsync:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
        if self.fsync:
            self.sync(directory)

    def make_directory(self, directory: str) -> None:
        os.mkdir(directory, 0o700)
        if self.fsync:
            self.sync(self.root)

    def sync(self, directory: str) -> None:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
        try:
            os.unlink(f"{self.root}/{pk}/{sk}.cache")
        except FileNotFoundError:
            return
        if self.fsync:
            self.sync(f"{self.root}/{pk}")


class RawDurable(RawRename):
    """The fsync-on floor: write, fsync, rename, fsync the directory."""

    fsync = True


class RawWrite(RawRename):
    """Upstream Grove's write: open with truncation, write, close; no rename, no fsync."""

    @override
    def store(self, directory: str, path: str, data: bytes) -> None:
        try:
            descriptor = os.open(path, _O_IN_PLACE, 0o600)
        except FileNotFoundError:
            self.make_directory(directory)
            descriptor = os.open(path, _O_IN_PLACE, 0o600)
        try:
            os.write(descriptor, data)
        finally:
            os.close(descriptor)


def _no_lock(descriptor: object, operation: int) -> None:
    return None


class _Unlocked(Handler):
    """A handler whose directory locks lock nothing: to measure what the real ones cost."""

    _flock = staticmethod(_no_lock)


def handler(fsync: bool, kind: type[Handler] = Handler) -> Handler:
    """A handler on a new scratch directory, removed when the handler goes.

    :param fsync: The handler's ``fsync`` setting.
    :param kind: The handler class.
    :return: The handler, set up.
    """
    root = _new_directory()
    made = kind(Configuration(path=root, fsync=fsync))
    made.setup()
    _scratch(made, root)
    return made


def unlocked_handler() -> Handler:
    """A fsync-off handler whose directory locks do nothing (not safe; for measuring only).

    :return: The handler, set up.
    """
    return handler(fsync=False, kind=_Unlocked)


def suites(keys: int) -> Iterator[Suite]:
    """The local_file tables at one store size: fsync off, then fsync on.

    :param keys: Entries in the store while measuring (at most :data:`DURABLE_KEYS` for
        fsync on).
    :return: Two suites.
    """
    workload = Workload(keys=keys, calls=1_000, repeats=7)
    yield Suite(
        title=f"local_file fsync=off, {keys:,} keys, floor = write+rename",
        subject=lambda: handler(fsync=False),
        floor=RawRename,
        workload=workload,
        targets={"get hit": 0.8, "set new": 0.7, "overwrite": 0.7, "compare-and-set": 0.7},
        extra_floors={"open/write/close": RawWrite, "handler without lock": unlocked_handler},
        report=lambda: expiry_report(
            lambda: handler(fsync=False), workload, "local_file fsync=off"
        ),
    )
    durable_keys = min(keys, DURABLE_KEYS)
    yield Suite(
        title=(
            f"local_file fsync=on, {durable_keys:,} keys, "
            "floor = write+fsync+rename+directory fsync"
        ),
        subject=lambda: handler(fsync=True),
        floor=RawDurable,
        workload=Workload(keys=durable_keys, calls=300),
        targets={"set new": 0.8, "overwrite": 0.8},
        extra_floors={"write+rename": RawRename},
    )
