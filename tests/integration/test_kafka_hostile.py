"""Integration tests: kvs's Kafka side against a hostile producer on a
bound topic and a misbehaving broker (kvs-mock-kafka's control commands).
Real kvs-router, kvs-node workers and kvs-mock-kafka processes on
loopback; every wait is bounded."""
import threading
import time
import unittest

from kvstest import pyval, req_hget, req_hset
from routertest import partition_of
import kafkatest
from kafkatest import KCAT, pos_entries, read_topic, wait_until
from test_ingest import KafkaFixtures, log_of
from test_logfirst import keys_in_partition, with_options

HAVE_CK = kafkatest.Producer is not None


@unittest.skipIf(KCAT is None or not HAVE_CK, "kcat and python3-confluent-kafka are needed")
class HostileProducerTest(KafkaFixtures, unittest.TestCase):
    def test_a_forged_writer_header_does_not_answer_a_write(self):
        # A producer that reads the topic sees the kvs.writer headers (a
        # run's prefix and a sequence number). A record it sends with the
        # id of a write in flight, on the write's partition, before the
        # write's own record, must not be taken for the write.
        parts = 4
        m = self.mock({"users": parts}, control=True)
        # librdkafka's per-message debug lines say when kvs's record met
        # the injected error (below).
        r = self.router(m, [("users", "users", "raw", parts)], shards=2,
                        properties={"retry.backoff.ms": "1000", "debug": "msg"},
                        log="{level: debug}")
        key = b"victim"
        p = partition_of(key, parts)
        other = [k for k in keys_in_partition(p, parts, 2, "o") if k != key][0]
        with r.client() as c:
            self.assertEqual(c.hset("users", key, b"v1").status, 200)
        rec = [x for x in read_topic(m.bootstrap, "users", parts) if x[2] == key][0]
        wid = rec[4]["kvs.writer"]
        forged = wid[:8] + (int.from_bytes(wid[8:], "big") + 1).to_bytes(8, "big")
        prod = kafkatest.producer(m.bootstrap, **{"linger.ms": 0})
        prod.produce("users", key=other, value=b"x", partition=p)
        self.assertEqual(prod.flush(10), 0)
        with r.client() as c:
            self.assertTrue(wait_until(lambda: pyval(c.hget("users", other).values[0]) == b"x",
                                       10))
        m.ctl("error Produce NOT_ENOUGH_REPLICAS 1")  # kvs's record is sent again 1 s later
        mark = len(r.stderr())
        with r.client() as c:
            c.send(req_hset("users", key, b"v2"))
            # The forged record goes once kvs's own met the error: sent
            # before that, it may take the error itself and land after
            # kvs's record (its retry comes 100 ms later).
            failed = "users [%d]: MessageSet with 1 message(s)" % p
            self.assertTrue(wait_until(lambda: any(
                failed in line and "Not enough in-sync replicas" in line
                for line in r.stderr()[mark:].splitlines()), 10), r.stderr()[-3000:])
            prod.produce("users", key=other, value=b"evil", partition=p,
                         headers=[("kvs.writer", forged)])
            self.assertEqual(prod.flush(10), 0)
            resp = c.recv()
        self.assertEqual(resp.status, 200, resp.message)
        recs = [x for x in read_topic(m.bootstrap, "users", parts) if x[0] == p]
        self.assertEqual([(k, v) for _, _, k, v, _ in recs],
                         [(key, b"v1"), (other, b"x"), (other, b"evil"), (key, b"v2")])
        self.assertEqual(pyval(resp.values[0]), b"v1", "the answer is the forged record's")
        self.assertEqual(pos_entries(resp.position), [("users", p, recs[3][1])])

    def test_a_consumer_in_kvss_group_takes_nothing_and_is_named(self):
        # Another application subscribes under kvs's group id: kvs assigns
        # its partitions itself, so it keeps ingesting everything; only
        # its group commits are refused, and the log says why.
        parts = 4
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "raw", parts)], shards=2)
        stop, seen = threading.Event(), []

        def thief():
            c = kafkatest.consumer(m.bootstrap, group="kvs")
            c.subscribe(["users"])
            while not stop.is_set():
                msg = c.poll(0.1)
                if msg is not None and not msg.error():
                    seen.append(msg.offset())
            c.close()

        t = threading.Thread(target=thief)
        t.start()
        try:
            self.assertTrue(wait_until(lambda: kafkatest.produce(
                m.bootstrap, "users", [(b"w", b"0")]) and seen, 10), "the thief joined")
            kafkatest.produce(m.bootstrap, "users", [(b"k%d" % i, b"v%d" % i) for i in range(200)])
            ends = self.ends(m, "users", parts)
            self.assert_exactly_once(self.wait_caught_up(r, "users", ends, 20), ends)
            self.assertTrue(wait_until(lambda: "another consumer is a member of this group"
                                       in log_of(r), 10), "the refused commits are explained")
        finally:
            stop.set()
            t.join(10)
        self.assertIn("consumer group kvs failed", log_of(r))


    def test_transaction_markers_at_a_partitions_end_are_not_lag(self):
        # A transactional producer's log ends with a marker after every
        # commit; an abort leaves its records and a marker: offsets the
        # consumer never hands over. Three at the end, with kafka.max_lag 2:
        # counted as records still to apply, they would hold the partition
        # "catching up" (its reads refused) until the next record came.
        parts = 2
        m = self.mock({"users": parts})
        keys = keys_in_partition(0, parts, 6, "t")
        kafkatest.produce(m.bootstrap, "users", [(k, b"v-" + k) for k in keys[:5]])
        self.assertEqual(kafkatest.produce_markers(m.bootstrap, "users", 0, 3), [5, 6, 7])
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, max_lag=2)
        st = self.wait_caught_up(r, "users", {0: 8, 1: 0}, 10)
        self.assertEqual((st[0]["applied"], st[0]["skipped"]), (5, 0))
        with r.client() as c:
            resp = c.hget("users", keys[0])
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), b"v-" + keys[0])
        # While it runs: a record between markers, and markers after it.
        kafkatest.produce_markers(m.bootstrap, "users", 0, 1, commit=False)
        kafkatest.produce(m.bootstrap, "users", [(keys[5], b"late")])
        kafkatest.produce_markers(m.bootstrap, "users", 0, 2)
        st = self.wait_caught_up(r, "users", {0: 12, 1: 0}, 10)
        self.assertEqual(st[0]["applied"], 6)
        # Stored with the records: a restart resumes past them, nothing
        # applied twice.
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        r.start()
        st = self.wait_caught_up(r, "users", {0: 12, 1: 0}, 10)
        self.assertEqual((st[0]["applied"], st[0]["ingested"]), (6, 0))
        with r.client() as c:
            self.assertEqual(pyval(c.hget("users", keys[5]).values[0]), b"late")

    def test_a_partition_holding_only_markers_is_not_lag(self):
        # A partition the consumer never hands a record of (aborted
        # transactions only, or a rebuilt one whose retained log starts
        # with markers): nothing is ever applied there, so `next` was
        # never set, and with kafka.max_lag 2 its three markers held its
        # reads "catching up" for good.
        parts = 2
        m = self.mock({"users": parts})
        key = keys_in_partition(0, parts, 1, "t")[0]
        self.assertEqual(kafkatest.produce_markers(m.bootstrap, "users", 0, 3, commit=False),
                         [0, 1, 2])
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, max_lag=2)
        st = self.wait_caught_up(r, "users", {0: 3, 1: 0}, 5)
        self.assertEqual((st[0]["applied"], st[0]["skipped"], st[1]["next_offset"]), (0, 0, 0))
        with r.client() as c:
            resp = c.hget("users", key)
            self.assertEqual(resp.status, 404, resp.message)  # served: not "catching up"
            # ... and a record after them is applied as any other.
            self.assertEqual(c.hset("users", key, b"v").status, 200)
            self.assertEqual(pyval(c.hget("users", key).values[0]), b"v")
        st = self.wait_caught_up(r, "users", {0: 4, 1: 0}, 5)
        self.assertEqual((st[0]["applied"], st[0]["ingested"]), (1, 1))


