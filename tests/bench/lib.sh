# Shared by the benchmark scripts in tests/bench/ (sourced, not run).
# Each script defines say() and die() before sourcing this file.

# Stops a process we started: SIGTERM, then SIGKILL after `grace` seconds.
stop_pid() {
    local pid=$1 grace=$2 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# A loopback port nobody listens on (nothing answers a connect to it),
# other than any port given as an argument.
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 40000))
        case " $* " in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free loopback port found"
}
