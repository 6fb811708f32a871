"""Integration tests for replicas (issue 13): every shard on several nodes
(cluster.nodes), reads that fail over to another replica within the retry
budget, writes to bound tables through any live replica, per-replica
consumer groups, digests that prove replicas converged, and a new replica
that starts from a peer's snapshot.

Several kvs nodes (one kvs-router each, with its kvs-node workers) run on
this machine, each with its own data directory and its workers on their
own TCP ports (the map's addresses), all ingesting from one kvs-mock-kafka.
Every wait is bounded; every process is killed at cleanup.
"""
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest

import kafkatest
from kafkatest import MockKafka, info_pairs, ingest_yaml, kafka_parts, pos_token, wait_until
from kvstest import (BUILD_DIR, Client, LogsOnFailure, LoopbackServer, cert_path, free_port,
                     free_ports, log_of, pb, pyval, recv_exact, req_hdel, req_hget, req_hmget,
                     req_hmset, req_hset, tls_yaml)
from routertest import ClientThreads, Router, partition_of, stopped

SHARDS = 4
PARTITIONS = 64      # cluster.partitions (tables bound to no topic)
TOPIC_PARTS = 8      # the bound topic's partitions: two per shard
TOPIC = "users"
TABLE = "users"
# 3 nodes, 4 shards, 2 replicas each: a serves 0 1, b 0 2 3, c 1 2 3.
LAYOUT = {"a": [0, 1], "b": [0, 2, 3], "c": [1, 2, 3]}


def shard_of_key(key):
    return partition_of(key, TOPIC_PARTS) % SHARDS


def metrics_own():
    """A Metrics request for the answering router process's own families."""
    r = pb.CommandRequest()
    r.metrics.own = True
    return r


def hget_at(table, key, position=b""):
    r = req_hget(table, key)
    if position:
        r.min_position = position
    return r


class ReplicaFixtures(LogsOnFailure):
    """A cluster of named nodes over one mock Kafka (mixed into a TestCase)."""

    def start_fixtures(self):
        self._routers, self._mocks = [], []

    def failure_logs(self):
        for r in self._routers:
            yield "node %s stderr, last 8000 chars" % r.name, log_of(r, 8000)

    def mock(self):
        m = MockKafka({TOPIC: TOPIC_PARTS})
        self._mocks.append(m)
        self.addCleanup(m.close)
        return m

    def bases(self, names, avoid=()):
        """A base port per node name, their ranges of SHARDS ports disjoint
        (and from `avoid`). Outside the kernel's ephemeral range
        (free_ports): a worker restarted (or one that copied a snapshot,
        after its outgoing connection) must bind its port again, which an
        outgoing connection of any process could otherwise have taken
        meanwhile."""
        out, used = {}, list(avoid)
        for n in names:
            base = free_ports(SHARDS)
            while any(abs(base - u) < SHARDS for u in used):
                base = free_ports(SHARDS)
            out[n] = base
            used.append(base)
        return out

    def node(self, mock, name, layout, bases, timeout="2s", max_lag=None, env=None,
             router_yaml=(), extra="", extra_yaml="", processes=1):
        """Router `name` of the cluster `layout` {name: shards} (not started)."""
        nodes = ["  nodes:"]
        for n, shards in layout.items():
            nodes.append('    - {name: %s, address: "127.0.0.1:%d", shards: [%s]}'
                         % (n, bases[n], ", ".join(str(s) for s in shards)))
        r = Router(shards=SHARDS, partitions=PARTITIONS, start=False, name=name,
                   timeout=timeout, env=env, cluster_yaml=nodes + list(extra.splitlines()),
                   node_name=name, router_yaml=router_yaml, processes=processes,
                   extra_yaml=ingest_yaml(mock.bootstrap, [(TOPIC, TABLE, "string", TOPIC_PARTS)],
                                          "kvs", {"reconnect.backoff.max.ms": "500"}, max_lag)
                   + extra_yaml)
        r.layout, r.n_processes = layout, processes
        self._routers.append(r)
        self.addCleanup(r.close)
        return r

    def cluster(self, layout=LAYOUT, **kw):
        mock = self.mock()
        bases = self.bases(layout)
        routers = {n: self.node(mock, n, layout, bases, **kw) for n in layout}
        self.start_all(*routers.values())
        return mock, bases, routers

    def start_all(self, *routers):
        """Starts every router, then waits until each serves every shard
        and each of its workers answers itself."""
        for r in routers:
            r.start()
        for r in routers:
            self.wait_serving(r)
            self.wait_workers(r)
        for r in routers:
            self.wait_links(r)

    def wait_links(self, router, timeout=30):
        """Until each router process of `router` has its links to every
        replica of every shard up, as its log says: a replica that copied
        a snapshot (nodes of a new cluster copy what the first to start
        began with) closed its links when its copy ended, and a router
        connects again after a pause."""
        if not hasattr(router, "layout"):
            return  # not made by node(): its test knows its links
        want = sum(1 for s in range(SHARDS) for shards in router.layout.values() if s in shards)
        line = re.compile(r"(router\S*) +\w+ +link to shard (\d+) \(([^)]*)\) (up|down)")

        tags = (["router"] if router.n_processes == 1 else
                ["router[%d]" % i for i in range(router.n_processes)])

        def up():
            last = {}
            for m in line.finditer(router.stderr()):
                last.setdefault(m.group(1), {})[m.group(2), m.group(3)] = m.group(4)
            return all(len(last.get(t, {})) >= want and set(last[t].values()) == {"up"}
                       for t in tags)
        self.assertTrue(wait_until(up, timeout), "links of node %s: %s" % (
            router.name, [x for x in router.stderr().splitlines() if "link to shard" in x][-20:]))

    def wait_workers(self, router, timeout=30):
        """Until every worker of `router` answers Ping itself: a new
        replica's worker answers 503 while it tries to copy a snapshot."""
        req = pb.CommandRequest()
        req.ping.SetInParent()

        def up(s):
            try:
                with Client(router.socket_path(s), timeout=5) as c:
                    return c.call(req).status == 200
            except OSError:
                return False
        for s in router.workers():
            self.assertTrue(wait_until(lambda: up(s), timeout),
                                 "worker %d of node %s never served" % (s, router.name))

    def wait_serving(self, router, timeout=20):
        """Until `router` answers a read of every shard (not 503)."""
        probes = {}
        i = 0
        while len(probes) < SHARDS:
            k = b"probe-%d" % i
            probes.setdefault(shard_of_key(k), k)
            i += 1
        last = None
        deadline = time.monotonic() + timeout
        with router.client() as c:
            while time.monotonic() < deadline:
                resps = [c.call(req_hget(TABLE, k)) for k in probes.values()]
                if all(r.status in (200, 404) for r in resps):
                    return
                last = [(r.status, r.message) for r in resps if r.status not in (200, 404)]
                time.sleep(0.05)
        self.fail("node %s does not serve every shard: %r" % (router.name, last))

    def read_for(self, router, keys, seconds, threads=8):
        """Hgets of random `keys` through `router` from `threads` clients
        for `seconds`: (sorted latencies in s, {status: count})."""
        lat, statuses, lock = [], {}, threading.Lock()
        stop = time.monotonic() + seconds

        def reader(n):
            rnd = random.Random(n)
            with router.client(timeout=20) as c:
                while time.monotonic() < stop:
                    t0 = time.monotonic()
                    resp = c.call(req_hget(TABLE, rnd.choice(keys)))
                    with lock:
                        lat.append(time.monotonic() - t0)
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1

        ts = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(seconds + 30)
        lat.sort()
        return lat, statuses

    def worker_info(self, router, shard):
        return info_pairs(router.socket_path(shard))

    def digest(self, router, *args, timeout=10):
        """kvs-cli --config <router's config> digest TABLE ...: (exit status, stdout)."""
        p = subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--config", router.config,
                            "--timeout", "5", "digest", TABLE] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 20)
        return p.returncode, p.stdout.decode() + p.stderr.decode()


