"""Live fuzzing: seeded, bounded hostile traffic against a running node.

The libFuzzer targets (tests/fuzz) try the parsers alone; here a real
kvs-router with two local workers takes valid requests of every command,
mutated protobuf frames, Redis commands of any arity, and clients that
close mid-frame, half-close or stop reading, all at once over several
connections (livefuzz.py makes the traffic and judges each answer). Two
nodes: one open (no users, local reads, a table bound to a mock Kafka
topic when kvs-mock-kafka is built), one closed (users, TLS on both front
doors, local reads off).

Three more surfaces, each with owners, mutators and abusers: a worker's own
TCP listener (node.listen, what other nodes' routers reach) with users and
tls.node; two nodes whose shards both serve (cluster.nodes) with one worker
killed -9 halfway, after which both replicas must agree (kvs-cli digest)
and hold every write the model knows; and the bound table while the mock
brokers are slowed, refuse Produce requests and go down and up. The
owners model bound-table writes as README says (503 outcome_unknown or a
position: unknown; "did not happen": not written), and a RESP owner
models HSET/HGET/HDEL/HMGET/HINCRBY on its own unbound table exactly.

After the traffic, the oracle: no process exited or was restarted (pids,
and the log holds no exit, restart or sanitizer report); every answer had
a sane status (checked as it came); each owner's shadow model matches the
store; the node answers Ping and a fresh client's Hset/Hget; the router's
and workers' memory stayed bounded (not under a sanitizer).

CI mode (the default): fixed seeds, about 5 s of traffic per node, 2 to 3 s
on each of the three other surfaces. Long mode: KVS_LIVE_FUZZ_SECONDS=N runs
each node N/2 s and each other surface N/4 s; KVS_LIVE_FUZZ_SEED
picks the seed (default 1).

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import glob
import os
import random
import re
import signal
import subprocess
import threading
import time
import unittest

import livefuzz
from kvstest import (BUILD_DIR, SANITIZED, Client, free_ports, pb, pyval, tls_context,
                     tls_yaml)
from routertest import RouterTestCase, free_port, partition_of, router_pids

CI_SECONDS = 5.0
MAX_FRAME = 256 * 1024
MAX_KEYS = 5000
# The surfaces beyond the two nodes (a worker's own listener, replicas,
# broker trouble) run this long each in CI mode, a quarter of the long mode.
SHORT_SECONDS = 2.0
LIMITS = ("limits: {max_frame: %dKiB, max_keys: %d, frame_timeout: 2s, "
          "auth_failures_per_minute: 100000}\n" % (MAX_FRAME // 1024, MAX_KEYS))
CLI = os.path.join(BUILD_DIR, "kvs-cli")
MOCK = os.path.join(BUILD_DIR, "kvs-mock-kafka")
# Where a process's own memory (RssAnon) may be at the end, above its start, in bytes.
RSS_GROWTH_END = 96 << 20
RSS_PEAK = 512 << 20
CRASH = re.compile(r"exited|restarting shard|AddressSanitizer|LeakSanitizer|runtime error:|"
                   r"SIGSEGV|SIGBUS|SIGABRT|Assertion|core dumped|killed")
SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|Assertion|core dumped")

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

    def short_seconds(self):
        long = livefuzz.env_seconds()
        return long / 4 if long else SHORT_SECONDS

    def seed(self, base):
        return int(os.environ.get("KVS_LIVE_FUZZ_SEED", "0") or 0) * 7919 + base

    def start_node(self, users, tls, local_reads, kafka):
        self.rport = free_port()
        router_yaml = ["local_reads: %s" % str(local_reads).lower(),
                       'resp_listen: "127.0.0.1:%d"' % self.rport]
        extra = LIMITS
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
        findings = livefuzz.Findings()
        userlist = [(n, t) for n, t, _ in USERS] if users else []
        ctx = livefuzz.Ctx(r.port, self.rport, MAX_FRAME, MAX_KEYS, userlist, ctx_tls, kafka,
                           findings)
        self.run_and_judge(seed, [r], ctx, lambda: r.client(tls=ctx_tls), self.seconds(),
                           dict(resp_owners=1))

    def run_and_judge(self, seed, routers, ctx, fresh_client, seconds, run_kw,
                      killed=None, extra=(), key_ok=None, after=None, fresh_table="fresh",
                      min_ok=50):
        """Runs the fuzzer at ctx, then the oracle. routers: every node
        (their processes must all survive, but for the workers `killed`
        {router index: shard} restarts once); fresh_client() connects to
        where ctx points; key_ok(table, key): which keys the fresh client
        may read; after(problems, shadows): more checks, before the
        shadows are read back."""
        before = [self.pids(r) for r in routers]
        procs = [p for b in before for p in [b["master"]] + list(b["routers"].values()) +
                 list(b["workers"].values())]
        base = {p: rss_anon(p) for p in procs}
        peak = dict(base)
        findings = ctx.findings
        done = threading.Event()

        def sample():
            while not done.wait(0.25):
                for p in procs:
                    m = rss_anon(p)
                    if m is not None and m > (peak[p] or 0):
                        peak[p] = m
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        shadows = livefuzz.run(ctx, seed, seconds, extra=extra, **run_kw)
        elapsed = time.monotonic() - t0
        done.set()
        sampler.join(5)
        time.sleep(0.5)  # closes in flight settle

        problems = list(findings.items)
        # no process exited or was restarted (but a worker killed on purpose)
        for i, (r, b) in enumerate(zip(routers, before)):
            after_pids = self.pids(r)
            if killed and i in killed:
                shard = killed[i]
                new = r.wait_worker(shard, not_pid=b["workers"][shard], timeout=10)
                after_pids = self.pids(r)
                if new is None or after_pids["workers"].get(shard) != new:
                    problems.append("killed worker %d of %s not restarted" % (shard, r.name))
                after_pids["workers"][shard] = b["workers"][shard]
            if after_pids != b:
                problems.append("processes changed: %r -> %r" % (b, after_pids))
            if r.proc.poll() is not None:
                problems.append("the router master exited with %r" % r.proc.returncode)
            crash = [line for line in r.stderr().splitlines() if CRASH.search(line)]
            if killed and i in killed:
                crash = [line for line in crash if SANITIZER.search(line)]
            if crash:
                problems.append("log of %s: %s" % (r.name, " | ".join(crash[:10])))
        if after is not None:
            after(problems, shadows)
        # the node still serves a fresh client
        users = bool(ctx.users)
        with fresh_client() as c:
            if users:
                a = c.call(livefuzz.auth_req("ops", "ops-pw"))
                if a.status != 200:
                    problems.append("fresh Auth: %d %s" % (a.status, a.message))
            p = c.call(pb.CommandRequest(ping=pb.Ping()))
            if p.status != 200:
                problems.append("fresh Ping: %d %s" % (p.status, p.message))
            fresh = next(k for k in (b"fresh%d" % i for i in range(100))
                         if key_ok is None or key_ok(fresh_table, k))
            s = c.hset(fresh_table, fresh, "v%d" % seed)
            if livefuzz.fenced(s, ctx):
                s = self.lift_fences(routers, lambda: c.hset(fresh_table, fresh, "v%d" % seed))
            g = c.hget(fresh_table, fresh)
            if s.status != 200 or g.status != 200 or pyval(g.values[0]) != "v%d" % seed:
                problems.append("fresh Hset/Hget: %d %s / %d %s" % (s.status, s.message,
                                                                   g.status, g.message))
            # every owner's shadow matches the store
            self.check_shadows(c, shadows, problems, key_ok=key_ok)
        # memory stayed bounded
        if not SANITIZED:
            for p in procs:
                end = rss_anon(p)
                if base[p] is None or end is None:
                    continue
                if end > base[p] + RSS_GROWTH_END or (peak[p] or 0) > RSS_PEAK:
                    problems.append("pid %d: RssAnon %d KiB at start, peak %d, end %d"
                                    % (p, base[p] >> 10, peak[p] >> 10, end >> 10))
        # a clean stop after the abuse: every process exits 0 and, in the
        # sanitizer build, LeakSanitizer (which runs at a clean exit, never
        # at the SIGKILL of a cleanup) reports nothing
        for r in routers:
            start = len(r.stderr())
            rc = r.stop()
            if rc != 0:
                problems.append("%s exited with %r on SIGTERM" % (r.name, rc))
            if not r.wait_all_gone(10):
                problems.append("processes of %s left after SIGTERM" % r.name)
            bad = [line for line in r.stderr()[start:].splitlines() if SANITIZER.search(line)]
            if bad:
                problems.append("log of %s at stop: %s" % (r.name, " | ".join(bad[:10])))
        stats = sorted(findings.stats.items())
        summary = "seed %d, %.1f s, %s" % (seed, elapsed, ", ".join("%s=%d" % kv for kv in stats))
        if os.environ.get("KVS_LIVE_FUZZ_VERBOSE"):
            print("\n" + summary)
        self.assertFalse(problems, "\n".join(problems[:40]) + "\n" + summary)
        # answers were checked at all: the traffic was not refused wholesale
        self.assertGreater(findings.stats.get("status 200", 0), min_ok, summary)
        return findings

    def lift_fences(self, routers, write):
        """An admin's Snapshot sent straight to a worker fenced its shard's
        unbound writes (README, Unbound tables on a shard that moves): the
        README's way out, removing shard-N/copied-out and reloading, makes
        write() (retried for up to 20 s) succeed again. Returns its last
        answer."""
        for r in routers:
            for path in glob.glob(os.path.join(r.data_dir, "shard-*", "copied-out")):
                os.remove(path)
            r.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            resp = write()
            if resp.status == 200 or time.monotonic() > deadline:
                return resp
            time.sleep(0.1)

    def check_shadows(self, c, shadows, problems, where="", key_ok=None):
        """Reads every known key of every shadow through client c (those
        key_ok(table, key) accepts)."""
        for sh in shadows:
            for k in sh.keys:
                want = sh.vals.get(k)
                if want is livefuzz.UNKNOWN or (key_ok and not key_ok(sh.table, k)):
                    continue
                got = c.hget(sh.table, k)
                if want is None:
                    if got.status != 404:
                        problems.append("%s%s %r: absent in the model, store says %d %s %r"
                                        % (where, sh.table, k, got.status, got.message,
                                           got.values[:1]))
                    continue
                val = pyval(got.values[0]) if got.status == 200 and got.values else None
                if sh.resp and val is not None:
                    val = livefuzz.stored_bytes(val)
                if got.status != 200 or not livefuzz.same(val, want):
                    problems.append("%s%s %r: model %s, store %d %s"
                                    % (where, sh.table, k, livefuzz.fmt(want), got.status,
                                       livefuzz.fmt(val) if got.values else got.message))

    def test_open_node_local_reads_kafka(self):
        """No users, local reads, RESP, a table bound to a mock topic."""
        kafka = os.path.exists(MOCK)
        self.fuzz(self.seed(1), users=False, tls=False, local_reads=True, kafka=kafka)

    def test_users_tls_no_local_reads(self):
        """Users and TLS on both front doors, reads through the workers."""
        self.fuzz(self.seed(2), users=True, tls=True, local_reads=False, kafka=False)

    def test_worker_listener_users_tls(self):
        """Owners, mutators and abusers straight at a worker's TCP listener
        (node.listen: what other nodes' routers use), users and tls.node on;
        the owners model the keys of that worker's shard."""
        base = free_ports(2)
        r = self.router(shards=2, partitions=16, node_listen="127.0.0.1:%d" % base,
                        extra_yaml=LIMITS + users_yaml() + tls_yaml(node={"enabled": "true"}),
                        log="{level: info}")
        shard = 1
        addr = ("127.0.0.1", base + shard)
        ctx_tls = tls_context(cert="bob")  # a valid certificate naming no user: Auth decides
        ctx = livefuzz.Ctx(addr[1], None, MAX_FRAME, MAX_KEYS, [(n, t) for n, t, _ in USERS],
                           ctx_tls, False, livefuzz.Findings())

        def mine(table, key):
            return r.shard_of(key) == shard
        ctx.key_filter = lambda k: mine(None, k)
        ctx.snapshots = True  # an admin's Snapshot fences the shard's unbound writes
        self.run_and_judge(self.seed(3), [r], ctx, lambda: Client(addr, tls=ctx_tls),
                           self.short_seconds(), dict(resps=0), key_ok=mine)

    def kb_shard(self, key):
        return partition_of(key, 4) % 2

    def test_replicas_kill9_a_worker(self):
        """Two nodes serving both shards (cluster.nodes), the owners'
        keys of the bound table, and a kill -9 of one of node a's workers
        halfway: 503 outcome_unknown makes keys unknown; every other write
        must be on both replicas at the end (their digests agree, and each
        replica's worker reads the model's values)."""
        if not os.path.exists(MOCK):
            self.skipTest("kvs-mock-kafka is not built")
        from kafkatest import MockKafka, ingest_yaml
        mock = MockKafka({"kb": 4})
        self.addCleanup(mock.close)
        bases = {"a": free_ports(2), "b": free_ports(2)}
        nodes = ["  nodes:"] + ['    - {name: %s, address: "127.0.0.1:%d", shards: [0, 1]}'
                                % (n, bases[n]) for n in "ab"]
        extra = LIMITS + ingest_yaml(mock.bootstrap, [("kb", "kb", "value", 4)], "kvs",
                                     {"reconnect.backoff.max.ms": "500"})
        a, b = [self.router(start=False, shards=2, partitions=16, name=n, node_name=n,
                            cluster_yaml=nodes, timeout="2s", extra_yaml=extra) for n in "ab"]
        for r in (a, b):
            r.start()
        for r in (a, b):
            self.wait_serving_kb(r)
        ctx = livefuzz.Ctx(a.port, None, MAX_FRAME, MAX_KEYS, [], None, True, livefuzz.Findings())
        ctx.flaky = True
        # Replicas may lag from the start, not only once a worker is
        # killed: a's workers copy their shards from b as the traffic
        # begins, b answers the writes meanwhile, and a read on a new
        # connection carries no position (README, Replicas: Reads; seen:
        # a's copy, served right after it was installed, lacked a write b
        # had acknowledged 30 ms after copying).
        ctx.replicas_lag = True

        def killer(deadline):
            time.sleep(max(0.0, deadline - time.monotonic()) / 2)
            a.kill_worker(0)
            ctx.count("killed worker 0 of a")

        def after(problems, shadows):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    with Client(a.socket_path(0), timeout=5) as c:
                        if c.call(pb.CommandRequest(ping=pb.Ping())).status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.05)
            # A replica applies the topic's last records a moment after the
            # other: both checks are retried for a while before they count.
            deadline = time.monotonic() + 15
            while True:
                found = []
                p = subprocess.run([CLI, "--config", a.config, "--timeout", "5", "digest", "kb"],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
                out = p.stdout.decode() + p.stderr.decode()
                if p.returncode != 0 or out.count("replicas agree") != 2:
                    found.append("digest kb: exit %d: %s" % (p.returncode, out))
                for r in (a, b):
                    for s in (0, 1):
                        with Client(r.socket_path(s), timeout=10) as c:
                            self.check_shadows(c, shadows, found,
                                               "node %s shard %d: " % (r.name, s),
                                               key_ok=lambda t, k, s=s: self.kb_shard(k) == s)
                if not found or time.monotonic() > deadline:
                    problems.extend(found)
                    return
                time.sleep(0.5)
        self.run_and_judge(self.seed(4), [a, b], ctx, lambda: a.client(), self.short_seconds(),
                           dict(tables=("kb",), resps=0), killed={0: 0}, extra=[killer],
                           after=after, fresh_table="kb")

    def wait_serving_kb(self, r, timeout=20):
        probes = {}
        i = 0
        while len(probes) < 2:
            probes.setdefault(self.kb_shard(b"probe%d" % i), b"probe%d" % i)
            i += 1
        deadline = time.monotonic() + timeout
        with r.client() as c:
            while time.monotonic() < deadline:
                got = [c.hget("kb", k) for k in probes.values()]
                if all(g.status in (200, 404) for g in got):
                    return
                time.sleep(0.05)
        self.fail("node %s does not serve kb: %r" % (r.name, [(g.status, g.message) for g in got]))

    def test_bound_table_broker_trouble(self):
        """The open node's bound table while the mock brokers slow down,
        fail Produce requests and go down and up (kvs-mock-kafka control):
        the owners model 503 outcome_unknown, "did not happen" and answers
        with a position as README's log-first writes say."""
        if not os.path.exists(MOCK):
            self.skipTest("kvs-mock-kafka is not built")
        from kafkatest import MockKafka, ingest_yaml
        mock = MockKafka({"kb": 4}, control=True)
        self.addCleanup(mock.close)
        self.rport = free_port()
        r = self.router(shards=2, partitions=16, timeout="2s",
                        router_yaml=["local_reads: true",
                                     'resp_listen: "127.0.0.1:%d"' % self.rport],
                        extra_yaml=LIMITS + ingest_yaml(mock.bootstrap, [("kb", "kb", "value", 4)],
                                                        "kvs", {"reconnect.backoff.max.ms": "200"}))
        seed = self.seed(5)
        ctx = livefuzz.Ctx(r.port, self.rport, MAX_FRAME, MAX_KEYS, [], None, True,
                           livefuzz.Findings())
        ctx.flaky = True

        def trouble(deadline):
            rng = random.Random(seed)
            codes = ["NOT_LEADER_FOR_PARTITION", "REQUEST_TIMED_OUT", "NOT_ENOUGH_REPLICAS",
                     "MSG_SIZE_TOO_LARGE", "INVALID_MSG", "_TRANSPORT", "INVALID_RECORD",
                     "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "DUPLICATE_SEQUENCE_NUMBER",
                     "KAFKA_STORAGE_ERROR"]
            # Not OUT_OF_ORDER_SEQUENCE_NUMBER: a fatal error of the
            # idempotent producer, on which a worker restarts by design
            # (node_main.c, on_writes_fatal).
            try:
                while time.monotonic() < deadline - 1.0:
                    act = rng.randrange(4)
                    if act == 0:
                        mock.ctl("rtt all %d" % rng.choice([0, 0, 20, 100, 300]))
                    elif act == 1:
                        code = rng.choice(codes)
                        mock.ctl("error Produce %s %d" % (code, rng.randrange(1, 6)))
                        ctx.count("trouble error Produce %s" % code)
                    elif act == 2:
                        mock.ctl("broker-down all")
                        time.sleep(rng.uniform(0.1, 0.8))
                        mock.ctl("broker-up all")
                        ctx.count("trouble broker-down")
                    time.sleep(rng.uniform(0.02, 0.2))
            except (AssertionError, RuntimeError) as e:
                ctx.findings.add("trouble", str(e))
            finally:
                for line in ("rtt all 0", "clear-errors Produce", "broker-up all"):
                    mock.ctl(line)
        self.run_and_judge(seed, [r], ctx, lambda: r.client(), self.short_seconds() + 1,
                           dict(tables=("kb",), resp_owners=1), extra=[trouble],
                           min_ok=8)  # 15 in 3.5 s of ASan on a loaded CI machine


if __name__ == "__main__":
    unittest.main()