@unittest.skipIf(KCAT is None or not HAVE_CK, "kcat and python3-confluent-kafka are needed")
class MisbehavingBrokerTest(KafkaFixtures, unittest.TestCase):
    def test_an_acknowledgement_without_offset_is_not_a_promise(self):
        # A broker that answers DUPLICATE_SEQUENCE_NUMBER acknowledges a
        # record without an offset; this one never wrote it. The write
        # cannot promise it will be applied, nor name it in a position.
        parts = 4
        m = self.mock({"users": parts}, control=True)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="2s")
        with r.client() as c:
            self.assertEqual(c.hset("users", b"k", b"1").status, 200)
            m.ctl("error Produce DUPLICATE_SEQUENCE_NUMBER 1")
            resp = c.hset("users", b"k", b"2")
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("may or may not have happened", resp.message)
            self.assertTrue(resp.outcome_unknown)
            self.assertNotIn("it will be applied", resp.message)
            self.assertEqual(pos_entries(resp.position), [])
            self.assertEqual(pyval(c.hget("users", b"k").values[0]), b"1")
            self.assertEqual(c.hset("users", b"k", b"3").status, 200)
        self.assertEqual([v for _, _, _, v, _ in read_topic(m.bootstrap, "users", parts)],
                         [b"1", b"3"])

    def test_a_batch_acknowledged_without_offset_names_no_position(self):
        # The same for several records of one partition, sent in one
        # produce request: librdkafka numbers a batch's records from its
        # base offset, -1 here, so all but the first come with offsets
        # 0, 1, ... that are not theirs. The answer must name none of them
        # (seen by test_consistency: a position 1 for a partition at 11757).
        # With linger.ms 0, librdkafka may also send a write's first record
        # alone and the rest in a later request, which the broker writes:
        # then those answers, if any, name their real offsets, read back
        # from the log at the end.
        parts = 4
        m = self.mock({"users": parts}, control=True)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="2s")
        p = partition_of(b"k", parts)
        keys = keys_in_partition(p, parts, 4, "b")
        placed = []  # (value, position) of each 200 answer after the first 5
        with r.client() as c:
            for i in range(5):
                self.assertEqual(c.hset("users", b"k", b"%d" % i).status, 200)
            m.ctl("error Produce DUPLICATE_SEQUENCE_NUMBER 1")
            resp = c.hmset("users", [(k, b"x") for k in keys])
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("may or may not have happened", resp.message)
            self.assertTrue(resp.outcome_unknown)
            if pos_entries(resp.position):
                # its first record went alone, unplaced; the rest in a later
                # request the broker wrote: their real offset, checked below
                placed.append((b"x", pos_entries(resp.position)))
            # Two pipelined writes: the first goes out in the produce
            # request the broker answers without offset; the second is in
            # it too (then it is no more placed than the first: not
            # "acknowledged, it will be applied") or in the next one.
            m.ctl("error Produce DUPLICATE_SEQUENCE_NUMBER 1")
            first, second = c.pipeline([req_hset("users", keys[0], b"y"),
                                        req_hset("users", keys[1], b"y")])
            for resp in (first, second):
                if resp is second and resp.status == 200:
                    placed.append((b"y", pos_entries(resp.position)))
                    continue
                self.assertEqual(resp.status, 503, resp.message)
                self.assertIn("may or may not have happened", resp.message)
                self.assertTrue(resp.outcome_unknown)
                self.assertEqual(pos_entries(resp.position), [])
            # The next write's position is past every record of the log.
            resp = c.hset("users", b"k", b"5")
            self.assertEqual(resp.status, 200, resp.message)
            placed.append((b"5", pos_entries(resp.position)))
        log = [(off, v) for part, off, _, v, _ in read_topic(m.bootstrap, "users", parts)
               if part == p]
        self.assertEqual([v for _, v in log[:5]], [b"0", b"1", b"2", b"3", b"4"])
        self.assertEqual(log[-1][1], b"5")
        for value, pos in placed:
            self.assertEqual(pos, [("users", p, max(off for off, v in log if v == value))],
                             (value, log))

    def test_a_record_the_broker_refuses_is_known_not_written(self):
        # A broker that refuses a record (too large for its
        # message.max.bytes; an invalid record) answers with an error that
        # says the log does not have it: the client is told the write did
        # not happen (413 for the size), so it can retry without fear of a
        # duplicate, and nothing is applied.
        parts = 4
        m = self.mock({"users": parts}, control=True)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="2s")
        with r.client() as c:
            self.assertEqual(c.hset("users", b"k", b"1").status, 200)
            for err, status, says in (("MSG_SIZE_TOO_LARGE", 413, "refused as too large"),
                                      ("INVALID_RECORD", 503, "did not take")):
                m.ctl("error Produce %s 1" % err)
                resp = c.hset("users", b"k", b"2")
                self.assertEqual(resp.status, status, resp.message)
                self.assertIn("Hset: Kafka %s the record of a key on topic users" % says,
                              resp.message)
                self.assertIn("the write did not happen", resp.message)
                self.assertEqual(pos_entries(resp.position), [])
                self.assertEqual(pyval(c.hget("users", b"k").values[0]), b"1")
            self.assertEqual(c.hset("users", b"k", b"3").status, 200)
        self.assertEqual([v for _, _, _, v, _ in read_topic(m.bootstrap, "users", parts)],
                         [b"1", b"3"])

    def test_an_acknowledgement_without_offset_applies_nothing(self):
        # The same on a partition that never gave a record: the
        # acknowledged record is in no known place of the log, so it must
        # not be applied as if it were the partition's next one.
        parts = 4
        m = self.mock({"users": parts}, control=True)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="2s")
        p = partition_of(b"k", parts)
        with r.client() as c:
            self.assertTrue(wait_until(lambda: kafkatest.kafka_parts(
                kafkatest.info(r), "users")[p]["end_offset"] == 0, 10))
            m.ctl("error Produce DUPLICATE_SEQUENCE_NUMBER 1")
            resp = c.hset("users", b"k", b"1")
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("may or may not have happened", resp.message)
            self.assertTrue(resp.outcome_unknown)
            self.assertEqual(c.hget("users", b"k").status, 404, "applied a record not in the log")
            st = kafkatest.kafka_parts(kafkatest.info(r), "users")[p]
            self.assertEqual((st["applied"], st["next_offset"]), (0, 0), st)
            resp = c.hset("users", b"k", b"2")
            self.assertEqual((resp.status, pyval(resp.values[0])), (200, None), resp.message)
            self.assertEqual(pos_entries(resp.position), [("users", p, 0)])
        self.assertEqual([v for _, _, _, v, _ in read_topic(m.bootstrap, "users", parts)], [b"2"])

    def test_a_partition_without_leader_fails_its_writes_in_time_and_only_its_writes(self):
        # Partition p loses its leader for longer than router.timeout:
        # a write to it is answered (503, may or may not) before the
        # router gives up, and writes and position reads of the other
        # partitions go on meanwhile.
        parts = 4
        m = self.mock({"users": parts}, brokers=3, control=True)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="2s")
        key, other = keys_in_partition(0, parts, 1, "a")[0], keys_in_partition(2, parts, 1, "b")[0]
        with r.client() as c:
            self.assertEqual(c.hset("users", key, b"1").status, 200)
            resp = c.hset("users", other, b"1")
            self.assertEqual(resp.status, 200, resp.message)
            pos = resp.position
            m.ctl("leader users 0 -1")
            t0 = time.monotonic()
            resp = c.hset("users", key, b"2")
            surely_not = kafkatest.unwritten_or_unsure(self, resp)
            self.assertLess(time.monotonic() - t0, 2.0, "answered before router.timeout")
            resp = c.hset("users", other, b"2")  # same shard, another partition
            self.assertEqual(resp.status, 200, resp.message)
            resp = c.call(with_options(req_hget("users", other), pos))
            self.assertEqual((resp.status, pyval(resp.values[0])), (200, b"2"), resp.message)
            m.ctl("leader users 0 2")
            self.assertTrue(wait_until(lambda: c.hset("users", key, b"3").status == 200, 20, 0.2))
            self.assertEqual(pyval(c.hget("users", key).values[0]), b"3")
        vals = [v for p, _, k, v, _ in read_topic(m.bootstrap, "users", parts) if p == 0]
        self.assertIn(vals, ([b"1", b"3"],) if surely_not else ([b"1", b"3"], [b"1", b"2", b"3"]))
        self.assertEqual(len([v for v in vals if v == b"3"]), 1)


if __name__ == "__main__":
    unittest.main()
