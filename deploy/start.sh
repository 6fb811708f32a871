#!/usr/bin/env bash
# Builds kvs (installing what it needs) and starts a node on config.yaml:
# one kvs-router that spawns a kvs-node worker per shard.
#   deploy/start.sh [CONFIG]
# CONFIG (default: the repository's config.yaml) is taken relative to the
# directory you run this from; the node runs in the repository's top
# directory, so the shipped config's data_dir ./data is <repository>/data.
# Runs in the foreground; Ctrl-C (SIGINT) or SIGTERM stops it cleanly.
# Refuses (exit 1, before building) while a node runs on CONFIG's data_dir.
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

# The config's data_dir (its top-level `data_dir:` line; kvs's default
# ./data without one), relative to the node's working directory, $top.
data_dir() {
    local v
    v=$(sed -n -E 's/^data_dir:[[:space:]]*//p' "$config" | tail -n 1)
    case $v in
    \"*) v=${v#\"}; v=${v%%\"*} ;;
    \'*) v=${v#\'}; v=${v%%\'*} ;;
    *) v=$(printf '%s' "$v" | sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]+$//') ;;
    esac
    v=${v:-./data}
    v=${v#./}
    case $v in
    /*) printf '%s\n' "$v" ;;
    *) printf '%s\n' "$top/$v" ;;
    esac
}

# A node already running on this config (started by an earlier start.sh):
# its master and router processes hold an flock on data_dir/router.lock
# while it runs. Building now would replace the binaries under it, and its
# master would respawn workers from a different build: refuse, before the
# build. Only a lock someone holds counts: a lock file left by a node that
# stopped is free (flock tests it without waiting, and lets go at once).
lock="$(data_dir)/router.lock"
if [ -e "$lock" ]; then
    held=0
    flock -n -E 75 "$lock" true 2>/dev/null || held=$?
    if [ "$held" -eq 75 ]; then
        echo "start.sh: a kvs node is already running on $config (it holds $lock):" \
            "stop it first (Ctrl-C where it runs, or SIGTERM to its kvs-router);" \
            "building now would replace the binaries it restarts its workers from" >&2
        exit 1
    fi
fi

"$top/deploy/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=Release
cd "$top"
exec "$top/build/kvs-router" --config "$config"