class Traffic(ClientThreads):
    """Writers and readers through some routers, recording what happened.

    Each writer owns its keys and writes each once (key -> value), keeping
    the acknowledged ones with their position; readers read acknowledged
    keys at their write's position (min_position), so any replica that
    answers must have applied the write: the only right answers are 200
    with the value (every other answer is recorded as a failure)."""

    def __init__(self, routers, writers_per_router=1, readers_per_router=1, pause=0.004):
        self.routers = routers
        super().__init__()
        self.acked = {}  # key -> (value, position)
        self.read_fail = []
        self.write_status = {}
        self.reads = 0
        self.pause = pause
        self.threads = []
        for ri, r in enumerate(routers):
            for w in range(writers_per_router):
                self.threads.append(threading.Thread(target=self.writer, args=(r, "%d-%d" % (ri, w)),
                                                     daemon=True))
            for _ in range(readers_per_router):
                self.threads.append(threading.Thread(target=self.reader, args=(r,), daemon=True))


    def writer(self, router, tag):
        i = 0
        with router.client(timeout=20) as c:
            while not self.stop.is_set():
                key, val = ("w%s-%d" % (tag, i)).encode(), "v%s-%d" % (tag, i)
                i += 1
                resp = c.call(req_hset(TABLE, key, val))
                with self.lock:
                    self.write_status[resp.status] = self.write_status.get(resp.status, 0) + 1
                    if resp.status == 200:
                        self.acked[key] = (val, resp.position, time.monotonic())
                time.sleep(self.pause)

    def reader(self, router):
        rnd = random.Random(hash(router.name))
        with router.client(timeout=20) as c:
            while not self.stop.is_set():
                with self.lock:
                    # Any acknowledged write, the newest too: a position
                    # handed to another connection, on another node, may
                    # be past the end that node's replica has heard of
                    # yet; it asks the brokers (README: Freshness).
                    if not self.acked:
                        key = None
                    elif rnd.random() < 0.5:  # the newest: acknowledged a moment ago
                        key = max(self.acked, key=lambda k: self.acked[k][2])
                    else:
                        key = rnd.choice(list(self.acked))
                    if key is not None:
                        val, pos, _ = self.acked[key]
                if key is None:
                    time.sleep(0.01)
                    continue
                t0 = time.monotonic()
                resp = c.call(hget_at(TABLE, key, pos))
                self.reads += 1
                if resp.status != 200 or pyval(resp.values[0]) != val:
                    self.read_fail.append((router.name, key, resp.status, resp.message,
                                           time.monotonic() - t0))
                time.sleep(self.pause)


