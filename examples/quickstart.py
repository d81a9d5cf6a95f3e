"""The README's ten-line example: a pointer and an execution lock (run by tests)."""

import datetime

from grove.caches import load
from grove.exceptions import DataFormatException

cache = load()  # the handler GROVE_CACHE_HANDLER names; local_memory by default
cache.set("pointer.okta.1f2e", "all", "2024-05-01T00:00:00Z")
print("pointer:", cache.get("pointer.okta.1f2e", "all"))

expiry = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)).isoformat()
cache.set("execution_lock.okta.1f2e", "all", expiry, not_set=True)  # take the lock
try:
    cache.set("execution_lock.okta.1f2e", "all", "another collector", not_set=True)
except DataFormatException:
    print("a second collector cannot take the lock")
cache.delete("execution_lock.okta.1f2e", "all", constraint=expiry)  # release ours only
