# Obtains the Postgres source tarball that postgres/build.sh builds, and
# checks it against the pin (postgres/source.pin). Sourced by build.sh after
# lib.sh; `resolve_source` sets source_tarball, source_version and
# source_sha256.
#
# Where the source comes from, in order; a step that fails says why and the
# next one is tried:
#   1. PG_SOURCE, a tarball the user names. At the pinned version its SHA-256
#      must equal the pin (anything else is refused, naming both sums); at
#      another version it is used with a warning.
#   2. The cache: $QUIRE_PG_HOME/src/<pinned orig tarball>.
#   3. A local mirror directory: QUIRE_PG_SOURCE_DIR, or when that is unset
#      and ../shared/postgres/ exists beside the checkout, that one.
#   4. Debian's pool at the pinned path, by a plain HTTP GET (curl, wget or
#      apt's own apt-helper), from QUIRE_DEBIAN_MIRROR
#      (default http://deb.debian.org/debian).
#   5. `apt-get source postgresql-17=<pinned Debian version>` through a
#      private sources list and lists directory (nothing is added to the
#      machine's apt configuration).
# QUIRE_PG_SOURCE_OFFLINE=1 skips steps 4 and 5 (the tests use it).
# shellcheck shell=bash

# shellcheck source=postgres/source.pin
. "$here/source.pin"