class ReplicaTest(ReplicaFixtures, unittest.TestCase):

    def test_kill_a_whole_node_reads_and_writes_go_on(self):
        mock, bases, rt = self.cluster(max_lag=20)
        a, b, c = rt["a"], rt["b"], rt["c"]
        traffic = Traffic([a, c], writers_per_router=2)
        traffic.start()
        time.sleep(1.0)
        ends = kafkatest.watermarks(mock.bootstrap, TOPIC, TOPIC_PARTS)
        b.kill_all()  # kill -9: router and every worker of node b
        # Down for 2 s, and until the traffic wrote max_lag + 10 records
        # to each of b's partitions (a loaded machine's traffic writes few:
        # a burst produced at once instead put a and c past max_lag too,
        # for the moment they took to apply it, and they refused reads).
        mine = [p for p in range(TOPIC_PARTS) if p % SHARDS in LAYOUT["b"]]

        def b_far_behind():
            now = kafkatest.watermarks(mock.bootstrap, TOPIC, TOPIC_PARTS)
            return all(now[p][1] - ends[p][1] >= 20 + 10 for p in mine)
        time.sleep(2.0)
        self.assertTrue(wait_until(b_far_behind, 60),
                        "the traffic wrote too little while b was down")
        down_reads = traffic.reads
        # b comes back slowly ingesting (a record a second: on a slow
        # machine too, it is still past max_lag when asked), behind by more
        # than max_lag on its partitions: it must not serve them until it
        # caught up; a's and c's clients see nothing of it.
        b.env["KVS_TEST_INGEST_DELAY_MS"] = "1000"
        b.proc = None
        b.start()
        behind = []
        for s in LAYOUT["b"]:
            parts = kafka_parts(self.worker_info(b, s), TOPIC)
            behind += [(s, p) for p, v in parts.items() if v["serving"] == 0]
        self.assertTrue(behind, "node b's workers serve right after a restart behind the topic")
        with b.client() as cb:  # b's router serves at once: other replicas answer meanwhile
            with traffic.lock:
                settled = [k for k, v in traffic.acked.items() if v[2] < time.monotonic() - 0.5]
                sample = random.Random(1).sample(sorted(settled), 20)
                want = {k: traffic.acked[k] for k in sample}
            for k, (val, pos, _) in want.items():
                resp = cb.call(hget_at(TABLE, k, pos))
                self.assertEqual((resp.status, pyval(resp.values[0]) if resp.values else None),
                                 (200, val), resp.message)
        time.sleep(1.0)
        traffic.finish()
        self.assertEqual(traffic.read_fail, [], "reads through a and c failed")
        self.assertGreater(traffic.reads - down_reads, 20)
        self.assertGreater(len(traffic.acked), 100)
        self.assertEqual(set(traffic.write_status) - {200, 503}, set(), traffic.write_status)
        # b, restarted at full speed, catches up, then serves every
        # acknowledged write itself.
        self.assertEqual(b.stop(), 0)
        del b.env["KVS_TEST_INGEST_DELAY_MS"]
        b.proc = None
        b.start()
        for s in LAYOUT["b"]:
            self.assertTrue(wait_until(lambda: all(
                v["serving"] == 1 and v["lag"] == 0 for v in
                kafka_parts(self.worker_info(b, s), TOPIC).values()), 30),
                "shard %d on b never caught up" % s)
        acked = dict(traffic.acked)
        for s in LAYOUT["b"]:
            keys = [k for k in acked if shard_of_key(k) == s]
            with Client(b.socket_path(s)) as w:
                for k in keys:
                    resp = w.call(hget_at(TABLE, k, acked[k][1]))
                    self.assertEqual(resp.status, 200, resp.message)
                    self.assertEqual(pyval(resp.values[0]), acked[k][0])
        # Every shard's two replicas hold the same pairs at the same position.
        rc, out = self.digest(a)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.count("replicas agree"), SHARDS, out)

    def test_digest_finds_a_replica_that_differs(self):
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]})
        a, b = rt["a"], rt["b"]
        with a.client() as c:
            for i in range(200):
                self.assertEqual(c.call(req_hset(TABLE, b"d%d" % i, "v%d" % i)).status, 200)
        rc, out = self.digest(b)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.count("replicas agree"), SHARDS, out)
        # A relative data_dir is the node's working directory's (a systemd
        # unit's /var/lib/kvs): from elsewhere kvs-cli found no socket and
        # said the node's own replicas did not answer. It asks them at the
        # node's address in the map then.
        rel = os.path.join(b.dir, "relative.yaml")
        with open(b.config) as f, open(rel, "w") as g:
            g.write(re.sub(r"(?m)^data_dir: .*$", "data_dir: ./data-of-b", f.read()))
        p = subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--config", rel, "--timeout", "5",
                            "digest", TABLE], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=30, cwd=a.dir)
        out2 = p.stdout.decode() + p.stderr.decode()
        self.assertEqual(p.returncode, 0, out2)
        self.assertEqual(out2.count("replicas agree"), SHARDS, out2)
        lines = [ln.split() for ln in out.splitlines() if ln.startswith("  ")]
        self.assertEqual(len(lines), 2 * SHARDS, out)
        for ln in lines:  # name, digest, keys, "keys", "at", position
            self.assertEqual(len(ln[1]), 32, out)
        self.assertEqual(sum(int(ln[2]) for ln in lines), 2 * 200)
        # One key more on b's copy of shard 1 (as a disk or a bug could do):
        # the digests differ while the positions are the same.
        b.stop()
        env = os.path.join(b.data_dir, "shard-1")
        subprocess.run(["mdb_load", "-T", "-s", TABLE, env], input=b"intruder\nx\n",
                       check=True, timeout=10)
        b.proc = None
        b.start()
        rc, out = self.digest(a, "--node", "b")
        self.assertEqual(rc, 1, out)
        self.assertIn("shard 1: REPLICAS DIFFER", out)
        self.assertEqual(out.count("replicas agree"), SHARDS - 1, out)
        # Through the router, Digest is refused: it is about one copy.
        req = pb.CommandRequest()
        req.digest.table = TABLE
        with a.client() as c:
            resp = c.call(req)
        self.assertEqual(resp.status, 400)
        self.assertIn("worker command", resp.message)

    @unittest.skipIf(kafkatest.Producer is None, "python3-confluent-kafka is not installed")
    def test_new_replica_from_a_snapshot_then_the_old_one_leaves(self):
        before = 4000
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        mock, bases, rt = self.cluster(layout=layout)
        a, b = rt["a"], rt["b"]
        kafkatest.produce(mock.bootstrap, TOPIC,
                          [(b"old-%d" % i, b"o%d" % i) for i in range(before)])
        for r in (a, b):
            for s in range(SHARDS):
                self.assertTrue(wait_until(lambda: all(
                    v["lag"] == 0 and v["next_offset"] > 0
                    for v in kafka_parts(self.worker_info(r, s), TOPIC).values()), 30))
        traffic = Traffic([a])  # a's clients read and write through the whole move
        traffic.start()
        # d joins as a third replica of every shard: its map lists a and b
        # (a's and b's own maps change when they restart; until then they
        # serve without d, which is fine).
        layout_d = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "d": [0, 1, 2, 3]}
        bases.update(self.bases(["d"], avoid=bases.values()))
        d = self.node(mock, "d", layout_d, bases)
        d.start()
        self.wait_serving(d)
        self.wait_workers(d)
        for s in range(SHARDS):
            self.assertTrue(wait_until(lambda: all(
                v["serving"] == 1 and v["lag"] == 0
                for v in kafka_parts(self.worker_info(d, s), TOPIC).values()), 30))
        log = d.stderr()
        self.assertEqual(log.count("copying a snapshot from node a"), SHARDS, log[-3000:])
        self.assertEqual(log.count("copied shard"), SHARDS, log[-3000:])
        # d read only the tail from Kafka: the records before it joined came in the copy.
        ingested = sum(v["ingested"] for s in range(SHARDS)
                       for v in kafka_parts(self.worker_info(d, s), TOPIC).values())
        applied = sum(v["applied"] for s in range(SHARDS)
                      for v in kafka_parts(self.worker_info(d, s), TOPIC).values())
        self.assertGreaterEqual(applied, before)
        self.assertLess(ingested, before // 4, "d replayed the topic instead of copying")
        # The old replica leaves (stopped the graceful way); a's clients see nothing of it.
        b.stop()
        time.sleep(1.0)
        traffic.finish()
        self.assertEqual(traffic.read_fail, [])
        self.assertEqual(set(traffic.write_status), {200}, traffic.write_status)
        self.assertGreater(traffic.reads, 50)
        # d serves every record, the old ones (from the copy) and the new ones.
        with d.client() as c:
            for i in range(0, before, 97):
                resp = c.call(req_hget(TABLE, b"old-%d" % i))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, "o%d" % i))
            for k, (val, pos, _) in list(traffic.acked.items())[::7]:
                resp = c.call(hget_at(TABLE, k, pos))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, val), resp.message)
        # a and d, the shard's replicas now, agree.
        a.stop()
        a.proc = None
        a.close()
        rt2 = self.node(mock, "a", {"a": [0, 1, 2, 3], "d": [0, 1, 2, 3]}, bases)
        rt2.start()
        rc, out = self.digest(rt2)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.count("replicas agree"), SHARDS, out)

    @unittest.skipIf(kafkatest.Producer is None, "python3-confluent-kafka is not installed")
    def test_snapshot_and_digest_over_mutual_tls_with_users(self):
        # Workers' TCP ports speak TLS and require a client certificate
        # (tls.node), routers reach other nodes with theirs (tls.link), and
        # users are configured: a new replica copies its snapshot, and
        # kvs-cli digest compares, as the node (CN kvs-node, an admin user).
        secure = (tls_yaml(node={"enabled": "true"}, link={"enabled": "true"}) +
                  "users:\n  - name: kvs-node\n    allow: {\"*\": [read, write, admin]}\n")
        layout = {"a": [0, 1, 2, 3]}
        mock = self.mock()
        bases = self.bases(["a", "d"])
        a = self.node(mock, "a", layout, bases, extra_yaml=secure)
        a.start()
        self.wait_workers(a)
        kafkatest.produce(mock.bootstrap, TOPIC, [(b"t-%d" % i, b"v%d" % i) for i in range(400)])
        for s in range(SHARDS):
            self.assertTrue(wait_until(lambda: all(
                v["lag"] == 0 and v["next_offset"] > 0
                for v in kafka_parts(self.worker_info(a, s), TOPIC).values()), 30))
        # The copy's sync takes 4 s (test hook): meanwhile d's workers
        # answer 503 on their ports, which speak TLS as the server will.
        d = self.node(mock, "d", {"a": [0, 1, 2, 3], "d": [0, 1, 2, 3]}, bases,
                      extra_yaml=secure, env={"KVS_TEST_SNAPSHOT_SYNC_DELAY_MS": "4000"})
        d.start()
        self.assertTrue(wait_until(lambda: "copying a snapshot from node a" in d.stderr(), 20),
                        d.stderr()[-3000:])
        cli = [os.path.join(BUILD_DIR, "kvs-cli"), "--port", str(bases["d"]), "--timeout", "2"]
        plain = subprocess.run(cli + ["ping"], stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=20)
        mtls = subprocess.run(cli + ["--tls", "--cacert", cert_path("ca.crt"), "--cert",
                                     cert_path("node.crt"), "--key", cert_path("node.key"),
                                     "ping"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=20)
        self.assertNotEqual(plain.returncode, 0, plain.stdout)
        self.assertNotIn(b"copying a snapshot", plain.stdout + plain.stderr)
        self.assertEqual(mtls.returncode, 1, mtls.stderr)
        self.assertIn(b"(error) 503 shard 0 is copying a snapshot from a", mtls.stderr)
        self.wait_workers(d)
        self.assertTrue(wait_until(lambda: d.stderr().count("copied shard") == SHARDS, 30),
                             d.stderr()[-3000:])
        # Each copy's acknowledgement (Snapshot.installed) came back over
        # TLS: a, which held every shard alone, names d as holding a copy.
        for s in range(SHARDS):
            path = os.path.join(a.data_dir, "shard-%d" % s, "copied-out")
            self.assertTrue(wait_until(lambda: os.path.exists(path) and
                                       "\nnode d\n" in open(path).read(), 10), path)
        self.assertNotIn("plaintext port", a.stderr() + d.stderr())
        for s in range(SHARDS):
            self.assertTrue(wait_until(lambda: all(
                v["serving"] == 1 and v["lag"] == 0
                for v in kafka_parts(self.worker_info(d, s), TOPIC).values()), 30))
        applied = sum(v["applied"] for s in range(SHARDS)
                      for v in kafka_parts(self.worker_info(d, s), TOPIC).values())
        self.assertGreaterEqual(applied, 400)
        rc, out = self.digest(d)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.count("replicas agree"), SHARDS, out)
        # Without a certificate the workers' TCP ports let nobody in.
        p = subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--port", str(bases["a"]),
                            "--timeout", "3", "digest", TABLE], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=20)
        self.assertNotEqual(p.returncode, 0)

    def test_bootstrap_replay_when_no_peer_can_send(self):
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3]})
        with rt["a"].client() as c:
            for i in range(50):
                self.assertEqual(c.call(req_hset(TABLE, b"r%d" % i, "v%d" % i)).status, 200)
        rt["a"].stop()
        layout = {"a": [0, 1, 2, 3], "e": [0, 1, 2, 3]}
        bases.update(self.bases(["e"], avoid=bases.values()))
        # a cannot be reached, and may hold rows only it has: e would ask
        # again until it answers; the operator's way out starts it empty
        e = self.node(mock, "e", layout, bases, extra="  bootstrap: replay")
        e.start()
        self.wait_serving(e)
        self.wait_workers(e)
        for s in range(SHARDS):
            self.assertTrue(wait_until(lambda: all(
                v["lag"] == 0 for v in kafka_parts(self.worker_info(e, s), TOPIC).values()), 30))
        log = e.stderr()
        self.assertNotIn("copying a snapshot", log)
        with e.client() as c:
            for i in range(50):
                resp = c.call(req_hget(TABLE, b"r%d" % i))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, "v%d" % i))

    def test_a_new_replica_waits_for_a_peer_that_comes_back(self):
        # A replica whose data was wiped started empty when no peer could
        # be reached at that moment (its worker restarting, its node
        # down): the rows of tables bound to no topic, which only the
        # copies hold, were not there, and reads served by it missed them.
        # It now asks again, and copies once the peer is back.
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3]})
        keys = [b"u%d" % i for i in range(40)]
        with rt["a"].client() as c:
            for k in keys:
                self.assertEqual(c.call(req_hset("loose", k, "v")).status, 200)  # no topic
        rt["a"].stop()
        layout = {"a": [0, 1, 2, 3], "e": [0, 1, 2, 3]}
        bases.update(self.bases(["e"], avoid=bases.values()))
        e = self.node(mock, "e", layout, bases)
        e.start()
        self.assertTrue(wait_until(lambda: "could not be reached and may hold rows" in e.stderr(),
                                   20), e.stderr()[-3000:])
        time.sleep(3)  # rounds of asking again
        self.assertNotIn("starting empty", e.stderr())
        rt["a"].start()
        self.wait_serving(e)
        self.wait_workers(e)
        log = e.stderr()
        self.assertNotIn("starting empty", log)
        self.assertEqual(log.count("copied shard"), SHARDS, log[-3000:])
        for k in keys:  # e's own copy, asked on its worker's socket
            with e.worker_client(shard_of_key(k)) as w:
                resp = w.call(req_hget("loose", k))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, "v"), resp.message)

    def test_hung_replica_costs_a_timeout_and_retries_stay_within_budget(self):
        layout = {"a": [0, 1], "b": [2, 3], "c": [0, 1, 2, 3]}
        mock, bases, rt = self.cluster(layout=layout, timeout="1s",
                                       router_yaml=("retry_percent: 10", "retry_burst: 20"))
        a, b = rt["a"], rt["b"]
        keys = []
        i = 0
        with a.client() as c:
            while len(keys) < 40:
                k = b"h%d" % i
                i += 1
                if shard_of_key(k) in (2, 3):  # b and c serve these; a has no copy
                    self.assertEqual(c.call(req_hset(TABLE, k, "v")).status, 200)
                    keys.append(k)
        hung = list(b.workers().values())
        self.assertEqual(len(hung), 2)
        for pid in hung:
            os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: [os.kill(p, signal.SIGCONT) for p in hung])
        lat, statuses = self.read_for(a, keys, 4.0)
        p99 = lat[int(len(lat) * 0.99)]
        pairs = info_pairs(a.addr)
        reads, retries = pairs["router.replica_reads"], pairs["router.replica_retries"]
        self.assertLess(p99, 1.0 + 0.5, "p99 %.3f s with router.timeout 1 s" % p99)
        # Only the reads in flight when b stopped (one per reader) waited
        # out router.timeout: a's links to b then ask b's workers with a
        # Ping of their own, which goes unanswered, and are passed over.
        slow = [x for x in lat if x >= 0.9]
        self.assertLessEqual(len(slow), 8, slow)
        self.assertGreater(retries, 0)  # the hung replica's requests went elsewhere
        self.assertLessEqual(retries, reads * 10 // 100 + 20)
        # The router's metrics count the same reads and retries.
        req = pb.CommandRequest()
        req.metrics.own = True
        with a.client() as c:
            fams = {f.name: f for f in c.call(req).ops.metrics}
        self.assertEqual(fams["kvs_replica_reads_total"].samples[0].value, reads)
        self.assertEqual(fams["kvs_replica_retries_total"].samples[0].value, retries)
        refused = fams["kvs_replica_retries_refused_total"].samples[0].value
        self.assertEqual(refused, pairs.get("router.replica_retries_refused", refused))
        self.assertGreaterEqual(statuses.get(200, 0), len(lat) * 0.99, statuses)
        self.assertGreater(len(lat), 200)

    def fake_replica_cluster(self, handle, timeout="2s"):
        """Nodes a [0, 1] and b [0-3] started, with "replica" f of shards 2
        and 3 a loopback server that hands each connection to
        handle(sock); returns a and b once a's links to b's workers of
        shards 2 and 3 are up (until then f is the only replica a could
        send their requests to: a slow start, under ASan, had reads fail
        that b would have answered)."""
        layout = {"a": [0, 1], "b": [0, 1, 2, 3], "f": [2, 3]}
        mock = self.mock()
        bases = self.bases(layout)
        a, b = [self.node(mock, n, layout, bases, timeout=timeout, extra="  bootstrap: replay")
                for n in "ab"]
        for shard in (2, 3):
            srv = LoopbackServer(handle, port=bases["f"] + shard, threaded=True)
            self.addCleanup(srv.close)
        for r in (a, b):
            r.start()
        for r in (a, b):
            self.wait_workers(r)
        self.wait_serving(b)  # (not a: its probes of shards 2 and 3 may go to f)
        for shard in (2, 3):
            up = "link to shard %d (127.0.0.1:%d) up" % (shard, bases["b"] + shard)
            self.assertTrue(wait_until(lambda: up in a.stderr(), 30), a.stderr()[-3000:])
        return a, b

    @staticmethod
    def replying(reply):
        """A fake replica's handler answering each request with reply()'s
        bytes; returns it, the list of the commands it was sent, and that
        list's lock."""
        asked, lock = [], threading.Lock()

        def serve(sock):
            sock.settimeout(60)
            try:
                while True:
                    (n,) = struct.unpack(">I", recv_exact(sock, 4))
                    name = pb.CommandRequest.FromString(recv_exact(sock, n)).WhichOneof("command")
                    with lock:
                        asked.append(name)
                    sock.sendall(reply())
            except (OSError, EOFError):
                pass
        return serve, asked, lock

    def keys_on_f(self, b, prefix):
        """40 keys of shards 2 and 3 (f's), written through b's own workers."""
        keys, i = [], 0
        with b.client() as c:
            while len(keys) < 40:
                k = b"%s%d" % (prefix, i)
                i += 1
                if shard_of_key(k) in (2, 3):
                    self.assertEqual(c.call(req_hset(TABLE, k, "v")).status, 200)
                    keys.append(k)
        return keys

    def test_an_answer_over_max_frame_from_one_replica_is_read_from_another(self):
        """A remote "replica" that answers every request with a frame
        larger than limits.max_frame (a node configured with a larger one,
        or a peer that is no worker): the router drops the answer and keeps
        the link, and a read that got it goes to the other replica, as
        after a 503, instead of failing with 413 (that node's copy of the
        key was never read). Probe LL: 1-3 reads per run answered 413."""
        big = (4 << 20) + 1  # limits.max_frame (its 4 MiB default) + 1
        serve, asked, lock = self.replying(lambda: struct.pack(">I", big) + bytes(big))
        a, b = self.fake_replica_cluster(serve)
        keys = self.keys_on_f(b, b"o")
        _, statuses = self.read_for(a, keys, 3.0, threads=2)
        with lock:
            reads = [x for x in asked if x == "hget"]
        self.assertGreater(len(reads), 0, "no read went to the oversized replica: %r" % asked)
        self.assertEqual(set(statuses), {200}, statuses)
        self.assertIn("more than limits.max_frame", a.stderr())

    def test_a_request_too_large_to_send_leaves_the_replica_trusted(self):
        """A request refused before it is sent (the router's form of an
        Hmget just under limits.max_frame, with the session's min_position
        added, no longer fits) is 413 for the client; the replica it would
        have gone to did nothing wrong and must not be avoided (probe MM:
        after an oversized answer counted as a replica's failure, such a
        request had every read of the shard leave a healthy replica)."""
        ok = pb.CommandResponse(status=200).SerializeToString()
        serve, asked, lock = self.replying(lambda: struct.pack(">I", len(ok)) + ok)  # all 200
        a, b = self.fake_replica_cluster(serve)
        keys = [k for k in (b"k%d" % i for i in range(5000)) if shard_of_key(k) == 2][:20]

        def to_fake(n):
            with lock:
                mark = len(asked)
            with a.client() as c:
                for k in (keys * 10)[:n]:
                    c.call(req_hget(TABLE, k))
            with lock:
                return sum(1 for x in asked[mark:] if x == "hget")

        self.assertTrue(wait_until(lambda: 5 <= to_fake(40) <= 35, 10),
                        "reads of shard 2 are not shared by its two replicas")
        maxf, ks, i, size = 4 << 20, [], 0, 0  # limits.max_frame's default
        while size < maxf - 2000:
            k = b"%0400d" % i
            i += 1
            if shard_of_key(k) == 2:
                ks.append(k)
                size += len(k) + 3  # the key's tag and length
        # Short keys to just under max_frame, counted as they are added (a
        # key under 128 bytes adds its tag, a length byte and itself; at
        # 2-4 MiB the enclosing lengths keep their size): serializing the
        # whole request at each key took 12 s.
        size = req_hmget(TABLE, ks).ByteSize()
        while size < maxf - 10:
            k = b"s%d" % i
            i += 1
            if shard_of_key(k) == 2:
                ks.append(k)
                size += len(k) + 2
        big = req_hmget(TABLE, ks)
        self.assertEqual(big.ByteSize(), size)
        refused = 0
        for attempt in range(20):
            with a.client(timeout=20) as c:
                with lock:
                    mark = len(asked)
                self.assertEqual(c.call(req_hset(TABLE, keys[0], "v%d" % attempt)).status, 200)
                with lock:
                    if any(x == "hset" for x in asked[mark:]):
                        continue  # written through the fake: no position to add
                resp = c.call(big)
                self.assertEqual(resp.status, 413, resp.message)
                self.assertIn("nothing was sent", resp.message)
                refused += 1
                n = to_fake(40)
                self.assertLessEqual(n, 35, "%d of 40 reads went to one replica: the other "
                                     "was avoided" % n)
                break
        self.assertEqual(refused, 1, "no write went through the real replica")

    def test_a_write_does_not_overtake_its_connections_write_at_an_avoided_replica(self):
        """Node a routes shard 2 to b and to the fake replica f. f takes a
        read (R0) and, behind it on the same link, a connection's write
        (W1) of key K; it answers R0 503, so a avoids f, and holds W1. The
        connection's next write of K (W2) would go to b, which would put
        it in the topic before W1 (f's producer, were f real): W1 then
        applied last, K left at W1's value, both answered 200. W2 waits
        for W1's answer instead: b never sees it meanwhile."""
        lock, w1_seen, release = threading.Lock(), threading.Event(), threading.Event()
        state = {"r0": False}
        ok = pb.CommandResponse(status=200).SerializeToString()
        busy = pb.CommandResponse(status=503, message="catching up").SerializeToString()

        def frame(b):
            return struct.pack(">I", len(b)) + b

        def serve(sock):
            sock.settimeout(60)
            held_r0 = False
            try:
                while True:
                    (n,) = struct.unpack(">I", recv_exact(sock, 4))
                    name = pb.CommandRequest.FromString(recv_exact(sock, n)).WhichOneof("command")
                    with lock:
                        claim = name == "hget" and not state["r0"]
                        state["r0"] |= claim
                    if claim:
                        held_r0 = True  # answered once the write behind it came
                    elif name == "hset" and held_r0:
                        held_r0 = False
                        sock.sendall(frame(busy))  # R0: a avoids f
                        w1_seen.set()
                        release.wait(30)
                        sock.sendall(frame(ok))  # W1
                    else:
                        sock.sendall(frame(ok))
            except (OSError, EOFError):
                pass

        # router.timeout 10 s: R0 waits at f while writes look for f (each
        # new connection tries the next replica; slow under ASan), and must
        # not time out meanwhile (it came back 503, not retried on b).
        a, b = self.fake_replica_cluster(serve, timeout="10s")
        self.addCleanup(release.set)
        keys = [k for k in (b"ord%d" % i for i in range(5000)) if shard_of_key(k) == 2]
        key = keys[0]
        x = a.client(timeout=30)
        self.addCleanup(x.close)
        for k in keys[1:200]:  # reads take turns between b and f: until f holds one
            x.send(req_hget(TABLE, k))
            time.sleep(0.02)
            with lock:
                if state["r0"]:
                    break
            self.assertEqual(x.recv().status, 404)
        self.assertTrue(state["r0"], "no read of shard 2 went to f")
        writer = None
        for _ in range(40):  # each new connection keeps to the next replica in turn
            c = a.client(timeout=30)
            c.send(req_hset(TABLE, key, "1"))
            if w1_seen.wait(0.3):
                writer = c
                break
            self.assertEqual(c.recv().status, 200)  # through b
            c.close()
        self.assertIsNotNone(writer, "no write of shard 2 went to f")
        self.addCleanup(writer.close)
        r0 = x.recv()
        self.assertEqual(r0.status, 404, r0.message)  # R0, retried on b
        writer.send(req_hset(TABLE, key, "2"))
        time.sleep(0.5)
        with Client(b.socket_path(2), timeout=10) as w:
            got = w.call(req_hget(TABLE, key))
        self.assertNotEqual(pyval(got.values[0]) if got.values else None, "2",
                            "the second write reached the topic through b before the first "
                            "was answered")
        release.set()
        self.assertEqual([writer.recv().status for _ in range(2)], [200, 200])

    def test_a_flapping_replica_is_asked_with_a_ping_not_handed_clients_requests(self):
        """A remote "replica" that accepts every connection, reads what it
        is sent and drops the connection (a broken node, a worker that
        crash-loops behind a proxy): the router avoids it after the first
        failure, and at each reconnect while it is avoided sends it only a
        Ping of its own (README, Replicas: Reads), so clients' reads go to
        the real replica and all succeed. A Ping left unanswered keeps the
        link avoided even when the avoidance runs out meanwhile, so after
        a's first requests on each link fail, the peer is handed no
        client's request again. The avoidance (0.5 s, doubling with each
        dropped Ping) runs out within the reconnects of the 5 s (every 50
        ms to 1 s), so a router that sent requests behind its Ping would be
        seen."""
        conns, lock = [], threading.Lock()

        def flap(sock):
            names = []
            sock.settimeout(30)  # an idle link stays up until something is sent
            try:
                while True:
                    (n,) = struct.unpack(">I", recv_exact(sock, 4))
                    names.append(pb.CommandRequest.FromString(recv_exact(sock, n))
                                 .WhichOneof("command"))
                    sock.settimeout(0.05)  # whatever came with it, then drop
            except (OSError, EOFError):
                pass
            with lock:
                conns.append(names)

        a, b = self.fake_replica_cluster(flap)
        for r in (a, b):  # f keeps a link that sent nothing open (30 s)
            self.wait_links(r)
        keys = self.keys_on_f(b, b"f")
        _, statuses = self.read_for(a, keys, 5.0, threads=2)
        self.assertEqual(set(statuses), {200}, statuses)
        with lock:
            seen = [list(x) for x in conns]
        pings = [x for x in seen if x and set(x) == {"ping"}]
        handed = [x for x in seen if any(name != "ping" for name in x)]
        # Each reconnect is asked with a Ping alone (a link that sent the
        # Ping and then clients' reads behind it would fail them all), and
        # only the first connection of each of a's two links was handed
        # clients' reads (b reads its own worker; its links stay idle).
        self.assertGreaterEqual(len(pings), 4, seen)
        self.assertFalse([x for x in handed if "ping" in x], seen)
        self.assertLessEqual(len(handed), 2, seen)

    def test_pipelined_writes_of_a_key_are_applied_in_the_order_sent(self):
        # a routes only: its writes to shard 0 go to b or c. Two pipelined
        # writes of one key, while b's worker is slow (stopped 0.5 s):
        # taken in turn, one went to b and the other to c, and when the
        # first was b's, c produced the second before it: both answered
        # 200, the key left at "first". A connection's writes now keep to
        # one replica.
        mock, bases, rt = self.cluster(layout={"a": [], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]},
                                       timeout="5s")
        a, b = rt["a"], rt["b"]
        keys = [k for k in (b"order-%d" % i for i in range(100)) if shard_of_key(k) == 0][:2]
        pid = b.worker_pid(0)
        with a.client(timeout=20) as c:
            for k in keys:  # three sends a round: the turn differs from one to the next
                os.kill(pid, signal.SIGSTOP)
                try:
                    c.send(req_hset(TABLE, k, "first"), req_hset(TABLE, k, "second"))
                    time.sleep(0.5)
                finally:
                    os.kill(pid, signal.SIGCONT)
                first, second = c.recv(), c.recv()
                self.assertEqual((first.status, second.status), (200, 200))
                self.assertEqual(pyval(second.values[0]), "first", "applied out of order")
                got = c.call(hget_at(TABLE, k, second.position))
                self.assertEqual(pyval(got.values[0]), "second")

    def test_a_hung_replica_at_its_cap_leaves_reads_to_the_other(self):
        """a's own worker of shard 0 stops with a read of 300 values in
        flight, past the 4,096 units where nobody sends a worker more (it
        would answer after router.timeout, 10 s here). The cap is that
        replica's: another client's read of the shard goes to b's replica
        at once, where with one cap for the shard it waited out
        router.timeout. Once the worker runs, the large read is answered
        too."""
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]},
                                       timeout="10s", router_yaml=("local_reads: false",))
        a = rt["a"]
        keys = [k for k in (b"cap-%d" % i for i in range(4000)) if shard_of_key(k) == 0][:300]
        with a.client() as c:
            put = c.call(req_hset(TABLE, keys[0], "v0"))
        self.assertEqual(put.status, 200, put.message)
        big = a.client(timeout=30)
        self.addCleanup(big.close)
        with stopped(a.worker_pid(0)):
            big.send(req_hmget(TABLE, keys))  # to a's own replica, which holds it
            time.sleep(0.5)
            with a.client(timeout=30) as c:
                start = time.monotonic()
                got = c.call(hget_at(TABLE, keys[0], put.position))
                took = time.monotonic() - start
                units = [s.value for f in c.call(metrics_own()).ops.metrics
                         if f.name == "kvs_shard_units_at_workers" for s in f.samples]
        self.assertEqual(got.status, 200, got.message)
        self.assertEqual(pyval(got.values[0]), "v0")
        self.assertLess(took, 3.0, "a read waited %.2f s behind a hung replica's cap" % took)
        self.assertGreaterEqual(units[0], 4096)  # shard 0's, a's replica at its cap
        self.assertEqual(big.recv().status, 200)

    def test_a_write_held_at_a_cap_goes_once_its_own_replica_is_trusted_again(self):
        """A read ahead of the topic makes a's own replica of shard 0 answer
        503, so it is avoided for 0.5 s, and the read goes on to b's,
        whose worker is stopped. Meanwhile a read of 300 values goes to
        b's replica too, past its cap, and a write of the shard is held
        there: its connection keeps to a's replica, avoided. Once a's
        avoidance runs out the write goes to a's replica, which no event
        says: it waited for b's router.timeout (10 s, probe BC)."""
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]},
                                       timeout="10s", router_yaml=("local_reads: false",))
        a, b = rt["a"], rt["b"]
        keys = [k for k in (b"wake-%d" % i for i in range(4000)) if shard_of_key(k) == 0][:300]
        with a.client() as c:
            self.assertEqual(c.call(req_hset(TABLE, keys[0], "v0")).status, 200)
        ahead = req_hget(TABLE, keys[1])
        ahead.min_position = pos_token([(TOPIC, p, 10 ** 7) for p in range(TOPIC_PARTS)])
        clients = [a.client(timeout=30) for _ in range(3)]
        for c in clients:
            self.addCleanup(c.close)
        early, big, writer = clients
        with stopped(b.worker_pid(0)):
            early.send(ahead)  # 503 at a's replica, then on to b's
            time.sleep(0.15)  # (not Info: a's replica answering it would end the avoidance)
            big.send(req_hmget(TABLE, keys))  # a's replica avoided: to b's, past its cap
            time.sleep(0.05)
            start = time.monotonic()
            got = writer.call(req_hset(TABLE, keys[2], "w2"))
            took = time.monotonic() - start
        self.assertEqual(got.status, 200, got.message)
        self.assertLess(took, 3.0, "a write waited %.2f s for a replica trusted again" % took)
        self.assertEqual(big.recv().status, 200)
        self.assertEqual(early.recv().status, 503)

    def test_consumer_group_and_info_name_the_replica(self):
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]})
        with rt["a"].client() as c:
            self.assertEqual(c.call(req_hset(TABLE, b"k1", "v1")).status, 200)
        pairs = self.worker_info(rt["b"], 0)
        self.assertEqual(pairs["shard.000.node"], "b")
        self.assertEqual(pairs["shard.000.replicas"], 2)
        self.assertIn("consumer group kvs.b", rt["b"].stderr())
        self.assertIn("consumer group kvs.a", rt["a"].stderr())

    def test_several_router_processes_per_node(self):
        """router.processes 2 on both nodes: each router process has its own
        links to every replica; writes through one node are read through
        every router process of the other, and Info carries both the
        answering process's pairs and its replica counters, in key order."""
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]},
                                       processes=2)
        acked = {}
        with rt["a"].client() as c:
            for i in range(40):
                k = b"procs-%d" % i
                resp = c.call(req_hset(TABLE, k, "v%d" % i))
                self.assertEqual(resp.status, 200, resp.message)
                acked[k] = resp.position
        seen_procs = set()
        for _ in range(8):  # new connections: the kernel spreads them over both
            with rt["b"].client() as c:
                for k, pos in acked.items():
                    resp = c.call(hget_at(TABLE, k, pos))
                    self.assertEqual(resp.status, 200, resp.message)
                    self.assertEqual(pyval(resp.values[0]), "v%s" % k.decode().split("-")[1])
                info = pb.CommandRequest()
                info.info.SetInParent()
                resp = c.call(info)
                self.assertEqual(resp.status, 200, resp.message)
                keys = [p.key for p in resp.pairs]
                self.assertEqual(keys, sorted(keys))
                pairs = {p.key.decode(): pyval(p.value) for p in resp.pairs}
                self.assertEqual(pairs["router.processes"], 2)
                self.assertGreaterEqual(pairs["router.replica_reads"], 1)
                seen_procs.add(pairs["router.process"])
        self.assertTrue(seen_procs <= {0, 1}, seen_procs)

    def test_unbound_writes_refused_on_replicated_shards(self):
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3], "b": [0, 1]})
        keys = {}
        i = 0
        while len(keys) < SHARDS:
            k = b"plain-%d" % i
            keys.setdefault(partition_of(k, PARTITIONS) % SHARDS, k)
            i += 1
        with rt["a"].client() as c:
            for s, k in sorted(keys.items()):
                resp = c.call(req_hset("plain", k, "x"))
                if s in (0, 1):
                    self.assertEqual(resp.status, 400, resp.message)
                    self.assertIn("is bound to no Kafka topic, and shard %d has 2 replicas" % s,
                                  resp.message)
                else:  # one copy: written as ever
                    self.assertEqual(resp.status, 200, resp.message)
            # A pair too large to store gets its own 413 first, as it would
            # at any other time (binding the table would not help it): a
            # single Hset, and a split Hmset whose large pair goes to a
            # shard of one copy.
            huge = "x" * (4 * 1024 * 1024 - 300)  # fits a frame, not a store
            resp = c.call(req_hset("plain", keys[0], huge))
            self.assertEqual(resp.status, 413, resp.message)
            self.assertIn("key and its value may take at most", resp.message)
            resp = c.call(req_hmset("plain", [(keys[0], "x"), (keys[2], huge)]))
            self.assertEqual(resp.status, 413, resp.message)
            self.assertIn("value is too large", resp.message)
            resp = c.call(req_hmset("plain", [(keys[0], "x"), (keys[2], "y")]))
            self.assertEqual(resp.status, 400, resp.message)
            self.assertIn("shard 0 has 2 replicas", resp.message)
            resp = c.call(req_hget("plain", keys[2]))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), "x")  # neither Hmset wrote
        with Client(rt["b"].socket_path(0)) as w:  # a worker refuses it too
            resp = w.call(req_hset("plain", keys[0], "x"))
            self.assertEqual(resp.status, 400, resp.message)
            self.assertIn("Bind the table to a topic", resp.message)
            resp = w.call(req_hset("plain", keys[0], huge))
            self.assertEqual(resp.status, 413, resp.message)
            self.assertIn("key and its value may take at most", resp.message)


