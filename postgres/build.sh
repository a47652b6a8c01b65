#!/usr/bin/env bash
# Builds Postgres 17 with Quire's patch series into a cache outside the repo,
# once per (Postgres version, patch hash), and prints the install prefix.
#
#   postgres/build.sh            build if the cache lacks it; print the prefix
#   postgres/build.sh --prefix   same (the form the Makefile uses)
#
# Environment:
#   QUIRE_PG_HOME  cache root (default ~/.cache/quire)
#   PG_SOURCE      a postgresql-17.x.tar.bz2 (or .tar.gz) to use instead of
#                  Debian's source package
#   QUIRE_PG_USER  unprivileged user that owns the build and runs Postgres
#                  when this script runs as root (default quire)
#
# Source: PG_SOURCE if set; else the newest tarball already in the cache;
# else Debian's postgresql-17 source package from trixie, fetched with apt
# through a private sources list and lists directory, so nothing is added to
# the machine's apt configuration. Debian's orig tarball is the pristine
# upstream release.
#
# Layout of the cache:
#   $QUIRE_PG_HOME/src/postgresql-17.x.tar.bz2       pristine sources
#   $QUIRE_PG_HOME/pg-17.x-<hash>/build/             patched, configured tree
#   $QUIRE_PG_HOME/pg-17.x-<hash>/install/           what tests run
#   $QUIRE_PG_HOME/pg-17.x-<hash>/install/.complete  written last: a build
#                                                   without it is redone
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=postgres/lib.sh
. "$here/lib.sh"
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

fetch_debian_source() {
    command -v apt-get >/dev/null ||
        die "no PG_SOURCE given and no apt-get here: set PG_SOURCE=/path/postgresql-17.x.tar.bz2"
    local tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/download"
    cat >"$tmp/trixie-src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    local apt_opts=(-o "Dir::Etc::sourcelist=$tmp/trixie-src.sources" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$tmp/lists" -o "APT::Sandbox::User=root")
    log "fetching postgresql-17 source from Debian trixie"
    apt-get "${apt_opts[@]}" update -qq >&2 || { rm -rf "$tmp"; die "apt-get update (deb-src trixie) failed"; }
    (cd "$tmp/download" && apt-get "${apt_opts[@]}" source --download-only postgresql-17 >&2) ||
        { rm -rf "$tmp"; die "apt-get source postgresql-17 failed"; }
    local orig
    orig=$(ls "$tmp"/download/postgresql-17_17.*.orig.tar.* 2>/dev/null | head -n 1)
    [ -n "$orig" ] || { rm -rf "$tmp"; die "no orig tarball in Debian's source package"; }
    local version
    version=$(basename "$orig" | sed -E 's/^postgresql-17_(17\.[0-9]+)\.orig\.tar\..*$/\1/')
    mkdir -p "$pg_home/src"
    mv "$orig" "$pg_home/src/postgresql-$version.tar.${orig##*.tar.}"
    rm -rf "$tmp"
}

find_source() {
    if [ -n "${PG_SOURCE:-}" ]; then
        [ -f "$PG_SOURCE" ] || die "PG_SOURCE=$PG_SOURCE is not a file"
        echo "$PG_SOURCE"
        return
    fi
    local cached
    cached=$(ls "$pg_home"/src/postgresql-17.*.tar.* 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$cached" ]; then
        fetch_debian_source
        cached=$(ls "$pg_home"/src/postgresql-17.*.tar.* | sort -V | tail -n 1)
    fi
    echo "$cached"
}

source_tarball=$(find_source)
pg_version=$(basename "$source_tarball" | sed -E 's/^postgresql-(17\.[0-9]+)\.tar\..*$/\1/')
[[ "$pg_version" =~ ^17\.[0-9]+$ ]] || die "$source_tarball is not a postgresql-17.x tarball"

# The key covers everything that changes the binaries: the patches and the
# configure flags.
patch_hash=$( (cat "$here"/patches/*.patch; echo "${configure_flags[*]}") | sha256sum | cut -c1-16)
key_dir=$pg_home/pg-$pg_version-$patch_hash
prefix=$key_dir/install

if [ -f "$prefix/.complete" ]; then
    touch "$prefix/.complete" # marks the build as used, for pruning below
    echo "$prefix"
    exit 0
fi

install_build_deps
ensure_pg_user
started=$(date +%s)
log "building Postgres $pg_version with patches $patch_hash into $key_dir"
rm -rf "$key_dir"
mkdir -p "$key_dir"
$as_root && chown "$pg_user:" "$key_dir"
as_pg_user tar -xf "$source_tarball" -C "$key_dir"
as_pg_user mv "$key_dir/postgresql-$pg_version" "$key_dir/build"
for patch in "$here"/patches/*.patch; do
    log "applying $(basename "$patch")"
    as_pg_user patch -d "$key_dir/build" -p1 --forward --quiet <"$patch" ||
        die "$(basename "$patch") does not apply to Postgres $pg_version"
done

# ccache keyed on paths relative to the build directory, so that a new patch
# hash (a new directory) still hits for every file the patches do not touch.
build_env=(CC=gcc)
if command -v ccache >/dev/null; then
    build_env=(CC="ccache gcc" CCACHE_DIR="$pg_home/ccache" CCACHE_BASEDIR="$key_dir"
        CCACHE_NOHASHDIR=1)
    mkdir -p "$pg_home/ccache"
    $as_root && chown "$pg_user:" "$pg_home/ccache"
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
log "built Postgres $pg_version in $(($(date +%s) - started)) s"

# Keep the builds_max most recently used builds (other checkouts may use
# older patch series); each is about half a GiB.
builds_max=4
ls -1td "$pg_home"/pg-17.*/install/.complete 2>/dev/null | tail -n +$((builds_max + 1)) |
    while read -r stale; do
        stale_dir=$(dirname "$(dirname "$stale")")
        log "removing the least recently used build $stale_dir"
        rm -rf "$stale_dir"
    done || true
echo "$prefix"