debian_mirror=${QUIRE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# The version named by a tarball's top directory (postgresql-17.x/), or
# nothing when the file is not a readable tarball.
tarball_version() {
    local first
    first=$({ tar -tf "$1" 2>/dev/null || true; } | head -n 1)
    first=${first%%/*}
    [[ "$first" =~ ^postgresql-([0-9]+\.[0-9]+)$ ]] && echo "${BASH_REMATCH[1]}"
    return 0
}

# Prints nothing and succeeds when $1 is the pinned tarball; otherwise prints
# why not and fails.
check_pinned() {
    local file=$1 sum
    sum=$(sha256_of "$file")
    if [ "$sum" != "$pg_orig_sha256" ]; then
        echo "$file has SHA-256 $sum, but the pin (postgres/source.pin, Postgres $pg_version) is $pg_orig_sha256"
        return 1
    fi
}

tried=()
step_failed() {
    tried+=("$1: $2")
    log "source: $1: $2; trying the next source"
}

# Moves a verified download into the cache under the pinned name.
store_in_cache() {
    mkdir -p "$pg_home/src"
    chmod 644 "$1"
    mv -f "$1" "$pg_home/src/$pg_orig_tarball"
    source_tarball=$pg_home/src/$pg_orig_tarball
}

# A fresh temporary file in the cache's source directory (same filesystem,
# so storing it is an atomic rename that a concurrent build never half-sees).
download_target() {
    mkdir -p "$pg_home/src"
    mktemp "$pg_home/src/.download.XXXXXX"
}

source_from_user() {
    [ -f "$PG_SOURCE" ] || die "PG_SOURCE=$PG_SOURCE is not a file"
    local version
    version=$(tarball_version "$PG_SOURCE")
    [ -n "$version" ] || die "PG_SOURCE=$PG_SOURCE is not a Postgres source tarball (no postgresql-X.Y/ directory in it)"
    [[ "$version" =~ ^17\.[0-9]+$ ]] || die "PG_SOURCE=$PG_SOURCE holds Postgres $version; Quire builds Postgres 17"
    source_sha256=$(sha256_of "$PG_SOURCE")
    if [ "$version" = "$pg_version" ]; then
        local why
        why=$(check_pinned "$PG_SOURCE") ||
            die "refusing PG_SOURCE: $why. A tarball of the pinned release must be byte-identical to it."
    else
        log "warning: PG_SOURCE holds Postgres $version, not the pinned release $pg_version:" \
            "the patches, the WAL oracles and the redo expectations were checked against $pg_version only"
    fi
    source_tarball=$PG_SOURCE
    source_version=$version
}

source_from_cache() {
    local cached=$pg_home/src/$pg_orig_tarball why
    [ -f "$cached" ] || { step_failed cache "no $cached"; return 1; }
    if ! why=$(check_pinned "$cached"); then
        rm -f "$cached"
        step_failed cache "$why (removed it)"
        return 1
    fi
    source_tarball=$cached
}

mirror_dir() {
    if [ -n "${QUIRE_PG_SOURCE_DIR:-}" ]; then
        echo "$QUIRE_PG_SOURCE_DIR"
    elif [ -d "$repo_root/../shared/postgres" ]; then
        (cd "$repo_root/../shared/postgres" && pwd)
    fi
}

source_from_mirror() {
    local dir candidate why
    dir=$(mirror_dir)
    [ -n "$dir" ] || { step_failed mirror "QUIRE_PG_SOURCE_DIR is unset and there is no ../shared/postgres beside the checkout"; return 1; }
    [ -d "$dir" ] || { step_failed mirror "$dir is not a directory"; return 1; }
    # Debian's name for the file, or upstream's: the content is the same.
    for candidate in "$dir/$pg_orig_tarball" "$dir/postgresql-$pg_version.tar.bz2"; do
        [ -f "$candidate" ] || continue
        if ! why=$(check_pinned "$candidate"); then
            step_failed mirror "$why"
            return 1
        fi
        local tmp
        tmp=$(download_target)
        cp "$candidate" "$tmp"
        # Checked again after the copy: the cache must hold what was checked.
        if ! why=$(check_pinned "$tmp"); then
            rm -f "$tmp"
            step_failed mirror "the copy into the cache differs: $why"
            return 1
        fi
        store_in_cache "$tmp"
        log "source: copied $candidate into the cache"
        return 0
    done
    step_failed mirror "neither $pg_orig_tarball nor postgresql-$pg_version.tar.bz2 in $dir"
    return 1
}

http_get() {
    local url=$1 out=$2
    if command -v curl >/dev/null; then
        curl -fsSL --retry 2 --connect-timeout 20 -o "$out" "$url"
    elif command -v wget >/dev/null; then
        wget -q --tries=3 --timeout=20 -O "$out" "$url"
    elif [ -x /usr/lib/apt/apt-helper ]; then
        /usr/lib/apt/apt-helper download-file "$url" "$out" >&2
    else
        echo "no curl, wget or apt-helper to fetch with" >&2
        return 1
    fi
}

source_from_debian_pool() {
    local url=$debian_mirror/$pg_debian_pool_path/$pg_orig_tarball tmp why
    tmp=$(download_target)
    log "source: fetching $url"
    if ! http_get "$url" "$tmp" 2>"$tmp.err"; then
        step_failed "Debian pool" "GET $url failed: $(tr '\n' ' ' <"$tmp.err")"
        rm -f "$tmp" "$tmp.err"
        return 1
    fi
    rm -f "$tmp.err"
    if ! why=$(check_pinned "$tmp"); then
        rm -f "$tmp"
        step_failed "Debian pool" "downloaded $url, but $why"
        return 1
    fi
    store_in_cache "$tmp"
}

# The Debian archive keyring the private sources list names: present on
# Debian; on Ubuntu the debian-archive-keyring package provides it.
debian_keyring=/usr/share/keyrings/debian-archive-keyring.gpg

source_from_apt() {
    command -v apt-get >/dev/null || { step_failed "apt-get source" "no apt-get here"; return 1; }
    if [ ! -f "$debian_keyring" ] && $as_root; then
        log "source: installing debian-archive-keyring for the private sources list"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >&2 || true
    fi
    [ -f "$debian_keyring" ] || { step_failed "apt-get source" "no $debian_keyring (install debian-archive-keyring)"; return 1; }
    local tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/download"
    cat >"$tmp/debian-src.sources" <<EOF
Types: deb-src
URIs: $debian_mirror
Suites: trixie trixie-updates
Components: main
Signed-By: $debian_keyring

Types: deb-src
URIs: http://security.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: $debian_keyring
EOF
    local apt_opts=(-o "Dir::Etc::sourcelist=$tmp/debian-src.sources" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$tmp/lists" -o "APT::Sandbox::User=root")
    log "source: apt-get source postgresql-17=$pg_debian_version"
    if ! apt-get "${apt_opts[@]}" update -qq >"$tmp/apt.log" 2>&1; then
        step_failed "apt-get source" "apt-get update with the private sources list failed: $(tail -n 3 "$tmp/apt.log" | tr '\n' ' ')"
        rm -rf "$tmp"
        return 1
    fi
    if ! (cd "$tmp/download" && apt-get "${apt_opts[@]}" source --download-only \
        "postgresql-17=$pg_debian_version" >"$tmp/apt.log" 2>&1); then
        step_failed "apt-get source" "apt-get source postgresql-17=$pg_debian_version failed: $(tail -n 3 "$tmp/apt.log" | tr '\n' ' ')"
        rm -rf "$tmp"
        return 1
    fi
    local orig=$tmp/download/$pg_orig_tarball why
    if [ ! -f "$orig" ]; then
        step_failed "apt-get source" "no $pg_orig_tarball in the source package"
        rm -rf "$tmp"
        return 1
    fi
    if ! why=$(check_pinned "$orig"); then
        step_failed "apt-get source" "$why"
        rm -rf "$tmp"
        return 1
    fi
    local target
    target=$(download_target)
    mv "$orig" "$target"
    rm -rf "$tmp"
    store_in_cache "$target"
}

resolve_source() {
    if [ -n "${PG_SOURCE:-}" ]; then
        source_from_user
        log "source: PG_SOURCE $source_tarball (Postgres $source_version, SHA-256 $source_sha256)"
        return
    fi
    local steps=(source_from_cache source_from_mirror)
    if [ "${QUIRE_PG_SOURCE_OFFLINE:-0}" = 1 ]; then
        tried+=("Debian pool and apt-get source: skipped (QUIRE_PG_SOURCE_OFFLINE=1)")
    else
        steps+=(source_from_debian_pool source_from_apt)
    fi
    local step
    for step in "${steps[@]}"; do
        if "$step"; then
            source_version=$pg_version
            source_sha256=$pg_orig_sha256
            return
        fi
    done
    local all
    all=$(printf '\n    %s' "${tried[@]}")
    die "could not obtain the pinned Postgres $pg_version source ($pg_orig_tarball, SHA-256 $pg_orig_sha256). Tried:$all
  Download it yourself and set PG_SOURCE=/path/to/$pg_orig_tarball (or QUIRE_PG_SOURCE_DIR to a directory holding it)."
}