class DigestManyPartitionsTest(ReplicaFixtures, unittest.TestCase):
    def test_digest_compares_replicas_of_a_shard_with_a_long_position(self):
        # One shard owns all 600 partitions of the topic, each with a
        # record: its Digest position is about 1.8 KB. kvs-cli kept at
        # most 1 KiB of it, and took every longer one for a failed answer
        # ("not every replica answered ... error: 200 ..."), so such a
        # cluster could never be compared.
        parts = 600
        mock = MockKafka({TOPIC: parts})
        self.addCleanup(mock.close)
        bases = self.bases(["a", "b"])
        nodes = ["  nodes:"] + ['    - {name: %s, address: "127.0.0.1:%d", shards: [0]}'
                               % (n, bases[n]) for n in ("a", "b")]
        routers = []
        for n in ("a", "b"):
            r = Router(shards=1, partitions=PARTITIONS, start=False, name=n, node_name=n,
                       cluster_yaml=nodes,
                       extra_yaml=ingest_yaml(mock.bootstrap, [(TOPIC, TABLE, "string", parts)]))
            self._routers.append(r)
            self.addCleanup(r.close)
            routers.append(r)
        self.start_all(*routers)  # b copies a's snapshot: a write sent to it meanwhile is a 503
        keys, i = {}, 0
        while len(keys) < parts:
            keys.setdefault(partition_of(b"m%d" % i, parts), b"m%d" % i)
            i += 1
        with routers[0].client(timeout=30) as c:
            resps = c.pipeline([req_hset(TABLE, k, "v") for k in keys.values()])
        self.assertEqual({r.status for r in resps}, {200}, [r.message for r in resps][:3])
        rc, out = self.digest(routers[0])
        self.assertEqual(rc, 0, out)
        self.assertIn("shard 0: replicas agree", out)
        self.assertEqual(out.count(" %d keys at %s:0:0," % (parts, TOPIC)), 2, out)


