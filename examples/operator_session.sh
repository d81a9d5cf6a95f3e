#!/bin/sh
# A short grove-cache session on the embedded default store (local_sqlite under
# $XDG_STATE_HOME/grove/cache.db): check it, save a pointer, take an execution lock,
# watch a second collector fail to take it, list and export, release the lock.
set -eu

grove-cache doctor
grove-cache set pointer.okta_audit.1f2e all 2024-05-01T00:00:00Z
grove-cache set execution_lock.okta_audit.1f2e all 2024-05-01T00:05:00Z --not-set
if grove-cache set execution_lock.okta_audit.1f2e all other-collector --not-set; then
    echo "a second collector took the lock: this must not happen" >&2
    exit 1
else
    echo "a second collector could not take the lock (exit code $?)"
fi
grove-cache ls --prefix pointer.okta_audit.
grove-cache export --prefix execution_lock.
grove-cache delete execution_lock.okta_audit.1f2e all --constraint 2024-05-01T00:05:00Z
echo "lock released"
