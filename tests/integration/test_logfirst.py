"""Integration tests for tables bound to a Kafka topic as the topic's
materialized view: positions, the catch-up gate (kafka.max_lag) and, for
writes, log-first (issue 12). Real kvs-router, kvs-node workers and
kvs-mock-kafka processes on loopback.

Ingestion is slowed down where a test must act while a worker lags, with
the test hook KVS_TEST_INGEST_DELAY_MS (kvs-node applies one record per
that many milliseconds; compiled into test builds only, never a config
key). Position tokens are written and read with kafkatest.pos_token /
pos_entries, which follow the encoding documented in proto/kvs.proto, not
kvs's C code.

Every wait is bounded; every process is killed at cleanup.
"""
import time
import unittest

from kvstest import Client, pb, pyval, req_hget, req_hgetall, req_hmget
from routertest import partition_of
import kafkatest
from kafkatest import KCAT, info_pairs, kafka_parts, kcat_produce, pos_token, wait_until
from test_ingest import KafkaFixtures

HAVE_CK = kafkatest.Producer is not None


def keys_in_partition(p, partitions, n, prefix="k"):
    """n keys whose murmur2 partition (Kafka's default) is p."""
    out, i = [], 0
    while len(out) < n:
        k = b"%s-%d" % (prefix.encode(), i)
        if partition_of(k, partitions) == p:
            out.append(k)
        i += 1
    return out


def with_options(req, position=b"", stale=False):
    """`req` with CommandRequest.min_position / accept_stale set."""
    if position:
        req.min_position = position
    if stale:
        req.accept_stale = True
    return req


class FreshnessFixtures(KafkaFixtures):
    def worker_parts(self, router, shard, topic):
        """Per-partition Info of `topic` straight from worker `shard` (its
        unix socket: Info through the router would fail while it restarts)."""
        return kafka_parts(info_pairs(router.socket_path(shard)), topic)

    def wait_applied(self, router, shard, topic, partition, n, timeout=30):
        """Waits until the worker's next_offset on the partition is >= n."""
        def pred():
            st = self.worker_parts(router, shard, topic).get(partition, {})
            return st.get("next_offset", -1) >= n and st
        st = wait_until(pred, timeout, 0.02)
        self.assertTrue(st, "shard %d never applied %d records of %s [%d]"
                        % (shard, n, topic, partition))
        return st


