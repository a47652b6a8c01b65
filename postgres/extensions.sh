#!/usr/bin/env bash
# Builds Quire's C extensions (postgres/extensions/*) with PGXS against the
# patched Postgres and installs them into a copy of its install tree keyed by
# the extensions' sources, then prints that copy's prefix: what every test
# and the demo run.
#
#   postgres/extensions.sh [--prefix]
#
# The base build (postgres/build.sh) is shared by every checkout on the
# machine and stays pristine: two checkouts with different extension sources
# get different copies and never overwrite each other's .so files. Postgres
# installs are relocatable (paths are found relative to the binaries), so the
# copy runs as it is.
#
# Layout, beside the base build:
#   $QUIRE_PG_HOME/pg-17.x-<key>/ext-<ext key>/install/            the copy
#   $QUIRE_PG_HOME/pg-17.x-<key>/ext-<ext key>/install/.complete   written last
#   $QUIRE_PG_HOME/pg-17.x-<key>/ext-<ext key>.lock                held while building
#
# QUIRE_WERROR=1 builds the extensions with -Werror (off by default: a newer
# compiler's new warnings must not stop a fresh machine).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=postgres/lib.sh
. "$here/lib.sh"

[ "${1:---prefix}" = --prefix ] || die "usage: postgres/extensions.sh [--prefix]"

base_prefix=$("$here/build.sh" --prefix)
key_dir=$(dirname "$base_prefix")

# Everything that changes what is installed: the extensions' files (names and
# contents, build products excluded) and the warning setting.
ext_hash=$(
    cd "$here/extensions"
    find . -type f ! -name '*.o' ! -name '*.so' ! -name '*.bc' ! -path '*/.deps/*' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum
    echo "werror=${QUIRE_WERROR:-0}"
)
ext_hash=$(echo "$ext_hash" | sha256sum | cut -c1-16)
ext_dir=$key_dir/ext-$ext_hash
prefix=$ext_dir/install

exit_if_complete "$prefix"
lock_or_wait "$ext_dir.lock" "another checkout is installing extensions $ext_hash"
exit_if_complete "$prefix"

log "installing Quire's extensions ($ext_hash) into a copy of $base_prefix"
rm -rf "$ext_dir"
mkdir -p "$ext_dir"
cp -a "$base_prefix" "$prefix"
rm -f "$prefix/.complete"
werror=()
[ "${QUIRE_WERROR:-0}" = 1 ] && werror=(QUIRE_WERROR=1)
for makefile in "$here"/extensions/*/Makefile; do
    dir=$(dirname "$makefile")
    # Objects in the checkout may come from another build's headers: start clean.
    make -s -C "$dir" PG_CONFIG="$prefix/bin/pg_config" clean >/dev/null
    make -s -C "$dir" PG_CONFIG="$prefix/bin/pg_config" "${werror[@]}" >&2 ||
        die "building $(basename "$dir") failed"
    make -s -C "$dir" PG_CONFIG="$prefix/bin/pg_config" install >&2 ||
        die "installing $(basename "$dir") failed"
done
touch "$prefix/.complete"

# Keep the ext_max most recently used copies of this build; beyond them, a
# copy goes only when no checkout has asked for it in ext_idle_hours (every
# make target does, through this script; a test run in progress uses the copy
# it asked for at its start) and nobody holds its lock. Each is about 100 MB.
ext_max=3
ext_idle_hours=24
ls -1td "$key_dir"/ext-*/install/.complete 2>/dev/null | tail -n +$((ext_max + 1)) |
    while read -r stale; do
        [ -n "$(find "$stale" -mmin +$((ext_idle_hours * 60)))" ] || continue
        stale_dir=$(dirname "$(dirname "$stale")")
        (
            exec 8>"$stale_dir.lock"
            flock -n 8 || exit 0
            rm -rf "$stale_dir"
        )
    done || true
echo "$prefix"
