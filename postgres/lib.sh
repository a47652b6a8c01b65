# Shared by postgres/build.sh, extensions.sh and regress.sh: the cache location and
# the unprivileged user that owns the build and runs Postgres.
# shellcheck shell=bash

home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
pg_home=${QUIRE_PG_HOME:-${XDG_CACHE_HOME:-$home/.cache}/quire}
pg_user=${QUIRE_PG_USER:-quire}
script_name=postgres/$(basename "$0")

log() { echo "$script_name: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Postgres' makefiles build their generated headers first only in a top-level
# make (MAKELEVEL 0); run from our Makefile they would inherit a deeper level
# and race on a cold build, so every make here starts afresh.
unset MAKELEVEL MAKEFLAGS MFLAGS

# Takes the lock file $1 on descriptor 9 for the rest of the script,
# waiting (and saying so, with $2 as what is being waited for) when another
# checkout holds it.
lock_or_wait() {
    exec 9>"$1"
    if ! flock -n 9; then
        log "$2; waiting for it"
        flock 9
    fi
}

# Prints $1's install prefix and exits when its build is complete (marking
# it used, for pruning); returns otherwise.
exit_if_complete() {
    if [ -f "$1/.complete" ]; then
        touch "$1/.complete"
        echo "$1"
        exit 0
    fi
}

as_root=false
[ "$(id -u)" = 0 ] && as_root=true

# The unprivileged user that builds and runs Postgres when we are root
# (Postgres refuses to run as root), with search permission on every parent
# of the cache so it can reach the binaries (granted by an ACL entry for that
# user alone, not by opening the directory to everybody).
ensure_pg_user() {
    $as_root || return 0
    if ! id -u "$pg_user" >/dev/null 2>&1; then
        log "creating unprivileged user $pg_user"
        # Another checkout may create it at the same moment: only a user
        # that still does not exist afterwards is an error.
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$pg_user" 2>/dev/null ||
            id -u "$pg_user" >/dev/null 2>&1 || die "could not create user $pg_user"
    fi
    mkdir -p "$pg_home"
    local dir=$pg_home
    while [ "$dir" != / ]; do
        if ! runuser -u "$pg_user" -- test -x "$dir" 2>/dev/null; then
            setfacl -m "u:$pg_user:x" "$dir"
        fi
        dir=$(dirname "$dir")
    done
    chown "$pg_user:" "$pg_home"
}

as_pg_user() {
    if $as_root; then
        runuser -u "$pg_user" -- env HOME="$pg_home" "$@"
    else
        "$@"
    fi
}

