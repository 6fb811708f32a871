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
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest

from kvstest import (BUILD_DIR, SANITIZED, Client, encode, pb, pyval, req_hget, req_hgetall,
                     req_hmdel, req_hmget, req_hmset, req_hset, resp_exchange)
from google.protobuf.internal import encoder
from routertest import edit_config, partition_of, procs_for_config
import kafkatest
from kafkatest import (KCAT, info, info_pairs, kafka_parts, kcat_produce, pos_entries, pos_token,
                       read_topic, wait_until, watermarks)
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


def read_past_the_end(key):
    """An Hget of key in table users whose position (offset 9 of users'
    partition 1) is past that partition's end."""
    return with_options(req_hget("users", key), pos_token([("users", 1, 9)]))


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
    def test_frames_behind_a_waiting_read_are_answered_before_a_frame_error(self):
        # A worker holds the frames pipelined behind a read that waits for a
        # position; a bad frame header behind them is met only when delivery
        # reaches it: the read, then the Ping, then the error, then EOF.
        from kvstest import COMPRESSED, frame, req_ping
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        # applying takes 8 s per record: the write's answer is 503 with its
        # position (Kafka has it), which the worker reaches only later
        r = self.router(m, [(topic, "users", "raw", parts)], shards=1, timeout="1s",
                        env={"KVS_TEST_INGEST_DELAY_MS": "8000"})
        with r.client() as c:
            resp = c.hset("users", b"k", b"v")
            self.assertEqual(resp.status, 503, resp.message)
            ahead = resp.position
            self.assertTrue(ahead)
        for bad, status in ((struct.pack(">I", 1 << 30), 413),
                            (frame(req_ping().SerializeToString(), COMPRESSED), 400)):
            with Client(r.socket_path(0)) as w:
                w.sock.settimeout(10)
                t = time.monotonic()
                w.send_raw(encode(with_options(req_hget("users", b"k"), ahead)) +
                           encode(req_ping()) + bad)
                resp = w.recv()
                self.assertEqual(resp.status, 503, resp.message)
                self.assertIn("behind by 1 records", resp.message)
                self.assertGreater(time.monotonic() - t, 0.3, "the read did not wait")
                self.assertEqual(w.recv().message, "PONG")
                self.assertEqual(w.recv().status, status)
                self.assertTrue(w.at_eof())
        with Client(r.socket_path(0)) as w:  # the worker serves on
            self.assertEqual(w.call(req_ping()).message, "PONG")

    def test_catch_up_gate_until_within_max_lag(self):
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        keys = keys_in_partition(0, parts, 80)
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
        # Info said so too: not serving while refused (Info comes a moment
        # after the read: only refusals well above max_lag are compared),
        # serving once reads were served
        for msg, st in refused:
            if int(msg.split("catching up: lag ")[1].split()[0]) >= 15:
                self.assertEqual(st["serving"], 0, (msg, st))
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
        # at most
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
            # a position past the end of the topic: 503 as soon as the
            # brokers confirmed where the partition ends (nothing says that
            # record will ever come), never stale data
            t0 = time.monotonic()
            resp = c.call(with_options(req_hget("users", key), pos_token([(topic, 1, 5000)])))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("position ahead of the topic: the read needs offset 5000 of topic "
                          "users partition 1, but the partition's end offset (the next record's) is 12",
                          resp.message)
            self.assertLess(time.monotonic() - t0, 1.0)
            # whole-table reads wait for every partition of the shard
            resp = c.call(with_options(req_hgetall("users"), pos_token([(topic, 1, 11)])))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual({p.key: pyval(p.value) for p in resp.pairs}, {key: b"v11"})
            # Hlen (Redis HLEN, EXISTS) too: it counted whatever was applied
            hlen = pb.CommandRequest()
            hlen.hlen.table = "users"
            resp = c.call(with_options(hlen, pos_token([(topic, 1, 5000)])))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("position ahead of the topic", resp.message)
            resp = c.call(with_options(hlen, pos_token([(topic, 1, 11)])))
            self.assertEqual((resp.status, resp.values[0].integer_value), (200, 1), resp.message)

    def test_a_position_not_heard_of_yet_is_checked_with_the_brokers(self):
        """A record another writer just appended lies past the end a worker
        has heard of until its next fetch returns: the mock broker holds an
        empty fetch for fetch.wait.max.ms (5 s here), a real one until data
        comes, which can still be after the writer's acknowledgement
        reached a reader. A read at that record's position must ask the
        brokers where the partition ends, then wait for ingestion, and see
        the record, not be refused as "ahead". A made-up position is still
        refused once the brokers answered, a round trip later: the question
        goes over the producer's connection, not behind the parked fetch
        (5 s here) on the consumer's, and never waits the whole read
        timeout (8 s here)."""
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        key = keys_in_partition(1, parts, 1)[0]
        kcat_produce(m.bootstrap, topic, [(key, b"v0")])
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2, timeout="10s",
                        properties={"fetch.wait.max.ms": "5000"})
        self.wait_applied(r, 1, topic, 1, 1)
        time.sleep(0.3)  # the worker's next fetch is parked at the broker
        kcat_produce(m.bootstrap, topic, [(key, b"v1")])  # offset 1 of partition 1
        with r.client() as c:
            t0 = time.monotonic()
            resp = c.call(with_options(req_hget("users", key), pos_token([(topic, 1, 1)])))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), b"v1")
            self.assertLess(time.monotonic() - t0, 7.0)
            t0 = time.monotonic()
            resp = c.call(with_options(req_hget("users", key), pos_token([(topic, 1, 9)])))
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("position ahead of the topic: the read needs offset 9 of topic users "
                          "partition 1, but the partition's end offset (the next record's) is 2",
                          resp.message)
            self.assertLess(time.monotonic() - t0, 1.5)

    def test_an_unanswered_end_probe_does_not_refuse_reads_questions(self):
        """The periodic end question about idle partitions (once per
        topic.metadata.refresh.interval.ms, for end_offset_age_ms) is the
        worker's own: when the brokers leave it unanswered, a read past
        the end heard of still asks its own question, and is served once
        the record is ingested, instead of being refused at once for the 5 s
        after an unanswered read question. Here the first question, the
        probe, goes unanswered (test hook); then a record is appended while
        the worker's fetch is parked and read at its position."""
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        key = keys_in_partition(1, parts, 1)[0]
        kcat_produce(m.bootstrap, topic, [(key, b"v0")])
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2, timeout="10s",
                        properties={"fetch.wait.max.ms": "5000",
                                    "topic.metadata.refresh.interval.ms": "2000"},
                        env={"KVS_TEST_ASKS_UNANSWERED": "1"})
        self.wait_applied(r, 1, topic, 1, 1)
        self.assertTrue(wait_until(lambda: "end question 1 goes unanswered" in r.stderr(), 10),
                        "the probe was never asked")
        time.sleep(0.3)  # the worker's next fetch is parked at the broker
        kcat_produce(m.bootstrap, topic, [(key, b"v1")])  # offset 1 of partition 1
        with r.client() as c:
            t0 = time.monotonic()
            resp = c.call(with_options(req_hget("users", key), pos_token([(topic, 1, 1)])))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), b"v1")
            self.assertLess(time.monotonic() - t0, 7.0)

    def one_record_router(self, timeout):
        """A mock whose brokers can be taken down, topic users (2
        partitions) holding one record, at offset 0 of partition 1, and a
        router (router.timeout `timeout`) that applied it; returns the
        mock, the router and the record's key."""
        m = self.mock({"users": 2}, control=True)
        key = keys_in_partition(1, 2, 1)[0]
        kcat_produce(m.bootstrap, "users", [(key, b"v0")])
        r = self.router(m, [("users", "users", "raw", 2)], shards=2, timeout=timeout)
        self.wait_applied(r, 1, "users", 1, 1)
        return m, r, key

    def test_a_position_past_the_end_with_the_brokers_down_waits_one_bounded_question(self):
        """With every broker down, the question a read past the end asks
        (where does the partition end?) gives up after its own timeout
        (about 2 s here), not when the brokers come back: the read is
        refused then, not at the end of its whole wait (8 s here). For 5 s
        after a question went unanswered none is asked: the next such read
        is refused at once (each would otherwise hold its connection, and
        through a router the shard's link, for another 2 s)."""
        m, r, key = self.one_record_router("10s")
        m.ctl("broker-down all")
        with r.client() as c:
            for bound in (5.0, 1.0):
                t0 = time.monotonic()
                resp = c.call(read_past_the_end(key))
                self.assertEqual(resp.status, 503, resp.message)
                self.assertIn("position ahead of the topic", resp.message)
                self.assertLess(time.monotonic() - t0, bound)

    def test_a_reload_of_router_timeout_bounds_the_next_end_question(self):
        """The end question's bound follows router.timeout (4/5 of it, at
        most 2 s) through a reload: started at 1 s, its question gave up
        after 800 ms and every read past the end after a reload to 10 s
        was still refused then, though it could wait 8 s for the brokers.
        Now the question after the reload waits its 2 s."""
        m, r, key = self.one_record_router("1s")
        edit_config(r, "timeout: 1s", "timeout: 10s")
        r.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: r.stderr().count("(router.timeout)") == 4, 20),
                        r.stderr()[-3000:])
        m.ctl("broker-down all")
        with r.client(timeout=30) as c:
            t0 = time.monotonic()
            resp = c.call(read_past_the_end(key))
            took = time.monotonic() - t0
        self.assertEqual(resp.status, 503, resp.message)
        self.assertIn("position ahead of the topic", resp.message)
        self.assertGreater(took, 1.5, "the question kept the 800 ms bound of the start")
        self.assertLess(took, 7.0)

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

    def test_a_made_up_token_costs_memory_by_the_topic_not_by_the_token(self):
        """A min_position of about 4 MiB (a million entries of the table's
        topic, on partitions the topic does not have) makes no process
        spend memory in proportion to its entries: the router keeps, and
        the worker and the router's local reads look at, only the
        partitions the topic has (the read itself takes about 11 MB more
        at its peak, 18 with ASan; before, about 75 in the router or the
        worker: 32 bytes per entry, and a reserve of 289). Whether the read
        comes with positions of the connection's own writes or not, it is
        served as before."""
        topic, parts = "users", 4
        m = self.mock({topic: parts})
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2)
        n = 1000000
        body = b"".join(encoder._VarintBytes(p) + b"\x00" for p in range(n))
        tok = (b"\x01" + encoder._VarintBytes(len(topic)) + topic.encode()
               + encoder._VarintBytes(n) + body)
        self.assertGreater(len(tok), 3 << 20)
        procs = list(procs_for_config(r.config))

        def read_costs(addr, before=None):
            base = {}
            for pid in procs:  # peak RSS from now on (proc(5), clear_refs)
                with open("/proc/%d/clear_refs" % pid, "w") as f:
                    f.write("5")
                base[pid] = rss_mb(pid, "VmRSS")
            with Client(addr, timeout=30) as c:
                if before is not None:
                    self.assertEqual(c.call(before).status, 200)
                got = c.call(with_options(req_hmget("users", [b"k"]), tok))
            self.assertEqual(got.status, 200, got.message)
            self.assertEqual([pyval(v) for v in got.values], [b"v"])
            return {pid: rss_mb(pid, "VmHWM") - base[pid] for pid in procs}

        with Client(r.addr) as c:
            self.assertEqual(c.call(req_hset("users", b"k", b"v")).status, 200)
        for addr, before in ((r.addr, None), (r.addr, req_hset("users", b"k", b"v")),
                             (r.socket_path(partition_of(b"k", parts) % 2), None)):
            peaks = read_costs(addr, before)
            self.assertLess(max(peaks.values()), 32, (addr, before is not None, peaks))


