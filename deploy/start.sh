#!/usr/bin/env bash
# Builds kvs (installing what it needs) and starts a node on config.yaml:
# one kvs-router that spawns a kvs-node worker per shard.
#   deploy/start.sh [CONFIG]
# Runs in the foreground; Ctrl-C (SIGINT) or SIGTERM stops it cleanly.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
config=${1:-"$top/config.yaml"}
"$top/deploy/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=Release
cd "$top"
exec "$top/build/kvs-router" --config "$config"
