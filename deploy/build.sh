#!/usr/bin/env bash
# Configures and builds kvs into a build directory (default: build/).
#   deploy/build.sh [BUILD_DIR] [extra cmake args...]
# Installs missing build dependencies first (deploy/install-deps.sh).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-"$top/build"}
shift || true
"$top/deploy/install-deps.sh" ${KVS_DEPS_FLAGS:-}
cmake -S "$top" -B "$dir" "$@" >/dev/null
cmake --build "$dir" -j "$(nproc)"
