#!/bin/sh
# A short grove-cache session: check the store, save a pointer, take an execution lock,
# watch a second collector fail to take it, list and export, release the lock.
# It runs on a scratch local_sqlite store (the handler of the embedded default) in a
# temporary directory removed at the end, so it never writes to your real store.
set -eu

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
grove_cache() {
    grove-cache --handler local_sqlite --config "path=$scratch/cache.db" "$@"
}

grove_cache doctor
grove_cache set pointer.okta_audit.1f2e all 2024-05-01T00:00:00Z
grove_cache set execution_lock.okta_audit.1f2e all 2024-05-01T00:05:00Z --not-set
if grove_cache set execution_lock.okta_audit.1f2e all other-collector --not-set; then
    echo "a second collector took the lock: this must not happen" >&2
    exit 1
else
    echo "a second collector could not take the lock (exit code $?)"
fi
grove_cache ls --prefix pointer.okta_audit.
grove_cache export --prefix execution_lock.
grove_cache delete execution_lock.okta_audit.1f2e all --constraint 2024-05-01T00:05:00Z
echo "lock released"