class MapAgreementTest(ReplicaFixtures, unittest.TestCase):
    """Every node must run the same cluster map. Nodes whose maps
    disagreed served on without a word: with a's map giving it shards 0
    and 1 and b's giving b shards 0, 2 and 3, each took itself for shard
    0's only holder, took writes of it the other never saw, and answered
    the same key differently for good. A worker answers Ping with its
    map's digest, and a router compares it with its own as each link to
    another node comes up: each node now names the other's map as
    different. The same map listed in another order is the same map."""

    def setUp(self):
        self.start_fixtures()

    def test_nodes_whose_maps_differ_say_so(self):
        mock = self.mock()
        bases = self.bases(["a", "b"])
        a = self.node(mock, "a", {"a": [0, 1], "b": [2, 3]}, bases)
        b = self.node(mock, "b", {"a": [1], "b": [0, 2, 3]}, bases)
        a.start()
        b.start()
        said = "the worker there runs another cluster map"
        for r, peer in ((a, "b"), (b, "a")):
            self.assertTrue(wait_until(lambda: said in r.stderr(), 30),
                            "node %s never named node %s's map" % (r.name, peer))
            self.assertRegex(r.stderr(), r"link to shard \d \(127\.0\.0\.1:\d+, node %s\): %s "
                             r"\(digest [0-9a-f]{12}, this router's [0-9a-f]{12}\)" % (peer, said))
        # and counted, per link (every link to the other node asks)
        self.assertTrue(wait_until(lambda: self.map_mismatches(a, "b") == 2, 30))
        self.assertEqual(self.map_mismatches(a, "a"), 0)  # its own workers: not asked

    def map_mismatches(self, router, node):
        """kvs_shard_link_cluster_map_mismatches_total of `router`'s links
        to `node`'s workers."""
        req = pb.CommandRequest()
        req.metrics.SetInParent()
        with router.client() as c:
            resp = c.call(req)
        self.assertEqual(resp.status, 200, resp.message)
        return sum(x.value for f in resp.ops.metrics
                   if f.name == "kvs_shard_link_cluster_map_mismatches_total" for x in f.samples
                   if dict(zip(x.labels[::2], x.labels[1::2])).get("node") == node)

    def test_a_peer_that_first_answers_503_is_asked_again(self):
        """d copies a snapshot from a at its start (slowed): a's links to
        d meet its copy's listener first, which answers every request 503,
        so a's map Pings were answered and never asked again, and a never
        named d's map (d's has a routing node x more). A link now asks
        until a worker answers it 200."""
        mock = self.mock()
        bases = self.bases(["a", "d", "x"])
        both = {"a": [0, 1, 2, 3], "d": [0, 1, 2, 3]}
        a = self.node(mock, "a", both, bases, extra="  bootstrap: replay")
        d = self.node(mock, "d", dict(both, x=[]), bases,
                      env={"KVS_TEST_SNAPSHOT_SYNC_DELAY_MS": "3000"})
        a.start()
        self.wait_workers(a)
        d.start()
        self.assertTrue(wait_until(lambda: "copying a snapshot" in d.stderr(), 20))
        self.wait_workers(d, 60)
        said = "the worker there runs another cluster map"
        self.assertTrue(wait_until(lambda: a.stderr().count(said) == SHARDS, 30),
                        [x for x in a.stderr().splitlines() if "link to shard" in x][-12:])

    def test_the_same_map_in_another_order_is_the_same(self):
        mock = self.mock()
        bases = self.bases(["a", "b"])
        a = self.node(mock, "a", {"a": [0, 1, 2, 3], "b": [2, 3]}, bases)
        b = self.node(mock, "b", {"b": [3, 2], "a": [3, 2, 1, 0]}, bases)
        self.start_all(a, b)
        time.sleep(1.0)  # the links' map Pings are answered
        for r in (a, b):
            self.assertNotIn("another cluster map", r.stderr())
        self.assertEqual(self.map_mismatches(a, "b"), 0)


