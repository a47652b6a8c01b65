#!/usr/bin/env bash
# Installs moto, an S3-compatible server written in Python, into a virtual
# environment in the cache (once per moto version and Python), and prints
# the path of its server program. Tests start it on a loopback port through
# quire_cluster::S3Server, which runs this script; `make test` runs it too.
#
#   cluster/moto.sh
#
# moto 5.2.5 answers a PUT with If-None-Match: * on an existing object with
# 412 Precondition Failed (also on completing a multipart upload), which is
# what generation claims need (checked when this version was pinned).
set -euo pipefail
moto_version=5.2.5
home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
cache=${QUIRE_PG_HOME:-${XDG_CACHE_HOME:-$home/.cache}/quire}
log() { echo "cluster/moto.sh: $*" >&2; }

python=$(command -v python3) || { log "error: python3 is needed for moto"; exit 1; }
python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=$cache/moto-$moto_version-py$python_version
server=$venv/bin/moto_server
if [ -f "$venv/.complete" ]; then
    echo "$server"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$venv.lock"
if ! flock -n 9; then
    log "another checkout is installing moto; waiting for it"
    flock 9
fi
if [ -f "$venv/.complete" ]; then
    echo "$server"
    exit 0
fi

rm -rf "$venv"
if ! "$python" -m venv "$venv" >&2; then
    # Debian's python3 keeps venv (and ensurepip) in a package of its own.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing python3-venv"
        apt-get install -y -q python3-venv >&2 || { apt-get update -q >&2 && apt-get install -y -q python3-venv >&2; }
        rm -rf "$venv"
        "$python" -m venv "$venv" >&2
    else
        log "error: $python cannot create a virtual environment (install python3-venv)"
        exit 1
    fi
fi
log "installing moto[server]==$moto_version into $venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version" >&2
"$server" --help >/dev/null
touch "$venv/.complete"
echo "$server"
