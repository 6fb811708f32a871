"""Live fuzzing: seeded, bounded hostile traffic against a running node.

The libFuzzer targets (tests/fuzz) try the parsers alone; here a real
kvs-router with two local workers takes valid requests of every command,
mutated protobuf frames, Redis commands of any arity, and clients that
close mid-frame, half-close or stop reading, all at once over several
connections (livefuzz.py makes the traffic and judges each answer). Two
nodes: one open (no users, local reads, a table bound to a mock Kafka
topic when kvs-mock-kafka is built), one closed (users, TLS on both front
doors, local reads off).

After the traffic, the oracle: no process exited or was restarted (pids,
and the log holds no exit, restart or sanitizer report); every answer had
a sane status (checked as it came); each owner's shadow model matches the
store; the node answers Ping and a fresh client's Hset/Hget; the router's
and workers' memory stayed bounded (not under a sanitizer).

CI mode (the default): fixed seeds, about 5 s of traffic per node.
Long mode: KVS_LIVE_FUZZ_SECONDS=N runs each node N/2 s; KVS_LIVE_FUZZ_SEED
picks the seed (default 1).

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import os
import re
import subprocess
import threading
import time
import unittest

import livefuzz
from kvstest import BUILD_DIR, SANITIZED, pb, pyval, tls_context, tls_yaml
from routertest import RouterTestCase, free_port, router_pids

CI_SECONDS = 5.0
MAX_FRAME = 256 * 1024
MAX_KEYS = 5000
CLI = os.path.join(BUILD_DIR, "kvs-cli")
MOCK = os.path.join(BUILD_DIR, "kvs-mock-kafka")
# Where a process's own memory (RssAnon) may be at the end, above its start, in bytes.
RSS_GROWTH_END = 96 << 20
RSS_PEAK = 512 << 20
CRASH = re.compile(r"exited|restarting shard|AddressSanitizer|LeakSanitizer|runtime error:|"
                   r"SIGSEGV|SIGBUS|SIGABRT|Assertion|core dumped|killed")

USERS = [("fuzz", "fuzz-pw", {"own_*": ["read", "write"], "fz*": ["read", "write"],
                              "kb": ["read", "write"], "ro": ["read"], "rs": ["read", "write"]}),
         ("reader", "reader-pw", {"*": ["read"]}),
         ("ops", "ops-pw", {"*": ["read", "write", "admin"]})]


def token_hash(token):
    p = subprocess.run([CLI, "hash-token", "-", "1000"], input=token.encode(),
                       capture_output=True, timeout=10, check=True)
    return p.stdout.decode().strip()


def users_yaml():
    lines = ["users:"]
    for name, token, allow in USERS:
        lines += ["  - name: %s" % name, '    token: "%s"' % token_hash(token),
                  "    allow: {%s}" % ", ".join('"%s": [%s]' % (p, ", ".join(r))
                                                for p, r in allow.items())]
    return "\n".join(lines) + "\n"


def rss_anon(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class LiveFuzzTest(RouterTestCase):
    def seconds(self):
        long = livefuzz.env_seconds()
        return long / 2 if long else CI_SECONDS

    def seed(self, base):
        return int(os.environ.get("KVS_LIVE_FUZZ_SEED", "0") or 0) * 7919 + base

    def start_node(self, users, tls, local_reads, kafka):
        self.rport = free_port()
        router_yaml = ["local_reads: %s" % str(local_reads).lower(),
                       'resp_listen: "127.0.0.1:%d"' % self.rport]
        extra = ("limits: {max_frame: %dKiB, max_keys: %d, frame_timeout: 2s, "
                 "auth_failures_per_minute: 100000}\n" % (MAX_FRAME // 1024, MAX_KEYS))
        mock = None
        if kafka:
            from kafkatest import MockKafka, ingest_yaml
            mock = MockKafka({"kb": 4})
            self.addCleanup(mock.close)
            extra += ingest_yaml(mock.bootstrap, [("kb", "kb", "value", 4)])
        if users:
            extra += users_yaml()
        ctx_tls = None
        if tls:
            extra += tls_yaml(router={"enabled": "true", "client_cert": "optional"})
            ctx_tls = tls_context()
        r = self.router(shards=2, partitions=16, router_yaml=router_yaml, extra_yaml=extra,
                        tls=ctx_tls, log="{level: info}")
        return r, ctx_tls, mock

    def pids(self, r):
        return {"master": r.proc.pid, "routers": router_pids(r), "workers": r.workers()}

    def fuzz(self, seed, users, tls, local_reads, kafka):
        r, ctx_tls, _ = self.start_node(users, tls, local_reads, kafka)
        before = self.pids(r)
        procs = [before["master"]] + list(before["routers"].values()) + \
            list(before["workers"].values())
        base = {p: rss_anon(p) for p in procs}
        peak = dict(base)
        findings = livefuzz.Findings()
        userlist = [(n, t) for n, t, _ in USERS] if users else []
        ctx = livefuzz.Ctx(r.port, self.rport, MAX_FRAME, MAX_KEYS, userlist, ctx_tls, kafka,
                           findings)
        done = threading.Event()

        def sample():
            while not done.wait(0.25):
                for p in procs:
                    m = rss_anon(p)
                    if m is not None and m > (peak[p] or 0):
                        peak[p] = m
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        seconds = self.seconds()
        t0 = time.monotonic()
        shadows = livefuzz.run(ctx, seed, seconds)
        elapsed = time.monotonic() - t0
        done.set()
        sampler.join(5)
        time.sleep(0.5)  # closes in flight settle

        problems = list(findings.items)
        # no process exited or was restarted
        after = self.pids(r)
        if after != before:
            problems.append("processes changed: %r -> %r" % (before, after))
        if r.proc.poll() is not None:
            problems.append("the router master exited with %r" % r.proc.returncode)
        crash = [line for line in r.stderr().splitlines() if CRASH.search(line)]
        if crash:
            problems.append("log: " + " | ".join(crash[:10]))
        # the node still serves a fresh client
        with r.client(tls=ctx_tls) as c:
            if users:
                a = c.call(livefuzz.auth_req("ops", "ops-pw"))
                if a.status != 200:
                    problems.append("fresh Auth: %d %s" % (a.status, a.message))
            p = c.call(pb.CommandRequest(ping=pb.Ping()))
            if p.status != 200:
                problems.append("fresh Ping: %d %s" % (p.status, p.message))
            s = c.hset("fresh", b"k", "v%d" % seed)
            g = c.hget("fresh", b"k")
            if s.status != 200 or g.status != 200 or pyval(g.values[0]) != "v%d" % seed:
                problems.append("fresh Hset/Hget: %d %s / %d %s" % (s.status, s.message,
                                                                   g.status, g.message))
            # every owner's shadow matches the store
            for sh in shadows:
                for k in sh.keys:
                    want = sh.vals.get(k)
                    if want is livefuzz.UNKNOWN:
                        continue
                    got = c.hget(sh.table, k)
                    if want is None:
                        if got.status != 404:
                            problems.append("%s %r: absent in the model, store says %d %s %r"
                                            % (sh.table, k, got.status, got.message,
                                               got.values[:1]))
                    elif got.status != 200 or not livefuzz.same(pyval(got.values[0]), want):
                        problems.append("%s %r: model %s, store %d %s"
                                        % (sh.table, k, livefuzz.fmt(want), got.status,
                                           livefuzz.fmt(pyval(got.values[0])) if got.values
                                           else got.message))
        # memory stayed bounded
        if not SANITIZED:
            for p in procs:
                end = rss_anon(p)
                if base[p] is None or end is None:
                    continue
                if end > base[p] + RSS_GROWTH_END or (peak[p] or 0) > RSS_PEAK:
                    problems.append("pid %d: RssAnon %d KiB at start, peak %d, end %d"
                                    % (p, base[p] >> 10, peak[p] >> 10, end >> 10))
        stats = sorted(findings.stats.items())
        summary = "seed %d, %.1f s, %s" % (seed, elapsed, ", ".join("%s=%d" % kv for kv in stats))
        if os.environ.get("KVS_LIVE_FUZZ_VERBOSE"):
            print("\n" + summary)
            if not SANITIZED:
                print("rss KiB start/peak/end: " + ", ".join(
                    "%d:%d/%d/%d" % (p, (base[p] or 0) >> 10, (peak[p] or 0) >> 10,
                                     (rss_anon(p) or 0) >> 10) for p in procs))
        self.assertFalse(problems, "\n".join(problems[:40]) + "\n" + summary)
        # answers were checked at all: the traffic was not refused wholesale
        self.assertGreater(findings.stats.get("status 200", 0), 50, summary)

    def test_open_node_local_reads_kafka(self):
        """No users, local reads, RESP, a table bound to a mock topic."""
        kafka = os.path.exists(MOCK)
        self.fuzz(self.seed(1), users=False, tls=False, local_reads=True, kafka=kafka)

    def test_users_tls_no_local_reads(self):
        """Users and TLS on both front doors, reads through the workers."""
        self.fuzz(self.seed(2), users=True, tls=True, local_reads=False, kafka=False)


if __name__ == "__main__":
    unittest.main()
