#!/usr/bin/env bash
# compare_redis.sh: kvs against Redis, same machine, same run, same workload.
#
#   tests/bench/compare_redis.sh [--shards N] [--requests N] [--repeat N] [--sync MODE]
#                                [--processes N] [--local-reads BOOL] [--no-build] [--no-tls]
#
# Builds a release kvs (build-release/), installs redis-server and
# redis-tools with apt-get if they are missing (needs root), starts a kvs
# node (kvs-router with N shards, storage.sync: batch) and a redis-server
# (appendonly yes, appendfsync everysec: the comparable durability) on free
# loopback ports with temporary directories, then runs every workload of
# {HSET, HGET} x {pipeline 1, 16} with 50 clients, 100-byte values and a
# 100,000-key space, first against kvs (kvs-bench) and then against Redis
# (redis-benchmark), and prints one table with both results and their ratio.
#
# Both servers run in one invocation on purpose: these machines are noisy,
# and only a same-run ratio means something. With --repeat N every workload
# runs N times on each server, alternating, and the table shows medians.
# --no-build reuses build-release/ as it is. --sync picks kvs's
# storage.sync (full, batch, none; default batch) and Redis's matching
# appendfsync (always, everysec, no). --processes sets kvs's
# router.processes (default 1; auto for the machine's choice).
# --local-reads sets kvs's router.local_reads (true, the default: routers
# answer reads of local shards from their files; false: every read goes to
# its worker), to measure what local reads change.
#
# HSET runs first so HGET finds most keys (kvs answers 404 and Redis nil for
# the rest; both count as successes). Redis' HGET is a custom command hitting
# the fields `redis-benchmark -t hset` writes (key myhash, field
# element:__rand_int__, with the same -r key space).
#
# A second table repeats every workload with the *same* load generator on
# both sides: redis-benchmark against kvs's Redis protocol listener
# (router.resp_listen) and against redis-server, so the client's own cost
# cancels out (at pipeline 1 redis-benchmark is itself the bottleneck).
#
# A last table shows how much CPU each side used during each run (percent
# of one core, client and server), to check that the load generator was not
# the bottleneck, and the servers' CPU time per request (microseconds).
#
# Then the same workloads over TLS (unless --no-tls): a second kvs node with
# tls.router enabled and a redis-server with --tls-port (Debian's Redis is
# built with TLS), certificates made for the run by tests/make_certs.sh (EC
# P-256; server authentication only, on both sides), kvs-bench --tls and
# redis-benchmark --tls, each verifying the server against the test CA, with
# both drivers as above (own load generators, then redis-benchmark on both).
# Their rows are marked "TLS", and a third table shows what TLS costs each
# side: TLS ops/s as a fraction of the same workload's plaintext ops/s with
# the same driver.
#
# Everything started here is stopped and every temporary file removed on
# exit, also on Ctrl-C or error. Servers listen on 127.0.0.1 only. Every wait
# and every benchmark run is bounded by a timeout.
set -euo pipefail

SHARDS=2
REQUESTS=200000
REPEAT=1
BUILD=1
SYNC="batch"
PROCESSES=1
LOCAL_READS=true
TLS=1
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
    --requests) REQUESTS=${2:?--requests wants a number}; shift 2 ;;
    --repeat) REPEAT=${2:?--repeat wants a number}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --sync) SYNC=${2:?--sync wants full, batch or none}; shift 2 ;;
    --processes) PROCESSES=${2:?--processes wants a number or auto}; shift 2 ;;
    --local-reads) LOCAL_READS=${2:?--local-reads wants true or false}; shift 2 ;;
    --no-tls) TLS=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare_redis.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || { echo "compare_redis.sh: --shards wants a positive number" >&2; exit 2; }
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || { echo "compare_redis.sh: --requests wants a positive number" >&2; exit 2; }
[[ $REPEAT =~ ^[1-9][0-9]?$ ]] || { echo "compare_redis.sh: --repeat wants a number from 1 to 99" >&2; exit 2; }
[[ $LOCAL_READS =~ ^(true|false)$ ]] || { echo "compare_redis.sh: --local-reads wants true or false" >&2; exit 2; }
case "$SYNC" in
full) FSYNC=always ;;
batch) FSYNC=everysec ;;
none) FSYNC=no ;;
*) echo "compare_redis.sh: --sync wants full, batch or none" >&2; exit 2 ;;
esac

