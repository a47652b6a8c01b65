#!/usr/bin/env bash
# Checks how postgres/build.sh obtains and checks the Postgres source
# (postgres/source.sh): the pinned tarball is accepted from each place, a copy
# with one byte changed is refused wherever it comes from (naming both sums),
# a corrupt cached copy is replaced, another release is used only with a
# warning, and when every source fails the one error lists what was tried.
# Needs no download: it works on copies of the pinned tarball.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$here/build.sh
# shellcheck source=postgres/source.pin
. "$here/source.pin"

pass=0
fail() { echo "postgres/tests/source_pin.sh: FAIL: $*" >&2; exit 1; }
ok() { pass=$((pass + 1)); }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The pinned tarball, obtained the usual way (from the cache when the build
# already fetched it).
pinned=$("$build" --source-only 2>/dev/null) || fail "build.sh --source-only could not obtain the pinned tarball"
[ "$(sha256sum "$pinned" | cut -d' ' -f1)" = "$pg_orig_sha256" ] || fail "$pinned does not match the pin"

mkdir -p "$work/good" "$work/bad"
cp "$pinned" "$work/good/$pg_orig_tarball"
cp "$pinned" "$work/bad/postgresql-$pg_version.tar.bz2"
# One byte changed in the middle: the tarball still lists as 17.x.
size=$(stat -c %s "$pinned")
offset=$((size / 2))
byte=$(od -An -tu1 -j "$offset" -N1 "$pinned" | tr -d ' ')
printf "\\$(printf '%03o' $(((byte + 1) % 256)))" |
    dd of="$work/bad/postgresql-$pg_version.tar.bz2" bs=1 seek="$offset" conv=notrunc status=none
bad_sum=$(sha256sum "$work/bad/postgresql-$pg_version.tar.bz2" | cut -d' ' -f1)
[ "$bad_sum" != "$pg_orig_sha256" ] || fail "the changed copy has the pinned sum"

# Runs build.sh --source-only with an empty cache, no local mirror but the
# one given, and no network; captures its output and status.
run() {
    local home=$1
    shift
    status=0
    output=$(env -u PG_SOURCE QUIRE_PG_HOME="$home" QUIRE_PG_SOURCE_OFFLINE=1 \
        QUIRE_PG_SOURCE_DIR="$work/none" "$@" "$build" --source-only 2>&1) || status=$?
}
expect_refused() {
    [ "$status" -ne 0 ] || fail "$1: accepted; output: $output"
    grep -qF "$bad_sum" <<<"$output" || fail "$1: the error does not name the tarball's sum: $output"
    grep -qF "$pg_orig_sha256" <<<"$output" || fail "$1: the error does not name the pinned sum: $output"
}

# PG_SOURCE at the pinned version: the exact tarball is used, a changed one refused.
run "$work/home1" PG_SOURCE="$work/good/$pg_orig_tarball"
[ "$status" -eq 0 ] || fail "the pinned tarball through PG_SOURCE was refused: $output"
grep -q "verified against the pin" <<<"$output" || fail "no verification named: $output"
ok
run "$work/home1" PG_SOURCE="$work/bad/postgresql-$pg_version.tar.bz2"
expect_refused "a changed tarball through PG_SOURCE"
grep -q "refusing PG_SOURCE" <<<"$output" || fail "PG_SOURCE refusal not said: $output"
ok

# The local mirror: a changed copy is refused, and with no other source the
# error lists every step and says how to set PG_SOURCE.
run "$work/home2" QUIRE_PG_SOURCE_DIR="$work/bad"
expect_refused "a changed tarball in the mirror"
for step in "cache:" "mirror:" "QUIRE_PG_SOURCE_OFFLINE" "PG_SOURCE="; do
    grep -qF "$step" <<<"$output" || fail "the final error does not mention $step: $output"
done
[ ! -e "$work/home2/src/$pg_orig_tarball" ] || fail "a refused tarball reached the cache"
ok

# A good mirror fills the cache; the next run takes it from the cache.
run "$work/home3" QUIRE_PG_SOURCE_DIR="$work/good"
[ "$status" -eq 0 ] || fail "the pinned tarball in the mirror was refused: $output"
cmp -s "$work/home3/src/$pg_orig_tarball" "$pinned" || fail "the cache does not hold the pinned tarball"
ok
run "$work/home3"
[ "$status" -eq 0 ] || fail "the cached tarball was not used: $output"
ok

# A cached copy that went bad is refused, removed and replaced from the mirror.
cp "$work/bad/postgresql-$pg_version.tar.bz2" "$work/home3/src/$pg_orig_tarball"
run "$work/home3" QUIRE_PG_SOURCE_DIR="$work/good"
[ "$status" -eq 0 ] || fail "a corrupt cache was not repaired from the mirror: $output"
grep -qF "$bad_sum" <<<"$output" || fail "the corrupt cache's sum was not reported: $output"
cmp -s "$work/home3/src/$pg_orig_tarball" "$pinned" || fail "the corrupt cached copy was not replaced"
ok

# Another release through PG_SOURCE: used, with a warning; a non-17 refused.
mkdir -p "$work/fake/postgresql-17.99" "$work/fake/postgresql-16.9"
echo fake >"$work/fake/postgresql-17.99/README"
echo fake >"$work/fake/postgresql-16.9/README"
tar -cjf "$work/fake/other-17.tar.bz2" -C "$work/fake" postgresql-17.99
tar -cjf "$work/fake/other-16.tar.bz2" -C "$work/fake" postgresql-16.9
run "$work/home4" PG_SOURCE="$work/fake/other-17.tar.bz2"
[ "$status" -eq 0 ] || fail "another 17.x release through PG_SOURCE was refused: $output"
grep -q "warning: PG_SOURCE holds Postgres 17.99, not the pinned release $pg_version" <<<"$output" ||
    fail "no warning for a release other than the pin: $output"
ok
run "$work/home4" PG_SOURCE="$work/fake/other-16.tar.bz2"
[ "$status" -ne 0 ] && grep -q "Quire builds Postgres 17" <<<"$output" || fail "a Postgres 16 tarball was not refused: $output"
ok
run "$work/home4" PG_SOURCE="$work/fake/postgresql-17.99/README"
[ "$status" -ne 0 ] && grep -q "not a Postgres source tarball" <<<"$output" || fail "a non-tarball was not refused: $output"
ok

echo "postgres/tests/source_pin.sh: $pass checks passed (pinned Postgres $pg_version, SHA-256 $pg_orig_sha256)"
