#!/usr/bin/env bash
# ingest.sh: kvs's Kafka ingest rate against its two ceilings, same records, same run.
#
#   tests/bench/ingest.sh [--records N] [--partitions P] [--keys K] [--shards "1 2"]
#                         [--repeat R] [--batch B] [--kafka-set KEY=VALUE]...
#                         [--map-size SIZE] [--profile] [--no-build]
#
# Builds a release kvs (build-release/), starts kvs-mock-kafka with one
# broker and a topic "bench" of P partitions, produces N records (keys
# "key%08d" uniform over K keys, default N/2; 100-byte values; partitioner
# murmur2_random, large producer batches) and checks that the mock kept all
# of them (every partition's low watermark is 0: the mock keeps at most ~5 MiB
# per partition and silently drops the oldest, so P defaults to
# max(16, N * 130 B / 3.5 MiB)). Then, on those same records, it measures:
#
#   (a) consume  a bare librdkafka consumer (kvs-ingest-bench consume) reading
#                every partition to its end, with the librdkafka settings kvs
#                ships (fetch.wait.max.ms 50, queued.min.messages 1000000) plus
#                every --kafka-set; for reference also with librdkafka's own
#                defaults;
#   (b) lmdb     applying the records to a fresh LMDB environment in one
#                process with LMDB's fastest flags (MDB_NOSYNC | MDB_WRITEMAP,
#                no sync at all: an upper bound for kvs, whose storage.sync
#                batch syncs data at every commit), write txns of B records (default
#                10000) (kvs-ingest-bench lmdb; the read into memory is untimed);
#   (c) kvs      for every shard count S in --shards (default 2): a kvs-router
#                with cluster.shards S, storage.sync batch, a fresh data_dir and
#                the binding {topic: bench, table: bench, format: raw,
#                partitions: P} (plus kafka.properties from --kafka-set, and
#                storage.map_size from --map-size; default: kvs's), polled
#                with Info every 50 ms until every partition's lag is 0 and the
#                applied records add up to N; rate = N / (time from starting the
#                router to lag 0), so it includes start-up.
#
# Each measurement runs R times (--repeat, default 3) and the median is
# reported: these machines are shared and noisy. The table at the end gives
# every rate and the ratio (c) / min(a, b) against the issue's target of 0.8.
# --profile records each kvs-node worker with `perf record -g` during the last
# run of (c) and prints the top symbols.
#
# Everything started here is stopped and every temporary file removed on
# exit, also on Ctrl-C or error. Everything listens on 127.0.0.1 only; every
# wait is bounded by a timeout.
set -euo pipefail

RECORDS=400000
PARTITIONS=
KEYS=
SHARDS_LIST="2"
REPEAT=3
BATCH=10000
VALUE_SIZE=100
BUILD=1
PROFILE=0
MAP_SIZE=
KAFKA_SET=()
STEP_TIMEOUT=300  # seconds for one produce/consume/lmdb step
INGEST_TIMEOUT=300 # seconds for kvs to reach lag 0
POLL_MS=50

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CMDLINE="$(printf '%q ' "$0" "$@")"
while [ $# -gt 0 ]; do
    case "$1" in
    --records) RECORDS=${2:?--records wants a number}; shift 2 ;;
    --partitions) PARTITIONS=${2:?--partitions wants a number}; shift 2 ;;
    --keys) KEYS=${2:?--keys wants a number}; shift 2 ;;
    --shards) SHARDS_LIST=${2:?--shards wants a list such as \"1 2\"}; shift 2 ;;
    --repeat) REPEAT=${2:?--repeat wants a number}; shift 2 ;;
    --batch) BATCH=${2:?--batch wants a number}; shift 2 ;;
    --kafka-set) KAFKA_SET+=("${2:?--kafka-set wants KEY=VALUE}"); shift 2 ;;
    --map-size) MAP_SIZE=${2:?--map-size wants a size such as 8GiB}; shift 2 ;;
    --profile) PROFILE=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "ingest.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