cd "$ROOT"
BIN=$ROOT/build-release
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvs-vs-redis.XXXXXX")
KVS_PID=
REDIS_PID=
CLIENT_PID=
KVS_TLS_PID=
REDIS_TLS_PID=
KVS_ARGS=()   # extra kvs-bench arguments (TLS)
REDIS_ARGS=() # extra redis-benchmark arguments (TLS)

say() { echo "compare_redis: $*" >&2; }
die() { say "$*"; exit 1; }
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"


cleanup() {
    trap - EXIT INT TERM
    stop_pid "$CLIENT_PID" 5
    stop_pid "$KVS_PID" 15 # the router stops its workers itself
    stop_pid "$REDIS_PID" 10
    stop_pid "$KVS_TLS_PID" 15
    stop_pid "$REDIS_TLS_PID" 10
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


build_kvs() {
    say "building a release kvs in build-release/ (log: build-release/compare_build.log)"
    mkdir -p "$BIN"
    if ! { cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release &&
        cmake --build build-release -j --target kvs-router kvs-node kvs-bench kvs-cli; } \
        >"$BIN/compare_build.log" 2>&1; then
        tail -n 30 "$BIN/compare_build.log" >&2
        die "the release build failed"
    fi
}

install_redis() {
    command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null &&
        command -v redis-cli >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "redis-server/redis-tools are missing: run as root, or apt-get install redis-server redis-tools"
    say "installing redis-server and redis-tools with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools >"$TMP/apt.log" 2>&1 ||
        { tail -n 20 "$TMP/apt.log" >&2; die "apt-get install redis-server redis-tools failed"; }
}

# Waits until `check` succeeds; fails with the log when `pid` died or time ran out.
wait_ready() {
    local name=$1 pid=$2 log=$3 check=$4 i
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "$name exited during start-up"; }
        if eval "$check" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2
    die "$name did not answer within ${START_TIMEOUT}s"
}

# start_kvs NAME [TLS-YAML [CLI-ARGS]]: a kvs node; sets KVS_PORT and KVS_PID.
start_kvs() {
    local name=$1 tls=${2:-} cli=${3:-}
    KVS_PORT=$(free_port "${REDIS_PORT:-}")
    KVS_RESP_PORT=$(free_port "$KVS_PORT" "${REDIS_PORT:-}")
    local partitions=$((SHARDS > 64 ? SHARDS : 64))
    cat >"$TMP/$name.yaml" <<EOF
data_dir: $TMP/$name-data
cluster:
  shards: $SHARDS
  partitions: $partitions
router:
  listen: 127.0.0.1:$KVS_PORT
  resp_listen: 127.0.0.1:$KVS_RESP_PORT
  processes: $PROCESSES
  local_reads: $LOCAL_READS
storage:
  sync: $SYNC
log:
  level: warn
$tls
EOF
    "$BIN/kvs-router" --config "$TMP/$name.yaml" >"$TMP/$name.log" 2>&1 &
    KVS_PID=$!
    wait_ready kvs-router "$KVS_PID" "$TMP/$name.log" \
        "'$BIN/kvs-cli' --port $KVS_PORT --timeout 1 $cli ping"
}

# start_redis NAME [SERVER-ARGS [CLI-ARGS]]: a redis-server; sets REDIS_PORT
# and REDIS_PID. With TLS arguments, REDIS_PORT is its TLS port.
start_redis() {
    local name=$1 tls=${2:-} cli=${3:-}
    REDIS_PORT=$(free_port "$KVS_PORT" "$KVS_RESP_PORT")
    local port=(--port "$REDIS_PORT")
    [ -n "$tls" ] && port=(--port 0 --tls-port "$REDIS_PORT")
    mkdir -p "$TMP/$name"
    # shellcheck disable=SC2086 # $tls holds several words
    redis-server --bind 127.0.0.1 "${port[@]}" $tls --daemonize no --appendonly yes \
        --appendfsync "$FSYNC" --save '' --dir "$TMP/$name" --logfile "$TMP/$name.log" &
    REDIS_PID=$!
    wait_ready redis-server "$REDIS_PID" "$TMP/$name.log" \
        "[ \"\$(redis-cli -h 127.0.0.1 -p $REDIS_PORT $cli ping)\" = PONG ]"
}

