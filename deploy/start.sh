#!/usr/bin/env bash
# Builds kvs (installing what it needs) and starts a node on config.yaml:
# one kvs-router that spawns a kvs-node worker per shard.
#   deploy/start.sh [CONFIG]
# CONFIG (default: the repository's config.yaml) is taken relative to the
# directory you run this from; the node runs in the repository's top
# directory, so the shipped config's data_dir ./data is <repository>/data.
# Runs in the foreground; Ctrl-C (SIGINT) or SIGTERM stops it cleanly.
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
"$top/deploy/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=Release
cd "$top"
exec "$top/build/kvs-router" --config "$config"
