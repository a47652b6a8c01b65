#!/usr/bin/env bash
# Builds Postgres 17 with Quire's patch series into a cache outside the repo,
# once per (source tarball, patch series, configure flags), and prints the
# install prefix.
#
#   postgres/build.sh                build if the cache lacks it; print the prefix
#   postgres/build.sh --prefix       same (the form the Makefile uses)
#   postgres/build.sh --source-only  obtain and check the source tarball only;
#                                    print its path
#
# The release is pinned in postgres/source.pin (version, Debian's orig
# tarball, its SHA-256); postgres/source.sh says where the tarball is looked
# for and checks it. Environment:
#   QUIRE_PG_HOME        cache root (default ~/.cache/quire)
#   PG_SOURCE            a postgresql-17.x tarball to build instead (checked
#                        against the pin when it is the pinned version)
#   QUIRE_PG_SOURCE_DIR  a directory holding the pinned tarball
#   QUIRE_PG_USER        unprivileged user that owns the build and runs
#                        Postgres when this script runs as root (default quire)
#
# Layout of the cache:
#   $QUIRE_PG_HOME/src/postgresql-17_17.x.orig.tar.bz2  pinned source, checked
#   $QUIRE_PG_HOME/pg-17.x-<key>/build/             patched, configured tree
#   $QUIRE_PG_HOME/pg-17.x-<key>/install/           what tests run
#   $QUIRE_PG_HOME/pg-17.x-<key>/install/.complete  written last: a build
#                                                  without it is redone
#   $QUIRE_PG_HOME/pg-17.x-<key>.lock               held while building
# (postgres/extensions.sh adds Quire's extensions in a copy of install/.)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$here")
# shellcheck source=postgres/lib.sh
. "$here/lib.sh"
# shellcheck source=postgres/source.sh
. "$here/source.sh"

mode=prefix
case "${1:---prefix}" in
--prefix) ;;
--source-only) mode=source ;;
*) die "usage: postgres/build.sh [--prefix | --source-only]" ;;
esac

configure_flags=(--enable-depend --enable-debug --with-lz4 --with-zstd --with-icu)
build_deps_debian=(build-essential patch bison flex perl pkg-config libreadline-dev zlib1g-dev
    liblz4-dev libzstd-dev libicu-dev ccache acl)

install_build_deps() {
    local missing=()
    for tool in gcc make bison flex perl pkg-config patch; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    for lib in liblz4 libzstd icu-uc readline zlib; do
        pkg-config --exists "$lib" 2>/dev/null || missing+=("$lib (development files)")
    done
    $as_root && ! command -v setfacl >/dev/null && missing+=(setfacl)
    [ ${#missing[@]} -eq 0 ] && return 0
    if command -v apt-get >/dev/null && $as_root; then
        log "installing build dependencies: ${build_deps_debian[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || die "apt-get update failed"
        apt-get install -y -qq "${build_deps_debian[@]}" >&2 || die "apt-get install failed"
    else
        die "missing build dependencies: ${missing[*]}; install a C compiler, make, bison, flex, perl, pkg-config and the development files of lz4, zstd, ICU, readline and zlib"
    fi
}

# The pinned release's identity is known without reading the tarball, so a
# complete build is found without the source (or the network); a tarball the
# user names is identified by its content.
if [ -n "${PG_SOURCE:-}" ]; then
    source_from_user
else
    source_version=$pg_version
    source_sha256=$pg_orig_sha256
fi

if [ "$mode" = source ]; then
    [ -n "${PG_SOURCE:-}" ] || resolve_source
    log "source: Postgres $source_version, $source_tarball, SHA-256 $source_sha256$( [ "$source_version" = "$pg_version" ] && echo " verified against the pin")"
    echo "$source_tarball"
    exit 0
fi

# The key covers everything that changes the binaries: the source tarball,
# the patches and the configure flags.
patch_hash=$( (echo "$source_sha256"; cat "$here"/patches/*.patch; echo "${configure_flags[*]}") |
    sha256sum | cut -c1-16)
key_dir=$pg_home/pg-$source_version-$patch_hash
prefix=$key_dir/install

exit_if_complete "$prefix"
mkdir -p "$pg_home"
# One build of a key at a time, across checkouts: the second waits, then
# finds the first one's build complete.
lock_or_wait "$key_dir.lock" "another build of $key_dir is running"
exit_if_complete "$prefix"

[ -n "${PG_SOURCE:-}" ] || resolve_source
log "source: Postgres $source_version, $source_tarball, SHA-256 $source_sha256$( [ "$source_version" = "$pg_version" ] && echo " verified against the pin")"
install_build_deps
ensure_pg_user
started=$(date +%s)
log "building Postgres $source_version with patches $patch_hash into $key_dir"
rm -rf "$key_dir"
mkdir -p "$key_dir"
$as_root && chown "$pg_user:" "$key_dir"
as_pg_user tar -xf "$source_tarball" -C "$key_dir"
as_pg_user mv "$key_dir/postgresql-$source_version" "$key_dir/build"
for patch in "$here"/patches/*.patch; do
    log "applying $(basename "$patch")"
    as_pg_user patch -d "$key_dir/build" -p1 --forward --quiet <"$patch" ||
        die "$(basename "$patch") does not apply to Postgres $source_version"
done

# ccache keyed on paths relative to the build directory, so that a new patch
# hash (a new directory) still hits for every file the patches do not touch.
build_env=(CC=gcc)
if command -v ccache >/dev/null; then
    build_env=(CC="ccache gcc" CCACHE_DIR="$pg_home/ccache" CCACHE_BASEDIR="$key_dir"
        CCACHE_NOHASHDIR=1)
    mkdir -p "$pg_home/ccache"
    $as_root && chown -R "$pg_user:" "$pg_home/ccache"
fi
jobs=$(nproc)
(
    cd "$key_dir/build"
    as_pg_user env "${build_env[@]}" ./configure --prefix="$prefix" "${configure_flags[@]}" \
        >"$key_dir/configure.log" 2>&1 || die "configure failed: see $key_dir/configure.log"
    as_pg_user env "${build_env[@]}" make -j"$jobs" -s world-bin >"$key_dir/build.log" 2>&1 ||
        die "make world-bin failed: see $key_dir/build.log"
    as_pg_user make -s install-world-bin >>"$key_dir/build.log" 2>&1 ||
        die "make install-world-bin failed: see $key_dir/build.log"
)
as_pg_user touch "$prefix/.complete"
log "built Postgres $source_version in $(($(date +%s) - started)) s"

# Keep the builds_max most recently used builds; beyond them, remove a build
# only when no checkout has asked for it in builds_idle_days (every make
# target does, through this script) and nobody holds its lock. Each is about
# half a GiB.
builds_max=4
builds_idle_days=7
ls -1td "$pg_home"/pg-17.*/install/.complete 2>/dev/null | tail -n +$((builds_max + 1)) |
    while read -r stale; do
        [ -n "$(find "$stale" -mtime +"$builds_idle_days")" ] || continue
        stale_dir=$(dirname "$(dirname "$stale")")
        (
            exec 8>"$stale_dir.lock"
            flock -n 8 || exit 0
            log "removing $stale_dir, unused for over $builds_idle_days days"
            rm -rf "$stale_dir"
        )
    done || true
echo "$prefix"
