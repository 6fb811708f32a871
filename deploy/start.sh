#!/usr/bin/env bash
# Builds kvs (installing what it needs) and starts a node on config.yaml:
# one kvs-router that spawns a kvs-node worker per shard.
#   deploy/start.sh [CONFIG]
# CONFIG (default: the repository's config.yaml) is taken relative to the
# directory you run this from; the node runs in the repository's top
# directory, so the shipped config's data_dir ./data is <repository>/data.
# Runs in the foreground; Ctrl-C (SIGINT) or SIGTERM stops it cleanly.
# Refuses (exit 1, before building) while a node runs on CONFIG's data_dir,
# or when it cannot tell (flock fails); exit 2 for a config kvs refuses.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
config=${1:-"$top/config.yaml"}
# Checked before the build, which can take minutes, and made absolute
# before the cd below.
if [ ! -f "$config" ] || [ ! -r "$config" ]; then
    echo "start.sh: $config: not a readable file" >&2
    exit 2
fi
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")

router="$top/build/kvs-router"
built=0
build() {
    "$top/deploy/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=Release
    built=1
}

# The config's data_dir, as kvs's own config loader reads it (kvs-router
# --print data_dir; relative to the node's working directory, $top). A
# config the loader refuses stops here, with its file:line. Sets $data_dir;
# returns 3 when the binary cannot answer (not built yet, or built before
# it had --print).
ask_data_dir() {
    local out err rc=0
    [ -x "$router" ] || return 3
    # (called in an `if`: set -e does not stop a failed mktemp here)
    err=$(mktemp) || {
        echo "start.sh: cannot create a temporary file (mktemp failed; is TMPDIR=${TMPDIR:-/tmp} a writable directory?)" >&2
        exit 2
    }
    out=$(cd "$top" && "$router" --config "$config" --print data_dir 2>"$err") || rc=$?
    if [ "$rc" -eq 2 ] && grep -q '^usage:' "$err"; then
        rm -f "$err"
        return 3 # an older kvs-router, without --print
    fi
    if [ "$rc" -ne 0 ]; then
        cat "$err" >&2
        rm -f "$err"
        echo "start.sh: $config: kvs-router could not load it (exit $rc); fix it and run again" >&2
        exit 2
    fi
    rm -f "$err"
    case $out in
    /*) data_dir=$out ;;
    *) data_dir="$top/${out#./}" ;;
    esac
}

# A node already running on this config (started by an earlier start.sh):
# its master and router processes hold an flock on data_dir/router.lock
# while it runs. Building now would replace the binaries under it, and its
# master would respawn workers from a different build: refuse, before the
# build. Only a lock someone holds counts: a lock file left by a node that
# stopped is free (flock tests it without waiting, and lets go at once).
# When the lock cannot be tested at all (flock missing, or failing for any
# other reason) nothing is built either: a node may be running.
# Without a kvs-router that can answer, it is built first (none can be
# running from it), then asked.
if ! ask_data_dir; then
    build
    ask_data_dir || {
        echo "start.sh: $router --print data_dir did not answer after the build" >&2
        exit 2
    }
fi
lock="$data_dir/router.lock"
if [ -e "$lock" ]; then
    held=0
    why=$(flock -n -E 75 "$lock" true 2>&1) || held=$?
    if [ "$held" -eq 75 ]; then
        echo "start.sh: a kvs node is already running on $config (it holds $lock):" \
            "stop it first (Ctrl-C where it runs, or SIGTERM to its kvs-router);" \
            "building now would replace the binaries it restarts its workers from" >&2
        exit 1
    fi
    if [ "$held" -ne 0 ]; then
        echo "start.sh: cannot tell whether a node holds $lock: flock failed (exit $held)${why:+: $why};" \
            "not building or starting (install util-linux's flock, or check the file)" >&2
        exit 1
    fi
fi

[ "$built" -eq 1 ] || build
cd "$top"
exec "$router" --config "$config"
