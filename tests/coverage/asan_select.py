#!/usr/bin/python3
"""Chooses which integration tests the sanitizer build runs in CI.

Every integration test runs in the release build. The sanitizer build
(ASan + UBSan) costs some 1.6 times as much per test, so CI runs there the
smallest-cost set of integration tests that together run every line and
every branch of kvs's code (common/, node/, router/, tools/) that the whole
suite runs, plus every test of the modules named with --keep (the hostile
input tests: their point is what the sanitizers see, not which lines they
reach). The others are written to tests/asan_covered.txt; CMake labels
them asan_covered in a sanitizer build and deploy/test.sh leaves that
label out. A test not in the file (a new one) runs in both builds.

How: a coverage build (--coverage), its tests told to behave as in the
sanitizer build (KVS_TEST_SANITIZED=1: the same skips, the same margins),
runs each integration test once with its own GCOV_PREFIX and
KVS_LEAK_REPORT (so every node stops with SIGTERM and writes its counts);
gcov's JSON gives each test's set of lines and branches taken; a greedy
weighted set cover picks tests by new lines and branches per second, and
then drops, dearest first, each one the others chosen make unneeded.

    tests/coverage/asan_select.sh    # builds build-cov, runs, rewrites the list

Usage: asan_select.py BUILD_COV WORK_DIR [--jobs N] [--keep mod,mod]
The list goes to stdout. WORK_DIR keeps each test's counts: a second run
reuses what a first one finished.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IT_DIR = os.path.join(SRC, "tests", "integration")
CODE_DIRS = ("common/", "node/", "router/", "tools/", "plugins/")


def integration_tests(build):
    """Every integration test method (module.Class.method): the arguments of
    the build's integration ctests, one per class."""
    out = subprocess.run(["ctest", "--show-only=json-v1", "-L", "integration"], cwd=build,
                         capture_output=True, text=True, check=True).stdout
    names = []
    for t in json.loads(out)["tests"]:
        names += [a for a in t.get("command", []) if a.startswith("test_") and a.count(".") == 2]
    return names


def run_one(build, work, name):
    """Runs one test with its own GCOV_PREFIX; writes DONE (rc, seconds)."""
    d = os.path.join(work, name)
    done = os.path.join(d, "DONE")
    if os.path.exists(done):
        return name
    os.makedirs(d, exist_ok=True)
    leaks = os.path.join(d, "leaks")
    os.makedirs(leaks, exist_ok=True)
    env = dict(os.environ, KVS_BUILD_DIR=build, PYTHONPATH=os.path.join(build, "py"),
               GCOV_PREFIX=d, GCOV_PREFIX_STRIP="0", KVS_LEAK_REPORT=leaks,
               KVS_TEST_SANITIZED="1")  # the tests behave as in the sanitizer build
    t0 = time.monotonic()
    try:
        rc = subprocess.run([sys.executable, "-m", "unittest", name], cwd=IT_DIR, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=600).returncode
    except subprocess.TimeoutExpired:
        rc = -1
    with open(done + ".tmp", "w") as f:
        f.write("%d %.2f\n" % (rc, time.monotonic() - t0))
    os.rename(done + ".tmp", done)
    return name


def covered(work, name):
    """The lines and branches of kvs's code one test's processes ran."""
    d = os.path.join(work, name)
    gcdas = []
    for root, _, files in os.walk(d):
        for f in files:
            if f.endswith(".gcda"):
                path = os.path.join(root, f)
                link = path[:-5] + ".gcno"  # gcov wants the notes file beside the counts
                if not os.path.lexists(link):
                    os.symlink(path[len(d):][:-5] + ".gcno", link)
                gcdas.append(path)
    ids = set()
    if not gcdas:
        return name, ids
    out = subprocess.run(["gcov", "--json-format", "--stdout", "--branch-probabilities"] + gcdas,
                         cwd=d, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if not line.strip():
            continue
        for f in json.loads(line)["files"]:
            path = os.path.relpath(f["file"], SRC)
            if not path.startswith(CODE_DIRS):
                continue
            for ln in f["lines"]:
                if ln["count"] > 0:
                    ids.add("%s:%d" % (path, ln["line_number"]))
                    for i, b in enumerate(ln["branches"]):
                        if b["count"] > 0:
                            ids.add("%s:%d:%d" % (path, ln["line_number"], i))
    return name, ids


def select(sets, cost, must):
    """Greedy weighted set cover, starting from the tests in `must`."""
    chosen = set(must)
    have = set().union(*(sets[n] for n in chosen)) if chosen else set()
    while True:
        best, best_rate = None, 0.0
        for n, s in sets.items():
            if n not in chosen:
                rate = len(s - have) / cost[n]
                if rate > best_rate:
                    best, best_rate = n, rate
        if best is None:
            return chosen
        chosen.add(best)
        have |= sets[best]


def prune(sets, cost, must, chosen):
    """Drops from a cover the tests it does not need, dearest first: the
    greedy choice keeps an early pick whose lines and branches later picks
    all run as well."""
    times = {}  # how many chosen tests run each line or branch
    for n in chosen:
        for i in sets[n]:
            times[i] = times.get(i, 0) + 1
    kept = set(chosen)
    for n in sorted(chosen - set(must), key=lambda n: (-cost[n], n)):
        if all(times[i] > 1 for i in sets[n]):
            kept.discard(n)
            for i in sets[n]:
                times[i] -= 1
    return kept


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build")
    ap.add_argument("work")
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--keep", default="")
    a = ap.parse_args()
    build, work = os.path.abspath(a.build), os.path.abspath(a.work)
    names = integration_tests(build)
    with ThreadPoolExecutor(a.jobs) as ex:
        for i, _ in enumerate(ex.map(lambda n: run_one(build, work, n), names), 1):
            if i % 50 == 0:
                print("ran %d of %d tests" % (i, len(names)), file=sys.stderr)
    sets, cost, rc = {}, {}, {}
    with ProcessPoolExecutor(os.cpu_count()) as ex:
        for name, ids in ex.map(covered, [work] * len(names), names, chunksize=4):
            sets[name] = ids
    for name in names:
        with open(os.path.join(work, name, "DONE")) as f:
            code, secs = f.readline().split()
        rc[name], cost[name] = int(code), max(float(secs), 0.3)
    keep = set(m for m in a.keep.split(",") if m)
    # A test that failed here may have stopped before reaching its lines: kept.
    must = [n for n in names if n.split(".")[0] in keep or rc[n] != 0]
    chosen = prune(sets, cost, must, select(sets, cost, must))
    left = sorted(set(names) - chosen)
    universe = set().union(*sets.values())
    print("%d lines and branches; %d tests run them all (%.0f s here), %d are left out "
          "(%.0f s); failed here, so kept: %s" %
          (len(universe), len(chosen), sum(cost[n] for n in chosen), len(left),
           sum(cost[n] for n in left), ", ".join(n for n in names if rc[n] != 0) or "none"),
          file=sys.stderr)
    for n in left:
        print(n)


if __name__ == "__main__":
    main()
