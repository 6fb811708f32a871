"""kill -9 at the moments test_durability does not reach: a worker killed
in the middle of a burst of Hincr, of table creations, of large Hmsets
that grow the map, of writes on a full disk, and while it installs a
snapshot copy from a peer; the whole node (or its master alone) killed
while clients write a bound table log-first and read with positions; a
worker killed as the node reloads its config.

One connection pipelines requests; a receiver thread keeps every answer
in order. After kill -9 and a restart on the same data:

  - every write answered 200 before the kill reads back (Hincr: the
    counter is at least the number of acknowledged increments and at most
    the number sent, so none was lost or applied twice);
  - nothing half-written is visible (an Hmset is all there or absent);
  - a write answered 507 (full disk) is absent;
  - the worker starts again by itself (a snapshot copy cut by the kill is
    thrown away and copied again, never used);
  - a read carrying the position of a write acknowledged before the kill
    is served with that write or a later one.

Every wait is bounded; a kill comes once enough answers arrived, so the
crash finds requests in flight whatever the machine's speed.
"""
import functools
import os
import re
import signal
import socket
import threading
import time
import unittest

from kafkatest import ingest_yaml, wait_until
from routertest import Router, RouterTestCase, edit_config, procs_for_config
from test_ingest import KafkaFixtures
from test_logfirst import with_options
from kvstest import (TIMEOUT, Client, NodeTestCase, encode, pb, pyval, req_hget, req_hmset,
                     req_hset)
from test_hostile_peers import Worker

CAP = 20.0  # hard cap on a stream's sending


def req_hincr(table, key, by=1):
    r = pb.CommandRequest()
    r.hincr.table, r.hincr.key, r.hincr.by_int = table, key, by
    return r


def stored_text(resp):
    """The text an Hget answer holds, None when the key (or table) is absent."""
    assert resp.status in (200, 404), (resp.status, resp.message)
    if resp.status != 200 or not resp.values or not resp.values[0].HasField("string_value"):
        return None
    return resp.values[0].string_value


class Pipe:
    """Sends frame make(i) for i = 0.. (n at most) from a sender thread; a
    receiver thread appends every answer (status, values) in order."""

    def __init__(self, client, make, n, chunk=100):
        self.c, self.make, self.n, self.chunk = client, make, n, chunk
        self.sent = 0
        self.answers = []
        self.errors = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._recv, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self):
        deadline = time.monotonic() + CAP
        try:
            for start in range(0, self.n, self.chunk):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                end = min(start + self.chunk, self.n)
                data = b"".join(self.make(i) for i in range(start, end))
                self.sent = end
                self.c.sock.sendall(data)
        except OSError:
            pass  # the worker died under us: expected

    def _recv(self):
        try:
            while len(self.answers) < self.n:
                r = self.c.recv()
                self.answers.append((r.status, [pyval(v) for v in r.values], r.message))
        except (OSError, EOFError):
            pass
        except Exception as e:
            self.errors.append(repr(e))

    def wait_answers(self, n, timeout=TIMEOUT):
        return wait_until(lambda: len(self.answers) >= n, timeout, interval=0.001)

    def join(self):
        """Stops sending; once every request sent is answered (or the
        connection is gone), ends the receiver too. True if both ended."""
        self.stop.set()
        self.threads[0].join(TIMEOUT)
        wait_until(lambda: len(self.answers) >= self.sent or not self.threads[1].is_alive(),
                   TIMEOUT)
        try:
            self.c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.threads[1].join(TIMEOUT)
        return not any(t.is_alive() for t in self.threads)

    def acked(self):
        """Indexes of the requests answered 200."""
        return [i for i, a in enumerate(self.answers) if a[0] == 200]


