#!/usr/bin/env bash
# replicas.sh: read throughput through one router with 1 and 2 replicas
# per shard, and the failover time when a replica's node is killed.
#
#   tests/bench/replicas.sh [--shards N] [--requests N] [--repeat N] [--no-build]
#
# Builds a release kvs (build-release/) and starts, on loopback, node a
# (every shard), later node b (every shard too), and node r, a router that
# serves no shard itself, so every read it routes crosses to a replica's
# worker over TCP. kvs-bench runs Hget (50 clients, pipeline 16, 100,000
# keys, none written: every answer is a 404 after the same LMDB lookup a
# hit makes) through r:
#   1 replica:  the map names a (and r);
#   2 replicas: the map names a and b (r restarted with it), so r spreads
#               reads over both.
# --repeat times each (default 1), medians printed. Then failover: a client
# reads through r in a loop, node a (router and workers) is killed with
# SIGKILL, and the script prints the longest read that spanned the kill
# (the time from the kill to the first answer served by b: the retry) and
# whether any read failed.
#
# Everything started here is stopped and every temporary file removed on
# exit, also on Ctrl-C or error. Servers listen on 127.0.0.1 only. Every
# wait and every benchmark run is bounded by a timeout.
set -euo pipefail

SHARDS=2
REQUESTS=500000
REPEAT=1
BUILD=1
START_TIMEOUT=30
RUN_TIMEOUT=600

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CMDLINE="$(printf '%q ' "$0" "$@")"
CMDLINE=${CMDLINE% }
while [ $# -gt 0 ]; do
    case "$1" in
    --shards) SHARDS=${2:?--shards wants a number}; shift 2 ;;
    --requests) REQUESTS=${2:?--requests wants a number}; shift 2 ;;
    --repeat) REPEAT=${2:?--repeat wants a number}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "replicas.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $SHARDS =~ ^[1-9][0-9]?$ ]] || { echo "replicas.sh: --shards wants a number from 1 to 99" >&2; exit 2; }
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || { echo "replicas.sh: --requests wants a positive number" >&2; exit 2; }
[[ $REPEAT =~ ^[1-9][0-9]?$ ]] || { echo "replicas.sh: --repeat wants a number from 1 to 99" >&2; exit 2; }

cd "$ROOT"
BIN=${KVS_BENCH_BIN:-$ROOT/build-release}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvs-replicas.XXXXXX")
A_PID=
B_PID=
R_PID=

say() { echo "replicas: $*" >&2; }
die() { say "$*"; exit 1; }
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"

cleanup() {
    trap - EXIT INT TERM
    stop_pid "$R_PID" 15
    stop_pid "$B_PID" 15
    stop_pid "$A_PID" 15
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_kvs() {
    say "building a release kvs in build-release/ (log: build-release/replicas_build.log)"
    mkdir -p "$BIN"
    if ! { cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release &&
        cmake --build build-release -j --target kvs-router kvs-node kvs-bench kvs-cli kvs_py; } \
        >"$BIN/replicas_build.log" 2>&1; then
        tail -n 30 "$BIN/replicas_build.log" >&2
        die "the release build failed"
    fi
}

ALL=$(seq -s, 0 $((SHARDS - 1)))
A_BASE=$(free_port)
B_BASE=$((A_BASE + SHARDS + 10))
R_BASE=$((B_BASE + SHARDS + 10))

# start NAME NODES_YAML: starts node NAME's router on a fresh port (PORT_NAME).
start() {
    local name=$1 port i pid out
    port=$(free_port)
    cat >"$TMP/$name.yaml" <<EOF
data_dir: $TMP/data-$name
node: {name: $name}
cluster:
  shards: $SHARDS
  nodes:
$2
router: {listen: "127.0.0.1:$port", timeout: 2s}
storage: {sync: none}
log: {level: warn}
EOF
    "$BIN/kvs-router" --config "$TMP/$name.yaml" >>"$TMP/$name.log" 2>&1 &
    pid=$!
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$TMP/$name.log" >&2; die "node $name exited"; }
        # ready once a read of a missing key is answered (not 503)
        out=$("$BIN/kvs-cli" --port "$port" --timeout 2 hget bench probe 2>&1 || true)
        case "$out" in *"(nil)"*) break ;; esac
        sleep 0.1
    done
    case "$out" in *"(nil)"*) ;; *) tail -n 20 "$TMP/$name.log" >&2; die "node $name does not serve: $out" ;; esac
    printf -v "PORT_$name" %s "$port"
    printf -v "PID_$name" %s "$pid"
}

