#!/usr/bin/env bash
# snapshot.sh: how fast a new replica copies a live peer's environment
# (Snapshot + bootstrap) against a raw `mdb_copy -c` of the same one.
#
#   tests/bench/snapshot.sh [--requests N] [--value-size N] [--repeat N] [--no-build]
#
# Builds a release kvs (build-release/), starts node a (one shard, no
# Kafka) and fills its table `bench` with kvs-bench Hset (--requests,
# default 1,000,000, of --value-size bytes, default 100, over as many
# keys). Then, --repeat times (default 1), alternating:
#   - mdb_copy -c of a's environment while a runs (LMDB's compacted hot
#     copy to a file, what the snapshot's sender runs in its thread);
#   - node b started with a map naming a and b as replicas of the shard:
#     its worker copies a's environment over the worker protocol (chunks
#     on TCP, XXH3-128 checked, written to disk, synced), from its start
#     until its log says "copied shard".
# Prints one table of medians: bytes copied, seconds and MB/s of both, and
# their ratio. Needs lmdb-utils (mdb_copy).
#
# Everything started here is stopped and every temporary file removed on
# exit, also on Ctrl-C or error. Servers listen on 127.0.0.1 only. Every
# wait is bounded.
set -euo pipefail

REQUESTS=1000000
VALUE_SIZE=100
REPEAT=1
BUILD=1
START_TIMEOUT=30 # seconds for a server to answer after start
COPY_TIMEOUT=600 # seconds for one copy

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CMDLINE="$(printf '%q ' "$0" "$@")"
CMDLINE=${CMDLINE% }
while [ $# -gt 0 ]; do
    case "$1" in
    --requests) REQUESTS=${2:?--requests wants a number}; shift 2 ;;
    --value-size) VALUE_SIZE=${2:?--value-size wants a number}; shift 2 ;;
    --repeat) REPEAT=${2:?--repeat wants a number}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "snapshot.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || { echo "snapshot.sh: --requests wants a positive number" >&2; exit 2; }
[[ $VALUE_SIZE =~ ^[1-9][0-9]*$ ]] || { echo "snapshot.sh: --value-size wants a positive number" >&2; exit 2; }
[[ $REPEAT =~ ^[1-9][0-9]?$ ]] || { echo "snapshot.sh: --repeat wants a number from 1 to 99" >&2; exit 2; }
command -v mdb_copy >/dev/null || { echo "snapshot.sh: mdb_copy missing (apt-get install lmdb-utils)" >&2; exit 2; }

cd "$ROOT"
BIN=${KVS_BENCH_BIN:-$ROOT/build-release}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvs-snapshot.XXXXXX")
A_PID=
B_PID=

say() { echo "snapshot: $*" >&2; }
die() { say "$*"; exit 1; }
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"

