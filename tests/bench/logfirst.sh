#!/usr/bin/env bash
# logfirst.sh: log-first writes (a table bound to a Kafka topic) against
# direct writes (a table bound to no topic), same node, same run.
#
#   tests/bench/logfirst.sh [--shards N] [--partitions N] [--requests N]
#                           [--repeat N] [--sync MODE] [--no-build]
#
# Builds a release kvs (build-release/), starts kvs-mock-kafka with one
# topic of --partitions partitions (default 16) and a kvs node (kvs-router
# with N shards, default 2, storage.sync: --sync, default batch) whose table `logged` is
# bound to that topic (format: string) while table `direct` is bound to
# none. Then kvs-bench runs Hset with 50 clients, 100-byte values and a
# 100,000-key space at pipeline 1 and 16 against each table, alternating
# (direct, logged) --repeat times (default 1), each pair on a new mock
# cluster and a new node (see fresh_servers), and prints one table of
# medians: throughput, p50 and p99 latency of both, and their ratio.
#
# Targets (issue 12): log-first Hset P16 throughput at least 0.5x direct,
# log-first P1 p99 at most 3 ms on kvs-mock-kafka. The last lines say
# whether the run met them.
#
# A log-first write is answered after Kafka acknowledged it (acks=all,
# idempotent producer) and the owning worker applied it through its own
# ingestion; kvs-mock-kafka is librdkafka's in-process mock cluster on
# loopback, so this measures kvs's overhead, not a real Kafka's.
#
# Everything started here is stopped and every temporary file removed on
# exit, also on Ctrl-C or error. Servers listen on 127.0.0.1 only. Every
# wait and every benchmark run is bounded by a timeout.
set -euo pipefail

SHARDS=2
PARTITIONS=16
REQUESTS=200000
REPEAT=1
SYNC=batch
BUILD=1
CLIENTS=50
KEYSPACE=100000
VALUE_SIZE=100
START_TIMEOUT=30 # seconds for a server to answer after start
RUN_TIMEOUT=600  # seconds for one benchmark run

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CMDLINE="$(printf '%q ' "$0" "$@")"
CMDLINE=${CMDLINE% }
while [ $# -gt 0 ]; do
    case "$1" in
    --shards) SHARDS=${2:?--shards wants a number}; shift 2 ;;
    --partitions) PARTITIONS=${2:?--partitions wants a number}; shift 2 ;;
    --requests) REQUESTS=${2:?--requests wants a number}; shift 2 ;;
    --repeat) REPEAT=${2:?--repeat wants a number}; shift 2 ;;
    --sync)
        SYNC=${2:?--sync wants full, batch or none}
        case "$SYNC" in full | batch | none) ;; *) echo "logfirst.sh: --sync wants full, batch or none" >&2; exit 2 ;; esac
        shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "logfirst.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || { echo "logfirst.sh: --shards wants a positive number" >&2; exit 2; }
[[ $PARTITIONS =~ ^[1-9][0-9]*$ ]] || { echo "logfirst.sh: --partitions wants a positive number" >&2; exit 2; }
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || { echo "logfirst.sh: --requests wants a positive number" >&2; exit 2; }
[[ $REPEAT =~ ^[1-9][0-9]?$ ]] || { echo "logfirst.sh: --repeat wants a number from 1 to 99" >&2; exit 2; }
[ "$PARTITIONS" -ge "$SHARDS" ] || { echo "logfirst.sh: --partitions must be at least --shards" >&2; exit 2; }

cd "$ROOT"
BIN=$ROOT/build-release
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvs-logfirst.XXXXXX")
KVS_PID=
MOCK_PID=
CLIENT_PID=

say() { echo "logfirst: $*" >&2; }
die() { say "$*"; exit 1; }
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"