NODE_A="    - {name: a, address: \"127.0.0.1:$A_BASE\", shards: [$ALL]}"
NODE_B="    - {name: b, address: \"127.0.0.1:$B_BASE\", shards: [$ALL]}"
NODE_R="    - {name: r, address: \"127.0.0.1:$R_BASE\", shards: []}"

# Sets OPS for one kvs-bench Hget run through r.
bench() {
    local line
    timeout "$RUN_TIMEOUT" "$BIN/kvs-bench" -p "$PORT_r" -c 50 -P 16 -n "$REQUESTS" -r 100000 \
        -t hget --table bench --json -q >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err" >&2; die "kvs-bench failed"; }
    line=$(head -n 1 "$TMP/out")
    OPS=$(sed -n 's/.*"ops_per_sec":\([0-9.]*\).*/\1/p' <<<"$line")
    [ -n "$OPS" ] || die "cannot parse kvs-bench output: $line"
}

median() {
    sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'
}

failover() {
    PYTHONPATH="$BIN/py:$ROOT/tests/integration" KVS_BUILD_DIR="$BIN" timeout 60 /usr/bin/python3 - \
        "$PORT_r" "$PID_a" <<'PY'
import os, signal, subprocess, sys, time
from kvstest import Client, req_hget
port, router = int(sys.argv[1]), int(sys.argv[2])
kids = subprocess.run(["pgrep", "-P", str(router)], capture_output=True, text=True).stdout.split()
c = Client(("127.0.0.1", port), timeout=10)
fails, spans, t_kill, i = 0, [], None, 0
end = time.monotonic() + 4
while time.monotonic() < end:
    if t_kill is None and time.monotonic() > end - 3:
        for p in [router] + [int(k) for k in kids]:
            os.kill(p, signal.SIGKILL)
        t_kill = time.monotonic()
    t0 = time.monotonic()
    r = c.call(req_hget("bench", b"k%d" % (i % 1000)))
    i += 1
    t1 = time.monotonic()
    if r.status not in (200, 404):
        fails += 1
    elif t_kill is not None and t1 >= t_kill:
        spans.append(t1 - max(t0, t_kill))
print("%.1f %d %d" % (1000 * max(spans[:50] or [0]), fails, i))
PY
}

main() {
    echo "command: $CMDLINE"
    [ "$BUILD" = 1 ] && build_kvs
    [ -x "$BIN/kvs-router" ] && [ -x "$BIN/kvs-bench" ] || die "$BIN is missing binaries (run without --no-build)"
    echo "kvs: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) release," \
        "$SHARDS shards; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    start a "$NODE_A
$NODE_R"
    A_PID=$PID_a
    start r "$NODE_A
$NODE_R"
    R_PID=$PID_r
    local i
    : >"$TMP/one"
    for ((i = 1; i <= REPEAT; i++)); do
        say "Hget through r, 1 replica per shard (run $i of $REPEAT)"
        bench
        echo "$OPS" >>"$TMP/one"
    done
    stop_pid "$PID_r" 15
    start b "$NODE_A
$NODE_B
$NODE_R"
    B_PID=$PID_b
    start r "$NODE_A
$NODE_B
$NODE_R"
    R_PID=$PID_r
    : >"$TMP/two"
    for ((i = 1; i <= REPEAT; i++)); do
        say "Hget through r, 2 replicas per shard (run $i of $REPEAT)"
        bench
        echo "$OPS" >>"$TMP/two"
    done
    say "failover: killing node a while reading through r"
    read -r fo fails reads < <(failover)
    A_PID=
    local one two
    one=$(median <"$TMP/one")
    two=$(median <"$TMP/two")
    echo
    printf '%-34s | %12s\n' "Hget through a routing node" "ops/s"
    printf -- '-%.0s' {1..50}
    echo
    printf '%-34s | %12.0f\n' "1 replica per shard" "$one"
    printf '%-34s | %12.0f\n' "2 replicas per shard" "$two"
    echo "ratio (2 / 1): $(awk -v a="$two" -v b="$one" 'BEGIN { printf "%.2f", a / b }')"
    echo "failover: longest read spanning the kill of node a: $fo ms; failed reads: $fails of $reads"
}

main