class Kill9Test(NodeTestCase):
    def killed_mid_stream(self, n, make, count, kill_at, chunk=100):
        """Streams make(i) on a fresh connection, kill -9 once `kill_at`
        answers arrived, restarts the node; returns the Pipe."""
        with n.client() as c:
            p = Pipe(c, make, count, chunk)
            self.assertTrue(p.wait_answers(kill_at), "only %d answers" % len(p.answers))
            n.kill9()
            self.assertTrue(p.join(), "stream threads did not end after kill -9")
        self.assertEqual(p.errors, [])
        self.assertLess(len(p.answers), count, "the stream ended before kill -9")
        n.start()
        return p

    def test_hincr_burst_loses_no_acknowledged_increment_and_applies_none_twice(self):
        n = self.node()
        for round_, kill_at in enumerate((300, 3000, 20000)):
            table = "c%d" % round_
            frames = [encode(req_hincr(table, b"n")), encode(req_hincr(table, b"m", 2))]
            p = self.killed_mid_stream(n, lambda i: frames[i % 2], 400000, kill_at, chunk=500)
            acked = p.acked()
            self.assertEqual(acked, list(range(len(acked))), "non-200 answers before the kill")
            # every answer is the next value: nothing was skipped or counted twice
            wrong = [(i, a[1]) for i, a in enumerate(p.answers)
                     if a[1] != [i // 2 + 1 if i % 2 == 0 else 2 * (i // 2 + 1)]]
            self.assertEqual(wrong[:5], [])
            with n.client() as c:
                got_n = c.call(req_hget(table, b"n"))
                got_m = c.call(req_hget(table, b"m"))
            self.assertEqual((got_n.status, got_m.status), (200, 200))
            vn, vm = pyval(got_n.values[0]), pyval(got_m.values[0])
            # Group commit keeps arrival order: the stored pair is a prefix.
            self.assertIn(vm, (2 * vn, 2 * (vn - 1)), "n=%d m=%d" % (vn, vm))
            stored = 2 * vn - (1 if vm < 2 * vn else 0)
            self.assertGreaterEqual(stored, len(acked), "acknowledged increments lost")
            self.assertLessEqual(stored, p.sent, "increments applied twice")

    def test_table_creations_cut_by_kill9_leave_every_acknowledged_table(self):
        n = self.node(storage={"max_tables": 3000})
        p = self.killed_mid_stream(
            n, lambda i: encode(req_hset("t%d" % i, b"k", "v%d" % i)), 2900, 200, chunk=50)
        acked = p.acked()
        self.assertEqual(acked, list(range(len(acked))), p.answers[len(acked):len(acked) + 1])
        with n.client() as c:
            got = c.pipeline(req_hget("t%d" % i, b"k") for i in range(2900))
        present = [i for i, r in enumerate(got) if stored_text(r) is not None]
        wrong = [i for i in present if stored_text(got[i]) != "v%d" % i]
        self.assertEqual(wrong, [])
        self.assertEqual(present, list(range(len(present))), "created tables are not a prefix")
        self.assertGreaterEqual(len(present), len(acked), "acknowledged tables lost")
        # the restarted worker counts the tables it found: the rest still fit
        with n.client() as c:
            more = c.pipeline(req_hset("u%d" % i, b"k", "v") for i in range(3000 - len(present)))
            self.assertEqual({r.status for r in more}, {200})
            self.assertEqual(c.hset("one-too-many", "k", "v").status, 507)
        self.assertEqual(n.stop(), 0, n.stderr())

    def test_large_hmsets_that_grow_the_map_are_all_or_nothing(self):
        keys, size = 4000, 600  # about 2.5 MB per Hmset, started on a 1 MiB map

        def make(table, b):
            return encode(req_hmset(table, [("%d_%d" % (b, j), "%d:%d:" % (b, j) + "x" * size)
                                            for j in range(keys)]))

        n = self.node(max_frame="8MiB", storage={"map_size": "1MiB"})
        for round_, kill_at in enumerate((1, 4, 9)):
            table = "big%d" % round_
            p = self.killed_mid_stream(n, functools.partial(make, table), 60, kill_at, chunk=1)
            acked = p.acked()
            self.assertEqual(acked, list(range(len(acked))))
            batches = {}
            with Client(n.addr, max_frame=8 << 20) as c:
                for k, v in c.scan_all(table, count=5000):
                    b, j = (int(x) for x in k.decode().split("_"))
                    self.assertTrue(v.startswith("%d:%d:" % (b, j)), (k, v[:20]))
                    batches.setdefault(b, set()).add(j)
            partial = {b: len(js) for b, js in batches.items() if len(js) != keys}
            self.assertEqual(partial, {}, "Hmsets half there after kill -9 (batch: keys)")
            lost = [b for b in acked if b not in batches]
            self.assertEqual(lost, [], "acknowledged Hmsets lost")
            self.assertLessEqual(len(batches), p.sent)
        self.assertEqual(n.stop(), 0, n.stderr())

    def test_full_disk_then_kill9_keeps_acknowledged_writes_and_none_refused(self):
        n = self.node()
        with n.client() as c:
            self.assertEqual(c.hset("seed", "k", "v").status, 200)
        n.limit_growth(2 << 20)
        value = "w" * 3000
        with n.client() as c:
            p = Pipe(c, lambda i: encode(req_hset("t", b"%06d" % i, value + str(i))), 100000,
                     chunk=100)
            full = wait_until(lambda: any(a[0] == 507 for a in p.answers), TIMEOUT)
            self.assertTrue(full, "the disk never filled up: %d answers" % len(p.answers))
            # keep going a moment on the full disk, then kill -9
            p.wait_answers(len(p.answers) + 2000, timeout=1.0)
            n.kill9()
            self.assertTrue(p.join())
        self.assertEqual(p.errors, [])
        statuses = {a[0] for a in p.answers}
        self.assertLessEqual(statuses, {200, 507},
                             [a for a in p.answers if a[0] not in (200, 507)][:3])
        n.start()  # a new process: RLIMIT_FSIZE is gone, the disk has room again
        with n.client() as c:
            got = c.pipeline(req_hget("t", b"%06d" % i) for i in range(len(p.answers)))
            self.assertEqual(c.hget("seed", "k").values[0].string_value, "v")
        stored = [stored_text(r) for r in got]
        lost = [i for i, a in enumerate(p.answers) if a[0] == 200 and stored[i] != value + str(i)]
        there = [i for i, a in enumerate(p.answers) if a[0] == 507 and stored[i] is not None]
        self.assertEqual(lost[:10], [], "acknowledged writes lost")
        self.assertEqual(there[:10], [], "writes answered 507 are stored")
        with n.client() as c:
            self.assertEqual(c.hset("t", "after", "v").status, 200)
        self.assertEqual(n.stop(), 0, n.stderr())


class SnapshotKill9Test(NodeTestCase):
    """A new replica killed -9 while it copies a peer's environment: a
    copy cut mid-stream and a complete copy not yet renamed into place are
    both thrown away at the next start, which copies again; the
    data.mdb.part is never opened as the store."""

    def peer_and_worker(self, env=None):
        peer = self.node(max_frame="1MiB")
        with peer.client() as c:
            for i in range(40):
                self.assertEqual(c.call(req_hset("t", b"k%d" % i, "v%d:" % i + "x" * (400 << 10)))
                                 .status, 200)
        w = Worker(0, peer.port, env=env)
        self.addCleanup(w.close)
        self._nodes.append(w)
        return peer, w

    def part(self, w):
        return os.path.join(w.shard_dir(), "data.mdb.part")

    def assertCopied(self, w):
        self.assertTrue(wait_until(w.serves, 3 * TIMEOUT), w.stderr())
        with Client(w.addr) as c:
            for i in range(40):
                r = c.call(req_hget("t", b"k%d" % i))
                self.assertEqual(r.status, 200, r.message)
                self.assertTrue(r.values[0].string_value.startswith("v%d:" % i))
        self.assertFalse(os.path.exists(self.part(w)))

    def kill9_mid_copy(self, w):
        """Starts `w` and kills it -9 once its copy has begun."""
        w.start()
        self.assertTrue(wait_until(lambda: os.path.exists(self.part(w)) and
                                   os.path.getsize(self.part(w)) > 0, TIMEOUT, interval=0.001),
                        w.stderr())
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait(TIMEOUT)

    def test_kill9_mid_stream_then_restart_copies_again(self):
        peer, w = self.peer_and_worker()
        self.kill9_mid_copy(w)
        self.assertFalse(os.path.exists(os.path.join(w.shard_dir(), "data.mdb")))
        w.start()
        self.assertCopied(w)

    def test_kill9_while_a_complete_copy_is_synced_then_restart_copies_again(self):
        peer, w = self.peer_and_worker(env={"KVS_TEST_SNAPSHOT_SYNC_DELAY_MS": "3000"})
        w.start()
        # the whole copy is in data.mdb.part, being synced (3 s): kill it
        # there (the hook says when the stream has ended and the sync starts)
        self.assertTrue(wait_until(lambda: re.search(
            r"test hook: the copy of shard 0 from \S+ is whole", w.stderr()), TIMEOUT),
                        w.stderr())
        self.assertNotIn("copied shard", w.stderr())
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait(TIMEOUT)
        self.assertTrue(os.path.exists(self.part(w)))
        self.assertFalse(os.path.exists(os.path.join(w.shard_dir(), "data.mdb")))
        w.env = None  # a normal disk now
        w.start()
        self.assertCopied(w)

    def test_a_copy_cut_by_kill9_is_removed_when_the_worker_starts_without_copying(self):
        # Killed mid-copy, then started with cluster.bootstrap: replay (or
        # without a peer): the half copy must not stay on the disk forever.
        peer, w = self.peer_and_worker()
        self.kill9_mid_copy(w)
        self.assertTrue(os.path.exists(self.part(w)))
        with open(w.config) as f:
            text = f.read().replace("  nodes:\n", "  bootstrap: replay\n  nodes:\n")
        with open(w.config, "w") as f:
            f.write(text)
        w.start()
        self.assertTrue(wait_until(w.serves, 3 * TIMEOUT), w.stderr())
        self.assertFalse(os.path.exists(self.part(w)), "a half copy stays in " + w.shard_dir())
        self.assertIn("removed a snapshot copy that a crash interrupted", w.stderr())


class NodeKill9Test(KafkaFixtures, unittest.TestCase):
    """The whole node (master, router processes, workers) killed -9 while
    clients write a bound table through the router (log-first) and read
    with positions: after a restart every acknowledged write reads back,
    and a read carrying the position of a write acknowledged before the
    kill is served with that write (or a later one), never an older
    value."""

    def test_whole_node_kill9_keeps_acknowledged_log_first_writes_and_their_positions(self):
        self.writes_through_a_kill("all")

    def test_master_kill9_keeps_acknowledged_log_first_writes_and_their_positions(self):
        # Its router processes and workers learn of it (PR_SET_PDEATHSIG:
        # SIGTERM), drain and exit; a new master starts once they are gone.
        self.writes_through_a_kill("master")

    def writes_through_a_kill(self, victims):
        topic, parts = "users", 4
        m = self.mock({topic: parts})
        r = Router(shards=2, partitions=64, start=False, timeout="3s", processes=2,
                   extra_yaml=ingest_yaml(m.bootstrap, [(topic, "users", "string", parts)],
                                          properties={"reconnect.backoff.max.ms": "500"}))
        self._routers.append(r)
        self.addCleanup(r.close)
        r.start()
        acked, attempted, errors = {}, {}, []
        lock, stop = threading.Lock(), threading.Event()

        def writer(t):
            keys = [b"w%d-%d" % (t, j) for j in range(6)]
            try:
                with r.client(timeout=5) as c:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        k = keys[n % len(keys)]
                        with lock:
                            attempted[k] = n
                        resp = c.hset("users", k, str(n))
                        if resp.status == 200:
                            self.assertTrue(resp.position, "a log-first write without position")
                            with lock:
                                acked[k] = (n, resp.position)
                            # the session reads its own write
                            # (or 503 once the node goes down under it)
                            got = c.hget("users", k)
                            if got.status not in (200, 503) or (
                                    got.status == 200 and got.values[0].string_value != str(n)):
                                errors.append((k, n, got.status, got.message))
                        elif resp.status != 503:
                            errors.append((k, n, resp.status, resp.message))
            except (OSError, EOFError):
                pass  # the node died under us

        threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(4)]
        for t in threads:
            t.start()
        self.assertTrue(wait_until(lambda: len(acked) >= 20, 20), "too few writes acknowledged")
        time.sleep(0.5)
        pids = [r.pid] + (sorted(procs_for_config(r.config)) if victims == "all" else [])
        for pid in pids:  # at once: no process sees another one die first
            os.kill(pid, signal.SIGKILL)
        with lock:
            before = dict(acked)
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
        self.assertEqual(errors, [])
        self.assertTrue(r.wait_all_gone(10))
        r.start()
        for k, (n, pos) in sorted(before.items()):
            def read():
                with r.client() as c:
                    got = c.call(with_options(req_hget("users", k), pos))
                if got.status == 503:
                    return None
                return got
            got = wait_until(read, 20, 0.05)
            self.assertTrue(got, "a read at the position of %r=%d is never served" % (k, n))
            self.assertEqual(got.status, 200, got.message)
            v = int(got.values[0].string_value)
            self.assertGreaterEqual(v, n, "%r: acknowledged %d, read %d at its position"
                                    % (k, n, v))
            self.assertLessEqual(v, attempted[k])
        ends = self.ends(m, topic, parts)
        self.assert_exactly_once(self.wait_caught_up(r, topic, ends), ends)


class ReloadKill9Test(RouterTestCase):
    """A worker killed -9 right as the node reloads its config (SIGHUP)
    while a client streams writes through the router: every write answered
    200 reads back, the master restarts the worker, and the restarted
    worker runs the reloaded config (the master's new snapshot, or the old
    one then the SIGHUP it is owed), not the one it started with."""

    def test_worker_killed_during_a_live_reload(self):
        r = self.router(shards=2, log="{level: info, slow_threshold: off}")
        with r.client() as c:
            p = Pipe(c, lambda i: encode(req_hset("t", b"%06d" % i, "v%d" % i)), 200000, chunk=200)
            self.assertTrue(p.wait_answers(2000))
            edit_config(r, "slow_threshold: off", "slow_threshold: 0")
            old = r.worker_pid(0)
            r.proc.send_signal(signal.SIGHUP)
            os.kill(old, signal.SIGKILL)
            self.assertIsNotNone(r.wait_worker(0, not_pid=old))
            p.wait_answers(len(p.answers) + 5000, timeout=2.0)
            self.assertTrue(p.join())
        self.assertEqual(p.errors, [])
        bad = [a for a in p.answers if a[0] not in (200, 503)]
        self.assertEqual(bad[:3], [])
        self.assertIn(503, [a[0] for a in p.answers], "the kill cost no request: too late")
        line = "configuration reloaded from %s (log.slow_threshold)" % r.config
        self.assertTrue(wait_until(lambda: "node[1] INFO  " + line in r.stderr(), TIMEOUT),
                        r.stderr())
        # the new worker 0 runs threshold 0: its own slow log takes every request

        def slow_entries():
            with r.worker_client(0) as c:
                req = pb.CommandRequest()
                req.slowlog.count = 10
                c.call(req_hget("t", b"probe"))
                resp = c.call(req)
                return resp.status == 200 and len(resp.ops.slowlog) > 0
        self.assertTrue(wait_until(slow_entries, TIMEOUT), r.stderr())
        # the router reconnects to the new worker on its own schedule: read once its link is up
        up = "link to shard 0 (unix:%s) up" % r.socket_path(0)
        self.assertTrue(wait_until(lambda: r.stderr().count(up) >= 2, TIMEOUT), r.stderr())
        with r.client() as c:
            got = c.pipeline(req_hget("t", b"%06d" % i) for i in range(len(p.answers)))
        lost = [i for i, a in enumerate(p.answers)
                if a[0] == 200 and stored_text(got[i]) != "v%d" % i]
        self.assertEqual(lost[:10], [], "acknowledged writes lost")
        self.assertEqual(r.stop(), 0, r.stderr())


if __name__ == "__main__":
    unittest.main()
