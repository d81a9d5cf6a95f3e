"""A Grove collector's use of the cache: a pointer, an execution lock, and a lost race.

Run it with any handler: ``GROVE_CACHE_HANDLER=local_file GROVE_CACHE_LOCAL_FILE_PATH=/tmp/c``
(the default is ``local_memory``).
"""

from __future__ import annotations

import datetime
import hashlib

from grove.caches import load
from grove.exceptions import DataFormatException, NotFoundException


def main() -> None:
    """Store a pointer, take and release a lock, and show a second taker losing."""
    cache = load()
    identity = hashlib.md5(b"example-tenant", usedforsecurity=False).hexdigest()
    pointer_pk = f"pointer.example_audit.{identity}"
    lock_pk = f"execution_lock.example_audit.{identity}"
    print(f"handler: {type(cache).__module__}")

    try:
        print(f"last pointer: {cache.get(pointer_pk, 'all')}")
    except NotFoundException:
        print("last pointer: none yet, collecting from the start")

    expiry = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)).isoformat()
    cache.set(lock_pk, "all", expiry, not_set=True)
    print(f"lock taken until {expiry}")

    try:
        cache.set(lock_pk, "all", "another collector", not_set=True)
    except DataFormatException as exc:
        print(f"a second collector cannot take it: {exc}")

    now = datetime.datetime.now(datetime.UTC).isoformat()
    cache.set(pointer_pk, "all", now)
    print(f"pointer saved: {cache.get(pointer_pk, 'all')}")

    cache.delete(lock_pk, "all", constraint=expiry)
    print("lock released (only because it still held our expiry)")


if __name__ == "__main__":
    main()
