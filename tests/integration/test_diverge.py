"""Integration tests: a bound topic's log moves away under the offsets a
worker stored (node_ingest.c, "out of range").

A worker stores, with its data, the offset of the next record of each
partition. When the brokers no longer have that offset, there are two
cases, told apart by asking the brokers where the log starts and ends:

  - the log now ends below it: the topic was deleted and created again, or
    its log truncated. The partition has *diverged*: it is halted, its reads
    and writes answer 503 "diverged" (reads with accept_stale get what was
    applied), Info shows diverged 1 and serving 0, and nothing is thrown
    away: pointed back at the old log, the same data serves again. Before,
    librdkafka silently restarted such a partition at the new log's
    beginning, every record below the stored offset was skipped as "already
    applied", and the old data was served as current.
  - the log now starts above it: the records in between were deleted
    (retention) before the worker read them. auto.offset.reset decides:
    earliest resumes at the log's first record (the gap is logged), error
    halts the partition with an error.

Rebuild (`kvs-cli --config FILE rebuild TABLE`, a worker command sent to
every replica, or with --node NAME to that node's copies only) empties a
bound table and reads its topic again from the first record: how a
diverged partition takes the new topic's data. RebuildReplicasTest runs
it over a cluster of two nodes (test_replicas' fixtures).

A topic "deleted and created again" is a second kvs-mock-kafka with a topic
of the same name, the node's config pointed at it. Records deleted by
retention are the mock's own: it keeps at most 5 MiB per partition and
drops the oldest batches beyond.

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import itertools
import os
import resource
import socket
import subprocess
import threading
import time
import unittest

from kvstest import BUILD_DIR, Client, pb, pyval, req_hget, req_hset
from routertest import edit_config, partition_of, stopped
import kafkatest
from kafkatest import (cluster_id, info, info_pairs, kafka_parts, produce, wait_until,
                       watermarks)
from test_ingest import KafkaFixtures
import test_replicas
from test_replicas import ReplicaFixtures

HAVE_CK = kafkatest.Producer is not None
TOPIC = "users"


def stale(req):
    req.accept_stale = True
    return req


class Forwarder:
    """A bootstrap address on loopback whose brokers can be swapped: each
    connection is forwarded to `target` ("host:port") as it is when the
    connection comes. So a running worker can be shown another cluster at
    the address it was given (its client learns the new brokers' own
    addresses from their metadata)."""

    def __init__(self, target):
        self.target = target
        self.stopping = threading.Event()
        self.socks = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.bootstrap = "127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            host, port = self.target.split(",")[0].rsplit(":", 1)
            try:
                u = socket.create_connection((host, int(port)), timeout=5)
            except OSError:
                c.close()
                continue
            for x in (c, u):
                x.settimeout(None)
                self.socks.append(x)
            threading.Thread(target=self.pipe, args=(c, u), daemon=True).start()
            threading.Thread(target=self.pipe, args=(u, c), daemon=True).start()

    @staticmethod
    def pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stopping.set()
        self.listener.close()
        for x in self.socks:
            x.close()


@unittest.skipIf(not HAVE_CK, "python3-confluent-kafka is needed")
class DivergeTest(KafkaFixtures, unittest.TestCase):
    def router(self, mock, bindings, one_cluster=True, env=None, **kw):
        """A topic \"created again\" here is a topic of another mock, which
        is another Kafka cluster (its own id): one_cluster makes the worker
        take it for the same cluster, as a topic created again in the same
        Kafka is (KVS_TEST_ONE_CLUSTER)."""
        env = dict(env or {})
        if one_cluster:
            env["KVS_TEST_ONE_CLUSTER"] = "1"
        return super().router(mock, bindings, env=env, **kw)

    def point_at(self, router, old, new):
        """Rewrites the router's config to use the brokers of mock `new`
        instead of `old`."""
        with open(router.config) as f:
            text = f.read()
        self.assertIn(old.bootstrap, text)
        with open(router.config, "w") as f:
            f.write(text.replace(old.bootstrap, new.bootstrap))

    def parts(self, router):
        return kafka_parts(info(router), TOPIC)

    def one_answer_then_none(self, mock, go, answered, wait):
        """Scripts mock's answers to the range question: one (where the log
        starts and ends: two ListOffsets requests), then none; calls go(),
        which makes the question come, and returns whether answered() held
        within `wait` s. A question that outran its timeout on a loaded
        machine (the worker asker's first, which connects) takes the
        scripted answer with it and counts as unanswered: the partition
        stays out of range and is asked again at every tick. So the answer
        is scripted once more then."""
        for attempt in range(2):
            if attempt:
                mock.ctl("clear-errors ListOffsets")
            mock.ctl("error ListOffsets NO_ERROR 2")
            mock.ctl("error ListOffsets NOT_LEADER_FOR_PARTITION 10000")
            if not attempt:
                go()
            if wait_until(answered, wait):
                return True
        return False

    def write_until_produced(self, router, mock, key, end, timeout):
        """An Hset of `key` in a thread of its own, returned once TOPIC's
        partition 0 ends at `end` (Kafka has the write's record), with the
        list its answer goes into."""
        got = []

        def write():
            with Client(router.addr, timeout=timeout) as c:
                got.append(c.call(req_hset("users", key, b"acked")))

        writer = threading.Thread(target=write)
        writer.start()
        self.assertTrue(wait_until(lambda: watermarks(mock.bootstrap, TOPIC, 1)[0][1] == end, 30),
                        "Kafka must have the write's record")
        return writer, got

    def cli(self, router, *args):
        """kvs-cli --config <router's config> ARGS: (exit status, stdout, stderr)."""
        p = subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--config", router.config,
                            "--timeout", "5"] + list(args), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout, p.stderr

    def recreate(self):
        """A node that applied 100 records of TOPIC (2 partitions, 2 shards)
        from mock `a`, then pointed at mock `b` whose TOPIC has 5 and 3
        records (other values): both partitions diverge. Returns (router,
        a, b, the first records, the second ones, ends in a)."""
        a = self.mock({TOPIC: 2})
        first = {b"k%d" % i: b"a-%d" % i for i in range(100)}
        produce(a.bootstrap, TOPIC, sorted(first.items()))
        ends = self.ends(a, TOPIC, 2)
        r = self.router(a, [(TOPIC, "users", "raw", 2)], shards=2)
        self.wait_caught_up(r, TOPIC, ends)
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        b = self.mock({TOPIC: 2})
        keys = {p: [k for k in sorted(first) if partition_of(k, 2) == p] for p in (0, 1)}
        second = {k: b"b-" + k for k in keys[0][:5] + keys[1][:3]}
        produce(b.bootstrap, TOPIC, sorted(second.items()))
        self.assertEqual({p: hi for p, (lo, hi) in watermarks(b.bootstrap, TOPIC, 2).items()},
                         {0: 5, 1: 3})
        self.point_at(r, a, b)
        r.start()

        def diverged():
            parts = self.parts(r)
            return parts if all(parts[p]["diverged"] == 1 for p in (0, 1)) else None

        self.assertTrue(wait_until(diverged, 20),
                        "both partitions must be found diverged: %r" % self.parts(r))
        return r, a, b, first, second, ends

    def test_recreated_topic_diverges_and_nothing_is_lost(self):
        r, a, b, first, second, ends = self.recreate()
        parts = self.parts(r)
        for p in (0, 1):
            self.assertEqual(parts[p]["serving"], 0, parts[p])
            self.assertEqual(parts[p]["halted"], 1, parts[p])
            self.assertEqual(parts[p]["next_offset"], ends[p], "nothing applied from the new log")
        self.assertIn("DIVERGED", r.stderr())

        k0, k1 = min(k for k in second if partition_of(k, 2) == 0), \
            min(k for k in second if partition_of(k, 2) == 1)
        with Client(r.addr) as c:
            # Reads are refused (the router's own read of the file too), ...
            for k in (k0, k1):
                resp = c.call(req_hget("users", k))
                self.assertEqual(resp.status, 503, resp.message)
                self.assertIn("diverged", resp.message)
                self.assertIn("topic users partition %d" % partition_of(k, 2), resp.message)
            # ... unless stale data is accepted: the old data is all there.
            resp = c.call(stale(req_hget("users", k0)))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), first[k0])
            # Writes are refused before anything reaches the topic.
            resp = c.call(req_hset("users", k0, b"new"))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("diverged", resp.message)
            # The rest of the node works.
            resp = c.call(req_hset("plain", "x", b"y"))
            self.assertEqual(resp.status, 200, resp.message)
        self.assertEqual({p: hi for p, (lo, hi) in watermarks(b.bootstrap, TOPIC, 2).items()},
                         {0: 5, 1: 3}, "a refused write must not reach the topic")

        # Pointed back at the log it came from, the shard serves as before.
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        self.point_at(r, b, a)
        r.start()
        parts = self.wait_caught_up(r, TOPIC, ends)
        self.assertEqual({p: parts[p]["diverged"] for p in (0, 1)}, {0: 0, 1: 0})
        self.assert_values(r.addr, "users", first)

    def test_a_diverged_partition_shows_the_brokers_end_not_its_own_writes(self):
        """A log-first write, then the log it went to is gone under the
        running worker (mock a dies; mock b, with 5 records, answers at
        the same bootstrap address): the partition diverges, and Info and
        the 503 give the brokers' end offset. They gave the end past the
        worker's own write (51), which said the log ended above what it
        had applied (offset 50)."""
        a = self.mock({TOPIC: 1})
        produce(a.bootstrap, TOPIC, [(b"k%d" % i, b"a") for i in range(50)])
        fwd = Forwarder(a.bootstrap)
        self.addCleanup(fwd.close)
        r = self.router(fwd, [(TOPIC, "users", "raw", 1)], shards=1,
                        properties={"topic.metadata.refresh.interval.ms": "1000"})
        self.wait_caught_up(r, TOPIC, {0: 50})
        with Client(r.addr) as c:
            resp = c.call(req_hset("users", b"k1", b"mine"))
            self.assertEqual(resp.status, 200, resp.message)
        self.wait_caught_up(r, TOPIC, {0: 51})
        a.close()
        b = self.mock({TOPIC: 1})
        produce(b.bootstrap, TOPIC, [(b"k%d" % i, b"b") for i in range(5)])
        fwd.target = b.bootstrap
        self.assertTrue(wait_until(lambda: self.parts(r)[0]["diverged"] == 1, 30),
                        "the partition must be found diverged: %r" % self.parts(r))
        part = self.parts(r)[0]
        self.assertEqual((part["end_offset"], part["next_offset"]), (5, 51), part)
        with Client(r.addr) as c:
            resp = c.call(req_hget("users", b"k1"))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("diverged: topic users partition 0's end offset (the next record's) "
                          "is now 5, but this worker had applied it up to offset 50",
                          resp.message)

    def test_brokers_that_become_another_cluster_diverge_until_rebuilt(self):
        """The brokers at the bootstrap address become another Kafka
        cluster (mock a dies; mock b answers there) whose log is longer
        than what was applied: its offsets are other records. They were
        ingested from the stored offset on (records 50..119 of b applied
        over a's 0..49, served as current for good); now the topic
        diverges as a whole, by the cluster's id stored with its records,
        also across a restart (which then applies nothing of b's), and a
        Rebuild reads it from b's start. librdkafka may fetch from b before
        it reads b's metadata, so some of b's records may be applied in the
        moment before the change is seen (README)."""
        a = self.mock({TOPIC: 1})
        produce(a.bootstrap, TOPIC, [(b"k%d" % i, b"a-%d" % i) for i in range(50)])
        fwd = Forwarder(a.bootstrap)
        self.addCleanup(fwd.close)
        r = self.router(fwd, [(TOPIC, "users", "raw", 1)], shards=1, one_cluster=False,
                        properties={"topic.metadata.refresh.interval.ms": "1000"})
        self.wait_caught_up(r, TOPIC, {0: 50})
        a_id = cluster_id(a.bootstrap)
        self.assertTrue(a_id)
        self.assertEqual(self.parts(r)[0]["cluster_id"], a_id)
        a.close()
        b = self.mock({TOPIC: 1})
        if cluster_id(b.bootstrap) == a_id:
            # A mock cluster's id is made from its address in memory, and a
            # sanitizer build's heap hands out the same addresses each run.
            self.skipTest("both mock clusters have the id %s" % a_id)
        produce(b.bootstrap, TOPIC, [(b"k%d" % i, b"b-%d" % i) for i in range(120)])
        answers, stop = [], threading.Event()

        def write():  # log-first writes while the brokers change
            with Client(r.addr, timeout=30) as c:
                for i in itertools.count():
                    if stop.is_set():
                        break
                    answers.append(c.call(req_hset("users", b"w%d" % i, b"x")))
                    time.sleep(0.2)

        writer = threading.Thread(target=write)
        writer.start()
        fwd.target = b.bootstrap

        def moved():
            self.assertTrue(wait_until(lambda: self.parts(r)[0]["diverged"] == 1, 30),
                            "the topic must be found diverged: %r" % self.parts(r))
            part = self.parts(r)[0]
            self.assertEqual(part["serving"], 0, part)
            self.assertEqual(part["cluster_id"], a_id, "the cluster its offsets are in")
            with Client(r.addr) as c:
                resp = c.call(req_hget("users", b"k1"))
                self.assertEqual(resp.status, 503, resp.message)
                self.assertRegex(resp.message, r"diverged: topic users partition 0: the topic "
                                 r"was applied from Kafka cluster \"[^\"]+\", and the brokers are "
                                 r"now cluster \"[^\"]+\"")
                self.assertIn("accept_stale", resp.message)
                resp = c.call(stale(req_hget("users", b"k1")))
                self.assertEqual(resp.status, 200, resp.message)
                resp = c.call(req_hset("users", b"k1", b"new"))
                self.assertEqual(resp.status, 503, resp.message)
                self.assertIn("was applied from Kafka cluster", resp.message)
            return part["next_offset"]

        applied = moved()
        stop.set()
        writer.join(40)
        self.assertGreaterEqual(applied, 50)
        # None was taken, nor said to be applied later, once it could
        # reach the new cluster: one the producer sent there before a
        # check saw the change is in that log, and may or may not count.
        for resp in answers:
            if resp.status == 200:
                self.assertFalse(resp.message, "written before the change")
                continue
            self.assertEqual(resp.status, 503, resp.message)
            self.assertNotIn("will be applied", resp.message)
            if "Kafka acknowledged" in resp.message:
                self.assertTrue(resp.outcome_unknown, resp.message)
        # The writes began once a was gone, so every one that landed is in
        # b's log: each Kafka acknowledged, each answered 200 (applied from
        # b before the check saw the change: the README's "cluster"), and
        # perhaps one answered "may or may not have happened"; none refused.
        sent = sum(resp.status == 200 or "Kafka acknowledged" in resp.message
                   for resp in answers)
        maybe = sum(resp.outcome_unknown and "Kafka acknowledged" not in resp.message
                    for resp in answers)
        low, end = watermarks(b.bootstrap, TOPIC, 1)[0]
        self.assertEqual(low, 0)
        self.assertTrue(120 + sent <= end <= 120 + sent + maybe,
                        ("a refused write must not reach the topic", end, sent, maybe,
                         [(x.status, x.message) for x in answers if x.status != 200]))
        self.assertIn("DIVERGED: the brokers are Kafka cluster", r.stderr())
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        r.start()
        # The id the records came from is stored with them: at a start the
        # check comes before any record, so nothing more of b's is applied.
        self.assertEqual(moved(), applied)
        rc, out, err = self.cli(r, "rebuild", "users")
        self.assertEqual(rc, 0, out + err)
        self.wait_caught_up(r, TOPIC, {0: end})
        self.assertEqual(self.parts(r)[0]["cluster_id"], cluster_id(b.bootstrap))
        with Client(r.addr) as c:
            for k in (b"k1", b"k60"):
                resp = c.call(req_hget("users", k))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, b"b-" + k[1:]),
                                 resp.message)

    def test_a_write_waiting_when_the_brokers_become_another_cluster_is_answered_then(self):
        """A log-first write Kafka acknowledged waits for ingestion to apply
        it (slowed here to a record every 60 s). The brokers then become
        another cluster: its partition is no longer ingested, so waiting
        cannot settle the write, and it is answered 503 outcome_unknown as
        soon as the change is seen, not at router.timeout (it waited all of
        it, and was told it would be applied)."""
        a = self.mock({TOPIC: 1})
        fwd = Forwarder(a.bootstrap)
        self.addCleanup(fwd.close)
        r = self.router(fwd, [(TOPIC, "users", "raw", 1)], shards=1, one_cluster=False,
                        timeout="120s", env={"KVS_TEST_INGEST_DELAY_MS": "60000"},
                        properties={"topic.metadata.refresh.interval.ms": "1000"})
        self.assertTrue(wait_until(lambda: self.parts(r)[0]["cluster_id"] != "", 30),
                        "the first cluster's id must be learned")
        a_id = self.parts(r)[0]["cluster_id"]
        b = self.mock({TOPIC: 1})
        if cluster_id(b.bootstrap) == a_id:
            self.skipTest("both mock clusters have the id %s" % a_id)
        writer, got = self.write_until_produced(r, a, b"k1", 1, timeout=150)
        switched = time.monotonic()
        a.close()  # its connections end: the worker's next ones reach b
        fwd.target = b.bootstrap
        writer.join(60)
        self.assertFalse(writer.is_alive(), "the write was not answered once the brokers changed")
        self.assertLess(time.monotonic() - switched, 60)
        resp = got[0]
        self.assertEqual(resp.status, 503, resp.message)
        self.assertTrue(resp.outcome_unknown, resp.message)
        self.assertRegex(resp.message, r"^Hset: Kafka acknowledged the write, but topic users "
                         r"partition 0 is not ingested by this shard \(diverged: the topic was "
                         r"applied from Kafka cluster ")
        self.assertIn("the write may or may not take effect", resp.message)
        self.assertNotIn("will be applied", resp.message)
        self.assertEqual(self.parts(r)[0]["diverged"], 1)

    def test_a_write_whose_record_was_deleted_unread_is_answered_may_or_may_not(self):
        """A log-first write Kafka acknowledged at offset 1 waits for the
        worker, whose fetches fail meanwhile (an injected error); retention
        then deletes offsets 0 and up before it reads them, and
        auto.offset.reset (earliest, latest) resumes past them: the record
        is never applied here. It was answered at its deadline "it will be
        applied: read with this position", and a read at that position
        then found no key; it is now answered 503 outcome_unknown as soon
        as the worker resumes past it."""
        for reset in ("earliest", "latest"):
            with self.subTest(reset=reset):
                m = self.mock({TOPIC: 1}, control=True)
                r = self.router(m, [(TOPIC, "users", "raw", 1)], shards=1, timeout="60s",
                                properties={"auto.offset.reset": reset})
                self.wait_caught_up(r, TOPIC, {0: 0})
                m.ctl("error Fetch NOT_LEADER_FOR_PARTITION 100000")
                time.sleep(1)
                produce(m.bootstrap, TOPIC, [(b"ext", b"v")])  # the write is not next
                writer, got = self.write_until_produced(r, m, b"mine", 2, timeout=90)
                produce(m.bootstrap, TOPIC, [(b"flood-%d" % i, b"z" * 200000) for i in range(40)],
                        **{"linger.ms": 0, "batch.size": 250000})
                self.assertGreater(watermarks(m.bootstrap, TOPIC, 1)[0][0], 1,
                                   "the mock must have dropped the write's record")
                resumed = time.monotonic()
                m.ctl("clear-errors Fetch")
                writer.join(50)
                self.assertFalse(writer.is_alive(), "the write was not answered")
                self.assertLess(time.monotonic() - resumed, 30)  # not at its 48 s deadline
                resp = got[0]
                self.assertEqual(resp.status, 503, resp.message)
                self.assertTrue(resp.outcome_unknown, resp.message)
                self.assertRegex(resp.message, r"^Hset: Kafka acknowledged the write \(topic "
                                 r"users partition 0 offset 1\), but the record was deleted from "
                                 r"the partition before this shard applied it, and "
                                 r"auto.offset.reset resumed past it")
                self.assertNotIn("will be applied", resp.message)
                self.assertIn("DATA LOST", r.stderr())
                r.close()

    def test_rebuild_takes_the_new_topic(self):
        r, a, b, first, second, ends = self.recreate()
        with Client(r.addr) as c:
            resp = c.call(req_hset("plain", "kept", b"yes"))  # a table bound to no topic
            self.assertEqual(resp.status, 200, resp.message)
            # A worker command: the router refuses it, naming the way.
            q = pb.CommandRequest()
            q.rebuild.table = "users"
            resp = c.call(q)
            self.assertEqual(resp.status, 400, resp.message)
            self.assertIn("rebuild TABLE", resp.message)

        # Only a bound table can be rebuilt: nothing changes.
        rc, out, err = self.cli(r, "rebuild", "plain")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("bound to no topic", err)
        # One worker at a time, without the map (its unix socket).
        p = subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--socket", r.socket_path(0),
                            "--timeout", "5", "rebuild", "plain"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("bound to no topic", p.stderr)

        rc, out, err = self.cli(r, "rebuild", "users", "--node", "nosuch")
        self.assertEqual(rc, 2, out)  # a usage error: nothing was sent
        self.assertIn('no node "nosuch"', err)

        rc, out, err = self.cli(r, "rebuild", "users")
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(out.splitlines()), 2, out)  # one line per shard
        self.assertIn("read again from their first record", out)
        new_ends = {0: 5, 1: 3}
        parts = self.wait_caught_up(r, TOPIC, new_ends)
        for p in (0, 1):
            self.assertEqual(parts[p]["diverged"], 0, parts[p])
            self.assertEqual(parts[p]["halted"], 0, parts[p])
            self.assertEqual(parts[p]["serving"], 1, parts[p])
            self.assertEqual(parts[p]["applied"], new_ends[p], parts[p])
        # The table is the new topic's, and only that.
        expect = {k: None for k in first}
        expect.update(second)
        self.assert_values(r.addr, "users", expect)
        with Client(r.addr) as c:
            resp = c.call(req_hget("plain", "kept"))
            self.assertEqual(pyval(resp.values[0]), b"yes", "other tables are not touched")
            resp = c.call(req_hset("users", "k-new", b"written"))  # writable again
            self.assertEqual(resp.status, 200, resp.message)
            resp = c.call(req_hget("users", "k-new"))
            self.assertEqual(pyval(resp.values[0]), b"written")

        # The rebuild is stored: after a restart nothing diverges or repeats.
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        r.start()
        wm = watermarks(b.bootstrap, TOPIC, 2)
        parts = self.wait_caught_up(r, TOPIC, {p: hi for p, (lo, hi) in wm.items()})
        self.assertEqual(sum(parts[p]["applied"] for p in (0, 1)), len(second) + 1)

    def test_rebuild_whose_batch_fails_changes_nothing(self):
        r, a, b, first, second, ends = self.recreate()
        k0 = min(k for k in first if partition_of(k, 2) == 0)
        pid = r.worker_pid(0)
        # Worker 0 may write nothing to its files (RLIMIT_FSIZE 0: every
        # pwrite fails, EFBIG): the Rebuild's batch fails at its commit, and
        # so does the write pipelined after it, whether in the same batch
        # or, when the Rebuild took longer than a delivery slice (5 ms, a
        # loaded machine), in the next one. (With the file only kept from
        # growing, the Rebuild's batch, which writes within the file, then
        # committed alone: 200.)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        q = pb.CommandRequest()
        q.rebuild.table = "users"
        with r.worker_client(0) as c:
            rebuilt, written = c.pipeline([q, req_hset("plain", "big", b"n" * 20000)])
            self.assertEqual(rebuilt.status, 507, rebuilt.message)
            self.assertEqual(written.status, 507, written.message)
            # The partition is as it was: diverged, its reads refused.
            parts = kafka_parts(info_pairs(r.socket_path(0)), TOPIC)
            self.assertEqual(parts[0]["diverged"], 1, parts[0])
            resp = c.call(req_hget("users", k0))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("diverged", resp.message)
            resource.prlimit(pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            rebuilt = c.call(q)
            self.assertEqual(rebuilt.status, 200, rebuilt.message)
        parts = self.wait_caught_up(r, TOPIC, {0: 5})
        self.assertEqual((parts[0]["diverged"], parts[0]["applied"]), (0, 5), parts[0])
        self.assertEqual(parts[1]["diverged"], 1, "shard 1 was not asked: %r" % parts[1])

    def test_rebuild_reads_from_the_start_after_a_restart(self):
        # auto.offset.reset latest: a partition with no stored offset starts
        # at its log's end, so the node first skips the 20 records.
        m = self.mock({TOPIC: 1})
        recs = {b"r%d" % i: b"v%d" % i for i in range(20)}
        produce(m.bootstrap, TOPIC, sorted(recs.items()))
        r = self.router(m, [(TOPIC, "users", "raw", 1)], shards=1, max_lag=5,
                        properties={"auto.offset.reset": "latest"},
                        env={"KVS_TEST_INGEST_DELAY_MS": "5000"})
        parts = self.wait_caught_up(r, TOPIC, {0: 20})
        self.assertEqual(parts[0]["applied"], 0, parts[0])
        time.sleep(1.5)  # the worker's state page has a heartbeat: the router reads locally
        rc, out, err = self.cli(r, "rebuild", "users")
        self.assertEqual(rc, 0, err)
        # 20 records behind, more than kafka.max_lag: the router's own read
        # of the environment refuses as the worker does.
        # Hlen (Redis HLEN, EXISTS) too: it counted the emptied copy, 200.
        hlen = pb.CommandRequest()
        hlen.hlen.table = "users"
        with Client(r.addr) as c:
            resp = c.call(req_hget("users", b"r0"))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("catching up", resp.message)
            resp = c.call(hlen)
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("catching up", resp.message)
            hlen.accept_stale = True  # what the copy holds now
            resp = c.call(hlen)
            self.assertEqual((resp.status, resp.values[0].integer_value), (200, 0), resp.message)
        # Stopped before the rebuild applied any record (one per 5 s): the
        # restarted worker must still read the partition from its start.
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        r.env = {}
        r.start()
        parts = self.wait_caught_up(r, TOPIC, {0: 20})
        self.assertEqual(parts[0]["applied"], 20, parts[0])
        self.assert_values(r.addr, "users", recs)

    def test_the_second_answer_comes_a_second_after_the_first(self):
        # Eight partitions of one shard go out of range one after another.
        # A round another partition started carried a partition waiting for
        # its second answer along, which then came well before the second
        # the README promises a broker that lags a moment.
        parts = 8
        a = self.mock({TOPIC: parts})
        produce(a.bootstrap, TOPIC, [(b"k%d" % i, b"x") for i in range(400)])
        ends = self.ends(a, TOPIC, parts)
        r = self.router(a, [(TOPIC, "users", "raw", parts)], shards=1)
        self.wait_caught_up(r, TOPIC, ends)
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        b = self.mock({TOPIC: parts})
        produce(b.bootstrap, TOPIC, [(b"k%d" % i, b"y") for i in range(10)])
        self.point_at(r, a, b)
        r.start()
        self.assertTrue(wait_until(lambda: r.stderr().count("DIVERGED") >= parts, 30),
                        r.stderr()[-3000:])

        def when(line):
            h, m, sec = line[11:23].split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        # From the first question (logged as it goes) to the answer that
        # decides: a second (a partition that went out of range while
        # another's question ran used to wait for the next tick, and a
        # suspect's second question for the tick after the second).
        asked, gaps = {}, {}
        for line in r.stderr().splitlines():
            for p in range(parts):
                tag = "kafka %s [%d]: " % (TOPIC, p)
                if tag + "offset" in line and "asking the brokers where the log" in line:
                    asked.setdefault(p, when(line))
                elif tag + "DIVERGED" in line:
                    gaps[p] = when(line) - asked[p]
        self.assertEqual(sorted(gaps), list(range(parts)))
        for p, gap in gaps.items():
            self.assertGreaterEqual(gap, 0.98, "partition %d: %r" % (p, gaps))
            self.assertLess(gap, 1.5, "partition %d: %r" % (p, gaps))

    def test_one_short_answer_does_not_halt_the_partition(self):
        # The node applied 100 records from mock `a`; mock `b`'s log ends
        # at 5. The brokers' first answer (start, end) is given; every
        # later question goes unanswered (a leader moving) until the
        # errors are cleared, by when `b`'s log holds the offset after all.
        a = self.mock({TOPIC: 1})
        produce(a.bootstrap, TOPIC, [(b"a%d" % i, b"x") for i in range(100)])
        r = self.router(a, [(TOPIC, "users", "raw", 1)], shards=1)
        self.wait_caught_up(r, TOPIC, {0: 100})
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        b = self.mock({TOPIC: 1}, control=True)
        produce(b.bootstrap, TOPIC, [(b"b%d" % i, b"y") for i in range(5)])
        self.point_at(r, a, b)
        self.assertTrue(self.one_answer_then_none(
            b, r.start, lambda: "asking again to be sure" in r.stderr() or "DIVERGED" in r.stderr(),
            20), "no answer came")
        log = r.stderr()
        self.assertFalse("DIVERGED" in log, "one answer must not halt the partition")
        self.assertIn("asking again to be sure", log)
        self.assertEqual(self.parts(r)[0]["diverged"], 0)
        recs = [(b"c%d" % i, b"z%d" % i) for i in range(200)]
        produce(b.bootstrap, TOPIC, recs)  # the log now ends at 205: offset 100 is in it
        b.ctl("clear-errors ListOffsets")
        parts = self.wait_caught_up(r, TOPIC, {0: 205})
        self.assertEqual((parts[0]["diverged"], parts[0]["halted"]), (0, 0), parts[0])
        self.assertEqual(parts[0]["applied"], 100 + 105, "resumed at offset 100, nothing skipped")
        log = r.stderr()
        self.assertIn("(0..205) when asked again; resuming there", log)
        self.assertFalse("DIVERGED" in log)
        expect = {k: None for k, v in recs[:95]}  # offsets 5..99: below where it resumed
        expect.update(recs[95:])
        self.assert_values(r.addr, "users", expect)

    def test_a_log_that_ends_below_what_was_applied_is_not_served_while_checked(self):
        # The node applied 100 records from mock `a`, then is pointed at
        # mock `b` whose log ends at 5 (the topic created again while it was
        # down). Its first fetch tells it that end at once; deciding
        # "diverged" takes two answers to range questions a second apart.
        # Meanwhile it must not serve the old table as current: before,
        # reads answered 200 with `a`'s data (and Info said serving 1 with
        # end_offset 5 below next_offset 100) until the second answer came.
        # The brokers leave range questions unanswered here (a leader
        # moving), which stretches "meanwhile" as long as the test likes.
        a = self.mock({TOPIC: 1})
        first = {b"a%d" % i: b"x%d" % i for i in range(100)}
        produce(a.bootstrap, TOPIC, sorted(first.items()))
        r = self.router(a, [(TOPIC, "users", "raw", 1)], shards=1)
        self.wait_caught_up(r, TOPIC, {0: 100})
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        b = self.mock({TOPIC: 1}, control=True)
        produce(b.bootstrap, TOPIC, [(b"b%d" % i, b"y") for i in range(5)])
        b.ctl("error ListOffsets NOT_LEADER_FOR_PARTITION 100000")
        self.point_at(r, a, b)
        r.start()
        self.assertTrue(wait_until(lambda: self.parts(r)[0]["end_offset"] == 5, 20),
                        "the fetch must tell the log's end: %r" % self.parts(r))
        self.assertTrue(wait_until(lambda: "is not in the partition's log" in r.stderr(), 10))
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            parts = self.parts(r)[0]
            self.assertEqual((parts["serving"], parts["diverged"], parts["next_offset"]),
                             (0, 0, 100), parts)
            with Client(r.addr) as c:
                resp = c.call(req_hget("users", b"a7"))
                self.assertEqual(resp.status, 503, "the old table served as current: %r"
                                 % (pyval(resp.values[0]) if resp.values else resp.message))
                self.assertIn("checking whether its log diverged", resp.message)
                resp = c.call(stale(req_hget("users", b"a7")))
                self.assertEqual((resp.status, pyval(resp.values[0])), (200, b"x7"), resp.message)
            with r.worker_client(0) as c:  # the worker itself, not only the router's copy
                resp = c.call(req_hget("users", b"a7"))
                self.assertEqual(resp.status, 503, resp.message)
                resp = c.call(req_hset("users", b"a7", b"new"))
                self.assertEqual(resp.status, 503, resp.message)
                self.assertIn("whether it diverged is being checked", resp.message)
            time.sleep(0.2)
        self.assertNotIn("DIVERGED", r.stderr())
        # Once the brokers answer (twice, short), the partition diverged.
        b.ctl("clear-errors ListOffsets")
        self.assertEqual(watermarks(b.bootstrap, TOPIC, 1)[0], (0, 5), "nothing was produced")
        self.assertTrue(wait_until(lambda: self.parts(r)[0]["diverged"] == 1, 20),
                        "the partition must be found diverged: %r" % self.parts(r))
        with Client(r.addr) as c:
            resp = c.call(req_hget("users", b"a7"))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("diverged: topic users partition 0", resp.message)

    def test_a_fetch_that_keeps_failing_is_retried_once_a_second(self):
        # Every fetch answers "out of range" while the brokers say the
        # offset is in the log: each round (ask, decide "transient", assign
        # again) waits RANGE_RETRY_MS (1 s), so questions come about once a
        # second, never in a spin, and consuming resumes once fetches work.
        m = self.mock({TOPIC: 1}, control=True)
        produce(m.bootstrap, TOPIC, [(b"a%d" % i, b"x") for i in range(20)])
        # librdkafka's own pause after a failed fetch (500 ms) off: only
        # kvs's wait is left between the rounds.
        r = self.router(m, [(TOPIC, "users", "raw", 1)], shards=1,
                        properties={"fetch.error.backoff.ms": "0"})
        self.wait_caught_up(r, TOPIC, {0: 20})
        m.ctl("error Fetch OFFSET_OUT_OF_RANGE 100000")
        asked = "is not in the partition's log"
        self.assertTrue(wait_until(lambda: asked in r.stderr(), 10), "no fetch failed")
        first = r.stderr().count(asked)
        time.sleep(4.0)
        log = r.stderr()
        rounds = log.count(asked) - first
        self.assertGreaterEqual(rounds, 2, "the partition must be assigned again, each second")
        self.assertLessEqual(rounds, 6, "a question at most about once a second, not a spin")
        # Every answer: the offset is in the log after all.
        self.assertGreaterEqual(log.count("offset 20 is in the log (0..20) after all"),
                                first + rounds - 1)
        for other in ("DIVERGED", "asking again to be sure", "resuming at auto.offset.reset"):
            self.assertFalse(other in log, other)
        self.assertEqual(self.parts(r)[0]["diverged"], 0)
        m.ctl("clear-errors Fetch")
        recs = [(b"b%d" % i, b"y%d" % i) for i in range(10)]
        produce(m.bootstrap, TOPIC, recs)
        parts = self.wait_caught_up(r, TOPIC, {0: 30})
        self.assertEqual((parts[0]["applied"], parts[0]["diverged"]), (30, 0), parts[0])
        self.assert_values(r.addr, "users", dict(recs))

    def test_a_short_answer_is_forgotten_once_the_partition_is_assigned_again(self):
        # A fetch fails out of range and the first answer says the log ends
        # below what was applied (the hook: a lagging broker); the next
        # questions go unanswered. Before one is, the worker assigns its
        # partitions again (here a Rebuild of another table; another
        # partition's round does the same): the partition fetches again,
        # and the suspicion must go with the round it belonged to. So when,
        # later, a fetch fails once more and one answer is short again,
        # that is a first answer: asked again, not halted.
        m = self.mock({TOPIC: 1, "zeta": 1}, control=True)
        m.ctl("leader zeta 0 -1")  # never fetched: only TOPIC's fetches fail
        produce(m.bootstrap, TOPIC, [(b"a%d" % i, b"x") for i in range(20)])
        r = self.router(m, [(TOPIC, "users", "raw", 1), ("zeta", "zeta", "raw", 1)], shards=1,
                        env={"KVS_TEST_RANGE_SHORT_ANSWERS": "2"})
        self.wait_caught_up(r, TOPIC, {0: 20})
        assigned = "kafka: consuming 2 partition(s)"
        self.assertEqual(r.stderr().count(assigned), 1)
        self.assertTrue(self.one_answer_then_none(
            m, lambda: m.ctl("error Fetch OFFSET_OUT_OF_RANGE 1"),
            lambda: "asking again to be sure" in r.stderr(), 10),
            "the short answer must make the partition suspect")
        p = subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--socket", r.socket_path(0),
                            "--timeout", "5", "rebuild", "zeta"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(r.stderr().count(assigned), 2, "the Rebuild assigns every partition")
        m.ctl("clear-errors ListOffsets")
        produce(m.bootstrap, TOPIC, [(b"b%d" % i, b"y") for i in range(20)])
        self.wait_caught_up(r, TOPIC, {0: 40})  # it fetches again
        self.assertEqual(r.stderr().count("asking again to be sure"), 1)

        m.ctl("error Fetch OFFSET_OUT_OF_RANGE 1")
        self.assertTrue(wait_until(lambda: r.stderr().count(assigned) == 3 or
                                   "DIVERGED" in r.stderr(), 10), "no second round")
        log = r.stderr()
        self.assertFalse("DIVERGED" in log, "one short answer halted the partition")
        self.assertEqual(log.count("asking again to be sure"), 2)
        self.assertIn("offset 40 is in the log (0..40) when asked again", log)
        recs = [(b"c%d" % i, b"z%d" % i) for i in range(20)]
        produce(m.bootstrap, TOPIC, recs)
        parts = self.wait_caught_up(r, TOPIC, {0: 60})
        self.assertEqual((parts[0]["diverged"], parts[0]["applied"]), (0, 60), parts[0])
        self.assert_values(r.addr, "users", dict(recs))

    def retention_setup(self, properties=None):
        """A partition whose first records the mock dropped while the node
        was down (it keeps about 5 MiB per partition). Returns (router,
        mock, log start, end, the records kept)."""
        m = self.mock({TOPIC: 1})
        produce(m.bootstrap, TOPIC, [(b"old-%d" % i, b"x") for i in range(50)])
        r = self.router(m, [(TOPIC, "users", "raw", 1)], shards=2, properties=properties)
        self.wait_caught_up(r, TOPIC, {0: 50})
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        big = b"v" * 20000
        recs = [(b"new-%d" % i, big) for i in range(400)]  # 8 MB: the first ones go
        produce(m.bootstrap, TOPIC, recs, **{"batch.num.messages": 10})
        lo, hi = watermarks(m.bootstrap, TOPIC, 1)[0]
        self.assertGreater(lo, 50, "the mock must have dropped records the node never read")
        kept = {k: v for i, (k, v) in enumerate(recs) if 50 + i >= lo}
        return r, m, lo, hi, kept

    def test_records_deleted_before_they_were_read_resume_at_the_log_start(self):
        r, m, lo, hi, kept = self.retention_setup()
        r.start()
        parts = self.wait_caught_up(r, TOPIC, {0: hi})
        self.assertEqual(parts[0]["diverged"], 0)
        self.assertEqual(parts[0]["applied"], 50 + len(kept), parts[0])
        self.assertRegex(r.stderr(), r"offsets 50\.\.%d are gone" % (lo - 1))
        self.assert_values(r.addr, "users", dict(list(kept.items())[:20]))

    def lost_metric(self, router, shard):
        """kvs_partition_lost_records_total of TOPIC on `shard`'s worker."""
        q = pb.CommandRequest()
        q.metrics.SetInParent()
        with router.worker_client(shard) as c:
            resp = c.call(q)
        self.assertEqual(resp.status, 200, resp.message)
        return sum(s.value for f in resp.ops.metrics if f.name == "kvs_partition_lost_records_total"
                   for s in f.samples if dict(zip(s.labels[::2], s.labels[1::2])).get("topic")
                   == TOPIC)

    def test_records_deleted_before_they_were_read_are_counted_as_lost(self):
        # Records a shard never applied because retention deleted them
        # first are data lost: before, one WARN line gave their offsets
        # and nothing counted them (applied + skipped just fell short of
        # the offsets passed). Now an ERROR says how many, and Info's
        # `lost` and a metric count them.
        r, m, lo, hi, kept = self.retention_setup()
        r.start()
        parts = self.wait_caught_up(r, TOPIC, {0: hi})
        gone = lo - 50
        self.assertEqual(parts[0]["lost"], gone, parts[0])
        self.assertEqual(parts[0]["applied"] + parts[0]["skipped"] + parts[0]["lost"], hi, parts[0])
        self.assertEqual(self.lost_metric(r, 0), gone)
        self.assertRegex(r.stderr(), r"ERROR +kafka %s \[0\]: DATA LOST: %d records, offsets "
                                     r"50\.\.%d are gone" % (TOPIC, gone, lo - 1))
        self.assertEqual(r.stderr().count("DATA LOST"), 1)
        # A Rebuild starts the partition over; the counter does not go down.
        rc, out, err = self.cli(r, "rebuild", "users")
        self.assertEqual(rc, 0, err)
        parts = self.wait_caught_up(r, TOPIC, {0: hi})
        self.assertEqual((parts[0]["applied"], parts[0]["lost"]), (len(kept), gone), parts[0])

    def test_records_deleted_before_a_first_record_was_applied_are_counted_as_lost(self):
        # A partition with no offset stored yet, whose consumer was at
        # offset 0 when retention deleted the records it had not read (the
        # worker stopped meanwhile): one WARN line said the log now starts
        # elsewhere, and nothing counted the records, as if the shard had
        # never been meant to read them. A rebuilt one starts at the log's
        # start whatever auto.offset.reset says: with "latest" it resumed
        # at the log's end, the whole log counted lost.
        for latest in (False, True):
            with self.subTest(latest=latest):
                m = self.mock({TOPIC: 1})
                r = self.router(m, [(TOPIC, "users", "raw", 1)], shards=1,
                                properties={"auto.offset.reset": "latest"} if latest else None)
                self.assertTrue(wait_until(
                    lambda: kafka_parts(info(r), TOPIC).get(0, {}).get("lag") == 0, 20))
                if latest:
                    rc, out, err = self.cli(r, "rebuild", "users")
                    self.assertEqual(rc, 0, err)
                with stopped(r.worker_pid(0)):
                    recs = [(b"new-%d" % i, b"v" * 20000) for i in range(400)]  # 8 MB
                    produce(m.bootstrap, TOPIC, recs, **{"batch.num.messages": 10})
                    lo, hi = watermarks(m.bootstrap, TOPIC, 1)[0]
                self.assertGreater(lo, 0, "the mock must have dropped records the node never read")
                parts = self.wait_caught_up(r, TOPIC, {0: hi})
                self.assertEqual((parts[0]["lost"], parts[0]["applied"]), (lo, hi - lo), parts[0])
                self.assertEqual(self.lost_metric(r, 0), lo)
                self.assertRegex(r.stderr(), r"ERROR +kafka %s \[0\]: DATA LOST: %d records, "
                                             r"offsets 0\.\.%d are gone" % (TOPIC, lo, lo - 1))
                r.close()

    def test_a_skip_made_again_after_its_batch_was_lost_is_counted_once(self):
        # The batch that stores a skip over deleted records fails (a full
        # or failing disk): the worker reloads its offsets and decides the
        # same skip again. The records are lost once, not twice.
        r, m, lo, hi, kept = self.retention_setup()
        r.env = dict(r.env or {}, KVS_TEST_LOSE_SKIPS="1")
        r.start()
        parts = self.wait_caught_up(r, TOPIC, {0: hi})
        gone = lo - 50
        self.assertEqual(r.stderr().count("DATA LOST"), 2, r.stderr())  # decided twice
        self.assertEqual(parts[0]["lost"], gone, parts[0])
        self.assertEqual(parts[0]["applied"] + parts[0]["skipped"] + parts[0]["lost"], hi, parts[0])
        self.assertEqual(self.lost_metric(r, 0), gone)
        self.assertIn("counted once already", r.stderr())

    def test_records_deleted_with_auto_offset_reset_error_halt_the_partition(self):
        r, m, lo, hi, kept = self.retention_setup({"auto.offset.reset": "error"})
        r.start()
        self.assertTrue(wait_until(lambda: "auto.offset.reset is \"error\"" in r.stderr(), 20),
                        "the halt must be logged")
        parts = self.parts(r)
        self.assertEqual(parts[0]["next_offset"], 50, "nothing may be skipped")
        self.assertEqual(parts[0]["diverged"], 0)
        self.assertEqual(parts[0]["halted"], 1, "Info says it is not ingested")
        # Not diverged: reads go on, and the catch-up gate judges the lag.
        resp = info_pairs(r.socket_path(0))
        self.assertEqual(resp["kafka.%s.00000.lag" % TOPIC], hi - 50)
        # The end came from the brokers' answer that found the gap: its age
        # counts from it (it said -1, "never", until the end probe asked).
        self.assertGreaterEqual(resp["kafka.%s.00000.end_offset_age_ms" % TOPIC], 0, resp)
        # A write would never be applied: refused before it reaches the topic.
        with Client(r.addr) as c:
            resp = c.call(req_hset("users", "k", b"v"))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("auto.offset.reset", resp.message)
        self.assertEqual(watermarks(m.bootstrap, TOPIC, 1)[0][1], hi)

    def test_a_halted_partition_whose_log_runs_on_is_refused_past_max_lag(self):
        # Nothing fetches a halted partition: the worker must still learn
        # where its log ends (the end probe, once per metadata refresh
        # interval), or its lag stays frozen and the catch-up gate serves
        # the old table however far the topic runs ahead.
        r, m, lo, hi, kept = self.retention_setup(
            {"auto.offset.reset": "error", "topic.metadata.refresh.interval.ms": "1000"})
        edit_config(r, "kafka:\n", "kafka:\n  max_lag: %d\n" % (hi - 50 + 100))
        r.start()
        self.assertTrue(wait_until(lambda: self.parts(r)[0]["halted"] == 1, 20),
                        "the partition must be halted")

        def read():
            with Client(r.addr) as c:
                return c.call(req_hget("users", b"old-7"))
        resp = read()
        self.assertEqual((resp.status, pyval(resp.values[0])), (200, b"x"),
                         "within max_lag: served")
        produce(m.bootstrap, TOPIC, [(b"late-%d" % i, b"v") for i in range(200)],
                **{"batch.num.messages": 50})
        self.assertTrue(wait_until(lambda: read().status == 503, 15),
                        "a halted partition %d records behind is served: %r"
                        % (hi + 200 - 50, self.parts(r)[0]))
        resp = read()
        self.assertIn("catching up", resp.message)
        parts = self.parts(r)
        self.assertEqual((parts[0]["lag"], parts[0]["halted"], parts[0]["next_offset"]),
                         (hi + 200 - 50, 1, 50), parts[0])
        self.assertGreaterEqual(parts[0]["end_offset_age_ms"], 0, parts[0])

    def test_records_deleted_with_auto_offset_reset_latest_resume_at_the_log_end(self):
        # Restarted with auto.offset.reset latest (and kafka.max_lag 5)
        # after records it never read were deleted: the partition resumes
        # at the log's end, so it is caught up at once, and stays so across
        # a restart, though no record came since to move its offset.
        r, m, lo, hi, kept = self.retention_setup()  # earliest: the first 50 applied
        prop = '    "reconnect.backoff.max.ms": "500"\n'
        edit_config(r, prop, prop + '    "auto.offset.reset": "latest"\n')
        edit_config(r, "kafka:\n", "kafka:\n  max_lag: 5\n")
        r.start()
        parts = self.wait_caught_up(r, TOPIC, {0: hi}, timeout=10)
        self.assertEqual((parts[0]["applied"], parts[0]["diverged"], parts[0]["halted"]),
                         (50, 0, 0), "nothing of the log applied: it resumed at its end")
        self.assertRegex(r.stderr(), r"offsets 50\.\.%d are gone" % (lo - 1))
        expect = {k: None for k in list(kept)[:20]}
        expect[b"old-7"] = b"x"
        self.assert_values(r.addr, "users", expect)  # served: not "catching up"
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        asked = r.stderr().count("asking the brokers where the log starts and ends")
        r.start()
        self.wait_caught_up(r, TOPIC, {0: hi}, timeout=10)
        self.assert_values(r.addr, "users", expect)
        produce(m.bootstrap, TOPIC, [(b"after", b"a")])  # and it goes on from there
        parts = self.wait_caught_up(r, TOPIC, {0: hi + 1})
        self.assertEqual(parts[0]["applied"], 51, parts[0])
        self.assert_values(r.addr, "users", {b"after": b"a"})
        self.assertEqual(r.stderr().count("asking the brokers where the log starts and ends"),
                         asked, "the offset it resumed at was stored")

    def test_rebuild_of_a_partition_halted_by_auto_offset_reset_error(self):
        r, m, lo, hi, kept = self.retention_setup({"auto.offset.reset": "error"})
        r.start()
        self.assertTrue(wait_until(lambda: self.parts(r)[0]["halted"] == 1, 20),
                        "the partition must be halted")
        rc, out, err = self.cli(r, "rebuild", "users")
        self.assertEqual(rc, 0, err)
        # From the log's first record, whatever auto.offset.reset says.
        parts = self.wait_caught_up(r, TOPIC, {0: hi}, timeout=20)
        self.assertEqual((parts[0]["halted"], parts[0]["applied"]), (0, len(kept)), parts[0])
        expect = {b"old-%d" % i: None for i in range(50)}  # emptied: gone with the table
        expect.update(list(kept.items())[:20])
        self.assert_values(r.addr, "users", expect)
        with Client(r.addr) as c:  # writable again
            resp = c.call(req_hset("users", "k", b"v"))
            self.assertEqual(resp.status, 200, resp.message)


@unittest.skipIf(not HAVE_CK, "python3-confluent-kafka is needed")
class RebuildReplicasTest(ReplicaFixtures, unittest.TestCase):
    """kvs-cli rebuild over a cluster map: which copies it rebuilds."""

    def cli(self, router, *args):
        p = subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--config", router.config,
                            "--timeout", "5"] + list(args), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout, p.stderr

    def worker_get(self, router, shard, key):
        """(status, value) of Hget KEY at `router`'s worker of `shard`."""
        with router.worker_client(shard) as c:
            resp = c.call(req_hget(test_replicas.TABLE, key))
        return resp.status, pyval(resp.values[0]) if resp.values else None

    def test_rebuild_node_rebuilds_only_that_nodes_copies(self):
        table, shards = test_replicas.TABLE, test_replicas.SHARDS
        layout = {"a": [0, 1, 2, 3], "b": [0, 1]}
        mock, bases, rt = self.cluster(layout=layout)
        a, b = rt["a"], rt["b"]
        keys = {b"r%d" % i: "v%d" % i for i in range(40)}
        with a.client() as c:
            for k, v in keys.items():
                resp = c.call(req_hset(table, k, v))
                self.assertEqual(resp.status, 200, resp.message)
        ends = {p: hi for p, (lo, hi) in
                watermarks(mock.bootstrap, test_replicas.TOPIC, test_replicas.TOPIC_PARTS).items()}

        def applied(r, s):
            parts = kafka_parts(info_pairs(r.socket_path(s)), test_replicas.TOPIC)
            return all(parts[p]["next_offset"] == ends[p] for p in parts)

        for n, r in rt.items():
            for s in layout[n]:
                self.assertTrue(wait_until(lambda: applied(r, s), 20), (n, s))
        # A pair the topic never held, on every copy of shard 0 (as a bug
        # or a disk could leave): only a rebuilt copy loses it.
        intruder = next(b"intruder-%d" % i for i in range(1000)
                        if test_replicas.shard_of_key(b"intruder-%d" % i) == 0)
        stored = pb.Value(string_value="in").SerializeToString()
        line = intruder + b"\n" + b"".join(b"\\%02x" % c for c in stored) + b"\n"
        for r in (a, b):
            self.assertEqual(r.stop(), 0)
            self.assertTrue(r.wait_all_gone())
            subprocess.run(["mdb_load", "-T", "-s", table, os.path.join(r.data_dir, "shard-0")],
                           input=line, check=True, timeout=10)
            r.proc = None
        self.start_all(a, b)
        for r in (a, b):
            self.assertEqual(self.worker_get(r, 0, intruder), (200, "in"))

        rc, out, err = self.cli(a, "rebuild", table, "--node", "b")
        self.assertEqual(rc, 0, err)
        # One line per copy of b's, none for a's.
        self.assertEqual(sorted(ln.split(":")[0] for ln in out.splitlines()),
                         ["shard 0 b", "shard 1 b"], out)
        self.assertEqual(b.stderr().count("emptied on request (Rebuild)"), 2)
        self.assertEqual(a.stderr().count("emptied on request (Rebuild)"), 0)
        for s in layout["b"]:
            self.assertTrue(wait_until(lambda: applied(b, s), 20), s)
        self.assertEqual(self.worker_get(b, 0, intruder), (404, None), "b's copy was rebuilt")
        self.assertEqual(self.worker_get(a, 0, intruder), (200, "in"), "a's copy was not")
        for k, v in keys.items():  # b's copies read the topic again, all of it
            s = test_replicas.shard_of_key(k)
            if s in layout["b"]:
                self.assertEqual(self.worker_get(b, s, k), (200, v), k)

        # Without --node every copy is asked; one that cannot be reached
        # is reported, and the others are still rebuilt.
        b.kill_all()
        rc, out, err = self.cli(a, "rebuild", table)
        self.assertEqual(rc, 1, out + err)
        self.assertEqual(sorted(ln.split(":")[0] for ln in out.splitlines()),
                         ["shard %d a" % s for s in range(shards)], out)
        self.assertEqual(sorted(ln.split(":")[1].strip() for ln in err.splitlines()),
                         ["shard 0 b", "shard 1 b"], err)
        for s in range(shards):
            self.assertTrue(wait_until(lambda: applied(a, s), 20), s)
        self.assertEqual(self.worker_get(a, 0, intruder), (404, None), "a's copy was rebuilt")

if __name__ == "__main__":
    unittest.main()
