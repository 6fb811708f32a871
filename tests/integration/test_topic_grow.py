"""Integration tests for a bound topic whose partition count changes while
kvs runs (partitions added by a Kafka admin): real kvs-router, kvs-node
workers and kvs-mock-kafka processes on loopback.

librdkafka 2.0's mock cluster cannot add partitions to a topic (it has no
CreatePartitions handler, and rd_kafka_mock_topic_create refuses a topic
that exists), so what the brokers say of a topic's count is made to change
with the test hook KVS_TEST_TOPIC_PARTITIONS_FILE: "TOPIC N" lines in that
file stand for the brokers' answer to each worker's periodic metadata
check (test builds only, never a config key). Everything else is real: the
workers' checks run every topic.metadata.refresh.interval.ms against the
mock cluster (Info shows the count it reported before the file says
otherwise), refuse reads and writes, log, and publish it on the state
page the router's local reads use.

Every wait is bounded; every process is killed at cleanup.
"""
import os
import re
import shutil
import tempfile
import unittest

from kvstest import pb, pyval, req_hget, req_hgetall, req_hmget, req_hscan, req_hset, req_hdel
from routertest import Router, free_port, partition_of
import kafkatest
from kafkatest import (KCAT, info_pairs, ingest_yaml, kafka_parts, kcat_produce,
                       wait_until)
from test_ingest import KafkaFixtures
from test_logfirst import with_options
from test_ops import http_get, parse_metrics, total

HAVE_CK = kafkatest.Producer is not None
CHECK_MS = 200  # topic.metadata.refresh.interval.ms: how often workers check
REFUSED = re.compile(r"topic users has 8 partitions, but kvs placed table users on 4: .*"
                     r"restart kvs with the new layout \(partitions: 8 ")


