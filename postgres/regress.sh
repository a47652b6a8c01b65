#!/usr/bin/env bash
# Runs Postgres' own regression suite (make check, parallel schedule) on the
# patched build, once per build: the patch must be inert when no extension
# uses it. A pass is remembered in the build's cache directory, so the suite
# runs again exactly when the patches, the configure flags or the Postgres
# version change (each of those makes a new build directory).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=postgres/lib.sh
. "$here/lib.sh"

prefix=$("$here/build.sh" --prefix)
key_dir=$(dirname "$prefix")
stamp=$key_dir/regress.passed

if [ -f "$stamp" ]; then
    log "regression suite already passed on this build: $(cat "$stamp")"
    exit 0
fi

# Checkouts share the build tree the suite runs in: one run at a time, and a
# second finds the first one's pass.
lock_or_wait "$key_dir.regress.lock" "another checkout is running the regression suite on this build"
if [ -f "$stamp" ]; then
    log "regression suite already passed on this build: $(cat "$stamp")"
    exit 0
fi

ensure_pg_user
started=$(date +%s)
log "running Postgres' regression suite (make check) on $key_dir/build"
if ! as_pg_user make -C "$key_dir/build" -s check >"$key_dir/regress.log" 2>&1; then
    tail -n 40 "$key_dir/regress.log" >&2
    diffs=$key_dir/build/src/test/regress/regression.diffs
    [ -f "$diffs" ] && head -n 80 "$diffs" >&2
    die "the regression suite failed on the patched build: see $key_dir/regress.log"
fi
summary=$(grep -E "tests passed|tests failed" "$key_dir/regress.log" | tail -n 1 | sed -E 's/^# //')
result="$summary in $(($(date +%s) - started)) s"
log "$result"
echo "$result" >"$stamp"
