#!/usr/bin/env bash
# Rewrites tests/asan_covered.txt: the integration tests the sanitizer build
# leaves out of CI because the tests it runs cover every line and branch
# they run (tests/coverage/asan_select.py says how). Takes some 16 minutes
# on 2 cores. Run it when the suite or the code changed much; a test added
# since the last run is simply run in both builds.
#   tests/coverage/asan_select.sh [BUILD_DIR [WORK_DIR]]
# Each run measures afresh (the work directory is emptied: a test measured
# against older code or tests would count what it covered then);
# KVS_SELECT_RESUME=1 instead finishes a run that was interrupted.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build-cov}
work=${2:-$build/asan-select}
# The modules whose tests feed kvs hostile input: all of them run under the
# sanitizers whatever lines they reach.
keep=test_live_fuzz,test_resp_fuzzdiff,test_hostile,test_hostile_api,test_hostile_peers
keep=$keep,test_badinput,test_badinput_tls,test_kafka_hostile

if [ "${KVS_SELECT_RESUME:-0}" != 1 ]; then
  rm -rf "$work"
fi
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS=--coverage >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
{
  cat <<'EOF'
# Integration tests the sanitizer build (ASan + UBSan) leaves out of CI: the
# tests it does run cover every line and branch of kvs's code that these do.
# Every one of them runs in the release build. Made by
# tests/coverage/asan_select.sh (see tests/coverage/asan_select.py);
# CMakeLists.txt labels these asan_covered in a sanitizer build and
# deploy/test.sh runs the sanitizer build with -LE asan_covered. A test
# missing from this list runs in both builds.
EOF
  /usr/bin/python3 "$top/tests/coverage/asan_select.py" "$build" "$work" --keep "$keep"
} > "$top/tests/asan_covered.txt.new"
mv "$top/tests/asan_covered.txt.new" "$top/tests/asan_covered.txt"