@unittest.skipIf(KCAT is None or not HAVE_CK, "kcat and python3-confluent-kafka are needed")
class FreshnessTest(FreshnessFixtures, unittest.TestCase):
    def test_catch_up_gate_until_within_max_lag(self):
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        keys = keys_in_partition(0, parts, 60)
        kcat_produce(m.bootstrap, topic, [(k, b"v-" + k) for k in keys])
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2, max_lag=5,
                        env={"KVS_TEST_INGEST_DELAY_MS": "40"})
        seen, stale_ok = [], 0
        deadline = time.monotonic() + 60
        with r.client() as c:
            while time.monotonic() < deadline:
                resp = c.hget("users", keys[0])
                st = self.worker_parts(r, 0, topic)[0]
                seen.append((resp.status, resp.message, st))
                if resp.status == 200:
                    break
                if resp.status == 503:
                    # while it catches up, a read that accepts stale data is served
                    s = c.call(with_options(req_hget("users", keys[0]), stale=True))
                    self.assertIn(s.status, (200, 404), s.message)
                    stale_ok += 1
                time.sleep(0.05)
            self.assertEqual(seen[-1][0], 200, "never served: %r" % seen[-5:])
            self.assertEqual(pyval(resp.values[0]), b"v-" + keys[0])
        refused = [(msg, st) for status, msg, st in seen if status == 503]
        self.assertGreater(len(refused), 3, "the gate must have closed while it caught up: %r"
                           % seen[:3])
        self.assertGreater(stale_ok, 0)
        for msg, st in refused:
            self.assertIn("catching up: lag", msg)
            self.assertIn("topic users partition 0", msg)
            lag = int(msg.split("catching up: lag ")[1].split()[0])
            self.assertGreater(lag, 5, msg)
        self.assertTrue(all(status in (200, 503) for status, _, _ in seen), seen)
        # Info said so too: not serving while refused; serving once it was not
        self.assertEqual(refused[0][1]["serving"], 0)
        self.assertEqual(seen[-1][2]["serving"], 1, seen[-1])
        self.assertLessEqual(seen[-1][2]["lag"], 5, seen[-1])
        # partition 1 (shard 1) never lagged: served all along
        with r.client() as c:
            other = keys_in_partition(1, parts, 1)[0]
            self.assertEqual(c.hget("users", other).status, 404)

    def test_restarted_worker_catches_up_before_serving(self):
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        keys = keys_in_partition(0, parts, 100)
        kcat_produce(m.bootstrap, topic, [(k, b"v-" + k) for k in keys])
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2, max_lag=5,
                        env={"KVS_TEST_INGEST_DELAY_MS": "30"})
        self.wait_applied(r, 0, topic, 0, 20)
        old = r.workers()[0]
        r.kill_worker(0)
        self.assertIsNotNone(r.wait_worker(0, not_pid=old, timeout=10))
        # keys[0] is stored (applied before the kill), yet the restarted
        # worker must not serve it while it lags by more than max_lag
        statuses = []
        with r.client() as c:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                resp = c.hget("users", keys[0])
                statuses.append(resp.status)
                if resp.status == 200:
                    break
                self.assertEqual(resp.status, 503, resp.message)
                if "catching up" not in resp.message:  # the restart itself: shard unavailable
                    self.assertIn("shard 0", resp.message)
                time.sleep(0.05)
            self.assertEqual(resp.status, 200, statuses[-5:])
            self.assertEqual(pyval(resp.values[0]), b"v-" + keys[0])
        st = self.worker_parts(r, 0, topic)[0]
        self.assertLessEqual(st["lag"], 5, st)
        self.assertGreater(statuses.count(503), 3, statuses)

    def test_read_with_position_waits_and_is_never_stale(self):
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        key = keys_in_partition(1, parts, 1)[0]
        other = keys_in_partition(0, parts, 1)[0]
        kcat_produce(m.bootstrap, topic, [(key, b"v%d" % i) for i in range(12)])
        # 12 records of one key at offsets 0..11 of partition 1 (shard 1),
        # applied at 10 per second; router.timeout 3 s: a read waits 2.4 s
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2, timeout="3s",
                        env={"KVS_TEST_INGEST_DELAY_MS": "100"})
        self.wait_applied(r, 1, topic, 1, 1)
        with r.client() as c:
            t0 = time.monotonic()
            resp = c.call(with_options(req_hget("users", key), pos_token([(topic, 1, 11)])))
            waited = time.monotonic() - t0
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), b"v11", "a read at a position sees that write")
            self.assertGreater(waited, 0.3, "it had to wait for ingestion")
            # a position already applied: at once; the value is at least that fresh
            resp = c.call(with_options(req_hget("users", key), pos_token([(topic, 1, 4)])))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), b"v11")
            # positions of partitions the read does not touch do not hold it back
            t0 = time.monotonic()
            resp = c.call(with_options(req_hget("users", other),
                                       pos_token([(topic, 1, 5000), ("elsewhere", 0, 7)])))
            self.assertEqual(resp.status, 404, resp.message)
            self.assertLess(time.monotonic() - t0, 1.0)
            # a position it does not reach in time: 503 after waiting, never stale data
            t0 = time.monotonic()
            resp = c.call(with_options(req_hget("users", key), pos_token([(topic, 1, 5000)])))
            waited = time.monotonic() - t0
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("behind by 4989 records", resp.message)
            self.assertIn("needs offset 5000 of topic users partition 1", resp.message)
            self.assertGreater(waited, 2.0)
            self.assertLess(waited, 3.0, "answered before router.timeout")
            # whole-table reads wait for every partition of the shard
            resp = c.call(with_options(req_hgetall("users"), pos_token([(topic, 1, 11)])))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual({p.key: pyval(p.value) for p in resp.pairs}, {key: b"v11"})

    def test_waiting_reads_keep_their_order_and_others_are_served(self):
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        key = keys_in_partition(1, parts, 1)[0]
        kcat_produce(m.bootstrap, topic, [(key, b"v%d" % i) for i in range(6)])
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2, timeout="5s",
                        env={"KVS_TEST_INGEST_DELAY_MS": "100"})
        self.wait_applied(r, 1, topic, 1, 1)
        # pipelined on one connection: the waiting read's answer comes first,
        # the later reads' after it, each as it should be
        reqs = [with_options(req_hget("users", key), pos_token([(topic, 1, 5)])),
                req_hget("users", b"absent"),
                with_options(req_hmget("users", [key, b"absent"]), pos_token([(topic, 1, 3)]))]
        with r.client() as c:
            out = c.pipeline(reqs)
        self.assertEqual([x.status for x in out], [200, 404, 200], [x.message for x in out])
        self.assertEqual(pyval(out[0].values[0]), b"v5")
        self.assertEqual([pyval(v) for v in out[2].values], [b"v5", None])

    def test_malformed_position_is_refused(self):
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2)
        for bad in (b"\x01", b"\x02\x01t\x01\x00\x00", pos_token([(topic, 0, 1)]) + b"\x00"):
            for addr in (r.addr, r.socket_path(0)):
                with Client(addr) as c:
                    resp = c.call(with_options(req_hget("users", b"k"), bad))
                self.assertEqual(resp.status, 400, resp.message)
                self.assertIn("min_position is not a position token", resp.message)


if __name__ == "__main__":
    unittest.main()