cleanup() {
    trap - EXIT INT TERM
    stop_pid "$CLIENT_PID" 5
    stop_pid "$KVS_PID" 15 # the router stops its workers itself
    stop_pid "$MOCK_PID" 10
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_kvs() {
    say "building a release kvs in build-release/ (log: build-release/logfirst_build.log)"
    mkdir -p "$BIN"
    if ! { cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release &&
        cmake --build build-release -j --target kvs-router kvs-node kvs-bench kvs-cli \
            kvs-mock-kafka; } >"$BIN/logfirst_build.log" 2>&1; then
        tail -n 30 "$BIN/logfirst_build.log" >&2
        die "the release build failed"
    fi
}

start_mock() {
    "$BIN/kvs-mock-kafka" --topic "bench:$PARTITIONS" --ready-file "$TMP/kafka.ready" \
        >"$TMP/mock.out" 2>"$TMP/mock.log" &
    MOCK_PID=$!
    local i
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        [ -s "$TMP/kafka.ready" ] && return 0
        kill -0 "$MOCK_PID" 2>/dev/null || { tail -n 20 "$TMP/mock.log" >&2; die "kvs-mock-kafka exited"; }
        sleep 0.1
    done
    die "kvs-mock-kafka was not ready within ${START_TIMEOUT}s"
}

start_kvs() {
    KVS_PORT=$(free_port)
    local partitions=$((SHARDS > 64 ? SHARDS : 64))
    cat >"$TMP/kvs.yaml" <<EOF
data_dir: $TMP/kvs-data
cluster:
  shards: $SHARDS
  partitions: $partitions
router:
  listen: 127.0.0.1:$KVS_PORT
  processes: 1
storage:
  sync: $SYNC
kafka:
  brokers: "$(cat "$TMP/kafka.ready")"
  bindings:
    - {topic: bench, table: logged, format: string, partitions: $PARTITIONS}
log:
  level: warn
EOF
    "$BIN/kvs-router" --config "$TMP/kvs.yaml" >"$TMP/kvs.log" 2>&1 &
    KVS_PID=$!
    local i
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        kill -0 "$KVS_PID" 2>/dev/null || { tail -n 20 "$TMP/kvs.log" >&2; die "kvs-router exited"; }
        # ready once a log-first write goes all the way through
        if "$BIN/kvs-cli" --port "$KVS_PORT" --timeout 2 hset logged ready yes >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$TMP/kvs.log" >&2
    die "kvs did not take a log-first write within ${START_TIMEOUT}s"
}

# kvs-bench --json on `table`: sets OPS P50 P99 (ms), notes errors.
run_bench() {
    local table=$1 pipe=$2 line errors
    timeout "$RUN_TIMEOUT" "$BIN/kvs-bench" -h 127.0.0.1 -p "$KVS_PORT" -c "$CLIENTS" \
        -n "$REQUESTS" -P "$pipe" -r "$KEYSPACE" -d "$VALUE_SIZE" -t hset --table "$table" \
        --json -q >"$TMP/out" 2>"$TMP/err" &
    CLIENT_PID=$!
    if ! wait "$CLIENT_PID"; then
        CLIENT_PID=
        cat "$TMP/err" >&2
        die "kvs-bench failed (or timed out after ${RUN_TIMEOUT}s) on $table P=$pipe"
    fi
    CLIENT_PID=
    line=$(head -n 1 "$TMP/out")
    OPS=$(sed -n 's/.*"ops_per_sec":\([0-9.]*\).*/\1/p' <<<"$line")
    P50=$(sed -n 's/.*"p50":\([0-9.]*\).*/\1/p' <<<"$line" | awk '{ printf "%.3f", $1 / 1000 }')
    P99=$(sed -n 's/.*"p99":\([0-9.]*\).*/\1/p' <<<"$line" | awk '{ printf "%.3f", $1 / 1000 }')
    errors=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$line")
    [ -n "$OPS" ] || die "cannot parse kvs-bench output: $line"
    [ "$errors" = 0 ] || NOTES+=("$table P=$pipe: $errors errors: $line")
}

median() {
    sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'
}
col_median() { cut -d' ' -f"$2" "$1" | median; }

# A new kvs-mock-kafka and a new kvs node with an empty data directory.
# Every pair of runs starts on them: librdkafka's mock broker finds a fetch
# offset by walking the partition's whole log (no index, no retention), so
# its cost per request grows with every record kept, and a long-lived mock
# ends up measuring itself (2,000 log-first ops/s after 200,000 records
# where a fresh one takes 8,000). A real broker indexes offsets.
fresh_servers() {
    stop_pid "$KVS_PID" 15
    stop_pid "$MOCK_PID" 10
    KVS_PID=
    MOCK_PID=
    rm -rf "$TMP/kvs-data" "$TMP/kafka.ready"
    start_mock
    start_kvs
}

# One pipeline depth: direct and logged alternating, REPEAT times, each pair
# on fresh servers; a row of medians. Sets LAST_RATIO and LAST_P99
# (log-first's).
run_depth() {
    local pipe=$1 i d="$TMP/d.samples" l="$TMP/l.samples"
    : >"$d"
    : >"$l"
    for ((i = 1; i <= REPEAT; i++)); do
        fresh_servers
        say "HSET P=$pipe: direct (run $i of $REPEAT)"
        run_bench direct "$pipe"
        echo "$OPS $P50 $P99" >>"$d"
        say "HSET P=$pipe: log-first (run $i of $REPEAT)"
        run_bench logged "$pipe"
        echo "$OPS $P50 $P99" >>"$l"
    done
    local d_ops l_ops
    d_ops=$(col_median "$d" 1)
    l_ops=$(col_median "$l" 1)
    LAST_RATIO=$(awk -v a="$l_ops" -v b="$d_ops" 'BEGIN { printf "%.2f", a / b }')
    LAST_P99=$(col_median "$l" 3)
    ROWS+=("$(printf '%-10s | %12.0f | %15.0f | %5s | %10.3f | %13.3f | %10.3f | %13.3f' \
        "HSET P=$pipe" "$d_ops" "$l_ops" "$LAST_RATIO" "$(col_median "$d" 2)" \
        "$(col_median "$l" 2)" "$(col_median "$d" 3)" "$LAST_P99")")
}

main() {
    echo "command: $CMDLINE"
    [ "$BUILD" = 1 ] && build_kvs
    [ -x "$BIN/kvs-bench" ] && [ -x "$BIN/kvs-mock-kafka" ] ||
        die "$BIN is missing binaries (run without --no-build)"
    echo "kvs: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) release," \
        "$SHARDS shards, storage.sync $SYNC; topic bench: $PARTITIONS partitions on" \
        "kvs-mock-kafka; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "workload: Hset, $CLIENTS clients, $REQUESTS requests, keyspace $KEYSPACE," \
        "$VALUE_SIZE-byte values; median of $REPEAT run(s) per cell"
    ROWS=()
    NOTES=()
    run_depth 1
    local p1_p99=$LAST_P99
    run_depth 16
    local p16_ratio=$LAST_RATIO
    echo
    printf '%-10s | %12s | %15s | %5s | %10s | %13s | %10s | %13s\n' workload "direct ops/s" \
        "log-first ops/s" ratio "direct p50" "log-first p50" "direct p99" "log-first p99"
    printf -- '-%.0s' {1..107}
    echo
    printf '%s\n' "${ROWS[@]}"
    echo "(latencies in ms)"
    echo
    awk -v r="$p16_ratio" 'BEGIN { exit !(r >= 0.5) }' && v=met || v="NOT met"
    echo "target: log-first HSET P=16 throughput >= 0.5x direct: $p16_ratio ($v)"
    awk -v p="$p1_p99" 'BEGIN { exit !(p <= 3) }' && v=met || v="NOT met"
    echo "target: log-first HSET P=1 p99 <= 3 ms: $p1_p99 ms ($v)"
    if [ ${#NOTES[@]} -gt 0 ]; then
        echo
        printf 'note: %s\n' "${NOTES[@]}"
    fi
}

main
