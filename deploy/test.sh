#!/usr/bin/env bash
# Builds kvs twice (release, and with AddressSanitizer + UBSan) and runs
# the tests of both builds (unit and integration) in one ctest run. Installs
# missing packages first. Exits non-zero if anything fails.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
export KVS_DEPS_FLAGS=--test

# The release build is the one deploy/start.sh makes (same directory, same
# -O3 flags): what the tests pass is what the start command runs, and a
# warning only -O3 finds fails here, not on a user's first start.
# Each phase says how long it took (SECONDS: bash's clock), so a run that
# nears CI's 15 minutes shows where they went.
echo "== release build"
"$top/deploy/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=Release
echo "== release build took ${SECONDS} s (packages checked first)"
start=$SECONDS
echo "== sanitizer build (ASan + UBSan)"
"$top/deploy/build.sh" "$top/build-asan" -DCMAKE_BUILD_TYPE=Debug -DKVS_SANITIZE=ON
echo "== sanitizer build took $((SECONDS - start)) s"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Every test of the release build, and every test of the sanitizer build
# (named asan/...) but the integration tests tests/asan_covered.txt lists:
# the sanitizer build's other tests run every line and branch those run.
# One ctest run over both builds, so that the long tests of both start first
# and no build's last test runs alone. Three tests per core: most
# integration tests spend their time waiting (for timeouts, restarts,
# heartbeats), not computing; at three per two cores the cores were still
# idle nearly half the time (user + sys 13 of 28 core-minutes) and the run
# took 14 of its 15 minutes, at two per core 12 on that machine, and 15.5
# on a slower one (user + sys 17 of 31 core-minutes), where three per core
# took 13. KVS_TEST_JOBS=N runs N at a time instead.
test_jobs=${KVS_TEST_JOBS:-$((3 * jobs))}
both="$top/build-tests"
mkdir -p "$both"
printf 'subdirs("%s" "%s")\n' "$top/build" "$top/build-asan" > "$both/CTestTestfile.cmake"
echo "== tests (release, and asan/: sanitizers)"
cd "$both"
exec ctest --output-on-failure -j "$test_jobs" -LE asan_covered
