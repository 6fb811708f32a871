"""Integration tests for membership changes without downtime (issue 13,
item 5): a changed cluster.nodes taken live on SIGHUP. The master starts
workers for shards that became local (a new replica copies a peer's
snapshot), replaces every router process by one running the new map, and
stops workers of shards no longer local once the old router processes
drained; clients of an old router process see their connection closed
after their answers and reconnect, new connections reach the new map.

The cluster fixtures are test_replicas' (several nodes on loopback, one
kvs-mock-kafka). Every wait is bounded; every process is killed at cleanup.
"""
import os
import re
import shutil
import signal
import socket
import threading
import time
import unittest

from kafkatest import info_pairs, wait_until
from kvstest import HOST, Client, encode, free_port, pb, pyval, req_hget, req_hset
from routertest import ClientThreads, config_place, edit_config as edit, procs_for_config
from test_deploy import NotifySocket
from test_ops import http_get, parse_metrics, total
from test_replicas import SHARDS, TABLE, ReplicaFixtures, hget_at, shard_of_key

DRAINED = (EOFError, ConnectionResetError, BrokenPipeError)


def set_map(router, layout, bases):
    """Rewrites the cluster.nodes lines of router's config file."""
    with open(router.config) as f:
        lines = [ln for ln in f.read().splitlines() if not ln.startswith("    - {name: ")]
    at = lines.index("  nodes:") + 1
    lines[at:at] = ['    - {name: %s, address: "127.0.0.1:%d", shards: [%s]}'
                    % (n, bases[n], ", ".join(str(s) for s in shards))
                    for n, shards in layout.items()]
    with open(router.config, "w") as f:
        f.write("\n".join(lines) + "\n")


def changes_over(router):
    """How many membership changes router's log says are over, done
    ("membership change complete") or failed ("... abandoned")."""
    log = router.stderr()
    return log.count("membership change complete") + log.count("membership change abandoned")


def router_procs(router):
    """{pid: generation} of router's live router processes."""
    out = {}
    for pid, argv in procs_for_config(router.config).items():
        if "--router" in argv:
            out[pid] = int(argv[argv.index("--generation") + 1])
    return out


def snapshot_req(installed=b"", node="d"):
    """A Snapshot request from node `node`; with `installed`, its
    acknowledgement of the copy with that checksum."""
    req = pb.CommandRequest()
    req.snapshot.node = node
    req.snapshot.installed = installed
    return req


def sighup_pending(pid):
    """Whether a SIGHUP sent to process pid waits on it (blocked)."""
    with open("/proc/%d/status" % pid) as f:
        pending = [int(line.split()[1], 16) for line in f
                   if line.startswith(("ShdPnd:", "SigPnd:"))]
    return any(p & (1 << (signal.SIGHUP - 1)) for p in pending)


def age(pid):
    """Seconds since process pid started."""
    with open("/proc/%d/stat" % pid) as f:
        start = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - start / os.sysconf("SC_CLK_TCK")


class MoveTraffic(ClientThreads):
    """Writers and readers through one node while its router processes are
    replaced. A client whose connection the node closes (a drained router
    process) reconnects and sends the request that got no answer again
    (the router never read it: a drain answers everything it read), as
    any client must after a router restart; that is counted as a
    reconnect, not an error. Every answer must be right: writes 200,
    reads of acknowledged writes (at their position) 200 with the value.
    A refused connection is an error: the port must never close."""

    def __init__(self, router, writers=2, readers=2, pause=0.004):
        self.router = router
        super().__init__()
        self.acked = {}  # key -> (value, position, when)
        self.errors = []
        self.reconnects = 0
        self.connected = set()  # the threads that have made a connection
        self.reads = 0
        self.pause = pause
        self.threads = [threading.Thread(target=self.writer, args=(w,), daemon=True)
                        for w in range(writers)]
        self.threads += [threading.Thread(target=self.reader, args=(r,), daemon=True)
                         for r in range(readers)]

    def acked_since(self, t):
        """Writes acknowledged at or after monotonic time t."""
        with self.lock:
            return sum(1 for v in self.acked.values() if v[2] >= t)

    def call(self, conn, req):
        """conn: a one-element list holding the thread's Client (or None)."""
        for _ in range(20):
            try:
                if conn[0] is None:
                    conn[0] = Client(self.router.addr, timeout=20)
                    with self.lock:
                        self.connected.add(threading.current_thread().name)
                return conn[0].call(req)
            except DRAINED:
                with self.lock:
                    self.reconnects += 1
                conn[0].close()
                conn[0] = None
        raise AssertionError("20 reconnects in a row")

    def run_safely(self, body):
        conn = [None]
        try:
            while not self.stop.is_set():
                body(conn)
                time.sleep(self.pause)
        except Exception as e:  # a refused connection, a timeout: an error
            with self.lock:
                self.errors.append(("exception", repr(e)))
        finally:
            if conn[0] is not None:
                conn[0].close()

    def writer(self, w):
        n = [0]

        def one(conn):
            key, val = b"m%d-%d" % (w, n[0]), "v%d-%d" % (w, n[0])
            n[0] += 1
            resp = self.call(conn, req_hset(TABLE, key, val))
            with self.lock:
                if resp.status == 200:
                    self.acked[key] = (val, resp.position, time.monotonic())
                else:
                    self.errors.append(("write", key, resp.status, resp.message))
        self.run_safely(one)

    def reader(self, r):
        import random
        rnd = random.Random(r)

        def one(conn):
            with self.lock:
                old = [k for k, v in self.acked.items() if v[2] < time.monotonic() - 0.5]
                key = rnd.choice(old) if old else None
                if key is not None:
                    val, pos, _ = self.acked[key]
            if key is None:
                time.sleep(0.01)
                return
            resp = self.call(conn, hget_at(TABLE, key, pos))
            with self.lock:
                self.reads += 1
                if resp.status != 200 or pyval(resp.values[0]) != val:
                    self.errors.append(("read", key, resp.status, resp.message))
        self.run_safely(one)