def _send_quietly(sock, data):
    """sendall that ends quietly when the peer stops reading and the socket
    is closed under it."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def rss_mb(pid, what):
    """`what` (VmRSS, VmHWM) of `pid` in MiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(what + ":"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no %s for pid %d" % (what, pid))


def value_bytes(x):
    """The payload format: value makes of a Python value: an encoded kvs.Value."""
    v = pb.Value()
    if isinstance(x, bool):
        v.bool_value = x
    elif isinstance(x, int):
        v.integer_value = x
    elif isinstance(x, float):
        v.float_value = x
    elif isinstance(x, str):
        v.string_value = x
    else:
        v.binary_value = x
    return v.SerializeToString()


@unittest.skipIf(KCAT is None or not HAVE_CK, "kcat and python3-confluent-kafka are needed")
class LogFirstTest(FreshnessFixtures, unittest.TestCase):
    def assert_position(self, resp, topic, records):
        """resp.position names exactly the (partition, offset) pairs given."""
        self.assertEqual(pos_entries(resp.position), sorted((topic, p, o) for p, o in records),
                         resp)

    def test_a_split_write_whose_answer_outgrows_the_frame_says_it_was_applied(self):
        # A part of a split write to a bound table prices the previous
        # values stored when it is checked; earlier writes of the same keys
        # still on their way through Kafka (ingestion slowed here) replace
        # them with larger ones by the time it applies. The merged answer
        # then does not fit limits.max_frame: the router said 413 "ask for
        # fewer keys", which says nothing was written, though every key was.
        parts = 4
        m = self.mock({"vl": parts})
        r = self.router(m, [("vl", "vals", "value", parts)], shards=2, max_frame=64 * 1024,
                        env={"KVS_TEST_INGEST_DELAY_MS": "150"})
        k0 = next(k for k in (b"a%d" % i for i in range(100)) if partition_of(k, parts) % 2 == 0)
        k1 = next(k for k in (b"b%d" % i for i in range(100)) if partition_of(k, parts) % 2 == 1)
        big = b"x" * (40 * 1024)
        with r.client(timeout=30) as c:
            reqs = [req_hset("vals", k0, big), req_hset("vals", k1, big),
                    req_hmset("vals", [(k0, 1), (k1, 2)])]
            for q in reqs:
                c.send(q)
            answers = [c.recv() for _ in reqs]
            self.assertEqual([a.status for a in answers[:2]], [200, 200], answers[:2])
            resp = answers[2]
            self.assertEqual(resp.status, 500, resp.message)
            self.assertIn("Hmset was applied on every shard (see its position)", resp.message)
            self.assertFalse(resp.outcome_unknown)
            self.assertEqual(len(pos_entries(resp.position)), 2, resp)
            self.assertEqual([pyval(v) for v in c.call(req_hmget("vals", [k0, k1])).values],
                             [1, 2])

    def test_a_reload_of_router_timeout_says_the_producer_keeps_its_timeout(self):
        # librdkafka takes message.timeout.ms only when a producer is
        # created: a reload of router.timeout changes a worker's wait, not
        # how long its producer tries. Each worker says so, with both
        # values (2 s: wait 1,600 ms, producer 1,400; 20 s: 14,000), and
        # only when the timeout changed.
        m = self.mock({"vl": 2})
        r = self.router(m, [("vl", "vals", "value", 2)], shards=2, timeout="2s")
        warned = "keeps message.timeout.ms 1400 ms (not 14000) until this worker restarts"
        edit_config(r, "log: {level: info}", "log: {level: info, slow_threshold: 5ms}")
        r.proc.send_signal(signal.SIGHUP)
        # (the master, the router process and the two workers)
        self.assertTrue(wait_until(lambda: r.stderr().count("(log.slow_threshold)") == 4, 20),
                        r.stderr()[-3000:])
        self.assertNotIn("keeps message.timeout.ms", r.stderr())
        edit_config(r, "timeout: 2s", "timeout: 20s")
        r.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: r.stderr().count("(router.timeout)") == 4, 20),
                        r.stderr()[-3000:])
        self.assertTrue(wait_until(lambda: r.stderr().count(warned) == 2, 10), r.stderr()[-3000:])
        for w in (0, 1):
            self.assertRegex(r.stderr(), r"node\[%d\] WARN +reload: router.timeout changed, "
                                         r"but the Kafka producer of log-first writes" % w)
        # Back to 2 s: what the producers have again, nothing to say (the
        # value before the reload, 14,000 ms, was taken for the producers').
        edit_config(r, "timeout: 20s", "timeout: 2s")
        r.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: r.stderr().count("(router.timeout)") == 8, 20),
                        r.stderr()[-3000:])
        time.sleep(0.5)  # (a worker writes the warning just after its line)
        self.assertEqual(r.stderr().count("keeps message.timeout.ms"), 2, r.stderr()[-3000:])
        with r.client() as c:  # the node serves on
            self.assertEqual(c.call(req_hset("vals", b"k", b"1")).status, 200)

    def test_redis_writes_count_fields_whatever_the_values_they_replace(self):
        # HSET and HDEL through the Redis door ask for value_lengths: their
        # reply is a count, so neither the previous values stored when a
        # write is checked nor those a write of the same keys still on its
        # way through Kafka leaves behind can make it fail. Before, five
        # 14 KiB values stored (the frame 64 KiB) made the Hmset or Hmdel
        # of all five 413 or 207, and two 40 KiB values in flight made the
        # HSET or HDEL of both 500 "was applied".
        import redis
        from routertest import free_port
        parts = 4
        m = self.mock({"vl": parts, "vl-slow": parts})
        # The previous values stored when a write is checked: ingestion at
        # full speed (each write below is answered once applied).
        rport = free_port()
        self.router(m, [("vl", "vals", "value", parts)], shards=2, max_frame=64 * 1024,
                    router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        c = redis.Redis(host="127.0.0.1", port=rport, socket_timeout=30)
        self.addCleanup(c.close)
        fields = [b"f%d" % i for i in range(5)]
        big = b"v" * (14 * 1024)
        for f in fields:  # each answered once applied
            self.assertEqual(c.hset("vals", f, big), 1)
        self.assertEqual(c.hset("vals", mapping={f: b"s" for f in fields + [b"new"]}), 1)
        self.assertEqual(c.hmget("vals", fields + [b"new"]), [b"s"] * 6)
        for f in fields:
            c.hset("vals", f, big)
        self.assertEqual(c.hdel("vals", *(fields + [b"none"])), 5)
        self.assertEqual(c.hmget("vals", fields), [None] * 5)

        # The values writes still on their way through Kafka leave behind:
        # ingestion slowed down (one record per 150 ms) so that the two
        # writes are not applied yet when the third is checked. A router of
        # its own, on a topic of its own: it does not ingest the records
        # above at that pace (nor share their consumer group).
        rport = free_port()
        self.router(m, [("vl-slow", "vals", "value", parts)], shards=2, max_frame=64 * 1024,
                    env={"KVS_TEST_INGEST_DELAY_MS": "150"}, group_id="kvs-slow",
                    router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        c = redis.Redis(host="127.0.0.1", port=rport, socket_timeout=30)
        self.addCleanup(c.close)
        k0 = next(k for k in (b"a%d" % i for i in range(100)) if partition_of(k, parts) % 2 == 0)
        k1 = next(k for k in (b"b%d" % i for i in range(100)) if partition_of(k, parts) % 2 == 1)
        huge = b"x" * (40 * 1024)
        for last, want in ((("HSET", "vals", k0, b"1", k1, b"2"), 0),
                           (("HDEL", "vals", k0, k1), 2)):
            with self.subTest(last[0]):
                p = c.pipeline(transaction=False)
                p.hset("vals", k0, huge)
                p.hset("vals", k1, huge)
                p.execute_command(*last)
                out = p.execute(raise_on_error=False)
                self.assertEqual(out[2], want, out)
                self.assertEqual(c.hmget("vals", [k0, k1]),
                                 [b"1", b"2"] if last[0] == "HSET" else [None, None])

    def test_redis_writes_store_bulk_strings_as_the_format_carries_them(self):
        # A bulk string is bytes. On a table bound with format: raw (the
        # default) it is produced and stored as those bytes whether or not
        # they are UTF-8; before, text was sent as string_value and refused
        # with "send a binary_value", which no Redis client can do. With
        # format: string, bytes that are not UTF-8 are refused by the
        # router, nothing produced, naming the value and the format.
        import redis
        from routertest import free_port
        parts = 2
        m = self.mock({"rw": parts, "st": parts})
        rport = free_port()
        r = self.router(m, [("rw", "raws", "raw", parts), ("st", "strs", "string", parts)],
                        shards=2, router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        c = redis.Redis(host="127.0.0.1", port=rport, socket_timeout=30)
        self.addCleanup(c.close)
        self.assertEqual(c.hset("raws", "t", "hello"), 1)
        self.assertEqual(c.hset("raws", mapping={"t": "again", "b": b"\xffbin"}), 1)
        self.assertEqual(c.hmget("raws", ["t", "b"]), [b"again", b"\xffbin"])
        with r.client() as pc:  # stored as the records' bytes: binary_value
            self.assertEqual(pyval(pc.hget("raws", b"t").values[0]), b"again")
        self.assertEqual(c.hset("strs", "s", "text"), 1)
        with self.assertRaisesRegex(redis.ResponseError,
                                    r"value 2 is not UTF-8 text, but table 'strs' is bound to "
                                    r"topic st with format: string, which carries only text"):
            c.hset("strs", mapping={"s": "new", "x": b"\xff"})
        self.assertEqual(c.hgetall("strs"), {b"s": b"text"})
        recs = [(k, v) for _, _, k, v, _ in read_topic(m.bootstrap, "rw", parts)]
        self.assertEqual(sorted(recs), sorted([(b"t", b"hello"), (b"t", b"again"),
                                               (b"b", b"\xffbin")]))
        self.assertEqual([(k, v) for _, _, k, v, _ in read_topic(m.bootstrap, "st", parts)],
                         [(b"s", b"text")])

    def test_redis_writes_answer_lengths_of_values_past_the_frame(self):
        # A Redis-door write asks for value_lengths: priced at one length
        # per previous value, so the length is all it may keep and answer.
        # Before, the worker kept and answered each value whole, and the
        # HSET of two 40 KiB values (the frame 64 KiB) was applied and then
        # answered 500. A record whose payload protobuf-c would read as a
        # bool of another wire type (a 40 KiB length-delimited field 5:
        # protobuf reads an unknown field) is not stored at all.
        import redis
        from routertest import free_port
        parts = 4
        m = self.mock({"vl": parts})
        rport = free_port()
        r = self.router(m, [("vl", "vals", "value", parts)], shards=1, max_frame=64 * 1024,
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        c = redis.Redis(host="127.0.0.1", port=rport, socket_timeout=30)
        self.addCleanup(c.close)
        body = b"t" * (40 * 1024)
        odd = bytes([5 << 3 | 2]) + encoder._VarintBytes(len(body)) + body
        big = pb.Value(string_value=body.decode()).SerializeToString()
        kafkatest.produce(m.bootstrap, "vl", [(b"k0", odd), (b"k1", big), (b"k0", big)])
        self.assertTrue(wait_until(lambda: [c.hstrlen("vals", k) for k in (b"k0", b"k1")]
                                   == [len(body)] * 2, 30), "the records were never applied")
        kafkatest.produce(m.bootstrap, "vl", [(b"k2", odd), (b"k3", big)])
        self.assertTrue(wait_until(lambda: c.hstrlen("vals", b"k3") == len(body), 30))
        self.assertIsNone(c.hget("vals", b"k2"))  # the odd record was skipped
        self.assertEqual(c.hset("vals", mapping={b"k0": b"a", b"k1": b"b", b"k2": b"c"}), 1)
        self.assertEqual(c.hmget("vals", [b"k0", b"k1", b"k2"]), [b"a", b"b", b"c"])
        kafkatest.produce(m.bootstrap, "vl", [(b"k0", big), (b"k1", big)])
        self.assertTrue(wait_until(lambda: [c.hstrlen("vals", k) for k in (b"k0", b"k1")]
                                   == [len(body)] * 2, 30), "the records were never applied")
        self.assertEqual(c.hdel("vals", b"k0", b"k1", b"k2"), 3)
        with r.client() as pbc:  # a protobuf client asking for lengths
            kafkatest.produce(m.bootstrap, "vl", [(b"k0", big)])
            self.assertTrue(wait_until(lambda: c.hstrlen("vals", b"k0") == len(body), 30))
            q = req_hset("vals", b"k0", b"x")
            q.value_lengths = True
            resp = pbc.call(q)
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(resp.values[0].integer_value, len(body), resp.values[0])

    @unittest.skipIf(SANITIZED, "ASan's quarantine keeps freed memory by design")
    def test_redis_writes_keep_lengths_not_the_values_they_replace(self):
        # A write asking for value_lengths (every Redis-door HSET and HDEL)
        # is not priced by its previous values, so the worker must not keep
        # them either while the write waits for its records: only their
        # lengths. Before, an HSET of 32 small fields over 32 stored 900 KiB
        # values (under the broker's message.max.bytes) held 29 MiB in the
        # worker until answered. Two fields a partition: the mock broker
        # keeps only ~5 MiB of each partition's log.
        import redis
        from routertest import free_port
        from test_bounds import MIB, rss_anon
        parts, delay_ms = 16, 30
        m = self.mock({"vl": parts})
        rport = free_port()
        r = self.router(m, [("vl", "vals", "value", parts)], shards=1, max_frame=4 * MIB,
                        timeout="10s", env={"KVS_TEST_INGEST_DELAY_MS": str(delay_ms)},
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        c = redis.Redis(host="127.0.0.1", port=rport, socket_timeout=30)
        self.addCleanup(c.close)
        fields = [f for p in range(parts) for f in keys_in_partition(p, parts, 2, "f")]
        p = c.pipeline(transaction=False)
        for i, f in enumerate(fields):
            p.hset("vals", f, bytes([65 + i % 26]) * (900 << 10))
        self.assertEqual(p.execute(), [1] * len(fields))
        wpid = r.worker_pid(0)
        base = peak = rss_anon(wpid)
        done = threading.Event()
        out = []

        def write():
            out.append(c.hset("vals", mapping={f: b"s" for f in fields}))
            done.set()
        t = threading.Thread(target=write, daemon=True)
        t.start()
        while not done.wait(0.01):  # the records apply one every 30 ms
            peak = max(peak, rss_anon(wpid))
        t.join()
        self.assertEqual(out, [0])
        self.assertEqual(c.hmget("vals", fields[:3]), [b"s"] * 3)
        self.assertLess(peak - base, 12 * MIB, "the worker grew from %d to %d MiB"
                        % (base // MIB, peak // MIB))

    def test_writes_go_through_the_topic(self):
        parts = 4
        m = self.mock({"st": parts, "rw": parts, "vl": parts})
        r = self.router(m, [("st", "strs", "string", parts), ("rw", "raws", "raw", parts),
                            ("vl", "vals", "value", parts)], shards=2)
        ps = partition_of(b"k1", parts)
        with r.client() as c:
            resp = c.hset("strs", b"k1", "one")
            self.assertEqual((resp.status, pyval(resp.values[0])), (200, None), resp.message)
            self.assert_position(resp, "st", [(ps, 0)])
            resp = c.hset("strs", b"k1", "two \x00 zwei")
            self.assertEqual(pyval(resp.values[0]), "one")
            self.assert_position(resp, "st", [(ps, 1)])
            for bad, kind in ((b"bin", "binary_value"), (5, "integer_value"), (True, "bool_value")):
                resp = c.hset("strs", b"k1", bad)
                self.assertEqual(resp.status, 400, resp.message)
                self.assertIn("Hset.pair.value is %s" % kind, resp.message)
                self.assertIn("format: string, which carries only text values", resp.message)
                self.assertEqual(resp.position, b"")
            resp = c.hdel("strs", b"k1")
            self.assertEqual(pyval(resp.values[0]), "two \x00 zwei")
            self.assert_position(resp, "st", [(ps, 2)])
            resp = c.hdel("strs", b"k1")  # deleting what is not there is a tombstone too
            self.assertEqual((resp.status, pyval(resp.values[0])), (200, None))
            self.assert_position(resp, "st", [(ps, 3)])
            self.assertEqual(c.hget("strs", b"k1").status, 404)

            resp = c.hset("raws", b"r1", b"\x00\xff")
            self.assertEqual(resp.status, 200, resp.message)
            resp = c.hset("raws", b"r1", "text")
            self.assertEqual(resp.status, 400)
            self.assertIn("format: raw, which carries only binary values", resp.message)
            self.assertEqual(pyval(c.hget("raws", b"r1").values[0]), b"\x00\xff")

            vals = [(b"v1", 42), (b"v1", -1.5), (b"v2", True), (b"v3", "txt"), (b"v4", b"b")]
            prev = {}
            for k, v in vals:
                resp = c.hset("vals", k, v)
                self.assertEqual(resp.status, 200, resp.message)
                self.assertEqual(pyval(resp.values[0]), prev.get(k))
                prev[k] = v
            # multi-key writes on one shard: one record per key, in order
            same = [k for k in (b"m%d" % i for i in range(40))
                    if partition_of(k, parts) % 2 == 0][:6]
            resp = c.call(req_hmset("vals", [(k, i) for i, k in enumerate(same)]))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual([pyval(v) for v in resp.values], [None] * 6)
            self.assertEqual(len(pos_entries(resp.position)),
                             len({partition_of(k, parts) for k in same}))
            resp = c.call(req_hmdel("vals", same[:3] + [same[0]]))
            self.assertEqual([pyval(v) for v in resp.values], [0, 1, 2, None], resp.message)

        recs = read_topic(m.bootstrap, "st", parts)
        self.assertEqual([(p, o, k, v) for p, o, k, v, _ in recs],
                         [(ps, 0, b"k1", b"one"), (ps, 1, b"k1", "two \x00 zwei".encode()),
                          (ps, 2, b"k1", None), (ps, 3, b"k1", None)])
        for rec in recs:
            self.assertEqual(len(rec[4].get("kvs.writer", b"")), 16, rec)
        self.assertEqual([(p, k, v) for p, o, k, v, _ in read_topic(m.bootstrap, "rw", parts)],
                         [(partition_of(b"r1", parts), b"r1", b"\x00\xff")])
        got = [(p, k, v) for p, o, k, v, _ in read_topic(m.bootstrap, "vl", parts)]
        want = [(partition_of(k, parts), k, value_bytes(v)) for k, v in vals]
        want += [(partition_of(k, parts), k, value_bytes(i)) for i, k in enumerate(same)]
        want += [(partition_of(k, parts), k, None) for k in same[:3] + [same[0]]]
        self.assertEqual(sorted(got, key=lambda x: x[0]), sorted(want, key=lambda x: x[0]))
        for p in range(parts):  # in each partition, in the order they were written
            self.assertEqual([x for x in got if x[0] == p], [x for x in want if x[0] == p])
        # every record applied exactly once, by ingestion
        st = kafka_parts(info(r), "vl")
        self.assertEqual(sum(s["applied"] for s in st.values()), len(want))
        self.assertEqual(sum(s["skipped"] for s in st.values()), 0)

    def test_info_end_offset_is_never_behind_what_was_applied(self):
        # Right after a write's answer, Info showed the consumer's cached
        # high watermark (end_offset 1 under next_offset 3, lag clamped
        # to 0, end_offset_age_ms 1) in most tries: Info and /metrics now
        # show the end the worker knows, its own acknowledged records
        # included, the end its catch-up gate uses.
        parts = 2
        m = self.mock({"u": parts})
        r = self.router(m, [("u", "u", "raw", parts)], shards=1)
        with r.client() as c:
            for i in range(20):
                resp = c.hset("u", b"k", b"v%d" % i)
                self.assertEqual(resp.status, 200, resp.message)
                (_, p, off), = pos_entries(resp.position)
                st = kafka_parts(info(r), "u")[p]
                self.assertGreaterEqual(st["next_offset"], off + 1, st)
                self.assertGreaterEqual(st["end_offset"], st["next_offset"], st)
                self.assertEqual(st["lag"], st["end_offset"] - st["next_offset"], st)

    def test_write_to_another_shards_key_on_a_worker_is_refused(self):
        parts = 4
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "raw", parts)], shards=2)
        key = keys_in_partition(1, parts, 1)[0]  # shard 1
        with r.worker_client(0) as c:
            resp = c.hset("users", key, b"x")
        self.assertEqual(resp.status, 400, resp.message)
        self.assertIn("owned by shard 1, not this shard (0): send writes through kvs-router",
                      resp.message)
        self.assertEqual(watermarks(m.bootstrap, "users", parts)[1], (0, 0))

    def test_read_modify_writes_on_bound_tables_are_refused(self):
        """Hincr and Hset if_absent (Redis HINCRBY, HSETNX) would read and
        write in two steps through the topic: refused, nothing produced;
        Hlen is a read like any other. The Redis front door says the same."""
        import redis
        from routertest import free_port
        parts = 4
        m = self.mock({"users": parts})
        rport = free_port()
        r = self.router(m, [("users", "users", "value", parts)], shards=2,
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        with r.client() as c:
            self.assertEqual(c.hset("users", b"n", 5).status, 200)
            req = pb.CommandRequest()
            req.hincr.table, req.hincr.key, req.hincr.by_int = "users", b"n", 1
            resp = c.call(req)
            self.assertEqual(resp.status, 400, resp.message)
            self.assertIn("Hincr (Redis HINCRBY/HINCRBYFLOAT) is not supported", resp.message)
            req = pb.CommandRequest()
            req.hset.table, req.hset.pair.key = "users", b"new"
            req.hset.pair.value.string_value = "x"
            req.hset.if_absent = True
            resp = c.call(req)
            self.assertEqual(resp.status, 400, resp.message)
            self.assertIn("if_absent", resp.message)
            req = pb.CommandRequest()
            req.hlen.table = "users"
            resp = c.call(req)
            self.assertEqual((resp.status, resp.values[0].integer_value), (200, 1), resp.message)
        rc = redis.Redis(host="127.0.0.1", port=rport, socket_timeout=10)
        self.addCleanup(rc.close)
        with self.assertRaisesRegex(redis.ResponseError, "not supported on table"):
            rc.hincrby("users", "n", 1)
        self.assertEqual(rc.hset("users", "r", "via-redis"), 1)  # produced, then applied
        self.assertEqual(rc.hget("users", "r"), b"via-redis")
        self.assertEqual(rc.hlen("users"), 2)
        recs = read_topic(m.bootstrap, "users", parts)
        self.assertEqual(sorted(k for _, _, k, _, _ in recs), [b"n", b"r"])

    def test_unbound_tables_write_directly(self):
        parts = 4
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "raw", parts)], shards=2)
        with r.client() as c:
            resp = c.hset("plain", b"k", "v")
            self.assertEqual((resp.status, resp.position), (200, b""))
            self.assertEqual(pyval(c.hset("plain", b"k", "w").values[0]), "v")
        self.assertEqual(sum(hi for lo, hi in watermarks(m.bootstrap, "users", parts).values()), 0)

    def test_a_record_over_message_max_bytes_is_refused_before_anything_is_produced(self):
        # librdkafka refuses a record larger than the producer's
        # message.max.bytes when it is handed over. A worker checks every
        # record of a write first: an Hmset with one such value is refused
        # whole (413), rather than producing the keys before it and
        # answering 503 "may or may not". A record takes its key, value,
        # kvs.writer header and 36 bytes of framing.
        parts, most = 2, 4000
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "raw", parts)], shards=1,
                        properties={"message.max.bytes": str(most)})
        a, b = keys_in_partition(0, parts, 2, "a")
        with r.client() as c:
            resp = c.hset("users", a, b"x" * (most - 64 - len(a)))  # fits exactly
            self.assertEqual(resp.status, 200, resp.message)
            for q in (req_hset("users", b, b"y" * (most - 63 - len(b))),
                      req_hmset("users", [(b, b"small"), (a, b"z" * 5000)])):
                resp = c.call(q)
                self.assertEqual(resp.status, 413, resp.message)
                self.assertIn("message.max.bytes (%d)" % most, resp.message)
                self.assertIn("nothing was written", resp.message)
                self.assertFalse(resp.outcome_unknown)
            self.assertEqual(c.hget("users", b).status, 404)
        self.assertEqual([k for _, _, k, _, _ in read_topic(m.bootstrap, "users", parts)], [a])

    def test_a_split_write_with_one_bad_record_writes_none_of_its_keys(self):
        # Each worker checked only its own part of a split Hmset: with one
        # value too large for Kafka, or of a kind the format cannot carry,
        # the other shard wrote its keys and the answer was 207. The router
        # checks every key before it sends any part: 413 or 400, naming
        # the key's place in the request, nothing produced. It reads
        # message.max.bytes as librdkafka does (here in hex).
        import redis
        from routertest import free_port
        parts, most = 2, 4000
        m = self.mock({"rw": parts, "st": parts})
        rport = free_port()
        r = self.router(m, [("rw", "raws", "raw", parts), ("st", "strs", "string", parts)],
                        shards=2, properties={"message.max.bytes": hex(most)},
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        (a,) = keys_in_partition(0, parts, 1, "a")
        (b,) = keys_in_partition(1, parts, 1, "b")
        with r.client() as c:
            for pairs, i in (([(a, b"small"), (b, b"x" * (most - 63 - len(b)))], 1),
                             ([(b, b"x" * 5000), (a, b"small")], 0)):
                resp = c.call(req_hmset("raws", pairs))
                self.assertEqual(resp.status, 413, resp.message)
                self.assertIn("Hmset.pairs[%d]: value is too large for Kafka" % i, resp.message)
                self.assertIn("message.max.bytes (%d)" % most, resp.message)
                self.assertFalse(resp.outcome_unknown)
            resp = c.call(req_hmset("raws", [(a, b"y" * (most - 64 - len(a))), (b, b"small")]))
            self.assertEqual(resp.status, 200, resp.message)  # fits exactly
            resp = c.call(req_hmset("strs", [(a, "text"), (b, b"\x00binary")]))
            self.assertEqual(resp.status, 400, resp.message)
            self.assertIn("Hmset.pairs[1].value is binary_value, but table \"strs\" is bound to "
                          "topic st with format: string", resp.message)
            self.assertEqual(c.hget("strs", a).status, 404)
        rc = redis.Redis(host="127.0.0.1", port=rport, socket_timeout=30)
        self.addCleanup(rc.close)
        with self.assertRaisesRegex(redis.ResponseError, r"^value 2: value is too large for "
                                    r"Kafka: .*message.max.bytes \(4000\)"):
            rc.hset("raws", mapping={a: b"small", b: b"x" * 5000})
        self.assertEqual(sorted(k for _, _, k, _, _ in read_topic(m.bootstrap, "rw", parts)),
                         sorted([a, b]))
        self.assertEqual(read_topic(m.bootstrap, "st", parts), [])

    def test_a_write_whose_previous_value_no_answer_can_hold_writes_nothing(self):
        # A value stored under a larger limits.max_frame: an Hset or Hdel
        # of its key would answer it as the previous value. A direct
        # write is refused (413, the size to raise max_frame to) before
        # it writes; one through the topic was produced and applied, only
        # its answer failing. It is now refused before anything is produced.
        import re
        parts = 2
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "raw", parts)], shards=1, max_frame="64KiB")
        (k,) = keys_in_partition(0, parts, 1, "big")
        with r.client() as c:
            self.assertEqual(c.hset("users", k, b"v" * 20000).status, 200)
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        with open(r.config) as f:
            text = re.sub(r"max_frame: [0-9A-Za-z]+", "max_frame: 8KiB", f.read())
        with open(r.config, "w") as f:
            f.write(text)
        r.start()
        with r.client() as c:
            for req in (req_hset("users", k, b"small"), pb.CommandRequest(
                    hdel=pb.Hdel(table="users", key=k))):
                resp = c.call(req)
                self.assertEqual(resp.status, 413, resp.message)
                self.assertIn("nothing was written; raise limits.max_frame to at least",
                              resp.message)
                self.assertFalse(resp.outcome_unknown)
        self.assertEqual(len(read_topic(m.bootstrap, "users", parts)), 1, "nothing produced")

    def test_no_record_written_twice_when_the_producer_retries(self):
        parts = 4
        m = self.mock({"users": parts}, control=True)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2)
        with r.client() as c:
            self.assertEqual(c.hset("users", b"warm", b"up").status, 200)  # producer connected
            m.ctl("error Produce NOT_LEADER_FOR_PARTITION 3")
            m.ctl("error Produce REQUEST_TIMED_OUT 2")
            for i in range(20):
                resp = c.hset("users", b"k%d" % (i % 5), b"v%d" % i)
                self.assertEqual(resp.status, 200, resp.message)
        recs = read_topic(m.bootstrap, "users", parts)
        self.assertEqual(len(recs), 21, recs)
        ids = [rec[4]["kvs.writer"] for rec in recs]
        self.assertEqual(len(set(ids)), len(ids), "a record appears twice")
        self.assertEqual(sorted(v for _, _, _, v, _ in recs),
                         sorted([b"up"] + [b"v%d" % i for i in range(20)]))

    def test_concurrent_writers_chain_in_topic_order(self):
        parts = 4
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "string", parts)], shards=2)
        key, writers, each = b"hot", 4, 30
        seen, errors = [], []

        def writer(n):
            try:
                with r.client() as c:
                    for i in range(each):
                        v = "w%d-%d" % (n, i)
                        resp = c.hset("users", key, v)
                        if resp.status != 200:
                            errors.append(resp.message)
                            return
                        seen.append((pyval(resp.values[0]), v, pos_entries(resp.position)))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(seen), writers * each)
        # every answer's previous value is the write just before it: one chain
        after = {prev: new for prev, new, _ in seen}
        self.assertEqual(len(after), len(seen), "two writes saw the same previous value")
        chain, cur = [], None
        while cur in after:
            cur = after[cur]
            chain.append(cur)
        self.assertEqual(len(chain), len(seen), "the previous values do not form one chain")
        # ... and that order is the topic's, which the positions name
        p = partition_of(key, parts)
        recs = read_topic(m.bootstrap, "users", parts)
        self.assertEqual([v.decode() for _, _, _, v, _ in recs], chain)
        offset_of = {new: pos for _, new, pos in seen}
        self.assertEqual([offset_of[v] for v in chain], [[("users", p, o)] for o in range(len(chain))])

    def test_read_your_writes_while_ingestion_is_slow(self):
        parts = 4
        m = self.mock({"users": parts})
        # every record waits 30 ms before it is applied, so no write is
        # visible before its worker applied it
        r = self.router(m, [("users", "users", "raw", parts)], shards=2,
                        env={"KVS_TEST_INGEST_DELAY_MS": "30"})
        with r.client() as c:
            for i in range(6):
                k = b"k%d" % (i % 3)
                self.assertEqual(c.hset("users", k, b"v%d" % i).status, 200)
                resp = c.hget("users", k)
                self.assertEqual(pyval(resp.values[0]), b"v%d" % i, resp.message)

    def test_pipelined_reads_see_the_writes_before_them(self):
        parts = 4
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "raw", parts)], shards=2,
                        env={"KVS_TEST_INGEST_DELAY_MS": "20"})
        with r.client() as c:
            self.assertEqual(c.hset("users", b"k0", b"v0").status, 200)
            # pipelined: each read sees the write sent just before it (the
            # router holds it until the write is answered)
            reqs = []
            for i in range(5):
                reqs += [req_hset("users", b"p", b"x%d" % i), req_hget("users", b"p"),
                         req_hmget("users", [b"p", b"k0", b"nope"])]
            out = c.pipeline(reqs)
            for i in range(5):
                self.assertEqual(out[3 * i].status, 200, out[3 * i].message)
                self.assertEqual(pyval(out[3 * i + 1].values[0]), b"x%d" % i, out[3 * i + 1])
                self.assertEqual([pyval(v) for v in out[3 * i + 2].values],
                                 [b"x%d" % i, b"v0", None])
            # a split write, then a read of all its keys
            keys = [b"s%d" % i for i in range(12)]
            out = c.pipeline([req_hmset("users", [(k, b"m-" + k) for k in keys]),
                              req_hmget("users", keys)])
            self.assertEqual(out[0].status, 200, out[0].message)
            self.assertEqual(len({p for _, p, _ in pos_entries(out[0].position)}),
                             len({partition_of(k, parts) for k in keys}),
                             "the answer names every partition the write touched")
            self.assertEqual([pyval(v) for v in out[1].values], [b"m-" + k for k in keys])
            # Hlen (Redis HLEN, EXISTS) counts the writes before it too
            hlen = pb.CommandRequest()
            hlen.hlen.table = "users"
            out = c.pipeline([req_hmdel("users", keys[:5]), hlen, req_hset("users", b"n", b"1"),
                              hlen])
            self.assertEqual([o.status for o in out], [200] * 4, out)
            self.assertEqual([out[1].values[0].integer_value, out[3].values[0].integer_value],
                             [2 + 7, 2 + 7 + 1])

    def test_requests_held_behind_a_write_run_as_the_user_who_sent_them(self):
        """An Auth pipelined behind reads the router holds for a write
        changes the user of what follows it only: the held reads are
        judged as the user who sent them, through both front doors."""
        from routertest import free_port
        from test_auth import req_auth, users_yaml
        m = self.mock({"users": 4})
        rport = free_port()
        r = self.router(m, [("users", "users", "string", 4)], shards=2, start=False,
                        env={"KVS_TEST_INGEST_DELAY_MS": "200"},  # the reads wait for it
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        with open(r.config, "a") as f:
            f.write(users_yaml())  # ops may do everything, alice nothing on "users"
        r.start()
        hlen = pb.CommandRequest()
        hlen.hlen.table = "users"
        with r.client() as c:
            out = c.pipeline([req_auth("ops", "ops-pw"), req_hset("users", b"k", "v"),
                              req_hget("users", b"k"), hlen, req_auth("alice", "alice-pw"),
                              req_hget("users", b"k")])
        self.assertEqual([o.status for o in out], [200, 200, 200, 200, 200, 403], out)
        self.assertEqual((pyval(out[2].values[0]), out[3].values[0].integer_value), ("v", 1))
        self.assertIn('user "alice" may not run Hget', out[5].message)
        got = resp_exchange(rport, b"AUTH ops ops-pw\r\nHSET users k w\r\nHGET users k\r\n"
                                   b"HLEN users\r\nAUTH alice alice-pw\r\nHGET users k\r\n", 7)
        self.assertEqual(got, b"+OK\r\n:0\r\n$1\r\nw\r\n:1\r\n+OK\r\n-NOPERM user \"alice\" may "
                              b"not run Hget on table \"users\": it needs read\r\n")

    def test_session_reads_wait_for_an_acknowledged_write(self):
        parts = 2  # one per shard (see the next test)
        m = self.mock({"users": parts})
        # applying takes 2.5 s per record, longer than a write may wait:
        # the write's answer is 503 with its position (Kafka has it)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="2s",
                        env={"KVS_TEST_INGEST_DELAY_MS": "2500"})
        with r.client() as a:
            resp = a.hset("users", b"k", b"new")
            self.assertEqual(resp.status, 503, resp.message)
            self.assertTrue(resp.position)
            # the same connection reads with that position without asking:
            # never the missing key it would see without one
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                resp = a.hget("users", b"k")
                if resp.status == 200:
                    break
                self.assertEqual(resp.status, 503, resp.message)
                self.assertIn("behind by 1 records", resp.message)
            self.assertEqual(pyval(resp.values[0]), b"new")

    def test_position_from_another_connection_never_reads_stale(self):
        # One partition per shard: the test hook paces a partition's end
        # (the event saying a worker reached it) like a record, so each more
        # partition a worker owns can hold the write's record up 2.5 s more.
        parts = 2
        m = self.mock({"users": parts})
        # applying takes 2.5 s per record, longer than a write may wait
        # (router.timeout 2 s: 1.6 s): the write's answer is 503, with its
        # position, since Kafka has the record
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="2s",
                        env={"KVS_TEST_INGEST_DELAY_MS": "2500"})
        key = b"k"
        with r.client() as a, r.client() as b:
            resp = a.hset("users", key, b"new")
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("Kafka acknowledged the write", resp.message)
            pos = resp.position
            self.assertEqual(pos_entries(pos), [("users", partition_of(key, parts), 0)])
            # another connection reading at that position: waits, then 503
            # or the new value; never the old one (there is none: 404 would be stale)
            answers = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                resp = b.call(with_options(req_hget("users", key), pos))
                answers.append(resp.status)
                if resp.status == 200:
                    break
                self.assertEqual(resp.status, 503, resp.message)
                self.assertIn("behind by 1 records", resp.message)
            self.assertEqual(answers[-1], 200, answers)
            self.assertEqual(pyval(resp.values[0]), b"new")
            # without a position the same connection may read what is there
            self.assertEqual(b.hget("users", key).status, 200)

    def test_kill9_between_ack_and_apply(self):
        parts = 4
        m = self.mock({"users": parts})
        # each record is applied 800 ms after the worker read it: a window
        # between Kafka's acknowledgement and the apply to kill -9 in
        r = self.router(m, [("users", "users", "raw", parts)], shards=2,
                        env={"KVS_TEST_INGEST_DELAY_MS": "800"})
        key = keys_in_partition(0, parts, 1)[0]  # shard 0
        acked = {}
        with r.client() as c:
            for i in range(2):
                k = keys_in_partition(2, parts, 2, prefix="acked")[i]
                self.assertEqual(c.hset("users", k, b"a%d" % i).status, 200)
                acked[k] = b"a%d" % i
        before = watermarks(m.bootstrap, "users", parts)[0][1]
        old = r.workers()[0]
        with r.client() as c:
            c.send(req_hset("users", key, b"lost?"))
            self.assertTrue(wait_until(
                lambda: watermarks(m.bootstrap, "users", parts)[0][1] > before, 5, 0.01),
                "the record never reached Kafka")
            st = self.worker_parts(r, 0, "users")[0]
            self.assertEqual(st["next_offset"], before, "applied already: no window")
            r.kill_worker(0)
            resp = c.recv()
            self.assertEqual(resp.status, 503, resp.message)  # the client never saw it acknowledged
        self.assertIsNotNone(r.wait_worker(0, not_pid=old, timeout=10))
        ends = self.ends(m, "users", parts)
        st = self.wait_caught_up(r, "users", ends)
        self.assert_exactly_once(st, ends)
        with r.client() as c:
            self.assertEqual(pyval(c.hget("users", key).values[0]), b"lost?",
                             "Kafka has the record: it was applied after the restart")
            for k, v in acked.items():
                self.assertEqual(pyval(c.hget("users", k).values[0]), v)

    def test_value_lengths_answers_previous_values_by_length(self):
        # CommandRequest.value_lengths on a log-first write: the answer
        # (built once the record is applied) gives the previous value's
        # length, not its bytes; without it, the bytes.
        m = self.mock({"users": 4})
        r = self.router(m, [("users", "users", "raw", 4)], shards=2)
        with r.client() as c:
            self.assertEqual(c.hset("users", b"k", b"\xff" * 100000).status, 200)
            q = req_hset("users", b"k", b"short")
            q.value_lengths = True
            resp = c.call(q)
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(resp.values[0].integer_value, 100000)
            self.assertTrue(resp.position, "a position, as every log-first write has")
            resp = c.call(req_hset("users", b"k", b"y"))
            self.assertEqual(pyval(resp.values[0]), b"short")
            # presence_only (what a user without read is answered): whether
            # the key had a value, a length of 0, never the value.
            for q in (req_hset("users", b"k", b"z"), req_hmset("users", {b"k": b"w", b"n": b"v"})):
                q.presence_only = True
                resp = c.call(q)
                self.assertEqual(resp.status, 200, resp.message)
                self.assertEqual([(v.WhichOneof("kind"), v.integer_value) for v in resp.values],
                                 [("integer_value", 0)] + [(None, 0)] * (len(resp.values) - 1))

    def test_a_write_whose_previous_value_does_not_fit_is_refused_before_it_is_produced(self):
        # A value stored while limits.max_frame was larger; after it was
        # lowered, a log-first Hset of that key was produced and applied,
        # and then answered 500 "was applied": its previous value cannot be
        # answered. It is now refused before anything is produced (413
        # always means nothing was written), as a direct write is.
        parts = 4
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "raw", parts)], shards=2)
        with r.client() as c:
            self.assertEqual(c.hset("users", b"k", b"x" * 100000).status, 200)
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        with open(r.config, "a") as f:
            f.write("limits: {max_frame: 64KiB}\n")
        r.start()
        with r.client() as c:
            resp = c.hset("users", b"k", b"small")
            self.assertEqual(resp.status, 413, resp.message)
            self.assertIn("nothing was written; raise limits.max_frame to at least", resp.message)
            self.assertFalse(resp.outcome_unknown)
            self.assertFalse(resp.position)
            self.assertTrue(c.call(pb.CommandRequest(hexist=pb.Hexist(
                table="users", key=b"k"))).values[0].bool_value)
        self.assertEqual(len(read_topic(m.bootstrap, "users", parts)), 1, "nothing produced")

    def test_broker_down_answers_may_or_may_not(self):
        parts = 4
        m = self.mock({"users": parts}, control=True)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="2s")
        with r.client() as c:
            self.assertEqual(c.hset("users", b"k", b"1").status, 200)
            m.ctl("broker-down all")
            t0 = time.monotonic()
            resp = c.hset("users", b"k", b"2")
            surely_not = kafkatest.unwritten_or_unsure(self, resp)
            self.assertLess(time.monotonic() - t0, 2.0, "answered before router.timeout")
            m.ctl("broker-up all")
            ok = wait_until(lambda: c.hset("users", b"k", b"3").status == 200, 20, 0.2)
            self.assertTrue(ok, "writes work again once the broker is back")
            self.assertEqual(pyval(c.hget("users", b"k").values[0]), b"3")
        vals = [v for _, _, _, v, _ in kafkatest.read_topic(m.bootstrap, "users", parts)]
        self.assertEqual(vals.count(b"3"), 1, vals)
        if surely_not:
            self.assertNotIn(b"2", vals, "a write said not to have happened is in the log")

    def test_reads_held_behind_a_hanging_write_count_against_client_output(self):
        """A client whose write to a bound table hangs (brokers down) and
        that then pipelines 60 MiB of reads, never reading an answer: the
        router holds those reads (they must see the write), but held bytes
        count against limits.client_output, so it stops reading that client
        at the high-water mark; its memory stays bounded, other clients are
        served, and the write still gets its 503."""
        parts = 4
        m = self.mock({"users": parts}, control=True)
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="4s",
                        start=False)
        with open(r.config, "a") as f:
            f.write("limits: {max_frame: 2MiB, client_output: 8MiB}\n")
        r.start()
        self.assertTrue(wait_until(lambda: len(r.workers()) == 2, 10))
        router_pid = [p for p, argv in procs_for_config(r.config).items()
                      if "--router" in argv][0]
        with r.client() as c:
            self.assertEqual(c.hset("users", b"k", b"1").status, 200)
        m.ctl("broker-down all")
        base = rss_mb(router_pid, "VmRSS")
        hostile = Client(r.addr, timeout=30)
        self.addCleanup(hostile.close)
        hostile.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        read = req_hmget("users", [b"%07d" % i for i in range(100000)])  # 1 MiB
        frames = b"".join(encode(x) for x in [req_hset("users", b"k", b"2")] + [read] * 60)
        sender = threading.Thread(target=lambda: _send_quietly(hostile.sock, frames))
        sender.start()
        t0 = time.monotonic()
        peak = base
        with r.client() as other:
            while time.monotonic() - t0 < 2.5:  # the write hangs for 3.2 s
                self.assertEqual(other.ping().status, 200)
                self.assertEqual(other.hset("plain", b"k", b"v").status, 200)
                peak = max(peak, rss_mb(router_pid, "VmRSS"))
                time.sleep(0.05)
        self.assertTrue(sender.is_alive(), "the router read every held request")
        if not SANITIZED:  # ASan keeps freed memory in quarantine
            self.assertLess(peak - base, 24, "the router grew by %.0f MiB" % (peak - base))
        kafkatest.unwritten_or_unsure(self, hostile.recv())
        hostile.close()
        sender.join(10)

    def stop_is_bounded(self, m, r, key, value, outage):
        """Stops r while `outage` (mock control lines) holds the consumer
        group's pending offset commit up: librdkafka's close would wait for
        it up to session.timeout.ms (45 s) or socket.timeout.ms (60 s),
        past the router's 10 s stop grace for a worker (then SIGKILL). The
        worker leaves it after 3 s and exits 0; the write is there after a
        restart with the brokers back."""
        shard = r.shard_of(key)
        # The group refuses every commit until the outage, so its offsets
        # never catch up with LMDB's and a commit goes out (and is held up)
        # during the outage however late the worker got here: otherwise a
        # first commit landing before the outage leaves nothing to hold up.
        m.ctl("error OffsetCommit OFFSET_METADATA_TOO_LARGE 100000")
        with r.client() as c:
            self.assertEqual(c.hset("users", key, value).status, 200)
        p = partition_of(key, 4)
        self.wait_applied(r, shard, "users", p, 1)
        for line in outage:
            m.ctl(line)
        time.sleep(2.5)  # the once-a-second group commit is sent, and held up
        t0 = time.monotonic()
        self.assertEqual(r.stop(timeout=30), 0)
        took = time.monotonic() - t0
        log = r.stderr()
        self.assertNotIn("SIGKILL", log)
        self.assertLess(took, 8.0, "the stop took the worker's whole grace")
        self.assertIn("kafka: the consumer did not close within 3000 ms", log)
        # No second commit queued behind the one the outage holds up.
        self.assertRegex(log, r"node\[%d\] INFO +kafka: not committing offsets to consumer group "
                              r"kvs at stop: its last commit is still unanswered" % shard)
        self.assertRegex(log, r"node\[%d\] INFO +stopped \(a Kafka client was left closing\)"
                         % shard)
        m.ctl("rtt all 0")
        m.ctl("clear-errors OffsetCommit")
        m.ctl("broker-up all")
        r.start()
        with r.client() as c:
            self.assertEqual(pyval(c.hget("users", key).values[0]), value)

    def test_stop_during_a_kafka_outage_is_bounded(self):
        m = self.mock({"users": 4}, control=True)
        r = self.router(m, [("users", "users", "raw", 4)], shards=2)
        self.stop_is_bounded(m, r, b"k", b"v", ["broker-down all"])

    def test_stop_with_a_hanging_coordinator_is_bounded(self):
        m = self.mock({"users": 4}, control=True)
        r = self.router(m, [("users", "users", "raw", 4)], shards=2)
        self.stop_is_bounded(m, r, b"k", b"v", ["rtt all 60000"])

    def test_a_stop_that_leaves_a_kafka_client_closing_still_runs_plugin_fini(self):
        """include/kvs_plugin.h: "fini runs at exit". A worker that left its
        consumer closing leaves with _exit; its plugins' fini must have run
        before (a plugin may flush what it buffered there)."""
        m = self.mock({"users": 4}, control=True)
        r = self.router(m, [("users", "users", "raw", 4)], shards=2, start=False)
        mark = os.path.join(r.dir, "fini.txt")
        with open(r.config, "a") as f:
            f.write('plugins:\n  - {path: "%s", arg: "%s"}\n'
                    % (os.path.join(BUILD_DIR, "plugins", "test_fini_mark.so"), mark))
        r.start()
        self.assertTrue(wait_until(lambda: len(r.workers()) == 2, 10))
        self.stop_is_bounded(m, r, b"k", b"v", ["broker-down all"])
        with open(mark) as f:
            lines = f.read().splitlines()
        self.assertIn("fini node %d" % r.shard_of(b"k"), lines)
        self.assertIn("fini node %d" % (1 - r.shard_of(b"k")), lines)

    def test_a_split_write_kafka_took_is_not_said_unwritten(self):
        # Each shard's part of an Hmset is acknowledged by Kafka but not
        # applied within 4/5 of router.timeout (one record applied every
        # 1.5 s): each worker answers 503 "Kafka acknowledged the write ...
        # it will be applied" with its position. The router must not merge
        # those into "nothing was written" (nor a 207 listing the keys as
        # not written), nor into "may or may not": every key was written,
        # and a read with the merged position sees them all.
        parts = 2
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "raw", parts)], shards=2, timeout="1s",
                        env={"KVS_TEST_INGEST_DELAY_MS": "1500"})
        k0, k1 = keys_in_partition(0, parts, 2), keys_in_partition(1, parts, 2)
        with r.client(timeout=20) as c:
            # One record ahead on each partition, so the next ones wait.
            c.pipeline([req_hset("users", k0[1], b"x"), req_hset("users", k1[1], b"x")])
            resp = c.call(req_hmset("users", [(k0[0], b"a"), (k1[0], b"b")]))
        self.assertEqual(resp.status, 503, resp.message)
        self.assertIn("Kafka acknowledged the write", resp.message)
        self.assertNotIn("nothing was written", resp.message)
        self.assertIn("shards 0, 1 wrote their keys to Kafka, which acknowledged them (they "
                      "will be applied)", resp.message)
        self.assertNotIn("may or may not", resp.message)
        self.assertFalse(resp.outcome_unknown)
        self.assertEqual(len(resp.pairs), 0)
        recs = kafkatest.read_topic(m.bootstrap, "users", parts)
        self.assertEqual(sorted((t, p, o) for t, p, o in pos_entries(resp.position)),
                         sorted(("users", p, o) for p, o, k, _, _ in recs if k in (k0[0], k1[0])))
        read = req_hmget("users", [k0[0], k1[0]])
        read.min_position = resp.position
        with r.client(timeout=30) as c:  # 503 "behind" until applied
            got = wait_until(lambda: (lambda a: a if a.status == 200 else None)(c.call(read)),
                             20, 0.2)
        self.assertTrue(got, "the position was never readable")
        self.assertEqual([pyval(v) for v in got.values], [b"a", b"b"])

    def test_cli_prints_and_takes_positions(self):
        parts = 4
        m = self.mock({"users": parts})
        r = self.router(m, [("users", "users", "string", parts)], shards=2, timeout="1s")
        p = partition_of(b"k", parts)

        def cli(*args):
            return subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--port", str(r.port)] +
                                  list(args), capture_output=True, timeout=30)

        out = cli("--position", "hset", "users", "k", "v1")
        self.assertEqual((out.returncode, out.stderr), (0, b""))
        self.assertEqual(out.stdout.decode(), "(nil)\nposition: users:%d:0\n" % p)
        out = cli("--raw", "--position", "hmset", "users", "k", "v2", "k", "v3")
        self.assertEqual(out.stdout.decode(), "v1\nv2\nusers:%d:2\n" % p)
        out = cli("--min-position", "users:%d:2" % p, "hget", "users", "k")
        self.assertEqual((out.returncode, out.stdout), (0, b'"v3"\n'), out.stderr)
        out = cli("--min-position", "users:%d:50,other:0:1" % p, "hget", "users", "k")
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"(error) 503 position ahead of the topic: the read needs offset 50",
                      out.stderr)
        out = cli("--stale", "hget", "users", "k")
        self.assertEqual((out.returncode, out.stdout), (0, b'"v3"\n'), out.stderr)
        for bad in ("users", "users:1", "users:x:1", "users:1:2,"):
            out = cli("--min-position", bad, "hget", "users", "k")
            self.assertEqual(out.returncode, 2, bad)
            self.assertIn(b"kvs-cli: --min-position:", out.stderr)
        # a session reads its own writes (the router attaches its positions)
        out = subprocess.run([os.path.join(BUILD_DIR, "kvs-cli"), "--port", str(r.port)],
                             input=b"hset users s 1\nhget users s\nhdel users s\nhget users s\n",
                             capture_output=True, timeout=30)
        self.assertEqual(out.stdout, b'(nil)\n"1"\n"1"\n(nil)\n', out.stderr)

    def test_kafka_off_refuses_writes_to_bound_tables(self):
        from routertest import Router
        r = Router(shards=2, extra_yaml="kafka:\n  bindings:\n    - {topic: t, table: users}\n")
        self.addCleanup(r.close)
        with r.client() as c:
            resp = c.hset("users", b"k", b"v")
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("Kafka is off on this node (kafka.brokers is empty)", resp.message)
            self.assertEqual(c.hget("users", b"k").status, 404)
            self.assertEqual(c.hset("other", b"k", b"v").status, 200)


if __name__ == "__main__":
    unittest.main()