num() { [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "ingest.sh: $1 wants a positive number, got '$2'" >&2; exit 2; }; }
num --records "$RECORDS"
num --repeat "$REPEAT"
num --batch "$BATCH"
[ -z "$KEYS" ] && KEYS=$((RECORDS / 2 > 0 ? RECORDS / 2 : 1))
num --keys "$KEYS"
for s in $SHARDS_LIST; do num --shards "$s"; done
[ -z "$MAP_SIZE" ] || [[ $MAP_SIZE =~ ^[1-9][0-9]*(KiB|MiB|GiB|TiB)?$ ]] || { echo "ingest.sh: --map-size wants a size such as 8GiB" >&2; exit 2; }
[ -n "${SHARDS_LIST// /}" ] || { echo "ingest.sh: --shards wants at least one number" >&2; exit 2; }
for kv in "${KAFKA_SET[@]+"${KAFKA_SET[@]}"}"; do
    [[ $kv =~ ^[A-Za-z0-9._-]+=[^\'\"]*$ ]] || { echo "ingest.sh: --kafka-set wants KEY=VALUE, got '$kv'" >&2; exit 2; }
done
# ~130 bytes per 100-byte record in the mock's log; keep each partition under
# 3.5 MiB (70% of the mock's 5 MiB).
BYTES_PER_RECORD=$((VALUE_SIZE + 30))
LIMIT=$((7 * 512 * 1024))
MIN_P=$(((RECORDS * BYTES_PER_RECORD + LIMIT - 1) / LIMIT))
if [ -z "$PARTITIONS" ]; then
    PARTITIONS=$((MIN_P > 16 ? MIN_P : 16))
else
    num --partitions "$PARTITIONS"
    [ "$PARTITIONS" -ge "$MIN_P" ] || {
        echo "ingest.sh: $RECORDS records need at least $MIN_P partitions (the mock keeps ~5 MiB per partition)" >&2
        exit 2
    }
fi
for s in $SHARDS_LIST; do
    [ "$s" -le "$PARTITIONS" ] || { echo "ingest.sh: $s shards but only $PARTITIONS partitions" >&2; exit 2; }
done

cd "$ROOT"
BIN=$ROOT/build-release
PY=/usr/bin/python3
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvs-ingest.XXXXXX")
MOCK_PID=
KVS_PID=
POLL_PID=

say() { echo "ingest: $*" >&2; }
die() { say "$*"; exit 1; }
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"


cleanup() {
    trap - EXIT INT TERM
    stop_pid "$POLL_PID" 2
    stop_pid "$KVS_PID" 15 # the router stops its workers itself
    stop_pid "$MOCK_PID" 10
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


build_kvs() {
    say "building a release kvs in build-release/ (log: build-release/ingest_build.log)"
    mkdir -p "$BIN"
    if ! { cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release &&
        cmake --build build-release -j; } >"$BIN/ingest_build.log" 2>&1; then
        tail -n 30 "$BIN/ingest_build.log" >&2
        die "the release build failed"
    fi
}

start_mock() {
    "$BIN/kvs-mock-kafka" --brokers 1 --topic "bench:$PARTITIONS" --ready-file "$TMP/mock.ready" \
        >"$TMP/mock.out" 2>"$TMP/mock.log" &
    MOCK_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        [ -s "$TMP/mock.ready" ] && break
        kill -0 "$MOCK_PID" 2>/dev/null || { cat "$TMP/mock.log" >&2; die "kvs-mock-kafka exited"; }
        sleep 0.1
    done
    [ -s "$TMP/mock.ready" ] || die "kvs-mock-kafka was not ready within 30 s"
    BROKERS=$(head -n 1 "$TMP/mock.ready")
}

# json FIELD < line: one numeric field of a one-line JSON object.
json() { sed -n "s/.*\"$1\": *\([-0-9.e+]*\).*/\1/p"; }

# bench MODE ARGS...: runs kvs-ingest-bench, leaves its JSON line in $OUT.
bench() {
    local mode=$1
    shift
    if ! OUT=$(timeout "$((STEP_TIMEOUT + 30))" "$BIN/kvs-ingest-bench" "$mode" --brokers "$BROKERS" \
        --topic bench --timeout "$STEP_TIMEOUT" --json "$@" 2>"$TMP/bench.err"); then
        cat "$TMP/bench.err" >&2
        die "kvs-ingest-bench $mode failed"
    fi
    grep -v '^$' "$TMP/bench.err" | sed 's/^/  /' >&2 || true
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fmt() { awk -v r="$1" 'BEGIN { printf "%.0f", r }'; }
spread() { sort -g | awk '{ v[NR] = $1 } END { printf "%.0f..%.0f", v[1], v[NR] }'; }

# CPU ticks (user + system) used so far by the given processes.
cpu_ticks() {
    local t=0 pid line f
    for pid in "$@"; do
        line=$(cut -d')' -f2 "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a f <<<"$line"
        t=$((t + f[11] + f[12] + f[13] + f[14])) # utime stime cutime cstime
    done
    echo "$t"
}

# Busy and total jiffies of the whole machine, every CPU (from /proc/stat).
host_jiffies() { awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6; exit }' /proc/stat; }

# On-CPU and run-queue-wait nanoseconds of a process's main thread.
main_thread_ns() { awk '{ print $1, $2 }' "/proc/$1/task/$1/schedstat" 2>/dev/null || echo "0 0"; }

# The Info poller. Started before the router (so Python's start-up is not
# timed): it creates READY_FILE once its imports are done, waits for T0_FILE
# (the router's start time, written by the script just before it starts the
# router), connects (retrying while the router starts), sends Info every
# POLL_MS, and prints one JSON line when every partition of "bench" reports
# lag 0 and applied + skipped = N.
cat >"$TMP/poll.py" <<'EOF'
import json, re, socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
import kvs_pb2 as pb
port, records, parts = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
timeout, interval = float(sys.argv[6]), float(sys.argv[7]) / 1000
ready_file, t0_file = sys.argv[8], sys.argv[5]
open(ready_file, "w").close()
waited = time.time()
while True:
    try:
        with open(t0_file) as f:
            t0 = float(f.read())
        break
    except (OSError, ValueError):
        if time.time() - waited > timeout:
            print(json.dumps({"ok": False, "why": "no start time"})); sys.exit(1)
        time.sleep(0.001)
key_re = re.compile(r"^kafka\.bench\.(\d+)\.(applied|lag|skipped)$")
def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("router closed the connection")
        b += c
    return bytes(b)
sock, first, polls = None, None, 0
req = pb.CommandRequest()
req.info.SetInParent()
frame = (lambda p: struct.pack(">I", len(p)) + p)(req.SerializeToString())
while True:
    now = time.time()
    if now - t0 > timeout:
        print(json.dumps({"ok": False, "why": "timed out", "polls": polls})); sys.exit(1)
    if sock is None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock = None
            time.sleep(0.01)
            continue
    sock.sendall(frame)
    (n,) = struct.unpack(">I", recv_exact(sock, 4))
    resp = pb.CommandResponse()
    resp.ParseFromString(recv_exact(sock, n & 0x7FFFFFFF))
    t = time.time()
    polls += 1
    seen, applied, skipped, lag_known, lag = set(), 0, 0, True, 0
    if resp.status == 200:
        for p in resp.pairs:
            m = key_re.match(p.key.decode("utf-8", "replace"))
            if not m:
                continue
            v = p.value.integer_value
            seen.add(m.group(1))
            if m.group(2) == "applied":
                applied += v
            elif m.group(2) == "skipped":
                skipped += v
            elif v < 0:
                lag_known = False
            else:
                lag += v
    if first is None and applied > 0:
        first = t - t0
    if len(seen) == parts and lag_known and lag == 0 and applied + skipped >= records:
        print(json.dumps({"ok": True, "seconds": t - t0, "first_applied": first,
                          "applied": applied, "skipped": skipped, "polls": polls}))
        sys.exit(0)
    time.sleep(max(0.0, interval - (time.time() - t)))
EOF

# kvs_run S RUN: one ingest by a fresh S-shard node; sets KVS_SECONDS,
# KVS_FIRST (seconds to the first applied record), KVS_CPU (CPU seconds of
# router + workers, every thread), KVS_APPLY_CPU and KVS_RUNQ (seconds the
# workers' main threads, which apply records, ran and waited for a CPU),
# KVS_MOCK_CPU and HOST_BUSY (cores busy on the whole machine, on average).
kvs_run() {
    local shards=$1 run=$2 port kv dir=$TMP/kvs-$1-$2 i h0 h1 m0
    mkdir -p "$dir"
    for _ in 1 2 3; do
        port=$(free_port)
        rm -rf "$dir/data" "$dir/t0" "$dir/poll.ready"
        {
            echo "data_dir: $dir/data"
            echo "cluster:"
            echo "  shards: $shards"
            echo "  partitions: $((shards > 64 ? shards : 64))"
            echo "router:"
            echo "  listen: 127.0.0.1:$port"
            echo "  processes: 1"
            echo "storage:"
            echo "  sync: batch"
            [ -z "$MAP_SIZE" ] || echo "  map_size: $MAP_SIZE"
            echo "kafka:"
            echo "  brokers: \"$BROKERS\""
            echo "  group_id: kvs-ingest-bench-$shards-$run"
            echo "  bindings:"
            echo "    - {topic: bench, table: bench, format: raw, partitions: $PARTITIONS}"
            if [ ${#KAFKA_SET[@]} -gt 0 ]; then
                echo "  properties:"
                for kv in "${KAFKA_SET[@]}"; do echo "    \"${kv%%=*}\": \"${kv#*=}\""; done
            fi
            echo "log:"
            echo "  level: info" # "accepting clients" tells the bind worked
        } >"$dir/kvs.yaml"
        timeout "$((INGEST_TIMEOUT + 60))" "$PY" "$TMP/poll.py" "$BIN/py" "$port" "$RECORDS" \
            "$PARTITIONS" "$dir/t0" "$INGEST_TIMEOUT" "$POLL_MS" "$dir/poll.ready" \
            >"$dir/poll.out" 2>"$dir/poll.err" &
        POLL_PID=$!
        for ((i = 0; i < 3000; i++)); do
            [ -e "$dir/poll.ready" ] && break
            kill -0 "$POLL_PID" 2>/dev/null || break
            sleep 0.01
        done
        [ -e "$dir/poll.ready" ] || { cat "$dir/poll.err" >&2; die "the Info poller did not start"; }
        h0=$(host_jiffies)
        m0=$(cpu_ticks "$MOCK_PID")
        date +%s.%N >"$dir/t0.tmp"
        mv "$dir/t0.tmp" "$dir/t0"
        "$BIN/kvs-router" --config "$dir/kvs.yaml" >"$dir/kvs.log" 2>&1 &
        KVS_PID=$!
        # Another process may take the port between free_port and the bind.
        for ((i = 0; i < 50; i++)); do
            kill -0 "$KVS_PID" 2>/dev/null || break
            grep -q "accepting clients" "$dir/kvs.log" 2>/dev/null && break
            sleep 0.02
        done
        if ! kill -0 "$KVS_PID" 2>/dev/null && grep -q "already in use" "$dir/kvs.log"; then
            say "port $port was taken meanwhile; again with another"
            stop_pid "$POLL_PID" 2
            POLL_PID=
            wait "$KVS_PID" 2>/dev/null || true
            KVS_PID=
            continue
        fi
        break
    done
    local perf_pids=()
    if [ "$PROFILE" = 1 ] && [ "$run" = "$REPEAT" ]; then
        local w
        for ((i = 0; i < 100; i++)); do
            mapfile -t w < <(pgrep -P "$KVS_PID" || true)
            [ ${#w[@]} -ge "$shards" ] && break
            sleep 0.01
        done
        for pid in "${w[@]}"; do
            perf record -g -o "$dir/perf.$pid.data" -p "$pid" >/dev/null 2>&1 &
            perf_pids+=("$!")
        done
    fi
    # Until the poller is done; a router that dies meanwhile fails the run
    # (and the poller must not go on asking whatever else listens there).
    local rc=0
    while kill -0 "$POLL_PID" 2>/dev/null; do
        if ! kill -0 "$KVS_PID" 2>/dev/null; then
            stop_pid "$POLL_PID" 2
            tail -n 20 "$dir/kvs.log" >&2
            die "kvs-router ($shards shards) exited during the run"
        fi
        sleep 0.02
    done
    wait "$POLL_PID" || rc=$?
    POLL_PID=
    h1=$(host_jiffies)
    local workers hz
    hz=$(getconf CLK_TCK)
    mapfile -t workers < <(pgrep -P "$KVS_PID" || true)
    KVS_CPU=$(awk -v t="$(cpu_ticks "$KVS_PID" "${workers[@]}")" -v h="$hz" 'BEGIN { printf "%.2f", t / h }')
    KVS_MOCK_CPU=$(awk -v a="$m0" -v b="$(cpu_ticks "$MOCK_PID")" -v h="$hz" 'BEGIN { printf "%.2f", (b - a) / h }')
    read -r KVS_APPLY_CPU KVS_RUNQ < <(for pid in "${workers[@]}"; do main_thread_ns "$pid"; done |
        awk '{ c += $1; w += $2 } END { printf "%.3f %.3f\n", c / 1e9, w / 1e9 }')
    HOST_BUSY=$(awk -v a="$h0" -v b="$h1" -v n="$(nproc)" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; printf "%.2f", (t > 0 ? n * (y[1] - x[1]) / t : 0) }')
    for pid in "${perf_pids[@]+"${perf_pids[@]}"}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${perf_pids[@]+"${perf_pids[@]}"}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$rc" != 0 ] || ! grep -q '"ok": true' "$dir/poll.out"; then
        cat "$dir/poll.out" "$dir/poll.err" >&2
        tail -n 20 "$dir/kvs.log" >&2
        die "kvs ($shards shards) did not ingest $RECORDS records within ${INGEST_TIMEOUT}s"
    fi
    stop_pid "$KVS_PID" 15
    KVS_PID=
    KVS_SECONDS=$(json seconds <"$dir/poll.out")
    KVS_FIRST=$(json first_applied <"$dir/poll.out")
    if grep -qE ' (ERROR|WARN) ' "$dir/kvs.log"; then
        NOTES+=("kvs $shards shards run $run logged: $(grep -E ' (ERROR|WARN) ' "$dir/kvs.log" | head -n 3 | tr '\n' ' ')")
    fi
    if [ ${#perf_pids[@]} -gt 0 ]; then
        local f
        for f in "$dir"/perf.*.data; do
            echo
            echo "perf: kvs-node worker ${f##*/perf.} (${shards} shards), top symbols by self time:"
            { perf report -i "$f" --no-children --sort dso,symbol --stdio 2>/dev/null || true; } |
                awk '/^ +[0-9.]+%/ && n++ < 25 { sub(/ +[-] +[-] *$/, ""); print }' || true
        done
    fi
    rm -rf "$dir/data"
}

main() {
    echo "command: $CMDLINE"
    [ "$BUILD" = 1 ] && build_kvs
    for b in kvs-mock-kafka kvs-ingest-bench kvs-router kvs-node; do
        [ -x "$BIN/$b" ] || die "$BIN/$b is missing (run without --no-build)"
    done
    [ "$PROFILE" = 0 ] || command -v perf >/dev/null || die "--profile needs perf (apt-get install linux-perf)"
    [ -f "$BIN/py/kvs_pb2.py" ] || die "$BIN/py/kvs_pb2.py is missing (protoc + python3-protobuf; run deploy/install-deps.sh --test)"
    NOTES=()
    start_mock
    echo "kvs: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) release;" \
        "$(nproc) cores; librdkafka $(pkg-config --modversion rdkafka 2>/dev/null || echo '?');" \
        "mock cluster, 1 broker, topic bench with $PARTITIONS partitions"
    echo "records: $RECORDS, ${VALUE_SIZE}-byte values, $KEYS keys; LMDB txns of $BATCH;" \
        "median of $REPEAT run(s); kafka.properties: ${KAFKA_SET[*]:-(kvs defaults)};" \
        "storage.map_size: ${MAP_SIZE:-(kvs default)}"

    say "producing $RECORDS records"
    bench produce --records "$RECORDS" --value-size "$VALUE_SIZE" --keys "$KEYS"
    local produce_rate
    produce_rate=$(json rate <<<"$OUT")
    bench check --records "$RECORDS"
    say "produced at $(fmt "$produce_rate") records/s; every partition starts at offset 0"

    # (a) with what kvs ships, then the caller's overrides; and librdkafka's defaults.
    local sets=(--set fetch.wait.max.ms=50 --set queued.min.messages=1000000) kv r
    local shown="fetch.wait.max.ms=50 queued.min.messages=1000000"
    for kv in "${KAFKA_SET[@]+"${KAFKA_SET[@]}"}"; do sets+=(--set "$kv"); shown+=" $kv"; done
    local a=() a_cpu=() a_def=() b=() b_cpu=()
    for ((r = 1; r <= REPEAT; r++)); do
        say "(a) consume, run $r/$REPEAT"
        bench consume "${sets[@]}"
        a+=("$(json rate <<<"$OUT")")
        a_cpu+=("$(json cpu_seconds <<<"$OUT")")
        bench consume
        a_def+=("$(json rate <<<"$OUT")")
        say "(b) lmdb, run $r/$REPEAT"
        bench lmdb --dir "$TMP/lmdb-$r" --batch "$BATCH" --writemap "${sets[@]}"
        b+=("$(json rate <<<"$OUT")")
        b_cpu+=("$(json cpu_seconds <<<"$OUT")")
        rm -rf "$TMP/lmdb-$r"
    done
    local A A_DEF B MIN
    A=$(printf '%s\n' "${a[@]}" | median)
    A_DEF=$(printf '%s\n' "${a_def[@]}" | median)
    B=$(printf '%s\n' "${b[@]}" | median)
    MIN=$(awk -v a="$A" -v b="$B" 'BEGIN { print (a < b ? a : b) }')

    # us: median CPU seconds -> microseconds per record
    us() { median | awk -v n="$RECORDS" '{ printf "%.2f", $1 * 1e6 / n }'; }
    local rows=() s c c_runs first cpu apply runq mock busy
    for s in $SHARDS_LIST; do
        c_runs=() first=() cpu=() apply=() runq=() mock=() busy=()
        for ((r = 1; r <= REPEAT; r++)); do
            say "(c) kvs, $s shard(s), run $r/$REPEAT"
            kvs_run "$s" "$r"
            c_runs+=("$(awk -v n="$RECORDS" -v t="$KVS_SECONDS" 'BEGIN { print n / t }')")
            first+=("${KVS_FIRST:-0}")
            cpu+=("$KVS_CPU")
            apply+=("$KVS_APPLY_CPU")
            runq+=("$KVS_RUNQ")
            mock+=("$KVS_MOCK_CPU")
            busy+=("$HOST_BUSY")
        done
        c=$(printf '%s\n' "${c_runs[@]}" | median)
        rows+=("$(printf '%-34s | %9s | %-17s | %5.2f | %7s | %s s to 1st record; kvs %s CPU-s, mock %s; apply threads waited %s s for a CPU; host %s of %s cores busy' \
            "(c) kvs ingest, $s shard(s)" "$(fmt "$c")" "$(printf '%s\n' "${c_runs[@]}" | spread)" \
            "$(awk -v c="$c" -v m="$MIN" 'BEGIN { print c / m }')" \
            "$(printf '%s\n' "${apply[@]}" | us)" \
            "$(printf '%s\n' "${first[@]}" | median | awk '{ printf "%.2f", $1 }')" \
            "$(printf '%s\n' "${cpu[@]}" | median)" "$(printf '%s\n' "${mock[@]}" | median)" \
            "$(printf '%s\n' "${runq[@]}" | median | awk '{ printf "%.2f", $1 }')" \
            "$(printf '%s\n' "${busy[@]}" | median)" "$(nproc)")")
    done

    echo
    printf '%-34s | %9s | %-17s | %5s | %7s | %s\n' measurement "records/s" "runs (min..max)" \
        "/min" "CPU us" "notes"
    printf -- '-%.0s' {1..114}
    echo
    printf '%-34s | %9s | %-17s | %5s | %7s | %s\n' "(a) consume, kvs settings" "$(fmt "$A")" \
        "$(printf '%s\n' "${a[@]}" | spread)" "" "$(printf '%s\n' "${a_cpu[@]}" | us)" "$shown"
    printf '%-34s | %9s | %-17s | %5s | %7s | %s\n' "(a') consume, librdkafka defaults" \
        "$(fmt "$A_DEF")" "$(printf '%s\n' "${a_def[@]}" | spread)" "" "" "reference only"
    printf '%-34s | %9s | %-17s | %5s | %7s | %s\n' "(b) LMDB apply, 1 process" "$(fmt "$B")" \
        "$(printf '%s\n' "${b[@]}" | spread)" "" "$(printf '%s\n' "${b_cpu[@]}" | us)" \
        "txns of $BATCH, MDB_NOSYNC | MDB_WRITEMAP"
    printf '%-34s | %9s | %-17s | %5s | %7s |\n' "min(a, b)" "$(fmt "$MIN")" "" "" ""
    printf '%s\n' "${rows[@]}"
    echo
    echo "/min = (c) / min(a, b); target >= 0.80. (c) is timed from starting kvs-router to lag 0."
    echo "CPU us = CPU microseconds per record: (a) the consumer process (the mock broker's"
    echo "share not included), (b) the applying process, (c) the workers' main threads, which"
    echo "apply the records (librdkafka's threads not included). Unlike records/s, it hardly"
    echo "depends on what else runs on the machine; 'host ... cores busy' says how much did."
    if [ ${#NOTES[@]} -gt 0 ]; then
        echo
        printf 'note: %s\n' "${NOTES[@]}"
    fi
}

main