@unittest.skipIf(KCAT is None or not HAVE_CK, "kcat and python3-confluent-kafka are needed")
class TopicGrowTest(KafkaFixtures, unittest.TestCase):
    def grow_router(self):
        """A 2-shard router ingesting topic users (4 partitions) into table
        users, checking partition counts every CHECK_MS; the counts file the
        workers read is self.counts (absent at start)."""
        self.m = self.mock({"users": 4})
        self.counts = self.counts_path()
        self.mport = free_port()
        # Debug level: each worker logs the count every check found.
        r = Router(shards=2, partitions=64, start=False, log="{level: debug}",
                   env={"KVS_TEST_TOPIC_PARTITIONS_FILE": self.counts},
                   router_yaml=['metrics_listen: "127.0.0.1:%d"' % self.mport],
                   extra_yaml=ingest_yaml(self.m.bootstrap, [("users", "users", "string", 4)],
                                          properties={"reconnect.backoff.max.ms": "500",
                                                      "topic.metadata.refresh.interval.ms":
                                                      str(CHECK_MS)}))
        self._routers.append(r)
        self.addCleanup(r.close)
        r.start()
        self.assertTrue(wait_until(lambda: len(r.workers()) == 2, 10), r.workers())
        # Each worker's start-up check answered (it then assigns its
        # partitions): a count grown before that is the start-up error
        # (test_grown_before_start_is_a_startup_error), not a grown topic.
        # "node ready" can come first: it waits for the links, not Kafka.
        self.assertTrue(wait_until(lambda: all(
            "kafka: consuming 2 partition(s) owned by shard %d" % s in r.stderr()
            for s in (0, 1)), 20), r.stderr()[-3000:])
        return r

    def counts_path(self):
        d = tempfile.mkdtemp(prefix="kvs-grow-")
        self.addCleanup(shutil.rmtree, d, True)
        return os.path.join(d, "counts")

    def say_partitions(self, n):
        tmp = self.counts + ".tmp"
        with open(tmp, "w") as f:
            f.write("users %d\n" % n)
        os.rename(tmp, self.counts)

    def worker_info(self, r, shard):
        return kafka_parts(info_pairs(r.socket_path(shard)), "users")

    def metrics(self):
        st, _, text = http_get(self.mport)
        self.assertEqual(st, 200, text)
        return parse_metrics(text)

    def keys(self):
        """A key on each of the 4 partitions (shard = partition % 2)."""
        out = {}
        i = 0
        while len(out) < 4:
            k = b"key-%d" % i
            out.setdefault(partition_of(k, 4), k)
            i += 1
        return [out[p] for p in range(4)]

    def test_grown_topic_is_refused_until_restart(self):
        r = self.grow_router()
        keys = self.keys()
        kcat_produce(self.m.bootstrap, "users", [(k, b"from-kafka") for k in keys])
        ends = {partition_of(k, 4): 1 for k in keys}
        self.wait_caught_up(r, "users", ends)
        # The count the brokers really report, from the start-up check and
        # the periodic ones alike (one a second at most: wait for two).
        self.assertTrue(wait_until(lambda: all(
            len(re.findall(r"node\[%d\] DEBUG kafka: topic users has 4 partitions \(checked\)"
                           % s, r.stderr())) >= 2 for s in (0, 1)), 10),
            "no periodic check answered by the brokers")
        for s in (0, 1):
            for p, st in self.worker_info(r, s).items():
                self.assertEqual(st["topic_partitions"], 4, (s, p, st))
                self.assertEqual(st["serving"], 1, (s, p, st))
        with r.client() as c:
            self.assertEqual(c.call(req_hset("users", keys[0], "written")).status, 200)
            got = c.call(req_hget("users", keys[1]))
            self.assertEqual((got.status, pyval(got.values[0])), (200, "from-kafka"), got.message)
        m0 = self.metrics()
        self.assertEqual(total(m0, "kvs_topic_resized", topic="users"), 0)
        self.assertEqual(total(m0, "kvs_topic_partitions", topic="users", shard="0"), 4)

        # An admin adds 4 partitions: within a few checks every read and
        # write of the table is refused, on both shards, through the router
        # (its local reads included) and on the workers themselves.
        self.say_partitions(8)
        hlen = pb.CommandRequest()  # Hlen (Redis HLEN, EXISTS) too
        hlen.hlen.table = "users"
        with r.client() as c:
            self.assertTrue(wait_until(lambda: all(
                c.call(req_hget("users", k)).status == 503 for k in keys), 10, 0.05),
                "reads still served 10 s after the topic grew")
            reqs = [req_hget("users", k) for k in keys] + [
                req_hmget("users", keys), req_hgetall("users"), req_hscan("users"), hlen,
                with_options(req_hget("users", keys[1]), stale=True),
                req_hset("users", keys[2], "lost?"), req_hset("users", keys[3], "lost?"),
                req_hdel("users", keys[1])]
            for q in reqs:
                got = c.call(q)
                self.assertEqual(got.status, 503, (q, got.status, got.message))
                self.assertRegex(got.message, REFUSED)
            # Other tables are not affected.
            self.assertEqual(c.call(req_hset("other", b"k", "v")).status, 200)
            self.assertEqual(c.call(req_hget("other", b"k")).status, 200)
        for s in (0, 1):
            with r.worker_client(s) as w:
                mine = [k for k in keys if partition_of(k, 4) % 2 == s]
                got = w.call(req_hget("users", mine[0]))
                self.assertEqual(got.status, 503, got.message)
                self.assertRegex(got.message, REFUSED)
            for p, st in self.worker_info(r, s).items():
                self.assertEqual(st["topic_partitions"], 8, (s, p, st))
                self.assertEqual(st["serving"], 0, (s, p, st))
        m1 = self.metrics()
        for s in ("0", "1"):
            self.assertEqual(total(m1, "kvs_topic_resized", topic="users", shard=s), 1)
            self.assertEqual(total(m1, "kvs_topic_partitions", topic="users", shard=s), 8)
        # Nothing was produced by the refused writes.
        self.assertEqual(kafkatest.watermarks(self.m.bootstrap, "users", 4)[
            partition_of(keys[2], 4)][1], 1)

        # One ERROR line per worker, however many checks ran since: wait
        # for two checks of each worker after its ERROR line (a check logs
        # its count before any ERROR; checks run at most once a second),
        # each of which would have logged it again.
        def checks_since_error(s):
            log = r.stderr()
            at = log.find("node[%d] ERROR " % s)
            return -1 if at < 0 else len(re.findall(
                r"node\[%d\] DEBUG kafka: topic users has 8 partitions \(checked\)" % s, log[at:]))
        self.assertTrue(wait_until(lambda: all(checks_since_error(s) >= 2 for s in (0, 1)), 10),
                        "checks must have gone on")
        log = r.stderr()
        checks = re.findall(r"node\[\d\] DEBUG kafka: topic users has 8 partitions \(checked\)",
                            log)
        self.assertGreaterEqual(len(checks), 4, "checks must have gone on")
        lines = [ln for ln in log.splitlines()
                 if "kafka: topic users has 8 partitions" in ln and "DEBUG" not in ln]
        self.assertEqual(len(lines), 2, "\n".join(lines))
        for ln in lines:
            self.assertRegex(ln, r"node\[\d\] ERROR ")
            self.assertRegex(ln, REFUSED)
        self.assertNotIn("exited", log, "no worker may stop over it")

        # A broker that has not heard of the new partitions yet still says
        # 4: that does not make the table served again.
        self.say_partitions(4)
        before = len(re.findall(r"DEBUG kafka: topic users has 4 partitions", r.stderr()))
        self.assertTrue(wait_until(lambda: len(re.findall(
            r"DEBUG kafka: topic users has 4 partitions", r.stderr())) >= before + 4, 10),
            "no checks answered with the old count")
        with r.client() as c:
            for k in keys:
                got = c.call(req_hget("users", k))
                self.assertEqual(got.status, 503, got.message)
                self.assertRegex(got.message, REFUSED)
        # Grown once more: logged once more, with the new count.
        self.say_partitions(12)
        with r.client() as c:
            self.assertTrue(wait_until(lambda: all(
                "has 12 partitions" in c.call(req_hget("users", k)).message for k in keys),
                10, 0.05), "the new count is not in the answers")
        log = r.stderr()
        self.assertEqual(len(re.findall(r"ERROR +kafka: topic users has 8 partitions", log)), 2)
        self.assertEqual(len(re.findall(r"ERROR +kafka: topic users has 12 partitions, but kvs "
                                        r"placed table users on 4", log)), 2)
        for s in (0, 1):
            self.assertEqual({st["topic_partitions"] for st in self.worker_info(r, s).values()},
                             {12})

    def test_a_worker_restarted_after_the_topic_grew_serves_on(self):
        # A worker that dies after the topic grew is restarted into the
        # start-up check, which finds the count changed: it refuses the
        # table as its predecessor did, and the node serves on (a fatal
        # exit stopped the whole node, every table and shard).
        r = self.grow_router()
        keys = self.keys()
        with r.client() as c:
            self.assertEqual(c.call(req_hset("other", b"k", "v")).status, 200)
        self.say_partitions(8)
        with r.client() as c:
            self.assertTrue(wait_until(lambda: all(
                c.call(req_hget("users", k)).status == 503 for k in keys), 10, 0.05),
                "reads still served 10 s after the topic grew")
        old = r.kill_worker(0)
        self.assertIsNotNone(r.wait_worker(0, not_pid=old, timeout=15), r.stderr()[-3000:])
        self.assertTrue(wait_until(lambda: len(re.findall(
            r"ERROR +kafka: topic users has 8 partitions", r.stderr())) >= 3, 15),
            r.stderr()[-3000:])  # the two workers', then the new one's
        with r.client() as c:
            self.assertTrue(wait_until(
                lambda: c.call(req_hget("other", b"k")).status == 200, 15, 0.05),
                r.stderr()[-3000:])
            for k in keys:  # both shards, the restarted one's too
                got = c.call(req_hget("users", k))
                self.assertEqual(got.status, 503, got.message)
                self.assertRegex(got.message, REFUSED)
            self.assertEqual(c.call(req_hset("other", b"k2", "v2")).status, 200)
        self.assertTrue(r.alive(), r.stderr()[-3000:])
        self.assertNotIn("stopping the node", r.stderr())
        self.assertNotIn("exited with status 78", r.stderr())
        with r.worker_client(0) as w:
            got = w.call(req_hget("users", [k for k in keys if partition_of(k, 4) % 2 == 0][0]))
            self.assertEqual(got.status, 503, got.message)
            self.assertRegex(got.message, REFUSED)

    def test_grown_before_start_is_a_startup_error(self):
        # The same counts at a node's start: its first worker refuses to
        # run (EX_CONFIG), and the node does not start.
        self.m = self.mock({"users": 4})
        self.counts = self.counts_path()
        self.say_partitions(8)
        r = self.router(self.m, [("users", "users", "string", 4)], shards=2, start=False,
                        env={"KVS_TEST_TOPIC_PARTITIONS_FILE": self.counts})
        r.proc = r.spawn()
        self.assertEqual(r.proc.wait(30), 78, r.stderr())
        self.assertRegex(r.stderr(), r"kafka topic users has 8 partitions but kvs places table "
                                     r"users by 4 .*partitions: 8")


if __name__ == "__main__":
    unittest.main()