cleanup() {
    trap - EXIT INT TERM
    stop_pid "$B_PID" 15
    stop_pid "$A_PID" 15
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_kvs() {
    say "building a release kvs in build-release/ (log: build-release/snapshot_build.log)"
    mkdir -p "$BIN"
    if ! { cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release &&
        cmake --build build-release -j --target kvs-router kvs-node kvs-bench kvs-cli; } \
        >"$BIN/snapshot_build.log" 2>&1; then
        tail -n 30 "$BIN/snapshot_build.log" >&2
        die "the release build failed"
    fi
}

# write_config NAME MAP_NODES: node NAME's config with cluster.nodes MAP_NODES
write_config() {
    cat >"$TMP/$1.yaml" <<EOF
data_dir: $TMP/data-$1
node: {name: $1}
cluster:
  shards: 1
  nodes:
$2
router: {listen: "127.0.0.1:$3"}
storage: {sync: none}
log: {level: info}
EOF
}

start_a() {
    A_PORT=$(free_port)
    A_BASE=$(free_port "$A_PORT")
    write_config a "    - {name: a, address: \"127.0.0.1:$A_BASE\", shards: [0]}" "$A_PORT"
    "$BIN/kvs-router" --config "$TMP/a.yaml" >"$TMP/a.log" 2>&1 &
    A_PID=$!
    local i
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        kill -0 "$A_PID" 2>/dev/null || { tail -n 20 "$TMP/a.log" >&2; die "node a exited"; }
        "$BIN/kvs-cli" --port "$A_PORT" --timeout 2 ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "node a did not answer within ${START_TIMEOUT}s"
}

fill_a() {
    say "filling node a: $REQUESTS Hset of $VALUE_SIZE bytes"
    "$BIN/kvs-bench" -p "$A_PORT" -c 50 -P 16 -n "$REQUESTS" -r "$REQUESTS" -d "$VALUE_SIZE" \
        -t hset --table bench -q >/dev/null 2>"$TMP/bench.err" ||
        { cat "$TMP/bench.err" >&2; die "kvs-bench failed"; }
}

now() { date +%s.%N; }

# Sets SECS and BYTES for one mdb_copy -c of a's environment.
raw_copy() {
    rm -rf "$TMP/raw"
    mkdir -p "$TMP/raw"
    local t0
    t0=$(now)
    timeout "$COPY_TIMEOUT" mdb_copy -c "$TMP/data-a/shard-0" "$TMP/raw" || die "mdb_copy failed"
    SECS=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    BYTES=$(stat -c %s "$TMP/raw/data.mdb")
}

# Sets SECS and BYTES for node b's bootstrap from a.
bootstrap_copy() {
    stop_pid "$B_PID" 15
    rm -rf "$TMP/data-b"
    local b_port b_base i t0
    b_port=$(free_port)
    b_base=$(free_port "$b_port")
    write_config b "    - {name: a, address: \"127.0.0.1:$A_BASE\", shards: [0]}
    - {name: b, address: \"127.0.0.1:$b_base\", shards: [0]}" "$b_port"
    : >"$TMP/b.log"
    t0=$(now)
    "$BIN/kvs-router" --config "$TMP/b.yaml" >"$TMP/b.log" 2>&1 &
    B_PID=$!
    for ((i = 0; i < COPY_TIMEOUT * 20; i++)); do
        grep -q "copied shard 0" "$TMP/b.log" && break
        grep -q "snapshot from .* failed\|could send a snapshot" "$TMP/b.log" &&
            { tail -n 20 "$TMP/b.log" >&2; die "node b did not copy a snapshot"; }
        kill -0 "$B_PID" 2>/dev/null || { tail -n 20 "$TMP/b.log" >&2; die "node b exited"; }
        sleep 0.05
    done
    grep -q "copied shard 0" "$TMP/b.log" || die "node b copied nothing within ${COPY_TIMEOUT}s"
    SECS=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    BYTES=$(stat -c %s "$TMP/data-b/shard-0/data.mdb")
}

median() {
    sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'
}

main() {
    echo "command: $CMDLINE"
    [ "$BUILD" = 1 ] && build_kvs
    [ -x "$BIN/kvs-router" ] && [ -x "$BIN/kvs-bench" ] || die "$BIN is missing binaries (run without --no-build)"
    start_a
    fill_a
    echo "kvs: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) release;" \
        "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    local i
    : >"$TMP/raw.s"
    : >"$TMP/boot.s"
    for ((i = 1; i <= REPEAT; i++)); do
        say "mdb_copy -c (run $i of $REPEAT)"
        raw_copy
        echo "$SECS $BYTES" >>"$TMP/raw.s"
        say "bootstrap of node b from node a (run $i of $REPEAT)"
        bootstrap_copy
        echo "$SECS $BYTES" >>"$TMP/boot.s"
    done
    local rs rb bs bb rmb bmb
    rs=$(cut -d' ' -f1 "$TMP/raw.s" | median)
    rb=$(cut -d' ' -f2 "$TMP/raw.s" | median)
    bs=$(cut -d' ' -f1 "$TMP/boot.s" | median)
    bb=$(cut -d' ' -f2 "$TMP/boot.s" | median)
    rmb=$(awk -v b="$rb" -v s="$rs" 'BEGIN { printf "%.1f", b / 1e6 / (s > 0 ? s : 1e-9) }')
    bmb=$(awk -v b="$bb" -v s="$bs" 'BEGIN { printf "%.1f", b / 1e6 / (s > 0 ? s : 1e-9) }')
    echo
    printf '%-28s | %14s | %8s | %8s\n' copy bytes seconds MB/s
    printf -- '-%.0s' {1..66}
    echo
    printf '%-28s | %14s | %8s | %8s\n' "mdb_copy -c (raw)" "$rb" "$rs" "$rmb"
    printf '%-28s | %14s | %8s | %8s\n' "kvs bootstrap (snapshot)" "$bb" "$bs" "$bmb"
    echo "ratio (bootstrap / raw MB/s): $(awk -v a="$bmb" -v b="$rmb" 'BEGIN { printf "%.2f", a / (b > 0 ? b : 1) }')"
    echo "(median of $REPEAT run(s); the bootstrap time includes starting node b)"
}

main