# CPU ticks (user + system) used so far by the given processes.
cpu_ticks() {
    local t=0 pid line f
    for pid in "$@"; do
        line=$(cut -d')' -f2 "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a f <<<"$line"
        t=$((t + f[11] + f[12])) # utime, stime: fields 14 and 15 of stat
    done
    echo "$t"
}

# User + system seconds of the reaped children in a `times` output file.
children_cpu() {
    tail -n 1 "$1" | tr 'ms' '  ' | awk '{ print $1 * 60 + $2 + $3 * 60 + $4 }'
}

# Runs a client command in the background (so a signal interrupts the wait
# and the trap cleans up at once) under `timeout`; sets ELAPSED and
# CLIENT_CPU (seconds), SERVER_CPU (seconds used meanwhile by the processes
# in SERVER_PIDS) and leaves the client's stdout in $TMP/out. The `times`
# builtin runs in this shell (no fork), so between the two snapshots only
# the client is reaped.
run_client() {
    local tick t0 t1 start end
    tick=$(getconf CLK_TCK)
    t0=$(cpu_ticks "${SERVER_PIDS[@]}")
    times >"$TMP/times0"
    start=$EPOCHREALTIME
    timeout "$RUN_TIMEOUT" "$@" >"$TMP/out" 2>"$TMP/err" &
    CLIENT_PID=$!
    if ! wait "$CLIENT_PID"; then
        CLIENT_PID=
        cat "$TMP/err" >&2
        die "failed (or timed out after ${RUN_TIMEOUT}s): $*"
    fi
    end=$EPOCHREALTIME
    times >"$TMP/times1"
    CLIENT_PID=
    t1=$(cpu_ticks "${SERVER_PIDS[@]}")
    ELAPSED=$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')
    CLIENT_CPU=$(awk -v a="$(children_cpu "$TMP/times0")" -v b="$(children_cpu "$TMP/times1")" \
        'BEGIN { print b - a }')
    SERVER_CPU=$(awk -v a="$t0" -v b="$t1" -v t="$tick" 'BEGIN { print (b - a) / t }')
}

# Server CPU microseconds per request of the last run_client.
per_op() { awk -v c="$SERVER_CPU" -v n="$REQUESTS" 'BEGIN { printf "%.3f", 1e6 * c / n }'; }

pct() { awk -v c="$1" -v e="$2" 'BEGIN { printf "%.0f", (e > 0 ? 100 * c / e : 0) }'; }

# kvs-bench --json: sets OPS P50 P99 (ms) and checks for errors.
run_kvs() {
    local test=$1 pipe=$2 line
    mapfile -t SERVER_PIDS < <(echo "$KVS_PID"; pgrep -P "$KVS_PID" || true)
    run_client "$BIN/kvs-bench" -h 127.0.0.1 -p "$KVS_PORT" -c "$CLIENTS" \
        -n "$REQUESTS" -P "$pipe" -r "$KEYSPACE" -d "$VALUE_SIZE" -t "$test" --json -q \
        "${KVS_ARGS[@]}"
    line=$(head -n 1 "$TMP/out")
    OPS=$(sed -n 's/.*"ops_per_sec":\([0-9.]*\).*/\1/p' <<<"$line")
    P50=$(sed -n 's/.*"p50":\([0-9.]*\).*/\1/p' <<<"$line" | awk '{ printf "%.3f", $1 / 1000 }')
    P99=$(sed -n 's/.*"p99":\([0-9.]*\).*/\1/p' <<<"$line" | awk '{ printf "%.3f", $1 / 1000 }')
    local errors
    errors=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$line")
    [ -n "$OPS" ] || die "cannot parse kvs-bench output: $line"
    [ "$errors" = 0 ] || NOTES+=("kvs $test P=$pipe: $errors errors: $line")
}

# redis-benchmark --csv: "test","rps","avg_latency_ms","min_latency_ms",
# "p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms".
# Against redis-server, or (third argument "kvs") kvs's RESP listener.
run_redis() {
    local test=$1 pipe=$2 target=${3:-redis} line to=$REDIS_PORT
    if [ "$target" = kvs ]; then
        to=$KVS_RESP_PORT
        mapfile -t SERVER_PIDS < <(echo "$KVS_PID"; pgrep -P "$KVS_PID" || true)
    else
        SERVER_PIDS=("$REDIS_PID")
    fi
    local args=(-h 127.0.0.1 -p "$to" -c "$CLIENTS" -n "$REQUESTS" -P "$pipe"
        -r "$KEYSPACE" -d "$VALUE_SIZE" --csv "${REDIS_ARGS[@]}")
    if [ "$test" = hset ]; then
        args+=(-t hset)
    else
        args+=(hget myhash element:__rand_int__)
    fi
    run_client redis-benchmark "${args[@]}"
    line=$(grep -v '^"test"' "$TMP/out" | tail -n 1 | tr -d '"\r')
    OPS=$(cut -d, -f2 <<<"$line")
    P50=$(cut -d, -f5 <<<"$line")
    P99=$(cut -d, -f7 <<<"$line")
    [[ $OPS =~ ^[0-9.]+$ ]] || die "cannot parse redis-benchmark output: $(cat "$TMP/out")"
}

# The median of the numbers on stdin, one per line.
median() {
    sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'
}

# Column `col` (1-based) of the samples in file `f`, as a median.
col_median() { cut -d' ' -f"$2" "$1" | median; }

# Runs one workload on both servers, alternating, REPEAT times, and appends
# a row of medians to the tables (its name ends with $3, " TLS" or ""). A
# sample is "ops p50 p99 client% server% server-us-per-request". Sets K_OPS
# and R_OPS (medians).
# With DRIVER=resp, redis-benchmark drives kvs too (its RESP listener).
run_workload() {
    local test=$1 pipe=$2 name i k="$TMP/k.samples" r="$TMP/r.samples"
    name="${test^^} P=$pipe${3:-}"
    [ "$DRIVER" = resp ] && name="$name r"
    : >"$k"
    : >"$r"
    for ((i = 1; i <= REPEAT; i++)); do
        say "$name: kvs (run $i of $REPEAT)"
        if [ "$DRIVER" = resp ]; then
            run_redis "$test" "$pipe" kvs
        else
            run_kvs "$test" "$pipe"
        fi
        echo "$OPS $P50 $P99 $(pct "$CLIENT_CPU" "$ELAPSED") $(pct "$SERVER_CPU" "$ELAPSED") $(per_op)" >>"$k"
        say "$name: redis (run $i of $REPEAT)"
        run_redis "$test" "$pipe"
        echo "$OPS $P50 $P99 $(pct "$CLIENT_CPU" "$ELAPSED") $(pct "$SERVER_CPU" "$ELAPSED") $(per_op)" >>"$r"
    done
    local k_ops r_ops
    k_ops=$(col_median "$k" 1)
    r_ops=$(col_median "$r" 1)
    K_OPS=$k_ops
    R_OPS=$r_ops
    ROWS+=("$(printf '%-14s | %11.0f | %11.0f | %5.2f | %10.3f | %12.3f | %10.3f | %12.3f' \
        "$name" "$k_ops" "$r_ops" "$(awk -v a="$k_ops" -v b="$r_ops" 'BEGIN { print a / b }')" \
        "$(col_median "$k" 3)" "$(col_median "$r" 3)" "$(col_median "$k" 2)" \
        "$(col_median "$r" 2)")")
    CPU_ROWS+=("$(printf '%-14s | %10.0f | %10.0f | %12.0f | %12.0f | %9.2f | %11.2f' "$name" \
        "$(col_median "$k" 4)" "$(col_median "$k" 5)" "$(col_median "$r" 4)" \
        "$(col_median "$r" 5)" "$(col_median "$k" 6)" "$(col_median "$r" 6)")")
}

print_tables() {
    echo
    printf '%-14s | %11s | %11s | %5s | %10s | %12s | %10s | %12s\n' workload "kvs ops/s" \
        "redis ops/s" ratio "kvs p99 ms" "redis p99 ms" "kvs p50 ms" "redis p50 ms"
    printf -- '-%.0s' {1..105}
    echo
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Rows marked r: redis-benchmark drives both servers (kvs through its Redis"
    echo "protocol listener); the others: kvs-bench drives kvs, redis-benchmark Redis."
    echo
    echo "CPU during each run, percent of one core (client = kvs-bench or redis-benchmark;"
    echo "server = kvs-router + its kvs-node workers / redis-server), and the"
    echo "servers' CPU time per request in microseconds:"
    printf '%-14s | %10s | %10s | %12s | %12s | %9s | %11s\n' workload "kvs client" \
        "kvs server" "redis client" "redis server" "kvs us/op" "redis us/op"
    printf '%s\n' "${CPU_ROWS[@]}"
    if [ ${#TLS_ROWS[@]} -gt 0 ]; then
        echo
        echo "What TLS costs: TLS ops/s as a fraction of the same workload's plaintext ops/s"
        echo "(1.00 = free; target: kvs's fraction at least redis's):"
        printf '%-14s | %9s | %11s\n' workload "kvs TLS" "redis TLS"
        printf '%s\n' "${TLS_ROWS[@]}"
    fi
    if [ ${#NOTES[@]} -gt 0 ]; then
        echo
        printf 'note: %s\n' "${NOTES[@]}"
    fi
}

main() {
    echo "command: $CMDLINE"
    [ "$BUILD" = 1 ] && build_kvs
    [ -x "$BIN/kvs-bench" ] || die "$BIN/kvs-bench is missing (run without --no-build)"
    install_redis
    start_kvs kvs
    start_redis redis
    echo "kvs: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) release," \
        "$SHARDS shards, storage.sync $SYNC; $(redis-server --version | cut -d' ' -f1-3)," \
        "appendonly yes, appendfsync $FSYNC; $(nproc) cores, load average" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "workload: $CLIENTS clients, $REQUESTS requests, keyspace $KEYSPACE," \
        "$VALUE_SIZE-byte values; median of $REPEAT run(s) per cell"
    ROWS=()
    CPU_ROWS=()
    NOTES=()
    TLS_ROWS=()
    declare -A plain_k plain_r
    for DRIVER in own resp; do
        for test in hset hget; do
            for pipe in 1 16; do
                run_workload "$test" "$pipe"
                plain_k[$DRIVER$test$pipe]=$K_OPS
                plain_r[$DRIVER$test$pipe]=$R_OPS
            done
        done
    done
    if [ "$TLS" = 1 ]; then
        start_tls_servers
        # Each TLS row is compared with the plaintext row of the same driver.
        for DRIVER in own resp; do
            for test in hset hget; do
                for pipe in 1 16; do
                    run_workload "$test" "$pipe" " TLS"
                    TLS_ROWS+=("$(printf '%-14s | %9.2f | %11.2f' \
                        "${test^^} P=$pipe$([ "$DRIVER" = resp ] && echo ' r')" \
                        "$(awk -v a="$K_OPS" -v b="${plain_k[$DRIVER$test$pipe]}" 'BEGIN { print a / b }')" \
                        "$(awk -v a="$R_OPS" -v b="${plain_r[$DRIVER$test$pipe]}" 'BEGIN { print a / b }')")")
                done
            done
        done
    fi
    print_tables
}

# The TLS servers: certificates for this run, a kvs node with tls.router and
# a redis-server with --tls-port; both benchmarks verify them against the CA.
# The plaintext servers are stopped first, so only one pair competes for CPU.
start_tls_servers() {
    local c="$TMP/certs"
    command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl), or use --no-tls"
    "$ROOT/tests/make_certs.sh" "$c" || die "cannot make test certificates"
    say "starting the TLS servers"
    stop_pid "$KVS_PID" 15
    stop_pid "$REDIS_PID" 10
    KVS_PID=
    REDIS_PID=
    start_kvs kvs-tls "tls:
  cert: $c/node.crt
  key: $c/node.key
  router: {enabled: true}" "--tls --cacert $c/ca.crt"
    KVS_TLS_PID=$KVS_PID
    start_redis redis-tls "--tls-cert-file $c/node.crt --tls-key-file $c/node.key \
--tls-ca-cert-file $c/ca.crt --tls-auth-clients no" "--tls --cacert $c/ca.crt"
    REDIS_TLS_PID=$REDIS_PID
    KVS_ARGS=(--tls --cacert "$c/ca.crt")
    REDIS_ARGS=(--tls --cacert "$c/ca.crt")
}

main