class MembershipTest(ReplicaFixtures, unittest.TestCase):

    def mock(self):
        """ReplicaFixtures.mock, killed at cleanup once the nodes are gone
        (cleanups run last first): its exit on SIGTERM, which destroys
        librdkafka's mock cluster, often takes a second, and no test here
        is about it."""
        m = super().mock()
        self.addCleanup(lambda: m.proc.poll() is None and m.proc.kill())
        return m

    def metrics(self, port):
        status, _, body = http_get(port)
        self.assertEqual(status, 200, body)
        return parse_metrics(body)

    def metrics_when(self, port, ok, timeout=10):
        """The first scrape for which ok(metrics) holds, or the last one
        (the caller's assertions then say what is missing)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics(port)
            if ok(m) or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def copy_holding_a_reload(self, a, b):
        """a's worker 0 starts over empty and copies its snapshot from b's
        worker 0, which is stopped (SIGSTOP), so the copy hangs; then a's
        master gets a SIGHUP, which the copying worker holds until it
        serves. Returns the stopped pid: SIGCONT it when done."""
        source = b.workers()[0]
        os.kill(source, signal.SIGSTOP)
        try:
            copies = a.stderr().count("copying a snapshot from node b")
            os.unlink(os.path.join(a.data_dir, "shard-0", "data.mdb"))
            a.kill_worker(0)
            self.assertTrue(wait_until(
                lambda: a.stderr().count("copying a snapshot from node b") > copies, 10),
                a.stderr()[-3000:])
            a.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(
                lambda: "SIGHUP: passed on to 1 router process(es) and 2 worker(s)" in a.stderr(),
                10), a.stderr()[-3000:])
            # Past the supervisor's hold (until the worker is 1 s old): the
            # worker, still copying, got it; it blocks SIGHUP until it
            # serves, so the signal shows as pending on it.
            worker = a.workers()[0]
            self.assertTrue(wait_until(lambda: sighup_pending(worker), 10),
                            a.stderr()[-3000:])
        except BaseException:
            os.kill(source, signal.SIGCONT)
            raise
        return source

    def a_and_b(self, layout, names=("a", "b"), processes=1, env=None, router_yaml=(),
                b_yaml=""):
        """Nodes a and b of `layout`, started (base ports for every name in
        `names`); a serves /metrics; b_yaml: more YAML for b's config.
        Returns (mock, bases, mport, a, b)."""
        mock = self.mock()
        bases = self.bases(list(names))
        mport = free_port()
        a = self.node(mock, "a", layout, bases, processes=processes, env=env,
                      router_yaml=('metrics_listen: "%s:%d"' % (HOST, mport),) + router_yaml)
        b = self.node(mock, "b", layout, bases, extra_yaml=b_yaml)
        self.start_all(a, b)
        return mock, bases, mport, a, b

    def reload(self, router, changes):
        """SIGHUP; waits until `changes` membership changes are over (changes_over)."""
        router.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(
            lambda: changes_over(router) == changes, 40),
            router.stderr()[-4000:])

    def check_acked(self, traffic, router):
        """Every acknowledged write, read at its position through `router`."""
        with router.client() as c:
            for k, (val, pos, _) in traffic.acked.items():
                resp = c.call(hget_at(TABLE, k, pos))
                self.assertEqual((resp.status, pyval(resp.values[0]) if resp.values else None),
                                 (200, val), resp.message)

    def test_replica_moves_from_b_to_d_while_clients_read_and_write_through_a(self):
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        mock, bases, mport, a, b = self.a_and_b(layout, ("a", "b", "d"), processes=2)
        self.assertTrue(wait_until(lambda: "node ready" in a.stderr(), 20))
        workers = a.workers()
        gen0 = router_procs(a)
        self.assertEqual(sorted(gen0.values()), [0, 0])
        traffic = MoveTraffic(a)
        traffic.start()
        # Readers connect once a write is half a second old: every client
        # is on a router process of the first map before it changes (the
        # reconnects counted below; seen: the change came first).
        self.assertTrue(wait_until(lambda: len(traffic.connected) == len(traffic.threads), 10))
        # d joins: started with the map {a, b, d}, it copies a snapshot.
        layout_abd = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "d": [0, 1, 2, 3]}
        d = self.node(mock, "d", layout_abd, bases)
        d.start()
        self.wait_serving(d)
        self.wait_workers(d)
        # a takes the map {a, b, d} live: new router processes link to d.
        set_map(a, layout_abd, bases)
        self.reload(a, 1)
        gen1 = router_procs(a)
        self.assertEqual(sorted(gen1.values()), [1, 1], a.stderr()[-3000:])
        self.assertFalse(set(gen1) & set(gen0))
        self.assertEqual(a.workers(), workers)  # its own shards did not change
        # Its workers took the map too (a table bound to no topic may be
        # written only on a shard with one replica).
        self.assertTrue(wait_until(
            lambda: info_pairs(a.socket_path(0))["shard.000.replicas"] == 3, 10))
        # The new router processes link to d and b, and the master to them
        # for /metrics, as they start: the scrape shows it within moments.
        m = self.metrics_when(mport, lambda m: total(m, "kvs_shard_link_up", node="d") == 2 * SHARDS
                              and total(m, "kvs_shard_link_up", node="b") == 2 * SHARDS)
        self.assertEqual(total(m, "kvs_shard_link_up", node="d"), 2 * SHARDS)
        self.assertEqual(total(m, "kvs_shard_link_up", node="b"), 2 * SHARDS)
        self.assertEqual(total(m, "kvs_router_processes", state="serving"), 2)
        self.assertEqual(total(m, "kvs_router_processes", state="draining"), 0)
        self.assertEqual(total(m, "kvs_membership_changes_total", result="done"), 1)
        self.assertEqual(total(m, "kvs_router_up"), 2)
        self.assertEqual(total(m, "kvs_metrics_source_up", router="0"), 1)
        # b leaves, then a takes the map {a, d}.
        self.assertEqual(b.stop(), 0)
        time.sleep(0.5)
        set_map(a, {"a": [0, 1, 2, 3], "d": [0, 1, 2, 3]}, bases)
        self.reload(a, 2)
        self.assertEqual(sorted(router_procs(a).values()), [2, 2])
        m = self.metrics_when(mport, lambda m: total(m, "kvs_shard_link_up", node="d") == 2 * SHARDS)
        self.assertEqual(total(m, "kvs_shard_link_up", node="d"), 2 * SHARDS)
        self.assertEqual([s for s in m if s[0] == "kvs_shard_link_up" and s[1]["node"] == "b"],
                         [])
        self.assertEqual(total(m, "kvs_membership_changes_total", result="done"), 2)
        self.assertEqual(info_pairs(a.socket_path(0))["shard.000.replicas"], 2)
        time.sleep(0.5)
        traffic.finish()
        self.assertEqual(traffic.errors, [])
        self.assertGreater(len(traffic.acked), 100)
        self.assertGreater(traffic.reads, 50)
        # Each of the 4 clients was on an old router process at both changes.
        self.assertGreaterEqual(traffic.reconnects, 2 * 4)
        self.assertEqual(a.workers(), workers)
        self.check_acked(traffic, a)
        self.check_acked(traffic, d)
        self.assertNotIn("ERROR", a.stderr())
        self.assertEqual(a.stop(), 0)

    def test_a_shard_moves_onto_this_node_and_another_off_it(self):
        # a serves 0 and 1, b every shard; a's reload moves shard 0 off a
        # and shard 2 onto it (its worker copies b's snapshot).
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        mock, bases, rt = self.cluster(layout=layout)
        a, b = rt["a"], rt["b"]
        with a.client() as c:
            for i in range(200):
                self.assertEqual(c.call(req_hset(TABLE, b"pre-%d" % i, "p%d" % i)).status, 200)
        before = a.workers()
        self.assertEqual(sorted(before), [0, 1])
        traffic = MoveTraffic(a, writers=1, readers=1)
        traffic.start()
        time.sleep(0.5)
        moved = {"a": [1, 2], "b": [0, 1, 2, 3]}
        set_map(a, moved, bases)
        self.reload(a, 1)
        log = a.stderr()
        self.assertIn("shard 2 is now served here too; starting its worker", log)
        self.assertIn("shard 0 is no longer served here; its worker stops", log)
        self.assertIn("copying a snapshot from node b", log)
        self.assertIn("copied shard", log)
        # The new router processes took clients only once the new worker
        # served: during its copy it answers 503, and writes to shard 2 went
        # on through the old ones (to b).
        ready = log.index("node[2] INFO  shard 2 ready")
        self.assertLess(ready, log.index("shard 2's new worker serves"))
        self.assertLess(ready, log.index("the router processes of the new map accept clients"))
        after = a.workers()
        self.assertEqual(sorted(after), [1, 2], log[-3000:])
        self.assertEqual(after[1], before[1])
        # Shard 2 was served before (by b): its first worker here runs as
        # a restarted one would (a grown topic is not fatal to the node).
        for shard, spawn in ((1, b"0"), (2, b"1")):
            with open("/proc/%d/cmdline" % after[shard], "rb") as f:
                argv = f.read().split(b"\0")
            self.assertEqual(argv[argv.index(b"--spawn") + 1], spawn, argv)
        # b takes the same map (its own shards stay; its routers stop
        # asking a for shard 0).
        set_map(b, moved, bases)
        self.reload(b, 1)
        # Traffic goes on through a once b took the map: polled until a
        # write was acknowledged and a read answered since (and more than
        # the 20 writes checked below were acknowledged in all).
        t, reads = time.monotonic(), traffic.reads
        self.assertTrue(wait_until(lambda: traffic.acked_since(t) and traffic.reads > reads
                                   and len(traffic.acked) > 20, 10), traffic.errors[:3])
        traffic.finish()
        self.assertEqual(traffic.errors, [])
        self.assertGreater(len(traffic.acked), 20)
        self.check_acked(traffic, a)
        # a's new worker holds what was written before it existed.
        with Client(a.socket_path(2)) as w:
            for i in range(200):
                k = b"pre-%d" % i
                if shard_of_key(k) != 2:
                    continue
                resp = w.call(req_hget(TABLE, k))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, "p%d" % i))
        # Shard 0 is read from b now (its data directory on a moved aside).
        with a.client() as c:
            for i in range(0, 200, 7):
                resp = c.call(req_hget(TABLE, b"pre-%d" % i))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, "p%d" % i))
        self.assertEqual(a.stop(), 0)

    def test_a_shard_that_moves_wholly_onto_this_node_copies_its_previous_owner(self):
        # Shard 2 goes from b alone to a alone. a's new worker starts from
        # the map a serves until the switch, in which b holds shard 2: it
        # copies b's snapshot, so a table bound to no topic (which no
        # replay brings back) comes along. In the new map it would have no
        # peer, start empty, and the rows would be gone from a's view.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        keys = [b"u-%d" % i for i in range(400) if shard_of_key(b"u-%d" % i) == 2][:5]
        with a.client() as c:
            for k in keys:
                self.assertEqual(c.call(req_hset("plain", k, "v")).status, 200)
        set_map(a, {"a": [0, 1, 2], "b": [0, 1, 3]}, bases)
        self.reload(a, 1)
        self.assertIn("shard 2 has no data yet: copying a snapshot from node b", a.stderr())
        with a.client() as c:
            for k in keys:
                resp = c.call(req_hget("plain", k))
                self.assertEqual((resp.status, pyval(resp.values[0]) if resp.values else None),
                                 (200, "v"), resp.message)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_shard_that_moves_loses_no_acknowledged_write_to_an_unbound_table(self):
        # Shard 2 moves from b alone to a alone, with writes to a table
        # bound to no topic coming through both nodes throughout. Once a's
        # new worker copied b's, b's worker (until b reloads) must take no
        # such write: it would reach that copy only, and retire with it.
        # It answers 503 meanwhile (nothing written), also after a kill -9
        # (the fence is on disk); once b reloads, b's router sends shard 2
        # to a. Every write answered 200 must then be readable everywhere.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        keys = (b"h-%d" % i for i in range(10 ** 6) if shard_of_key(b"h-%d" % i) == 2)
        acked, refused, lock, stop = {}, [], threading.Lock(), threading.Event()

        def writer(router):
            conn = [None]
            while not stop.is_set():
                with lock:
                    key = next(keys)
                try:
                    if conn[0] is None:
                        conn[0] = Client(router.addr, timeout=20)
                    resp = conn[0].call(req_hset("plain", key, key.decode()))
                except DRAINED:  # a drained router process: not executed
                    conn[0].close()
                    conn[0] = None
                    continue
                with lock:
                    if resp.status == 200:
                        acked[key] = router
                    else:
                        refused.append((router is b, resp.status, resp.message))
                time.sleep(0.002)
            conn[0].close()

        def acked_through(router):
            with lock:
                return sum(1 for r in acked.values() if r is router)

        def refused_by_b():
            with lock:
                return [r for r in refused if r[0]]

        threads = [threading.Thread(target=writer, args=(r,), daemon=True) for r in (a, b)]
        for t in threads:
            t.start()
        try:
            # Writes through both nodes are acknowledged before the move
            # (polled: the writers run on until the end).
            self.assertTrue(wait_until(lambda: acked_through(a) and acked_through(b), 10),
                            (len(acked), refused[:3]))
            moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
            set_map(a, moved, bases)
            self.reload(a, 1)
            self.assertIn("shard 2 has no data yet: copying a snapshot from node b", a.stderr())
            self.assertIn("shard 2 was copied to", b.stderr())
            # b's worker refuses the writes through b from now until b
            # reloads: wait for one such refusal, not a fixed time.
            self.assertTrue(wait_until(refused_by_b, 10), refused[:3])
            self.restart_worker(b, 2)
            with Client(b.socket_path(2)) as w:
                resp = w.call(req_hset("plain", next(keys), "x"))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn('table "plain" is bound to no Kafka topic, and shard 2 was copied to',
                          resp.message)
            self.assertIn("nothing was written", resp.message)
            set_map(b, moved, bases)
            self.reload(b, 1)
            # b's router writes to a now: polled until a write through b
            # is acknowledged after the reload.
            before = acked_through(b)
            self.assertTrue(wait_until(lambda: acked_through(b) > before, 10), refused[-3:])
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertGreater(acked_through(b), before)  # b's router writes to a now
        with lock:
            self.assertTrue(refused, "no write was refused between the copy and b's reload")
            self.assertEqual({r[1] for r in refused}, {503}, refused[:3])
        for router in (a, b):
            with router.client() as c:
                for k in acked:
                    resp = c.call(req_hget("plain", k))
                    self.assertEqual((resp.status, pyval(resp.values[0]) if resp.values else None),
                                     (200, k.decode()), (k, acked[k] is b, resp.message))
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def keys_on(self, shard, prefix, n):
        return [k for k in (b"%s-%d" % (prefix, i) for i in range(40 * n))
                if shard_of_key(k) == shard][:n]

    def write_all(self, router, keys, value):
        with router.client() as c:
            for k in keys:
                resp = c.call(req_hset("plain", k, value))
                self.assertEqual(resp.status, 200, resp.message)

    def read_all(self, router, keys, value):
        """Every key reads `value` through `router`. A 503 "retry shortly"
        is retried for a while: a worker that just installed a copy closed
        the router's links, which reconnect after a pause (seen under the
        sanitizer build on a loaded machine)."""
        with router.client() as c:
            for k in keys:
                deadline = time.monotonic() + 10
                resp = c.call(req_hget("plain", k))
                while (resp.status == 503 and "retry shortly" in resp.message
                       and time.monotonic() < deadline):
                    time.sleep(0.1)
                    resp = c.call(req_hget("plain", k))
                self.assertEqual((resp.status, pyval(resp.values[0]) if resp.values else None),
                                 (200, value), (k, resp.message))

    def test_a_snapshot_not_delivered_leaves_unbound_writes_taken(self):
        # A Snapshot whose receiver leaves before the copy is sent: no copy
        # exists, so the fence its start raised comes down again.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, _, _, a, b = self.a_and_b(layout)
        keys = self.keys_on(2, b"p", 2)
        req = pb.CommandRequest()
        req.snapshot.node = "c"  # a node asks (an anonymous copy raises no fence)
        probe = Client(b.socket_path(2))
        probe.send_raw(encode(req))
        probe.close()
        self.assertTrue(wait_until(
            lambda: "its snapshot was not delivered: writes to tables bound to no topic are "
                    "taken again" in b.stderr(), 10), b.stderr()[-3000:])
        self.assertFalse(os.path.exists(os.path.join(b.data_dir, "shard-2", "copied-out")))
        self.write_all(b, keys, "v")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_snapshot_refused_while_another_is_sent_leaves_the_fence_to_that_one(self):
        # A second Snapshot while one is being sent is refused (503, one at
        # a time). The first is then not delivered (its receiver leaves):
        # the fence it raised must come down, whatever the refusal did.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, _, _, a, b = self.a_and_b(layout)
        self.write_all(b, self.keys_on(2, b"f", 400), "x" * 60000)  # more than is buffered
        req = pb.CommandRequest()
        req.snapshot.node = "c"  # a node asks (an anonymous copy raises no fence)
        first = Client(b.socket_path(2), timeout=60)
        first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        first.send_raw(encode(req))
        self.assertTrue(wait_until(lambda: "sending a snapshot of shard 2" in b.stderr(), 10))
        with Client(b.socket_path(2)) as second:
            resp = second.call(req)
        self.assertEqual(resp.status, 503, resp.message)
        self.assertIn("is already sending a snapshot", resp.message)
        first.close()
        self.assertTrue(wait_until(
            lambda: "its snapshot was not delivered: writes to tables bound to no topic are "
                    "taken again" in b.stderr(), 10), b.stderr()[-3000:])
        self.write_all(b, self.keys_on(2, b"g", 2), "v")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_fresh_replicas_started_together_do_not_wait_for_each_other(self):
        # Every worker of a new cluster has no data and asks its peers in
        # map order. a starts first: b cannot be reached yet, and may hold
        # rows only it has, so a asks again each second. b, started just
        # after, asks a while a is copying, and a answers 503 "copying a
        # snapshot": no peer with data to wait for (only "already sending
        # a snapshot" or no answer at all are), so b starts empty at once,
        # and a copies b's empty shards at its next round. Both serve.
        mock = self.mock()
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        bases = self.bases(list(layout))
        a, b = (self.node(mock, n, layout, bases, extra_yaml="limits: {frame_timeout: 2s}\n")
                for n in ("a", "b"))
        # b starts once every worker of a found it unreachable (a fixed
        # head start let a's workers, slow to start, ask b once b answered).
        a.proc = a.spawn()
        self.assertTrue(wait_until(
            lambda: a.stderr().count("as one could not be reached") >= SHARDS, 30),
            a.stderr()[-3000:])
        b.proc = b.spawn()
        for r in (a, b):
            r.wait_accepting("kvs-router", 30)
            self.wait_serving(r, timeout=30)
            self.wait_workers(r, timeout=30)
        self.assertIn("is copying a snapshot", b.stderr())  # b asked a while a copied
        self.assertEqual(b.stderr().count("could send a snapshot: starting empty"), SHARDS)
        self.assertNotIn(" again", b.stderr())  # b asked no round again
        self.assertIn("as one could not be reached", a.stderr())  # a waited for b
        self.assertEqual(a.stderr().count("copied shard"), SHARDS, a.stderr()[-3000:])
        for r in (a, b):
            self.assertEqual(r.stop(), 0)

    def test_a_replica_that_copied_takes_its_own_nodes_writes_at_once(self):
        # a starts first and asks b, not started, again each second; its
        # workers answer 503 meanwhile, and a's router, asked for a row of
        # the shard again and again, passes its own replica over for longer
        # each time (500 ms, doubling, up to 30 s). b starts, a copies b's
        # empty shards, and a's workers serve anew: new processes, with a
        # clean record. a's router took b's replica instead for up to 30 s
        # (a network hop for every write); with b's worker stopped, a write
        # through a got 503 after router.timeout.
        mock = self.mock()
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        bases = self.bases(list(layout))
        a, b = (self.node(mock, n, layout, bases, timeout="1s") for n in ("a", "b"))
        key = b"own-1"
        a.proc = a.spawn()
        self.assertTrue(wait_until(
            lambda: a.stderr().count("as one could not be reached") >= SHARDS, 30),
            a.stderr()[-3000:])
        a.wait_accepting("kvs-router", 30)
        with a.client(timeout=20) as c:
            for _ in range(8):  # 500 ms .. 30 s: a's own replica is the only one up
                resp = c.call(req_hget(TABLE, key))
                self.assertEqual(resp.status, 503, resp.message)
        b.proc = b.spawn()
        self.assertTrue(wait_until(lambda: a.stderr().count("copied shard") == SHARDS, 30),
                        a.stderr()[-3000:])
        for r in (a, b):
            r.wait_accepting("kvs-router", 30)
            self.wait_serving(r, timeout=30)
            self.wait_workers(r, timeout=30)
            self.wait_links(r)
        pid = b.worker_pid(shard_of_key(key))
        os.kill(pid, signal.SIGSTOP)
        try:
            with a.client(timeout=20) as c:
                resp = c.call(req_hset(TABLE, key, "v"))
            self.assertEqual(resp.status, 200, resp.message)
        finally:
            os.kill(pid, signal.SIGCONT)

    def test_a_move_whose_only_peer_is_busy_waits_for_its_snapshot(self):
        # b's worker is sending another snapshot (to a receiver that reads
        # slowly) when a's new worker asks: 503. Starting empty would
        # drop the unbound table's rows for good; a asks again until b
        # sends it one.
        # b's sender holds back at a quarter of limits.client_output (1 MiB
        # here, 16 MiB by default; max_frame 1 MiB lets it be that small):
        # 6 MB are more than its buffers (that, a chunk of at most 1 MiB
        # read ahead, the pipe and the socket's), so the stream to the
        # slow receiver cannot end (else a is not told "busy", which the
        # test asserts).
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(
            layout, b_yaml="limits: {max_frame: 1MiB, client_output: 4MiB}\n")
        keys = self.keys_on(2, b"q", 100)
        self.write_all(b, keys, "x" * 60000)
        req = pb.CommandRequest()
        req.snapshot.SetInParent()
        slow = Client(b.socket_path(2), timeout=60)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.send_raw(encode(req))
        try:
            self.assertTrue(wait_until(lambda: "sending a snapshot of shard 2" in b.stderr(), 10))
            moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
            set_map(a, moved, bases)
            a.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(
                lambda: "as one is busy sending another" in a.stderr(), 10), a.stderr()[-3000:])
        finally:
            slow.close()
        self.assertTrue(wait_until(lambda: changes_over(a) == 1, 40), a.stderr()[-3000:])
        self.assertIn("membership change complete", a.stderr())
        self.assertNotIn("no replica of shard 2 could send a snapshot", a.stderr())
        set_map(b, moved, bases)
        self.reload(b, 1)
        self.read_all(a, keys, "x" * 60000)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_the_only_copy_of_a_shard_is_not_given_up_before_it_was_copied(self):
        # b holds shard 2 alone. A reload of b that takes it away before
        # any node copied it is refused (its unbound rows exist nowhere
        # else): b serves on. Once a copied it, b's reload is taken. Then
        # a, now the only holder of rows written since, may not give the
        # shard back before b copies it again.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        first, later = self.keys_on(2, b"o", 10), self.keys_on(2, b"l", 10)
        self.write_all(b, first, "one")
        moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
        set_map(b, moved, bases)
        b.proc.send_signal(signal.SIGHUP)
        refusal = ("reload refused: cluster.nodes takes shard 2 from this node, which holds its "
                   "only copy, before any node copied it")
        self.assertTrue(wait_until(lambda: refusal in b.stderr(), 10), b.stderr()[-3000:])
        # the advice does not promise a copy a node with a directory of the shard would not make
        self.assertIn("Reload the node that takes the shard over first (it copies it from here, "
                      "unless it still has a directory of the shard, which it serves as it is: "
                      "move that aside first), then this one", b.stderr())
        self.assertEqual(changes_over(b), 0)
        self.assertEqual([d for d in os.listdir(b.data_dir) if ".retired-" in d], [])
        self.read_all(b, first, "one")
        set_map(a, moved, bases)
        self.reload(a, 1)
        b.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: changes_over(b) == 1, 40), b.stderr()[-3000:])
        self.write_all(a, later, "two")
        set_map(a, layout, bases)  # back to b, which has not copied a's rows
        a.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: refusal in a.stderr(), 10), a.stderr()[-3000:])
        self.assertEqual(changes_over(a), 1)
        self.read_all(a, first, "one")
        self.read_all(a, later, "two")
        self.read_all(b, later, "two")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def unbound_rows(self, router, shard):
        """router's shard-N/unbound-rows, or None when there is none."""
        try:
            with open(os.path.join(router.data_dir, "shard-%d" % shard, "unbound-rows")) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def refused_for_rows(self, router, shard, names="no node"):
        """Waits for router's refusal of a reload that gives shard `shard`
        up to nodes whose copies may lack its unbound rows; nothing
        changed, nothing retired."""
        changes = changes_over(router)
        router.proc.send_signal(signal.SIGHUP)
        refusal = ("reload refused: cluster.nodes takes shard %d from this node, and no node that "
                   "keeps it installed a copy of this one taken since its last write to a table "
                   "bound to no topic (%s/shard-%d/unbound-rows names %s)"
                   % (shard, router.data_dir, shard, names))
        self.assertTrue(wait_until(lambda: refusal in router.stderr(), 10),
                        router.stderr()[-3000:])
        self.assertEqual(changes_over(router), changes)
        self.assertEqual([d for d in os.listdir(router.data_dir) if ".retired-" in d], [])

    def test_a_map_that_says_another_node_holds_the_shard_is_not_proof(self):
        # b holds shard 2 alone and took writes. Reloaded with a map that
        # gives it to a beside b (a has not reloaded: it holds nothing),
        # then with one that gives it to a alone, b took the second as
        # safe because a "held" it in both maps, and retired the only
        # copy. Now b's unbound-rows says a never copied: refused. Once a
        # reloads and copies (from b, which takes no such write with two
        # replicas), b records it and the map is taken, every row kept.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        rows = self.keys_on(2, b"g", 10)
        self.write_all(b, rows, "kept")
        self.assertIsNotNone(self.unbound_rows(b, 2))
        both = {"a": [0, 1, 2], "b": [0, 1, 2, 3]}
        moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
        set_map(b, both, bases)
        self.reload(b, 1)
        self.assertFalse(os.path.exists(os.path.join(a.data_dir, "shard-2")))
        set_map(b, moved, bases)
        self.refused_for_rows(b, 2)
        self.read_all(b, rows, "kept")
        set_map(a, both, bases)
        self.reload(a, 1)  # a copies shard 2 from b
        self.assertTrue(wait_until(lambda: "\nnode a\n" in (self.unbound_rows(b, 2) or ""), 10),
                        self.unbound_rows(b, 2))
        self.reload(b, 2)
        self.assertIn("membership change complete", b.stderr())
        self.read_all(a, rows, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_an_exchange_half_taken_does_not_give_up_a_shard_nobody_copied(self):
        # a and b exchange shards 0 and 2 the README's way: first each is
        # given its new shard beside its old ones, then the final map. a
        # took both maps while b took neither: a's second reload gave
        # shard 0 (its rows a's only) up because the maps say b holds it.
        # Refused now; once b took the first map (copying shard 0 from a),
        # a's is taken, and every row of shard 0 reads back through both.
        start = {"a": [0, 1], "b": [2, 3]}
        beside = {"a": [0, 1, 2], "b": [0, 2, 3]}
        final = {"a": [1, 2], "b": [0, 3]}
        _, bases, _, a, b = self.a_and_b(start)
        rows = self.keys_on(0, b"x", 10)
        self.write_all(a, rows, "kept")
        set_map(a, beside, bases)
        self.reload(a, 1)  # a copies shard 2 from b
        set_map(a, final, bases)
        self.refused_for_rows(a, 0)
        set_map(b, beside, bases)
        self.reload(b, 1)  # b copies shard 0 from a
        self.assertTrue(wait_until(lambda: "\nnode b\n" in (self.unbound_rows(a, 0) or ""), 10),
                        self.unbound_rows(a, 0))
        self.reload(a, 2)
        self.assertIn("membership change complete", a.stderr())
        set_map(b, final, bases)
        self.reload(b, 2)
        self.assertIn("membership change complete", b.stderr())
        self.read_all(a, rows, "kept")
        self.read_all(b, rows, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_copy_that_took_writes_is_not_given_up_to_an_older_one(self):
        # Shard 2 moves from b to a (a copies; b never reloads); a takes
        # writes alone. Both then take a map giving the shard to a and b,
        # and a one giving it back to b alone: b's fence came down with
        # the first, and a gave its copy up with the second, the only one
        # with its writes, as b "held" the shard (b's is the copy from
        # before them). Now b's fence stays (a, which copied, may have
        # taken writes since), and a's reload is refused: no node copied
        # a's since. b, given the shard alone, takes no writes to unbound
        # tables on its older copy.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        first, later = self.keys_on(2, b"f", 10), self.keys_on(2, b"l", 10)
        self.write_all(b, first, "one")
        moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
        set_map(a, moved, bases)
        self.reload(a, 1)  # a copies shard 2 from b, whose fence stays up
        self.write_all(a, later, "two")
        both = {"a": [0, 1, 2], "b": [0, 1, 2, 3]}
        set_map(b, both, bases)
        self.reload(b, 1)
        self.assertIn("shard 2: the map gives it 2 replicas, but node a, one of them, installed "
                      "a copy from here and may have held the shard alone and taken writes this "
                      "copy lacks since: the fence stays", b.stderr())
        set_map(a, both, bases)
        self.reload(a, 2)
        set_map(a, layout, bases)
        self.refused_for_rows(a, 2)
        self.read_all(a, later, "two")
        set_map(b, layout, bases)
        self.reload(b, 2)
        with b.client() as c:
            resp = c.call(req_hset("plain", later[0], "three"))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("shard 2 was copied to", resp.message)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_node_withdrawn_since_it_copied_is_no_copy_to_give_the_shard_to(self):
        # a became a replica of shard 2 (it copied from b: b's records name
        # a), and was removed again the README's way (stopped, its data
        # removed, b reloaded without it). b then took a map giving the
        # shard to a beside b (a not reloaded: it holds nothing) and one
        # giving it to a alone: the old name counted, and b retired the
        # only copy. Now the map that withdrew a drops its name.
        start = {"a": [0, 1], "b": [2, 3]}
        beside = {"a": [0, 1, 2], "b": [2, 3]}
        moved = {"a": [0, 1, 2], "b": [3]}
        _, bases, _, a, b = self.a_and_b(start)
        rows = self.keys_on(2, b"w", 10)
        self.write_all(b, rows, "kept")
        set_map(a, beside, bases)
        self.reload(a, 1)  # a copies shard 2 from b
        set_map(b, beside, bases)
        self.reload(b, 1)
        self.assertIn("\nnode a\n", self.unbound_rows(b, 2))
        self.assertEqual(a.stop(), 0)
        shutil.rmtree(os.path.join(a.data_dir, "shard-2"))
        set_map(a, start, bases)
        a.start()
        self.wait_workers(a)
        set_map(b, start, bases)
        self.reload(b, 2)
        self.assertTrue(wait_until(lambda: "node a" not in self.unbound_rows(b, 2), 10),
                        self.unbound_rows(b, 2))
        self.assertIn("shard 2: copied-out and unbound-rows no longer name node a, which a map "
                      "withdrew from the shard", b.stderr())
        set_map(b, beside, bases)
        self.reload(b, 3)
        set_map(b, moved, bases)
        self.refused_for_rows(b, 2)
        self.read_all(b, rows, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_node_withdrawn_by_the_map_a_node_starts_with_is_no_copy_either(self):
        # As above, but b takes the map that withdraws a by a restart
        # (its file changed while it was down): its start compares the
        # map with the one it ran before (shard-2/holders) and drops a.
        start = {"a": [0, 1], "b": [2, 3]}
        beside = {"a": [0, 1, 2], "b": [2, 3]}
        moved = {"a": [0, 1, 2], "b": [3]}
        _, bases, _, a, b = self.a_and_b(start)
        rows = self.keys_on(2, b"s", 10)
        self.write_all(b, rows, "kept")
        set_map(a, beside, bases)
        self.reload(a, 1)
        set_map(b, beside, bases)
        self.reload(b, 1)
        self.assertIn("\nnode a\n", self.unbound_rows(b, 2))
        self.assertEqual(a.stop(), 0)
        shutil.rmtree(os.path.join(a.data_dir, "shard-2"))
        set_map(a, start, bases)
        a.start()
        self.assertEqual(b.stop(), 0)
        set_map(b, start, bases)
        b.start()
        self.wait_workers(a)
        self.wait_workers(b)
        self.assertNotIn("node a", self.unbound_rows(b, 2))
        self.assertNotIn("node a", self.copied_out(b))
        set_map(b, beside, bases)
        self.reload(b, changes_over(b) + 1)
        set_map(b, moved, bases)
        self.refused_for_rows(b, 2)
        self.read_all(b, rows, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_copy_acknowledged_after_its_node_was_withdrawn_is_not_recorded(self):
        # Node a copies shard 2 from b (both hold it in b's map), and
        # acknowledges the copy only after b took a map that withdrew a
        # (the acknowledgement may come up to 30 s after the stream): it
        # named a again, and a map giving the shard to a took it as a
        # copy. Now a copy that began before a withdrawal is recorded by
        # no one.
        start = {"a": [0, 1], "b": [2, 3]}
        beside = {"a": [0, 1, 2], "b": [2, 3]}
        without = {"a": [0, 1], "b": [2, 3], "d": [2]}
        moved = {"a": [0, 1, 2], "b": [3], "d": [2]}
        _, bases, _, a, b = self.a_and_b(start, ("a", "b", "d"))
        rows = self.keys_on(2, b"q", 10)
        self.write_all(b, rows, "kept")
        set_map(b, beside, bases)
        self.reload(b, 1)
        c = Client(b.socket_path(2), timeout=10)
        try:
            c.send(snapshot_req(node="a"))
            resp, _ = c.recv_stream()
            self.assertEqual(resp.status, 200, resp.message)
            digest = resp.values[1].binary_value
            set_map(b, without, bases)
            self.reload(b, 2)
            c.send(snapshot_req(digest, node="a"))
            self.assertTrue(wait_until(
                lambda: "shard 2: node a's copy is not recorded in" in b.stderr(), 10),
                b.stderr()[-3000:])
        finally:
            c.close()
        self.assertNotIn("node a", self.unbound_rows(b, 2))
        set_map(b, moved, bases)
        self.refused_for_rows(b, 2)
        self.read_all(b, rows, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_refused_reload_drops_no_copy(self):
        # A reload refused (here for shard 3, whose only copy it would
        # give up) dropped from shard 2's records the node its map
        # withdrew, a, although that map was never taken: the next map,
        # giving shard 2 to a (which copied it), was refused. Now names
        # are dropped only once a map is taken.
        start = {"a": [0, 1], "b": [2, 3]}
        beside = {"a": [0, 1, 2], "b": [2, 3]}
        bad = {"a": [0, 1, 3], "b": [2]}
        moved = {"a": [0, 1, 2], "b": [3]}
        _, bases, _, a, b = self.a_and_b(start)
        rows, others = self.keys_on(2, b"r", 10), self.keys_on(3, b"r", 5)
        self.write_all(b, rows, "kept")
        self.write_all(b, others, "kept")
        set_map(b, beside, bases)
        self.reload(b, 1)
        set_map(a, beside, bases)
        self.reload(a, 1)  # a copies shard 2 from b
        self.assertTrue(wait_until(lambda: "\nnode a\n" in (self.unbound_rows(b, 2) or ""), 10),
                        self.unbound_rows(b, 2))
        set_map(b, bad, bases)
        b.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(
            lambda: "reload refused: cluster.nodes takes shard 3 from this node" in b.stderr(), 10),
            b.stderr()[-3000:])
        self.assertIn("\nnode a\n", self.unbound_rows(b, 2))
        set_map(b, moved, bases)
        self.reload(b, 2)
        self.assertIn("membership change complete", b.stderr())
        self.read_all(a, rows, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_copy_of_an_abandoned_change_is_no_copy_to_give_the_shard_to(self):
        # a's change copied shard 2 from b (b's records name a), then was
        # abandoned (shard 3's port taken): a's copy retired. The README's
        # way out (remove copied-out on b, reload it) let b take writes
        # again, but unbound-rows still named a, and b gave the only copy
        # up to a map giving the shard to a. Now writes taken again forget
        # the copies named: b's reload is refused.
        start = {"a": [0, 1], "b": [2, 3]}
        both = {"a": [0, 1, 2, 3], "b": [2, 3]}
        beside = {"a": [0, 1, 2], "b": [2, 3]}
        moved = {"a": [0, 1, 2], "b": [3]}
        # The change is abandoned at router.ready_timeout (shard 3's new
        # worker never serves); shard 2's copy and b's acknowledgement take
        # a tenth of a second of it (the test of a move abandoned after its
        # copy relies on 3 s for a copy as well).
        _, bases, _, a, b = self.a_and_b(start, router_yaml=("ready_timeout: 3s",))
        rows = self.keys_on(2, b"v", 10)
        self.write_all(b, rows, "kept")
        blocker = socket.socket()
        try:
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            blocker.bind((HOST, bases["a"] + 3))
            blocker.listen(1)
            set_map(a, both, bases)
            self.reload(a, 1)
        finally:
            blocker.close()
        self.assertIn("membership change abandoned", a.stderr())
        set_map(a, start, bases)
        self.assertTrue(wait_until(lambda: "\nnode a\n" in self.copied_out(b), 10),
                        self.copied_out(b))
        os.unlink(os.path.join(b.data_dir, "shard-2", "copied-out"))
        b.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "copied-out was removed" in b.stderr(), 10),
                        b.stderr()[-3000:])
        self.assertTrue(wait_until(lambda: "node a" not in self.unbound_rows(b, 2), 10),
                        self.unbound_rows(b, 2))
        set_map(b, beside, bases)
        self.reload(b, 1)
        set_map(b, moved, bases)
        self.refused_for_rows(b, 2)
        self.read_all(b, rows, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_the_only_copy_goes_only_to_a_node_that_copied_it(self):
        # b holds shard 2 alone; a copies it (b's copied-out names a).
        # A map that gives the shard to d instead, which never copied it
        # (a node that copied and was withdrawn again is the same), was
        # taken because copied-out existed: b retired its copy and d found
        # no one to copy from. It is refused; the map that keeps a is taken.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout, ("a", "b", "d"))
        rows = self.keys_on(2, b"c", 10)
        self.write_all(b, rows, "kept")
        moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
        set_map(a, moved, bases)
        self.reload(a, 1)  # a copies shard 2 from b, and acknowledges it installed the copy
        self.assertTrue(wait_until(lambda: "\nnode a\n" in self.copied_out(b), 10),
                        self.copied_out(b))
        set_map(b, {"a": [0, 1], "b": [0, 1, 3], "d": [2]}, bases)
        b.proc.send_signal(signal.SIGHUP)
        refusal = ("reload refused: cluster.nodes takes shard 2 from this node, which holds its "
                   "only copy, and gives it to no node that copied it (%s/shard-2/copied-out "
                   "names a)" % b.data_dir)
        self.assertTrue(wait_until(lambda: refusal in b.stderr(), 10), b.stderr()[-3000:])
        self.assertEqual(changes_over(b), 0)
        self.assertEqual([x for x in os.listdir(b.data_dir) if ".retired-" in x], [])
        set_map(b, moved, bases)
        self.move_taken_by_b(a, b, rows)

    def wait_copy_whole(self, a):
        """Waits until a, installing slowly (KVS_TEST_SNAPSHOT_SYNC_DELAY_MS),
        has b's whole copy of shard 2, its last frame too: the moment to
        kill either side. Not b's "snapshot sent to" or copied-out's "sent
        a": b says both before that frame goes out, and a kill then cuts
        the stream."""
        self.assertTrue(wait_until(
            lambda: "test hook: the copy of shard 2 from b is whole" in a.stderr(), 20),
            a.stderr()[-3000:])

    def copied_out(self, router, shard=2):
        try:
            with open(os.path.join(router.data_dir, "shard-%d" % shard, "copied-out")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def move_taken_by_b(self, a, b, rows):
        """b reloads the map a took, giving shard 2 away (one change):
        both read every row "kept", and stop cleanly."""
        self.reload(b, 1)
        self.read_all(a, rows, "kept")
        self.read_all(b, rows, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def move_2_from_b_to_a_slowly(self, sync_delay_ms):
        """Nodes a and b, b holding shard 2 alone with 20 rows "kept"; a
        restarted to install copies slowly (its sync takes sync_delay_ms
        more), given the map that moves shard 2 to it alone, and reloaded.
        Returns (bases, a, b, rows, the new map)."""
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        rows = self.keys_on(2, b"k", 20)
        self.write_all(b, rows, "kept")
        self.assertEqual(a.stop(), 0)  # its next workers install copies slowly
        self.sent_before = b.stderr().count("snapshot sent to")  # a new cluster's copies
        a.env["KVS_TEST_SNAPSHOT_SYNC_DELAY_MS"] = str(sync_delay_ms)
        a.start()
        moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
        set_map(a, moved, bases)
        a.proc.send_signal(signal.SIGHUP)
        return bases, a, b, rows, moved

    def test_a_move_whose_new_owner_is_killed_mid_copy_copies_again_at_its_restart(self):
        # Shard 2 moves from b alone to a alone. a is killed -9 (every
        # process) after b sent the snapshot and before a installed it (a's
        # sync is slowed). b was recording a as holding a copy, so b's
        # reload giving the shard away was taken and b's rows retired; and
        # a, restarted from its file (where it holds the shard alone, with
        # no peer), started it empty. Now b records a node only once it
        # acknowledged the copy installed, so b's reload is refused; a's
        # restart finds its moving-in marker and copies from b again, b
        # records a, and b's reload is taken with every row kept.
        bases, a, b, rows, moved = self.move_2_from_b_to_a_slowly(30000)
        self.wait_copy_whole(a)
        self.assertGreater(b.stderr().count("snapshot sent to"), self.sent_before)
        marker = os.path.join(a.data_dir, "shard-2", "moving-in")
        with open(marker) as f:
            self.assertIn("\nfrom b %d 127.0.0.1\n" % (bases["b"] + 2), f.read())
        a.kill_all()
        self.assertFalse(os.path.exists(os.path.join(a.data_dir, "shard-2", "data.mdb")))
        self.assertIn("peer ", self.copied_out(b))  # fenced,
        self.assertNotIn("node a", self.copied_out(b))  # but a never said it holds a copy
        set_map(b, moved, bases)
        b.proc.send_signal(signal.SIGHUP)
        refusal = ("reload refused: cluster.nodes takes shard 2 from this node, which holds its "
                   "only copy, and gives it to no node that copied it (%s/shard-2/copied-out "
                   "names no node: none acknowledged an installed copy)" % b.data_dir)
        self.assertTrue(wait_until(lambda: refusal in b.stderr(), 10), b.stderr()[-3000:])
        del a.env["KVS_TEST_SNAPSHOT_SYNC_DELAY_MS"]
        a.start()  # its file's map: shard 2 here alone
        self.wait_workers(a)
        self.assertIn("moving-in says it was moving here from node b: copying from its previous "
                      "owners again", a.stderr())
        self.assertFalse(os.path.exists(marker))
        self.assertTrue(wait_until(lambda: "\nnode a\n" in self.copied_out(b), 10),
                        self.copied_out(b))
        self.move_taken_by_b(a, b, rows)

    def test_a_receiver_that_speaks_early_gets_its_whole_stream(self):
        # A receiver whose frame arrives before its stream ended: b's
        # worker read it in the turn the stream ended, found no
        # acknowledgement, and closed the connection at once, dropping
        # what was still queued (the final frame, and under load the
        # stream's tail). It is owed all of it before the close.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, _, _, a, b = self.a_and_b(layout)
        big = "x" * 60000
        with b.client(timeout=20) as c:
            i = n = 0
            while n < 40:  # some 2.4 MB in shard 2, past the socket's buffers
                k = b"big-%d" % i
                i += 1
                if shard_of_key(k) != 2:
                    continue
                self.assertEqual(c.call(req_hset("loose", k, big)).status, 200)
                n += 1
        req = snapshot_req()
        early = snapshot_req(b"\0" * 16)
        with Client(b.socket_path(2), timeout=20) as c:
            started = b.stderr().count("sending a snapshot of shard 2 to ")
            c.send(req)
            self.assertTrue(wait_until(
                lambda: b.stderr().count("sending a snapshot of shard 2 to ") > started, 10),
                b.stderr()[-3000:])
            c.send(early)
            # Nothing read yet: the stream's end finds the early frame.
            self.assertTrue(wait_until(
                lambda: "sent something other than the copy's acknowledgement" in b.stderr(),
                20), b.stderr()[-3000:])
            resp, data = c.recv_stream()
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(len(data), resp.values[0].integer_value, resp.message)
            self.assertGreater(len(data), 2000000)
            self.assertTrue(c.at_eof())

    def test_only_an_acknowledgement_echoing_the_copys_checksum_names_its_node(self):
        # b's copied-out names a node only on Snapshot.installed carrying
        # the checksum of a copy b sent that node: on the stream's
        # connection, not one sent ahead of the stream, nor one with
        # another checksum (it named the node whatever was sent). Said
        # again on a connection of its own (the receiver cannot tell
        # whether the first arrived), it counts for a copy b recorded as
        # sent to that node, and for no other.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, _, _, a, b = self.a_and_b(layout)

        with Client(b.socket_path(2)) as c:
            resp = c.call(snapshot_req(b"\0" * 16))
            self.assertEqual(resp.status, 404, resp.message)
            self.assertIn("no record of a copy with this checksum sent to node d", resp.message)
            resp = c.call(snapshot_req(b"\0" * 15))
            self.assertEqual(resp.status, 400, resp.message)

        def stream(*early, node="d"):
            c = Client(b.socket_path(2), timeout=10)
            started = b.stderr().count("sending a snapshot of shard 2 to ")
            c.send(snapshot_req(node=node))
            if early:
                # Only once b's worker took the Snapshot (it says so after
                # finding it alone on its connection): one that reads both
                # in one go refuses the Snapshot (400), as it must.
                self.assertTrue(wait_until(
                    lambda: b.stderr().count("sending a snapshot of shard 2 to ") > started, 10),
                    b.stderr()[-3000:])
                c.send(*early)
            resp, _ = c.recv_stream()
            self.assertEqual(resp.status, 200, resp.message)
            return c, resp.values[1].binary_value

        c, digest = stream(snapshot_req(b"\0" * 16))  # sent before any of the stream was read
        self.assertTrue(c.at_eof())
        c.close()
        c, digest = stream()
        c.send(snapshot_req(bytes(x ^ 1 for x in digest)))
        self.assertTrue(c.at_eof())
        c.close()
        self.assertIn("peer ", self.copied_out(b))
        self.assertIn("\nsent d %s\n" % digest.hex(), self.copied_out(b))
        self.assertNotIn("node d", self.copied_out(b))
        with Client(b.socket_path(2)) as c:
            for wrong in (snapshot_req(bytes(x ^ 1 for x in digest)),
                          snapshot_req(digest, node="e")):
                resp = c.call(wrong)
                self.assertEqual(resp.status, 404, resp.message)
            self.assertNotIn("\nnode ", self.copied_out(b))
            resp = c.call(snapshot_req(digest))  # said again, later, elsewhere
            self.assertEqual(resp.status, 200, resp.message)
        self.assertIn("\nnode d\n", self.copied_out(b))
        c, digest = stream(node="e")
        c.send(snapshot_req(digest, node="e"))
        self.assertTrue(c.at_eof())
        c.close()
        self.assertTrue(wait_until(lambda: "\nnode e\n" in self.copied_out(b), 10),
                        self.copied_out(b))
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_an_acknowledgement_its_sender_missed_is_sent_again(self):
        # Shard 2 moves from b alone to a alone. b's worker is killed -9
        # after its stream ended and before a, installing the copy slowly,
        # acknowledged it on the stream's connection: that acknowledgement
        # went nowhere, b never named a, and b's reload giving the shard
        # to a stayed refused for good. a now says it again on a
        # connection of its own until b's restarted worker answers.
        bases, a, b, rows, moved = self.move_2_from_b_to_a_slowly(3000)
        # (a copy cut off would be acknowledged on the next stream's
        # connection: not the case this test is about)
        self.wait_copy_whole(a)
        self.assertIn("\nsent a ", self.copied_out(b))
        killed = b.kill_worker(2)
        self.assertTrue(wait_until(lambda: b.worker_pid(2) not in (None, killed), 20),
                        b.stderr()[-3000:])
        self.assertTrue(wait_until(lambda: "\nnode a\n" in self.copied_out(b), 30),
                        a.stderr()[-3000:])
        # The line is there once b wrote it, before b synced it and then
        # answered; a says it heard only once that answer arrives.
        self.assertTrue(wait_until(
            lambda: "shard 2: node b heard that this node installed its copy" in a.stderr(), 10),
            a.stderr()[-3000:])
        self.assertTrue(wait_until(
            lambda: not os.path.exists(os.path.join(a.data_dir, "shard-2", "ack-owed")), 10))
        self.assertTrue(wait_until(lambda: changes_over(a) == 1, 30), a.stderr()[-3000:])
        set_map(b, moved, bases)
        self.move_taken_by_b(a, b, rows)

    def test_a_move_cut_off_copies_from_its_previous_owner_though_the_map_names_a_peer(self):
        # Shard 2 moves from b alone to a and c. a is killed -9 before it
        # installed b's copy, and restarts with the new map, which names c
        # (which has not copied yet): a asked c only, found no copy and
        # started empty, although moving-in named b. It now asks b first,
        # and waits for a copy.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3], "c": [0, 1]}
        mock = self.mock()
        bases = self.bases(["a", "b", "c"])
        a, b, c = (self.node(mock, n, layout, bases) for n in "abc")
        self.start_all(a, b, c)
        rows = self.keys_on(2, b"k", 20)
        self.write_all(b, rows, "kept")
        self.assertEqual(a.stop(), 0)
        sent = b.stderr().count("snapshot sent to")  # a new cluster's copies
        a.env["KVS_TEST_SNAPSHOT_SYNC_DELAY_MS"] = "30000"
        a.start()
        set_map(a, {"a": [0, 1, 2], "b": [0, 1, 3], "c": [0, 1, 2]}, bases)
        a.proc.send_signal(signal.SIGHUP)
        self.wait_copy_whole(a)
        self.assertGreater(b.stderr().count("snapshot sent to"), sent)
        a.kill_all()
        del a.env["KVS_TEST_SNAPSHOT_SYNC_DELAY_MS"]
        a.start()
        self.wait_workers(a)
        self.assertNotIn("no replica of shard 2 could send a snapshot", a.stderr())
        with Client(a.socket_path(2), timeout=5) as w:
            for k in rows:
                resp = w.call(req_hget("plain", k))
                self.assertEqual((resp.status, pyval(resp.values[0]) if resp.values else None),
                                 (200, "kept"), (k, resp.message))
        self.assertTrue(wait_until(lambda: "\nnode a\n" in self.copied_out(b), 10),
                        self.copied_out(b))
        for r in (a, b, c):
            self.assertEqual(r.stop(), 0)

    def test_a_move_marker_that_cannot_be_read_keeps_the_shard_from_starting_empty(self):
        # A moving-in marker that names no previous owner (damaged) must
        # not be taken as "none": the node does not start, and says how
        # to start the shard empty instead.
        mock = self.mock()
        bases = self.bases(["a"])
        a = self.node(mock, "a", {"a": [0, 1, 2, 3]}, bases)
        os.makedirs(os.path.join(a.data_dir, "shard-2"), mode=0o700)
        with open(os.path.join(a.data_dir, "shard-2", "moving-in"), "w") as f:
            f.write("from\n")
        a.proc = a.spawn()
        self.assertEqual(a.proc.wait(30), 78, a.stderr()[-3000:])
        self.assertIn("shard-2/moving-in cannot be read, or names no node shard 2 was moving "
                      "here from: the shard is not started without the rows its previous "
                      "owners hold; remove the file to start it empty", a.stderr())
        self.assertFalse(os.path.exists(os.path.join(a.data_dir, "shard-2", "data.mdb")))

    def test_a_map_that_takes_a_shard_from_all_its_holders_at_once_is_refused(self):
        # Shard 2 is on a and b; a map that gives it to d alone (which has
        # not copied it) would retire both copies: each node refuses it.
        layout = {"a": [0, 1, 2], "b": [2, 3]}
        _, bases, _, a, b = self.a_and_b(layout, ("a", "b", "d"))
        away = {"a": [0, 1], "b": [3], "d": [2]}
        for r in (a, b):
            set_map(r, away, bases)
            r.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(
                lambda: "reload refused: cluster.nodes takes shard 2 from every node that holds it "
                        "now (2, this one included) at once" in r.stderr(), 10), r.stderr()[-3000:])
            self.assertEqual(changes_over(r), 0)
            self.assertEqual([d for d in os.listdir(r.data_dir) if ".retired-" in d], [])
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_move_whose_previous_owner_restarts_waits_for_its_snapshot(self):
        # b's worker of shard 2 is killed -9 just as a's change begins: a's
        # new worker finds it refused (or cut off) and, as the shard moves
        # in from b alone, asks again until b's restarted worker sends it,
        # rather than starting empty without the unbound table's rows.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        keys = self.keys_on(2, b"m", 40)
        self.write_all(b, keys, "kept")
        moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
        set_map(a, moved, bases)
        b.kill_worker(2)
        a.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: changes_over(a) == 1, 40), a.stderr()[-3000:])
        self.assertIn("membership change complete", a.stderr())
        self.assertNotIn("no replica of shard 2 could send a snapshot", a.stderr())
        set_map(b, moved, bases)
        self.reload(b, 1)
        self.read_all(a, keys, "kept")
        self.read_all(b, keys, "kept")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_move_abandoned_after_its_copy_copies_again_when_retried(self):
        # a's change copies shard 2 from b, then fails: shard 0's socket
        # is hidden, so its new router processes cannot link to that
        # worker and never serve. Its copy is moved aside, so once the
        # operator lifted b's fence (README) and b took more writes, the
        # retry copies again: every row is there after the move.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout, router_yaml=("ready_timeout: 3s",))
        first, second = self.keys_on(2, b"r", 10), self.keys_on(2, b"s", 10)
        self.write_all(b, first, "one")
        moved = {"a": [0, 1, 2], "b": [0, 1, 3]}
        set_map(a, moved, bases)
        shard0, hidden = a.socket_path(0), a.socket_path(0) + ".hidden"
        os.rename(shard0, hidden)
        sent = b.stderr().count("snapshot sent to")  # a new cluster's copies
        try:
            a.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(lambda: b.stderr().count("snapshot sent to") > sent, 10))
            self.assertTrue(wait_until(lambda: "membership change failed" in a.stderr(), 30),
                            a.stderr()[-3000:])
        finally:
            os.rename(hidden, shard0)
        self.assertTrue(wait_until(lambda: changes_over(a) == 1, 30), a.stderr()[-3000:])
        self.assertTrue(wait_until(
            lambda: "shard 2's data moved to %s/shard-2.retired-" % a.data_dir in a.stderr(), 10),
            a.stderr()[-3000:])
        fence = os.path.join(b.data_dir, "shard-2", "copied-out")
        self.assertTrue(os.path.exists(fence))
        os.unlink(fence)  # the move was abandoned: README says how to lift the fence
        b.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(
            lambda: "copied-out was removed: writes to tables bound to no topic are taken again"
                    in b.stderr(), 10), b.stderr()[-3000:])
        self.write_all(b, second, "two")
        copies = a.stderr().count("copying a snapshot from node b")
        self.reload(a, 2)
        self.assertEqual(a.stderr().count("copying a snapshot from node b"), copies + 1)
        set_map(b, moved, bases)
        self.reload(b, 1)
        self.read_all(a, first, "one")
        self.read_all(a, second, "two")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_shard_given_back_is_copied_afresh_not_served_as_it_left(self):
        # Shard 0 leaves a (its worker stops), is written on b meanwhile
        # (a table bound to no topic: no replay brings those rows), then
        # comes back to a. a's worker reopened the data it left with, and
        # answered 404 for every row written while it was away; the data
        # directory is now moved aside when the worker retires, so the
        # shard comes back as a new replica does: a copy from a peer.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        keys = [b"g-%d" % i for i in range(400) if shard_of_key(b"g-%d" % i) == 0][:8]
        away = {"a": [1], "b": [0, 1, 2, 3]}
        set_map(a, away, bases)
        self.reload(a, 1)
        set_map(b, away, bases)
        self.reload(b, 1)
        self.assertTrue(wait_until(
            lambda: info_pairs(b.socket_path(0))["shard.000.replicas"] == 1, 10))
        self.assertIn("shard 0's data moved to %s/shard-0.retired-" % a.data_dir, a.stderr())
        self.assertEqual(len([d for d in os.listdir(a.data_dir)
                              if d.startswith("shard-0.retired-")]), 1)
        self.assertFalse(os.path.exists(os.path.join(a.data_dir, "shard-0")))
        with b.client() as c:  # shard 0 has one replica now: unbound tables take writes
            for k in keys:
                resp = c.call(req_hset("plain", k, "while-away"))
                self.assertEqual(resp.status, 200, resp.message)
        set_map(a, layout, bases)
        self.reload(a, 1 + 1)
        self.assertIn("shard 0 has no data yet: copying a snapshot from node b", a.stderr())
        with Client(a.socket_path(0)) as w:
            for k in keys:
                resp = w.call(req_hget("plain", k))
                self.assertEqual((resp.status, pyval(resp.values[0]) if resp.values else None),
                                 (200, "while-away"), resp.message)
        # Dropped from the map while the node is down, a shard keeps its
        # directory (a mistyped map must not take a sole copy out of use):
        # the start says what a later map giving it back would serve.
        self.assertEqual(a.stop(), 0)
        set_map(a, away, bases)
        a.start()
        self.assertIn("%s/shard-0 holds shard 0's data, but the map does not give this node "
                      "shard 0" % a.data_dir, a.stderr())
        self.assertNotIn("shard-1 holds", a.stderr())
        self.assertTrue(os.path.exists(os.path.join(a.data_dir, "shard-0", "data.mdb")))
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)
        # A shard new to a node that ran before, with no other replica in a
        # map changed while the nodes were down, starts empty: the start
        # says where rows of its tables bound to no topic may be (once).
        empty = "has no data here and the map names no other replica of it"
        self.assertNotIn(empty, a.stderr())
        set_map(a, {"a": [0, 1, 2], "b": [0, 1, 3]}, bases)
        a.start()
        self.assertEqual(re.findall(r"shard (\d+) " + empty, a.stderr()), ["2"])
        self.assertEqual(a.stop(), 0)

    def test_a_change_whose_new_worker_never_serves_fails_and_the_old_map_serves_on(self):
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        notify = NotifySocket()
        self.addCleanup(notify.close)
        _, bases, mport, a, b = self.a_and_b(layout, env={"NOTIFY_SOCKET": notify.path},
                                             router_yaml=("ready_timeout: 3s",))
        self.assertIsNotNone(notify.wait_for("READY", 20), a.stderr()[-3000:])
        gen0 = router_procs(a)
        self.assertEqual(sorted(a.workers()), [0, 1])
        own = {}
        for i in range(400):
            k = b"own-%d" % i
            if shard_of_key(k) in (0, 1) and len(own) < 8:
                own[k] = "o%d" % i
        plain0 = next(b"plain-%d" % i for i in range(400) if shard_of_key(b"plain-%d" % i) == 0)
        with a.client() as c:
            for k, v in own.items():
                self.assertEqual(c.call(req_hset(TABLE, k, v)).status, 200)
        # a is to serve shard 2 too (and b no longer shard 0, which leaves
        # a's copy the only one), but b, the only other replica of shard 2,
        # hangs: a's new worker can neither copy b's snapshot nor give up
        # on it (that waits limits.frame_timeout) within
        # router.ready_timeout.
        set_map(a, {"a": [0, 1, 2], "b": [1, 2, 3]}, bases)
        source = b.workers()[2]
        os.kill(source, signal.SIGSTOP)
        try:
            a.proc.send_signal(signal.SIGHUP)
            self.assertIsNotNone(notify.wait_for("RELOADING"), a.stderr()[-3000:])
            self.assertTrue(wait_until(lambda: notify.receive(0.1) is not None and any(
                "waiting for 1 new worker" in m.get("STATUS", "") for m in notify.messages), 10),
                notify.messages)
            # A second reload meanwhile is refused, and systemd hears
            # nothing of it: RELOADING=1 holds until the change ends.
            a.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(
                lambda: "reload refused: a membership change is in progress" in a.stderr(), 10))
            self.assertTrue(wait_until(lambda: "membership change failed" in a.stderr(), 30),
                                 a.stderr()[-4000:])
            ready = notify.wait_for("READY")
            self.assertIsNotNone(ready, notify.messages)
            self.assertIn("membership change failed", ready["STATUS"])
            self.assertEqual(notify.drain()[-1], ready)  # nothing after it either
            self.assertEqual(sum("READY" in m for m in notify.messages), 2, notify.messages)
            self.assertEqual(sum("RELOADING" in m for m in notify.messages), 1, notify.messages)
            # The serving generation never stopped; the new worker went.
            self.assertTrue(wait_until(
                lambda: changes_over(a) == 1, 30),
                a.stderr()[-4000:])
            self.assertEqual(router_procs(a), gen0)
            self.assertEqual(sorted(a.workers()), [0, 1])
            with a.client() as c:  # its own shards serve on, reads and writes
                for k, v in own.items():
                    resp = c.call(req_hget(TABLE, k))
                    self.assertEqual((resp.status, pyval(resp.values[0])), (200, v))
                    self.assertEqual(c.call(req_hset(TABLE, k, v + "!")).status, 200)
                # The workers never took the new map: shard 0 has two
                # replicas as the routers see it, so a table bound to no
                # topic is still not written there.
                self.assertEqual(info_pairs(a.socket_path(0))["shard.000.replicas"], 2)
                resp = c.call(req_hset("plain", plain0, "x"))
                self.assertEqual(resp.status, 400, resp.message)
            m = self.metrics(mport)
            self.assertEqual(total(m, "kvs_membership_changes_total", result="failed"), 1)
            self.assertEqual(total(m, "kvs_membership_changes_total", result="done"), 0)
        finally:
            os.kill(source, signal.SIGCONT)
        self.assertIn("the router processes and workers keep serving the previous map", a.stderr())
        # The same reload, once the peer serves again, goes through.
        self.reload(a, 2)
        self.assertEqual(sorted(a.workers()), [0, 1, 2])
        self.assertFalse(set(router_procs(a)) & set(gen0))
        self.assertTrue(wait_until(
            lambda: info_pairs(a.socket_path(0))["shard.000.replicas"] == 1, 10))
        m = self.metrics_when(mport, lambda m: total(
            m, "kvs_membership_changes_total", result="done") == 1)
        self.assertEqual(total(m, "kvs_membership_changes_total", result="done"), 1)
        with a.client() as c:
            for k, v in own.items():
                resp = c.call(req_hget(TABLE, k))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, v + "!"))
            resp = c.call(req_hset("plain", plain0, "x"))  # one copy now: written
            self.assertEqual(resp.status, 200, resp.message)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_change_whose_new_worker_cannot_run_fails_and_the_node_serves_on(self):
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        gen0 = router_procs(a)
        with a.client() as c:
            self.assertEqual(c.call(req_hset(TABLE, b"k", "v")).status, 200)
        # shard-2's data directory holds shard 0's environment: the new
        # worker exits 78 (it belongs to another shard), which would stop
        # the node if it were one of its serving workers.
        bad = os.path.join(a.data_dir, "shard-2")
        os.mkdir(bad, 0o700)
        shutil.copy(os.path.join(a.data_dir, "shard-0", "data.mdb"), bad)
        set_map(a, {"a": [0, 1, 2], "b": [0, 1, 2, 3]}, bases)
        a.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "membership change failed" in a.stderr(), 20),
                             a.stderr()[-4000:])
        self.assertIn("shard 2's new worker cannot run with this configuration", a.stderr())
        self.assertTrue(wait_until(
            lambda: changes_over(a) == 1, 20), a.stderr()[-3000:])
        self.assertIsNone(a.proc.poll())
        self.assertEqual(router_procs(a), gen0)
        self.assertEqual(sorted(a.workers()), [0, 1])
        with a.client() as c:
            resp = c.call(req_hget(TABLE, b"k"))
            self.assertEqual((resp.status, pyval(resp.values[0])), (200, "v"))
        # With the directory out of the way the same reload goes through.
        shutil.rmtree(bad)
        self.reload(a, 2)
        self.assertEqual(sorted(a.workers()), [0, 1, 2])
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_failed_change_applies_none_of_its_reload(self):
        # The same file brings the new map and a live key (every command
        # to the slow log). The change fails (the new worker exits 78):
        # nothing of that reload applies, in no process. It used to be
        # half applied: the serving router process and the master took
        # the live key at once, the workers (which get their SIGHUP only
        # at the switch) never, a router process restarted later neither.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        gen0 = router_procs(a)
        key = next(b"s-%d" % i for i in range(400) if shard_of_key(b"s-%d" % i) == 0)
        bad = os.path.join(a.data_dir, "shard-2")
        os.mkdir(bad, 0o700)
        shutil.copy(os.path.join(a.data_dir, "shard-0", "data.mdb"), bad)
        set_map(a, {"a": [0, 1, 2], "b": [0, 1, 2, 3]}, bases)
        edit(a, "log: {level: info}", "log: {level: info, slow_threshold: 0}")

        def slow(path, reads=3):
            """The Hgets of `reads` reads of key the slow log at path keeps."""
            req = pb.CommandRequest()
            req.slowlog.reset = True
            with Client(path, timeout=5) as c:
                self.assertEqual(c.call(req).status, 200)
                for _ in range(reads):
                    self.assertIn(c.call(req_hget(TABLE, key)).status, (200, 404))
                req.slowlog.reset = False
                return [e.command for e in c.call(req).ops.slowlog].count("Hget")

        # Every process past the supervisor's hold of a young one's SIGHUP
        # (until it is 1 s old): polled on their ages, not slept.
        self.assertTrue(wait_until(lambda: min(age(p) for p in list(router_procs(a))
                                               + list(a.workers().values())) > 1.1, 10))
        a.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(
            lambda: changes_over(a) == 1, 20), a.stderr()[-3000:])
        self.assertEqual(router_procs(a), gen0)
        time.sleep(0.5)  # a SIGHUP passed on would have been handled by now
        self.assertEqual(slow(a.socket_path(0)), 0)  # the worker
        self.assertEqual(slow(os.path.join(a.data_dir, "router0.sock")), 0)  # the router process
        self.assertIn("nothing of that reload applies", a.stderr())
        # Nor does the log call the failed change complete.
        self.assertNotIn("membership change complete", a.stderr())
        self.assertIn("membership change abandoned: the previous map serves", a.stderr())
        self.assertNotRegex(a.stderr(), r"router INFO  configuration reloaded")
        # Fixed, the same file goes through whole: everybody logs slowly.
        shutil.rmtree(bad)
        self.reload(a, 2)
        self.assertEqual(a.stderr().count("membership change complete"), 1)
        self.assertTrue(wait_until(lambda: slow(a.socket_path(0)) == 3, 10), a.stderr()[-3000:])
        self.assertEqual(slow(os.path.join(a.data_dir, "router0.sock")), 3)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def restart_worker(self, router, shard):
        """kill -9 of shard's worker; waits until its successor answers Info."""
        old = router.kill_worker(shard)

        def serves():
            if router.worker_pid(shard) in (None, old):
                return False
            try:
                return "shard.%03u.replicas" % shard in info_pairs(router.socket_path(shard), 2)
            except (OSError, AssertionError):
                return False
        self.assertTrue(wait_until(serves, 20), router.stderr()[-3000:])

    def test_a_worker_restarted_after_a_change_runs_the_map_the_routers_run(self):
        # After a failed change a worker the master restarts runs the
        # previous map (its snapshot), as the serving router processes and
        # the other workers do, though the file holds the new one; after a
        # change that went through, the new map.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        bad = os.path.join(a.data_dir, "shard-2")  # the new worker exits 78: the change fails
        os.mkdir(bad, 0o700)
        shutil.copy(os.path.join(a.data_dir, "shard-0", "data.mdb"), bad)
        set_map(a, {"a": [0, 1, 2], "b": [1, 2, 3]}, bases)  # shard 0: 2 replicas -> 1
        a.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(
            lambda: changes_over(a) == 1, 20), a.stderr()[-3000:])
        self.assertIn("membership change failed", a.stderr())
        self.assertEqual(info_pairs(a.socket_path(0))["shard.000.replicas"], 2)
        self.restart_worker(a, 0)
        self.assertEqual(info_pairs(a.socket_path(0))["shard.000.replicas"], 2)
        shutil.rmtree(bad)
        self.reload(a, 2)
        self.assertTrue(wait_until(
            lambda: info_pairs(a.socket_path(0))["shard.000.replicas"] == 1, 10))
        self.restart_worker(a, 0)
        self.assertEqual(info_pairs(a.socket_path(0))["shard.000.replicas"], 1)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_reload_while_a_worker_starts_reaches_it(self):
        # A worker the master restarted after the file was edited is still
        # starting (copying a snapshot from b, whose worker hangs) when the
        # reload's SIGHUP comes (the supervisor holds it back until the
        # worker is 1 s old): once it serves, it runs the reloaded
        # configuration (its slow log takes every command), as every other
        # process does.
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        edit(a, "log: {level: info}", "log: {level: info, slow_threshold: 0}")
        os.kill(self.copy_holding_a_reload(a, b), signal.SIGCONT)  # the copy goes on
        key = next(b"k-%d" % i for i in range(400) if shard_of_key(b"k-%d" % i) == 0)

        def logs_every_read():
            req = pb.CommandRequest()
            req.slowlog.reset = True
            try:
                with Client(a.socket_path(0), timeout=2) as w:
                    if w.call(req).status != 200:
                        return False
                    for _ in range(5):
                        if w.call(req_hget(TABLE, key)).status not in (200, 404):
                            return False
                    req.slowlog.reset = False
                    return [e.command for e in w.call(req).ops.slowlog].count("Hget") == 5
            except OSError:
                return False
        self.assertTrue(wait_until(logs_every_read, 20), a.stderr()[-3000:])
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_worker_that_reloads_late_never_reads_a_failed_changes_map(self):
        # A worker still copying a snapshot (its peer hangs) holds a live
        # reload's SIGHUP until it serves. Meanwhile a membership change
        # (shard 0 to a alone) fails. The text every reload reads
        # (--reload-from) used to be the new map's from the change's start
        # on, so the late worker took that map (shard 0: 1 replica) after
        # the change had failed, while the routers route by the previous
        # one (2 replicas).
        layout = {"a": [0, 1], "b": [0, 1, 2, 3]}
        _, bases, _, a, b = self.a_and_b(layout)
        bad = os.path.join(a.data_dir, "shard-2")
        source = self.copy_holding_a_reload(a, b)  # the reload changes nothing
        try:
            # The change fails at once: shard 2's new worker finds shard 0's
            # environment in its directory (exit 78).
            os.mkdir(bad, 0o700)
            shutil.copy(os.path.join(a.data_dir, "shard-1", "data.mdb"), bad)
            set_map(a, {"a": [0, 1, 2], "b": [1, 2, 3]}, bases)
            a.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(lambda: changes_over(a) == 1, 20), a.stderr()[-3000:])
            self.assertIn("membership change failed", a.stderr())
        finally:
            os.kill(source, signal.SIGCONT)

        def replicas():
            try:
                return info_pairs(a.socket_path(0), 2)["shard.000.replicas"]
            except (OSError, AssertionError, KeyError):
                return None
        self.assertTrue(wait_until(lambda: replicas() is not None, 20), a.stderr()[-3000:])
        # Serving: its held SIGHUP is handled now (its reload line).
        self.assertTrue(wait_until(
            lambda: re.search(r"node\[0\] INFO  configuration reloaded", a.stderr()), 10),
            a.stderr()[-3000:])
        self.assertEqual(replicas(), 2)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_change_whose_router_process_cannot_listen_leaves_the_sockets_to_the_serving_ones(
            self):
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        _, bases, mport, a, b = self.a_and_b(layout, ("a", "b", "d"), processes=2)
        gen0 = router_procs(a)
        socks = [os.path.join(a.data_dir, "router%d.sock" % i) for i in range(2)]
        nexts = [os.path.join(a.data_dir, "router%d.next" % i) for i in range(2)]

        def started():
            m = self.metrics_when(mport, lambda m: total(m, "kvs_metrics_source_up") >= 2 + SHARDS)
            return [total(m, "kvs_process_start_time_seconds", role="router", router=str(i))
                    for i in range(2)]
        before = started()
        self.assertTrue(all(before), before)
        # Router 1 of the new map cannot bind routerI.next (a directory is
        # there): it exits, so the change fails. What is to be shown is a
        # failure after router 0 of the new map listened (on its
        # routerI.next), and the two start together: the reload is tried
        # until that order happened (each try a coin flip: at most 12).
        os.mkdir(nexts[1])
        set_map(a, {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "d": [0, 1, 2, 3]}, bases)
        covered = 0
        for attempt in range(1, 13):
            mark = len(a.stderr())
            a.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(
                lambda: changes_over(a) == attempt, 20),
                a.stderr()[-4000:])
            log = a.stderr()[mark:]
            self.assertIn("membership change failed", log)
            exited = log.index("router 1 of the new map exited")
            covered += 0 <= log.find("router 0 of 2 ready") < exited
            self.assertEqual(router_procs(a), gen0)
            # Each serving router process still has its socket: kvs-cli and
            # the scrape reach the same processes as before.
            self.assertTrue(wait_until(lambda: not os.path.exists(nexts[0]), 10))
            for path in socks:
                with Client(path) as c:
                    self.assertEqual(c.ping().status, 200)
            self.assertEqual(started(), before)
            if covered:
                break
        self.assertTrue(covered, "router 0 of the new map never listened before router 1 failed")
        # Once the directory is gone the same change goes through, and the
        # sockets are the new processes'.
        os.rmdir(nexts[1])
        self.reload(a, attempt + 1)
        self.assertFalse(set(router_procs(a)) & set(gen0))
        self.assertEqual([os.path.exists(p) for p in nexts], [False, False])
        for path in socks:
            with Client(path) as c:
                self.assertEqual(c.ping().status, 200)
        after = self.metrics_when(mport, lambda m: all(
            total(m, "kvs_process_start_time_seconds", role="router", router=str(i)) > before[i]
            for i in range(2)))
        self.assertTrue(all(total(after, "kvs_process_start_time_seconds", role="router",
                                  router=str(i)) > before[i] for i in range(2)), after)
        # The master's scrape names its links to router processes as such.
        self.assertRegex(a.stderr(), r"link to router 0 \(unix:[^)]*/router0\.sock\) down: "
                                     r"peer closed the connection")
        self.assertNotRegex(a.stderr(), r"link to shard \d+ \(unix:[^)]*/router\d\.sock\)")
        # A restarted router process of the new generation takes its path
        # itself (no --next any more).
        pid = next(p for p, g in router_procs(a).items())
        again = a.stderr().count("accepts clients again")
        os.kill(pid, signal.SIGKILL)
        self.assertTrue(wait_until(
            lambda: a.stderr().count("accepts clients again") == again + 1, 20))
        self.assertEqual([os.path.exists(p) for p in nexts], [False, False])
        for path in socks:
            with Client(path) as c:
                self.assertEqual(c.ping().status, 200)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_a_new_router_process_killed_9_fails_the_change_and_its_next_socket_is_removed(self):
        """A router process of the new map killed -9 while the change waits
        for the others cannot remove its routerI.next; the change fails, and
        once its processes are all gone the master removes the file. To hold
        the change there: shard 0's socket is hidden (renamed) before the
        reload, so no new router process can link to its worker and become
        ready; new router 1 is stopped, the socket put back, and new router
        0 alone listens (on router0.next) until it is killed."""
        mock = self.mock()
        bases = self.bases(["a", "d"])
        mport = free_port()
        a = self.node(mock, "a", {"a": [0, 1, 2, 3]}, bases, processes=2,
                      router_yaml=('metrics_listen: "%s:%d"' % (HOST, mport),))
        self.start_all(a)
        gen0 = router_procs(a)
        socks = [os.path.join(a.data_dir, "router%d.sock" % i) for i in range(2)]
        nexts = [os.path.join(a.data_dir, "router%d.next" % i) for i in range(2)]
        shard0, hidden = a.socket_path(0), a.socket_path(0) + ".hidden"
        held = []

        def release():
            if os.path.exists(hidden):
                os.rename(hidden, shard0)
            for pid in held:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        self.addCleanup(release)

        def new_procs():
            """{index: pid} of the router processes of the new map."""
            return {int(argv[argv.index("--router") + 1]): pid
                    for pid, argv in procs_for_config(a.config).items() if "--next" in argv}
        os.rename(shard0, hidden)
        set_map(a, {"a": [0, 1, 2, 3], "d": [0, 1, 2, 3]}, bases)
        a.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: len(new_procs()) == 2, 10), a.stderr()[-3000:])
        new = new_procs()
        os.kill(new[1], signal.SIGSTOP)
        held.append(new[1])
        self.assertEqual([os.path.exists(p) for p in nexts], [False, False])
        os.rename(hidden, shard0)
        self.assertTrue(wait_until(lambda: os.path.exists(nexts[0]), 10), a.stderr()[-3000:])
        self.assertNotIn("membership change failed", a.stderr())
        os.kill(new[0], signal.SIGKILL)
        self.assertTrue(wait_until(lambda: "membership change failed" in a.stderr(), 10),
                        a.stderr()[-3000:])
        self.assertIn("router 0 of the new map exited", a.stderr())
        # The change stops it: SIGTERM, then SIGCONT from the master, so it
        # drains and exits though it was stopped (continuing it again is moot).
        self.assertTrue(wait_until(lambda: new[1] not in procs_for_config(a.config), 10),
                        a.stderr()[-3000:])
        # The killed process's router0.next is gone once the change is over.
        self.assertTrue(wait_until(lambda: not any(os.path.exists(p) for p in nexts), 10),
                        [os.path.exists(p) for p in nexts])
        self.assertTrue(wait_until(
            lambda: changes_over(a) == 1, 10), a.stderr()[-3000:])
        self.assertEqual(new_procs(), {})
        # The previous map's router processes serve on, on their own sockets.
        self.assertEqual(router_procs(a), gen0)
        with a.client() as c:
            self.assertEqual(c.call(req_hset(TABLE, b"k", "v")).status, 200)
            resp = c.call(req_hget(TABLE, b"k"))
            self.assertEqual((resp.status, pyval(resp.values[0])), (200, "v"))
        for path in socks:
            with Client(path) as c:
                self.assertEqual(c.ping().status, 200)
        m = self.metrics(mport)
        self.assertEqual(total(m, "kvs_membership_changes_total", result="failed"), 1)
        # The same reload again goes through.
        self.reload(a, 2)
        self.assertFalse(set(router_procs(a)) & set(gen0))
        self.assertEqual([os.path.exists(p) for p in nexts], [False, False])
        for path in socks:
            with Client(path) as c:
                self.assertEqual(c.ping().status, 200)
        with a.client() as c:
            resp = c.call(req_hget(TABLE, b"k"))
            self.assertEqual((resp.status, pyval(resp.values[0])), (200, "v"))
        self.assertEqual(a.stop(), 0)

    def test_an_old_router_process_ready_after_the_switch_leaves_the_socket_to_the_new_one(self):
        """A serving router process that restarts just before a change, and
        becomes ready only after the switch, takes routerI.sock over (it is
        of the serving generation when it starts) and removes it when it
        drains: the new process must then take its path back. The test
        hook holds a serving generation's process for 3 s before it takes
        its sockets, so the change switches in between."""
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        _, bases, mport, a, b = self.a_and_b(
            layout, ("a", "b", "d"), processes=2,
            env={"KVS_TEST_ROUTER_READY_DELAY_MS": "3000"})
        gen0 = router_procs(a)
        socks = [os.path.join(a.data_dir, "router%d.sock" % i) for i in range(2)]
        argvs = procs_for_config(a.config)
        pid0 = next(p for p in gen0 if argvs[p][argvs[p].index("--router") + 1] == "0")
        mark = len(a.stderr())
        os.kill(pid0, signal.SIGKILL)
        # The restarted process 0 is in the hook's wait (its signals held).
        self.assertTrue(wait_until(lambda: "test hook: taking the sockets" in a.stderr()[mark:],
                                   10), a.stderr()[-3000:])
        set_map(a, {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "d": [0, 1, 2, 3]}, bases)
        self.reload(a, 1)
        log = a.stderr()[mark:]
        self.assertNotIn("membership change failed", log)
        # The restarted old process took the socket after the switch, then
        # drained: wait until no old process is left.
        self.assertTrue(wait_until(lambda: not set(router_procs(a)) & set(gen0) and len(
            [p for p, g in router_procs(a).items()]) == 2, 20), router_procs(a))
        self.assertIn("started late; router 0 takes it again", a.stderr()[mark:])
        new = set(router_procs(a))
        for i, path in enumerate(socks):
            def serves():
                try:
                    with Client(path, timeout=2) as c:
                        return c.ping().status == 200
                except OSError:
                    return False
            self.assertTrue(wait_until(serves, 10), "router%d.sock: %r" % (
                i, os.path.exists(path)))
        self.assertEqual(set(router_procs(a)), new)
        # Each path is the new process's: /metrics reaches both router
        # processes of the new map through them.
        m = self.metrics_when(mport, lambda m: all(
            total(m, "kvs_process_start_time_seconds", role="router", router=str(i))
            for i in range(2)))
        self.assertTrue(all(total(m, "kvs_process_start_time_seconds", role="router",
                                  router=str(i)) for i in range(2)), m)
        # A process whose path is its own ignores SIGUSR2 (binding again
        # would reset the connections waiting to be accepted).
        took = a.stderr().count("took my own socket")
        self.assertEqual(took, 1, a.stderr()[-3000:])
        with Client(socks[1], timeout=5) as held:
            for pid in new:
                os.kill(pid, signal.SIGUSR2)
            time.sleep(0.3)
            self.assertEqual(held.ping().status, 200)
        self.assertEqual(a.stderr().count("took my own socket"), took)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_refused_reloads_change_nothing(self):
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        mock, bases, rt = self.cluster(layout=layout)
        a = rt["a"]
        bases.update(self.bases(["d"], avoid=bases.values()))
        state = (router_procs(a), a.workers())
        with open(a.config) as f:
            original = f.read()
        grown = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "d": [0, 1, 2, 3]}

        def refused(what, count):
            a.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(lambda: a.stderr().count(what) == count, 20),
                                 a.stderr()[-3000:])
            time.sleep(0.5)
            self.assertEqual((router_procs(a), a.workers()), state)
            with a.client() as c:
                self.assertEqual(c.call(req_hset(TABLE, b"k", "v")).status, 200)
            with open(a.config, "w") as f:
                f.write(original)
        # A new map with a key that cannot change live: refused whole.
        set_map(a, grown, bases)
        edit(a, "storage: {sync: batch}", "storage: {sync: full}")
        refused("reload refused: %s: storage.sync changed"
                % config_place(a, "storage: {sync: full}", "full"), 1)
        # A map that no longer lists this node does not load.
        set_map(a, {"b": [0, 1, 2, 3], "d": [0, 1, 2, 3]}, bases)
        refused('node.name "a" is not in cluster.nodes', 1)
        # This node's own address is where its workers listen: not live.
        moved = dict(bases, a=bases["a"] + 1000)
        set_map(a, layout, moved)
        refused("reload refused: %s: cluster.nodes (this node's own address) changed"
                % config_place(a, "    - {name: ", "- {name"), 1)
        self.assertNotIn("membership change", a.stderr())
        # The next good reload goes through.
        set_map(a, grown, bases)
        d = self.node(self._mocks[0], "d", grown, bases)
        d.start()
        self.wait_workers(d)
        self.reload(a, 1)
        self.assertEqual(a.workers(), state[1])
        self.assertNotEqual(router_procs(a), state[0])


if __name__ == "__main__":
    unittest.main()