class AbandonedWriteTest(ReplicaFixtures, unittest.TestCase):
    """A write the router gave up on (no answer within router.timeout: 503,
    "may or may not have been applied") while the replica it was sent to
    hung, followed by an acknowledged write of the same key through another
    replica. When the hung worker resumes, it must not run the abandoned
    request: it would be produced after the acknowledged write and undo it
    on every replica."""

    def stalling_pair(self, command):
        """Nodes a and b serving every shard, router.timeout 1 s, a's
        workers holding their loop 2.5 s in each `command` (a test plugin:
        a slow disk under one request); returns (mock, a, b), started."""
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        mock, bases = self.mock(), self.bases(layout)
        stall = '\nplugins:\n  - {path: "%s/plugins/test_stall_writes.so", arg: "%s 2500"}\n'
        a = self.node(mock, "a", layout, bases, timeout="1s",
                      extra_yaml=stall % (BUILD_DIR, command))
        b = self.node(mock, "b", layout, bases, timeout="1s")
        self.start_all(a, b)
        return mock, a, b

    def abandon_then_overwrite(self, router, hung_node, key):
        """Through `router`: `key` = "before" (acknowledged); then, with
        hung_node's worker of key's shard stopped, writes "abandoned" until
        one is sent to that worker (503 after router.timeout), then "after",
        which another replica acknowledges. Returns (position of "after",
        the partition)."""
        shard = shard_of_key(key)
        part = partition_of(key, TOPIC_PARTS)
        pid = hung_node.worker_pid(shard)
        with router.client(timeout=20) as c:
            for _ in range(3):  # a worker's first produce may take past 4/5 of router.timeout
                before = c.call(req_hset(TABLE, key, "before"))  # under ASan on a loaded
                if before.status != 503:                         # machine: 503, may or may
                    break                                        # not have happened
            self.assertEqual(before.status, 200, before.message)
            os.kill(pid, signal.SIGSTOP)
            try:
                abandoned = None
                # A connection's writes keep to one replica; a routing
                # node gives each new connection the next in turn.
                for _ in range(4):
                    with router.client(timeout=20) as one:
                        resp = one.call(req_hset(TABLE, key, "abandoned"))
                    if resp.status == 503:
                        abandoned = resp
                        break
                    self.assertEqual(resp.status, 200, resp.message)
                self.assertIsNotNone(abandoned, "no write reached the stopped worker")
                self.assertIn("router.timeout", abandoned.message)
                self.assertTrue(abandoned.outcome_unknown, "a write sent and unanswered is unknown")
                after = c.call(req_hset(TABLE, key, "after"))
                self.assertEqual(after.status, 200, after.message)
            finally:
                os.kill(pid, signal.SIGCONT)
        return after.position, part

    def assert_after_stands(self, mock, nodes, key, position, part, settle=True):
        # The resumed worker has every chance to run what it had buffered.
        # settle=False: a check of another key of the same resumed worker
        # just waited for it, and the time since has only grown.
        def pong(n):
            with Client(n.socket_path(shard_of_key(key)), timeout=5) as w:
                return w.ping().status == 200
        self.assertTrue(wait_until(lambda: all(pong(n) for n in nodes), 10))
        if settle:
            time.sleep(1.5)
        ends = kafkatest.watermarks(mock.bootstrap, TOPIC, TOPIC_PARTS)
        (entry,) = [e for e in kafkatest.pos_entries(position) if e[1] == part]
        self.assertEqual(ends[part][1], entry[2] + 1,
                         "records were produced to partition %d after the acknowledged write "
                         "(offset %d)" % (part, entry[2]))
        for n in nodes:
            with Client(n.socket_path(shard_of_key(key))) as w:
                resp = w.call(hget_at(TABLE, key, position))
                self.assertEqual((resp.status, pyval(resp.values[0]) if resp.values else None),
                                 (200, "after"), "node %s: %s" % (n.name, resp.message))

    def test_write_abandoned_at_a_hung_local_worker_is_not_run_when_it_resumes(self):
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]},
                                       timeout="1s")
        a, b = rt["a"], rt["b"]
        pos, part = self.abandon_then_overwrite(a, a, b"zombie-1")
        self.assert_after_stands(mock, [a, b], b"zombie-1", pos, part)

    def test_write_abandoned_at_a_hung_remote_worker_is_not_run_when_it_resumes(self):
        # a routes only: its links to b's and c's workers are TCP.
        mock, bases, rt = self.cluster(layout={"a": [], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]},
                                       timeout="1s")
        a, b, c = rt["a"], rt["b"], rt["c"]
        pos, part = self.abandon_then_overwrite(a, b, b"zombie-2")
        self.assert_after_stands(mock, [b, c], b"zombie-2", pos, part)


    def test_a_connection_retrying_past_a_hung_replica_gets_through_the_other(self):
        # a's own worker of the key's shard stops for good. The first write
        # there waits out router.timeout (503, outcome unknown) and pins the
        # connection's writes to it for router.timeout; its link is reset
        # and asks the stopped worker with a Ping. A client retrying every
        # 0.2 s was sent there behind the Ping each time, waited it out,
        # got another unknown outcome, and was pinned again: never through,
        # while b served. Retries are refused at once now, and go to b once
        # the pin runs out.
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        mock, bases, rt = self.cluster(layout=layout, timeout="1s")
        a, b = rt["a"], rt["b"]
        key = b"stuck-1"
        pid = a.worker_pid(shard_of_key(key))
        with a.client(timeout=20) as c:
            for _ in range(3):  # a worker's first produce may be slow under ASan
                first = c.call(req_hset(TABLE, key, "before"))
                if first.status == 200:
                    break
            self.assertEqual(first.status, 200, first.message)
            os.kill(pid, signal.SIGSTOP)
            self.addCleanup(os.kill, pid, signal.SIGCONT)
            resp = c.call(req_hset(TABLE, key, "after"))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertTrue(resp.outcome_unknown, resp.message)
            unknown_at, refused = time.monotonic(), []
            while resp.status == 503 and time.monotonic() < unknown_at + 8:
                time.sleep(0.2)
                t0 = time.monotonic()
                resp = c.call(req_hset(TABLE, key, "after"))
                if resp.status == 503:
                    refused.append((time.monotonic() - t0, resp.outcome_unknown, resp.message))
            self.assertEqual(resp.status, 200, resp.message)  # through b's worker
            self.assertLess(time.monotonic() - unknown_at, 4, refused)
            for took, unknown, message in refused:
                self.assertLess(took, 0.5, message)  # refused at once, not sent
                self.assertFalse(unknown, message)
            self.assertTrue(any("has not answered since its link was reset" in m
                                for _, _, m in refused), refused)
            # a's worker is still stopped: the write went through b.
            with Client(b.socket_path(shard_of_key(key)), timeout=10) as w:
                got = w.call(hget_at(TABLE, key, resp.position))
            self.assertEqual((got.status, pyval(got.values[0])), (200, "after"))

    def test_write_read_with_one_the_worker_hangs_on_is_not_run_when_it_resumes(self):
        # The worker reads an Hdel and an Hset of another key of its shard
        # at once (one run of frames), then hangs 2.5 s in the Hdel (a test
        # plugin holding its loop: a slow disk under one request). The
        # router gives up on both after 1 s; "after" is acknowledged
        # through node b; then the worker resumes, the Hset still to run.
        key, other = b"zombie-5", b"zombie-5x"  # other: the shard's other partition
        while (shard_of_key(other) != shard_of_key(key) or
               partition_of(other, TOPIC_PARTS) == partition_of(key, TOPIC_PARTS)):
            other += b"x"
        mock, a, b = self.stalling_pair("Hdel")
        with a.client(timeout=20) as c:
            self.assertEqual(c.call(req_hset(TABLE, key, "before")).status, 200)
            # a's own worker takes both (a router prefers its node's workers).
            c.send(req_hdel(TABLE, other), req_hset(TABLE, key, "abandoned"))
            gave_up = [c.recv(), c.recv()]
            self.assertEqual([r.status for r in gave_up], [503, 503],
                             [r.message for r in gave_up])
            self.assertIn("router.timeout", gave_up[1].message)
            # For router.timeout after a write of unknown outcome, the
            # connection's writes to that shard go to that replica or
            # nowhere: its producer could still hold the record (not here:
            # the worker had not run it, as the end shows).
            after = c.call(req_hset(TABLE, key, "after"))
            self.assertEqual(after.status, 503, after.message)
            self.assertIn("whose producer may still put an earlier write of this connection in "
                          "the topic", after.message)
            deadline = time.monotonic() + 10
            while after.status == 503 and time.monotonic() < deadline:
                time.sleep(0.2)
                after = c.call(req_hset(TABLE, key, "after"))  # through b's worker
            self.assertEqual(after.status, 200, after.message)
        self.assert_after_stands(mock, [a, b], key, after.position,
                                 partition_of(key, TOPIC_PARTS))
        # The Hdel it hung in is not sent to Kafka either (the peer left
        # while it ran); the Hset after it is dropped unread, or with the
        # connection the worker then finds closed.
        self.assertIn("closed its connection while this worker ran a write it had sent",
                      log_of(a))

    def test_a_write_the_worker_hangs_in_is_not_sent_once_its_sender_moved_on(self):
        # The worker hangs 2.5 s inside an Hset (a test plugin: a slow disk
        # under one request); router.timeout 1 s. The router answers it of
        # unknown outcome and pins the connection's writes to that replica
        # for router.timeout; the retries meanwhile are refused at once
        # (the worker answers nothing), and the first one after goes
        # through b and is acknowledged. When the worker resumes, the Hset
        # it was in must not reach the topic: it would land after the
        # acknowledged write and undo it on every replica.
        key = b"zombie-6"
        mock, a, b = self.stalling_pair("Hset")
        with a.client(timeout=20) as c:
            self.assertEqual(c.call(req_hmset(TABLE, [(key, "before")])).status, 200)
            t0 = time.monotonic()
            gave_up = c.call(req_hset(TABLE, key, "abandoned"))  # a's own worker hangs in it
            self.assertEqual(gave_up.status, 503, gave_up.message)
            self.assertTrue(gave_up.outcome_unknown, gave_up.message)
            after = gave_up
            while after.status == 503 and time.monotonic() < t0 + 10:
                time.sleep(0.2)
                after = c.call(req_hmset(TABLE, [(key, "after")]))
            self.assertEqual(after.status, 200, after.message)
            self.assertLess(time.monotonic() - t0, 2.5, "acknowledged before the worker resumed")
        time.sleep(max(0.0, t0 + 2.5 - time.monotonic()))
        self.assert_after_stands(mock, [a, b], key, after.position,
                                 partition_of(key, TOPIC_PARTS))
        self.assertIn("closed its connection while this worker ran a write it had sent", log_of(a))

    def test_a_write_whose_link_breaks_says_it_may_have_been_applied(self):
        # a's worker of the key's shard takes the writes (a router prefers
        # its node's workers) and dies with them unanswered. The 503 had
        # outcome_unknown but said only "worker closed the connection": a
        # Redis client, which sees nothing but the text, could not tell
        # that the write may have been applied, and sent it again.
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        mock, bases, rport = self.mock(), self.bases(layout), free_port()
        a = self.node(mock, "a", layout, bases, timeout="5s",
                      router_yaml=('resp_listen: "127.0.0.1:%d"' % rport,))
        b = self.node(mock, "b", layout, bases)
        self.start_all(a, b)
        key, other = b"cut-1", b"cut-2"
        while shard_of_key(other) != shard_of_key(key):
            other += b"x"
        pid = a.worker_pid(shard_of_key(key))
        os.kill(pid, signal.SIGSTOP)
        with a.client(timeout=20) as c, socket.create_connection(("127.0.0.1", rport), 20) as rc:
            c.send(req_hset(TABLE, key, "x"))
            rc.sendall(b"*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\ny\r\n"
                       % (len(TABLE), TABLE.encode(), len(other), other))
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            resp = c.recv()
            self.assertEqual(resp.status, 503, resp.message)
            self.assertTrue(resp.outcome_unknown, resp.message)
            self.assertIn("closed the connection; the write may or may not have been applied",
                          resp.message)
            rc.settimeout(20)
            line = rc.recv(4096)
            self.assertTrue(line.startswith(b"-ERR ") and
                            b"the write may or may not have been applied" in line, line)

    def test_writes_of_a_router_killed_9_are_not_run_when_a_hung_worker_resumes(self):
        # a routes only: its links to b's and c's workers are TCP. Its
        # writes to b hang; then a dies (kill -9: the kernel closes its
        # sockets), its clients write again through c, and b resumes.
        mock, bases, rt = self.cluster(layout={"a": [], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]},
                                       timeout="5s")
        a, b, c = rt["a"], rt["b"], rt["c"]
        keys = [b"zombie-3", b"zombie-4"]
        while shard_of_key(keys[1]) != shard_of_key(keys[0]):
            keys[1] += b"x"
        pid = b.worker_pid(shard_of_key(keys[0]))
        os.kill(pid, signal.SIGSTOP)
        try:
            with a.client(timeout=20) as ca, a.client(timeout=20) as ca2:
                # A connection's writes keep to one replica, and each new
                # connection takes the next: one of the two goes to b, and
                # hangs there.
                ca.send(req_hset(TABLE, keys[0], "abandoned"))
                ca2.send(req_hset(TABLE, keys[1], "abandoned"))
                time.sleep(0.5)
                a.kill_all()
            positions = []
            with c.client(timeout=20) as cc:
                for k in keys:
                    resp = cc.call(req_hset(TABLE, k, "after"))
                    self.assertEqual(resp.status, 200, resp.message)
                    positions.append(resp.position)
        finally:
            os.kill(pid, signal.SIGCONT)
        # Both keys are of the one stopped worker's shard: it is given its
        # 1.5 s to run what it had buffered once, before the first check.
        for i, (k, pos) in enumerate(zip(keys, positions)):
            self.assert_after_stands(mock, [b, c], k, pos, partition_of(k, TOPIC_PARTS),
                                     settle=i == 0)
        self.assertIn("closed its connection before this worker read the writes", log_of(b))


if __name__ == "__main__":
    unittest.main()
