"""Integration tests for Kafka ingestion (node/node_ingest.c) through a real
kvs-router, its kvs-node workers and kvs-mock-kafka.

Records are produced with kcat or python3-confluent-kafka using the
Java-compatible partitioner (murmur2_random); the tests then read them back
through the router, ask workers directly on their unix sockets, and check the
per-partition Info counters (applied, skipped, next_offset, end_offset, lag)
that each worker keeps in the same LMDB txn as the data:

    next_offset == end offset and applied + skipped == records in the partition

is the proof that every record was applied exactly once, also after kill -9,
broker loss, injected request errors and restarts.

Producers batch (linger, batch.num.messages) so the mock cluster, which keeps
at most ~5 MiB or 100,000 message sets per partition and silently drops the
oldest, keeps every record: tests check that each partition's low watermark
is still 0. A broker round-trip delay (mock `rtt`) stretches ingestion where
a test must act in the middle of it.

Every wait is bounded; every process is killed at cleanup.

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import os
import random
import re
import shutil
import subprocess
import time
import unittest

from kvstest import BUILD_DIR, SANITIZED, Client, LogsOnFailure, Node, log_of, pb, pyval, req_hmget
from routertest import Router, partition_of, procs_for_config
import kafkatest
from kafkatest import (KCAT, MockKafka, caught_up, cluster_id, committed, info, info_pairs,
                       ingest_yaml, kafka_parts,
                       kcat_consume, kcat_produce, produce, wait_until, watermarks)

HAVE_CK = kafkatest.Producer is not None
MDB_DUMP = shutil.which("mdb_dump")
CATCH_UP = 60.0  # seconds for a router to ingest everything (200,000 records: ~2 s here)


class KafkaFixtures(LogsOnFailure):
    """Fixtures and checks of the Kafka tests (mixed into unittest.TestCase
    classes here and in test_partitioner.py)."""

    # ---- fixtures -----------------------------------------------------------------

    def start_fixtures(self):
        self._routers, self._mocks, self._nodes = [], [], []

    def failure_logs(self):
        for r in self._routers:
            yield "kvs-router stderr, last 12000 chars", log_of(r, 12000)
        for n in self._nodes:
            yield "kvs-node stderr, last 12000 chars", log_of(n, 12000)
        for m in self._mocks:
            yield "kvs-mock-kafka stderr", m.stderr()[-4000:]

    def mock(self, topics, brokers=1, control=False):
        m = MockKafka(topics, brokers=brokers, control=control)
        self._mocks.append(m)
        self.addCleanup(m.close)
        return m

    def router(self, mock, bindings, shards=4, properties=None, start=True, group_id="kvs",
               max_lag=None, env=None, timeout=None, router_yaml=(), max_frame=None,
               log="{level: info}"):
        """A Router with Kafka ingestion: bindings [(topic, table, format,
        partitions)]; max_lag: kafka.max_lag; env: for the router and its
        workers (test hooks); timeout: router.timeout; router_yaml: more
        entries of the router section; log: its log section."""
        props = {"reconnect.backoff.max.ms": "500"}
        props.update(properties or {})
        r = Router(shards=shards, partitions=64, start=False, env=env, timeout=timeout,
                   router_yaml=router_yaml, max_frame=max_frame, log=log,
                   extra_yaml=ingest_yaml(mock.bootstrap, bindings, group_id, props, max_lag))
        self._routers.append(r)
        self.addCleanup(r.close)
        if start:
            r.start()
            self.assertTrue(wait_until(lambda: len(r.workers()) == shards, 10),
                                 "not every worker runs: %r" % r.workers())
        return r

    def node(self, mock, bindings, storage=None, env=None):
        """A lone kvs-node (shard 0 of 1: it owns every partition) ingesting
        `bindings` [(topic, table, format, partitions)], with `env` added
        to its environment (test hooks)."""
        n = Node(storage=storage, start=False, env=env, extra_yaml=ingest_yaml(
            mock.bootstrap, bindings, properties={"reconnect.backoff.max.ms": "500"}))
        self._nodes.append(n)
        self.addCleanup(n.close)
        n.start()
        return n

    # ---- helpers --------------------------------------------------------------------

    def ends(self, mock, topic, partitions):
        """{partition: end offset}; fails unless every partition still holds
        every record produced to it (low watermark 0: the mock dropped none)."""
        wm = watermarks(mock.bootstrap, topic, partitions)
        for p, (lo, hi) in sorted(wm.items()):
            self.assertEqual(lo, 0, "the mock dropped records of %s [%d]: watermarks %d..%d; "
                                    "produce fewer or larger batches" % (topic, p, lo, hi))
        return {p: hi for p, (lo, hi) in wm.items()}

    def wait_caught_up(self, router, topic, ends, timeout=CATCH_UP):
        """Waits until Info shows next_offset == end and lag 0 for every
        partition; returns the per-partition Info."""
        parts = wait_until(lambda: caught_up(router, topic, ends), timeout, 0.1)
        if not parts:
            try:
                now = kafka_parts(info(router), topic)
            except Exception as e:  # noqa: BLE001 - reported below
                now = "Info failed: %r" % (e,)
            self.fail("%s not ingested within %.0f s: end offsets %r, Info now %r"
                      % (topic, timeout, ends, now))
        return parts

    def assert_exactly_once(self, parts, ends, skipped=None):
        """Per partition: next_offset == end, applied + skipped == records
        (the low watermark is 0, so the end offset is the record count), and
        skipped as given ({partition: n}, default 0)."""
        skipped = skipped or {}
        self.assertEqual(sorted(parts), sorted(ends), "Info must report every partition")
        for p, end in sorted(ends.items()):
            st = parts[p]
            self.assertEqual(st["next_offset"], end, "partition %d: %r" % (p, st))
            self.assertEqual(st["end_offset"], end, "partition %d: %r" % (p, st))
            self.assertEqual(st["lag"], 0, "partition %d: %r" % (p, st))
            self.assertEqual(st["skipped"], skipped.get(p, 0), "partition %d: %r" % (p, st))
            self.assertEqual(st["applied"] + st["skipped"], end,
                             "partition %d: applied + skipped must equal the %d records in it "
                             "(more = applied twice): %r" % (p, end, st))

    def assert_values(self, addr, table, expected, chunk=1000):
        """Hmget through addr: every key in `expected` ({key: Python value or
        None for missing}) holds exactly that value."""
        keys = sorted(expected)
        wrong = []
        with Client(addr, timeout=30) as c:
            for i in range(0, len(keys), chunk):
                part = keys[i:i + chunk]
                resp = c.call(req_hmget(table, part))
                self.assertEqual(resp.status, 200, resp.message)
                self.assertEqual(len(resp.values), len(part))
                for k, v in zip(part, resp.values):
                    got = pyval(v)
                    if got != expected[k] or (got is not None and
                                              type(got) is not type(expected[k])):
                        wrong.append((k, expected[k], got))
        self.assertEqual(wrong[:10], [], "%d of %d keys hold the wrong value "
                                         "(key, expected, got)" % (len(wrong), len(keys)))

    def applied_total(self, router, topic):
        try:
            parts = kafka_parts(info(router), topic)
        except Exception:  # noqa: BLE001 - a shard restarting answers 503
            return None
        return sum(st.get("applied", 0) + st.get("skipped", 0) for st in parts.values())

    def wait_progress(self, router, topic, lo, hi, timeout=30):
        """Waits until lo <= applied + skipped < hi over the topic; returns it."""
        got = []

        def pred():
            n = self.applied_total(router, topic)
            got.append(n)
            return n is not None and lo <= n < hi

        if not wait_until(pred, timeout, 0.01):
            self.fail("ingestion of %s never was between %d and %d records (last seen %r); "
                      "it must be slowed down more for this test" % (topic, lo, hi, got[-5:]))
        return got[-1]


@unittest.skipIf(KCAT is None or not HAVE_CK, "kcat and python3-confluent-kafka are needed")
class IngestTest(KafkaFixtures, unittest.TestCase):
    def test_10000_records_land_on_their_shard(self):
        topic, parts, shards = "users", 8, 4
        m = self.mock({topic: parts})
        rnd = random.Random(10)
        # 7,000 distinct keys; 3,000 more records overwrite some of them, a few
        # several times, all interleaved. Neither ':' nor '\n' in keys/values.
        keys = [b"user-%d" % i for i in range(7000)]
        seq = keys + [rnd.choice(keys[:500]) for _ in range(3000)]
        rnd.shuffle(seq)
        pairs = [(k, b"v%d-%s" % (i, k)) for i, k in enumerate(seq)]
        self.assertEqual(len(pairs), 10000)
        latest = {}
        for k, v in pairs:
            latest[k] = v
        self.assertGreater(max(seq.count(k) for k in keys[:500]), 3)
        kcat_produce(m.bootstrap, topic, pairs)
        ends = self.ends(m, topic, parts)
        self.assertEqual(sum(ends.values()), 10000)

        # Where each record landed: kcat's murmur2_random is Kafka's default.
        landed = kcat_consume(m.bootstrap, topic)
        self.assertEqual(len(landed), 10000)
        part_of = {}
        for k, p, _ in landed:
            self.assertEqual(p, partition_of(k, parts), "record %r landed in partition %d" % (k, p))
            part_of.setdefault(k, p)

        r = self.router(m, [(topic, "users", "raw", parts)], shards=shards)
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)
        self.assert_values(r.addr, "users", latest)

        # Each key sits on the shard that owns its record's partition, and
        # only there.
        for s in range(shards):
            with r.worker_client(s) as c:
                got = dict(c.scan_all("users"))
            want = {k: v for k, v in latest.items() if part_of[k] % shards == s}
            self.assertTrue(want, "shard %d owns no key" % s)
            self.assertEqual(sorted(got), sorted(want), "keys on shard %d" % s)
            self.assertEqual(got, want, "values on shard %d" % s)

    def test_tombstones_delete(self):
        topic, parts = "users", 4
        m = self.mock({topic: parts})
        recs = [(b"t-%d" % i, b"v1-%d" % i) for i in range(100)]
        recs += [(b"t-%d" % i, None) for i in range(50)]                  # deleted
        recs += [(b"t-%d" % i, b"v2-%d" % i) for i in range(10)]          # deleted, then back
        recs += [(b"never-%d" % i, None) for i in range(10)]              # delete of nothing
        produce(m.bootstrap, topic, recs)
        # kcat: -Z produces an empty value as a NULL payload (a tombstone);
        # without -Z an empty value is an empty payload, a value like any other.
        kcat_produce(m.bootstrap, topic, [(b"t-%d" % i, b"") for i in range(50, 60)],
                     null_empty=True)
        kcat_produce(m.bootstrap, topic, [(b"t-%d" % i, b"") for i in range(60, 65)])
        nulls = {k for k, _, _, size in kcat_consume(m.bootstrap, topic, sizes=True)
                 if size == -1}
        self.assertEqual(nulls, {b"t-%d" % i for i in range(60)} |
                         {b"never-%d" % i for i in range(10)},
                         "the records meant as tombstones must have NULL payloads")
        ends = self.ends(m, topic, parts)
        total = len(recs) + 15
        self.assertEqual(sum(ends.values()), total)

        r = self.router(m, [(topic, "users", "raw", parts)])
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)
        self.assertEqual(sum(s["applied"] for s in st.values()), total,
                         "tombstones count as applied records")

        expected = {b"t-%d" % i: None for i in range(100)}
        expected.update({b"t-%d" % i: b"v2-%d" % i for i in range(10)})
        expected.update({b"t-%d" % i: b"v1-%d" % i for i in range(65, 100)})
        expected.update({b"t-%d" % i: b"" for i in range(60, 65)})
        expected.update({b"never-%d" % i: None for i in range(10)})
        self.assert_values(r.addr, "users", expected)
        with r.client() as c:
            for k in (b"t-10", b"t-49", b"t-55", b"never-3"):
                resp = c.hget("users", k)
                self.assertEqual(resp.status, 404, "%r: %s" % (k, resp))
                self.assertEqual(c.hexist("users", k).values[0].bool_value, False)
            resp = c.hget("users", b"t-60")
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(resp.values[0].WhichOneof("kind"), "binary_value",
                             "an empty payload is an empty value, not a delete")
            keys = [k for k, _ in c.scan_all("users")]
        self.assertEqual(sorted(keys), sorted(k for k, v in expected.items() if v is not None))

    def test_an_empty_value_record_says_so(self):
        # An empty Value is zero bytes, valid protobuf, but no value (Hset
        # refuses it too): skipped, and the log says that, not that the
        # payload is not a Value. An empty payload is not a tombstone.
        m = self.mock({"ev": 1})
        kcat_produce(m.bootstrap, "ev", [(b"k", b"")])
        produce(m.bootstrap, "ev", [(b"j", pb.Value(integer_value=7).SerializeToString())])
        r = self.router(m, [("ev", "evt", "value", 1)])
        st = self.wait_caught_up(r, "ev", self.ends(m, "ev", 1))
        self.assertEqual(sum(s["skipped"] for s in st.values()), 1)
        self.assertIn("kafka ev [0] offset 0 skipped: payload is an empty kvs.Value (no kind set; "
                      "a delete is a tombstone: a null payload)", r.stderr())
        with r.client() as c:
            self.assertEqual(c.hget("evt", b"k").status, 404)
            self.assertEqual(pyval(c.hget("evt", b"j").values[0]), 7)

    def test_keyless_and_malformed_are_skipped_and_counted(self):
        parts = 4
        m = self.mock({"rawt": parts, "strt": parts, "valt": parts})
        r = self.router(m, [("rawt", "rawtab", "raw", parts), ("strt", "strtab", "string", parts),
                            ("valt", "valtab", "value", parts)])
        pids = r.workers()
        t0 = time.monotonic()

        def ival(i):
            v = pb.Value()
            v.integer_value = i
            return v.SerializeToString()

        bad = {
            # topic: (partition the bad records go to, their (key, payload)s)
            "rawt": (1, [(None, b"no key %d" % i) for i in range(40)] +
                        [(b"", b"empty key %d" % i) for i in range(10)] +
                        [(b"k" * 512, b"key too long")]),
            "strt": (2, [(b"bad-%d" % i, p) for i, p in enumerate(
                [b"\xff", b"abc\xfe", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80",
                 b"\xf4\x90\x80\x80", b"\xe2\x82", b"ok then \x80"] * 5)]),
            "valt": (3, [(b"bad-%d" % i, p) for i, p in enumerate(
                [b"\xff\xff\xff", b"",                  # garbage; no kind set
                 b"\x78\x01",                           # only an unknown field (15)
                 b"\x0a\x05ab",                         # string_value cut short
                 b"\x18",                               # integer_value without its varint
                 b"\x21\x00\x00",                       # float_value cut short
                 b"\x2a\x01\x01",                       # bool_value length-delimited
                 b"\x28" + b"\x80" * 9 + b"\x02",         # bool_value past 64 bits
                 b"hello world"] * 5)]),
        }
        for p in (1, 2, 3):
            self.assertEqual(p % r.shards, p)  # each kind of skip on its own shard

        good = {"rawt": {}, "strt": {}, "valt": {}}
        for topic in good:
            fmt_value = {"rawt": lambda i: b"raw-%d" % i,
                         "strt": lambda i: ("str-\u00e9\u2713\U0001F600-%d" % i).encode(),
                         "valt": ival}[topic]
            bad_part, bad_recs = bad[topic]
            recs = []  # (key, value, partition): good ones interleaved with bad ones
            for i in range(200):
                k = b"good-%s-%d" % (topic.encode(), i)
                recs.append((k, fmt_value(i), partition_of(k, parts)))
                good[topic][k] = i
                if i < len(bad_recs):
                    bk, bv = bad_recs[i]
                    recs.append((bk, bv, bad_part))
            prod = kafkatest.producer(m.bootstrap)
            for k, v, p in recs:
                prod.produce(topic, key=k, value=v, partition=p)
            self.assertEqual(prod.flush(30), 0)
            del prod

        for topic in good:
            ends = self.ends(m, topic, parts)
            bad_part, bad_recs = bad[topic]
            self.assertEqual(sum(ends.values()), 200 + len(bad_recs))
            st = self.wait_caught_up(r, topic, ends)
            self.assert_exactly_once(st, ends, skipped={bad_part: len(bad_recs)})
            self.assertEqual(sum(s["skipped"] for s in st.values()), len(bad_recs), topic)
            self.assertEqual(sum(s["applied"] for s in st.values()), 200, topic)

        self.assert_values(r.addr, "rawtab", {k: b"raw-%d" % i for k, i in good["rawt"].items()})
        self.assert_values(r.addr, "strtab", {k: "str-\u00e9\u2713\U0001F600-%d" % i
                                              for k, i in good["strt"].items()})
        self.assert_values(r.addr, "valtab", {k: i for k, i in good["valt"].items()})
        with r.client() as c:
            for table in ("rawtab", "strtab", "valtab"):
                keys = [k for k, _ in c.scan_all(table)]
                self.assertEqual(len(keys), 200, "%s holds only the good records" % table)

        # Logged, rate-limited: each worker logs its first skip, then at most
        # one line per 10 s.
        log = r.stderr()
        elapsed = time.monotonic() - t0
        for topic, shard, why in (("rawt", 1, "record has no key"),
                                  ("strt", 2, "payload is not valid UTF-8"),
                                  ("valt", 3, "payload is not an encoded kvs.Value")):
            lines = [ln for ln in log.splitlines()
                     if "kafka %s [%d] offset" % (topic, bad[topic][0]) in ln and "skipped" in ln]
            self.assertTrue(lines, "no log line about the %s records skipped" % topic)
            self.assertIn(why, lines[0])
            self.assertIn("node[%d]" % shard, lines[0])
            kinds = 2 if topic == "rawt" else 1  # rate-limited per kind of skip
            self.assertLessEqual(len(lines), kinds * (1 + int(elapsed / 10) + 1),
                                 "skips must be logged rate-limited: %r" % lines)
        # A flood of keyless records hides no other reason: the over-long
        # key that follows them is logged too.
        self.assertTrue([ln for ln in log.splitlines() if "kafka rawt [1] offset" in ln and
                         "key longer than 511 bytes" in ln], log)
        self.assertEqual(r.workers(), pids, "no worker may restart")
        self.assertNotIn("exited", log)

    def test_skip_log_rate_limit_is_per_topic(self):
        # One worker ingests two topics: a flood of keyless records on one
        # must not hide the first keyless record of the other from the log
        # (rate-limited per topic and reason, not per worker).
        parts = 2
        m = self.mock({"flood": parts, "quiet": parts})
        r = self.router(m, [("flood", "floodtab", "raw", parts),
                            ("quiet", "quiettab", "raw", parts)], shards=2)
        prod = kafkatest.producer(m.bootstrap)
        for i in range(30):
            prod.produce("flood", key=None, value=b"no key %d" % i, partition=0)
        self.assertEqual(prod.flush(30), 0)
        prod.produce("quiet", key=None, value=b"no key either", partition=0)
        prod.produce("quiet", key=b"k", value=b"v", partition=partition_of(b"k", parts))
        self.assertEqual(prod.flush(30), 0)
        del prod
        for topic in ("flood", "quiet"):
            self.wait_caught_up(r, topic, self.ends(m, topic, parts))
        log = r.stderr()
        for topic in ("flood", "quiet"):
            lines = [ln for ln in log.splitlines()
                     if "kafka %s [0] offset 0 skipped: record has no key" % topic in ln]
            self.assertEqual(len(lines), 1, "%s: %r" % (topic, log[-3000:]))
            self.assertIn("node[0]", lines[0])
        self.assertLessEqual(log.count("kafka flood [0] offset"), 1, "the flood is rate-limited")

    def test_value_with_invalid_utf8_string_is_skipped(self):
        # An encoded Value whose string_value is not UTF-8 is not a valid
        # kvs.Value (proto3 strings are UTF-8; kvs refuses it in Hset): a
        # value-format binding must skip it like any other bad payload, not
        # store it where it poisons every read of the key.
        topic, parts = "valt", 4
        m = self.mock({topic: parts})
        r = self.router(m, [(topic, "valtab", "value", parts)])
        good = pb.Value()
        good.string_value = "fine"
        recs = [(b"good-%d" % i, good.SerializeToString()) for i in range(20)]
        recs += [(b"bad-%d" % i, b"\x0a\x02\xff\xfe") for i in range(5)]
        recs += [(b"bad-utf8b-%d" % i, b"\x0a\x03\xc3\x28a") for i in range(5)]
        produce(m.bootstrap, topic, recs)
        ends = self.ends(m, topic, parts)
        self.wait_caught_up(r, topic, ends)
        st = kafka_parts(info(r), topic)
        with r.client() as c:
            resp = c.hget("valtab", b"good-1")
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(resp.values[0].string_value, "fine")
            try:
                resp = c.hget("valtab", b"bad-1")
                readable = "status %d" % resp.status
            except AssertionError as e:
                readable = "an unreadable answer: %s" % (str(e)[:200],)
        self.assertEqual(sum(s["skipped"] for s in st.values()), 10,
                         "Values with a non-UTF-8 string_value must be skipped; Info %r, and "
                         "Hget of such a key gave %s" % (st, readable))
        self.assertEqual(sum(s["applied"] for s in st.values()), 20)

    def test_text_with_nul_ingested_whole(self):
        # U+0000 is valid UTF-8: a string-format payload holding it, and an
        # encoded Value whose string_value holds it, are stored and served
        # byte for byte by every read (the router merges Hmget, Hgetall and
        # Hscan answers from several shards).
        parts = 4
        m = self.mock({"strt": parts, "valt": parts})
        texts = {b"k-%d" % i: "t\x00%d\x00" % i + "\x00" * (i % 3) for i in range(24)}
        produce(m.bootstrap, "strt", [(k, t.encode()) for k, t in texts.items()])
        vals = []
        for k, t in texts.items():
            x = pb.Value()
            x.string_value = t
            vals.append((k, x.SerializeToString()))
        produce(m.bootstrap, "valt", vals)
        r = self.router(m, [("strt", "strtab", "string", parts), ("valt", "valtab", "value", parts)])
        for topic in ("strt", "valt"):
            ends = self.ends(m, topic, parts)
            self.assert_exactly_once(self.wait_caught_up(r, topic, ends), ends)
        keys = sorted(texts)
        with r.client() as c:
            for table in ("strtab", "valtab"):
                for k in keys[:4]:
                    self.assertEqual(pyval(c.hget(table, k).values[0]), texts[k], k)
                resp = c.hmget(table, keys)
                self.assertEqual(resp.status, 200, resp.message)
                self.assertEqual([pyval(x) for x in resp.values], [texts[k] for k in keys])
                resp = c.hgetall(table)
                self.assertEqual(resp.status, 200, resp.message)
                self.assertEqual({p.key: pyval(p.value) for p in resp.pairs}, texts)
                self.assertEqual(dict(c.scan_all(table, count=5)), texts)
        self.assertEqual(sum(s["skipped"] for s in kafka_parts(info(r), "strt").values()), 0)

    def test_kill9_mid_ingest_exactly_once(self):
        topic, parts, n, nkeys = "users", 16, 200000, 20000
        m = self.mock({topic: parts}, control=True)
        rnd = random.Random(4)
        recs = [(b"key-%d" % rnd.randrange(nkeys), b"%d" % i) for i in range(n)]
        latest = {}
        for k, v in recs:
            latest[k] = v
        # Small batches (~125 message sets per partition; a fetch returns one
        # per partition) and a 10 ms broker delay stretch ingestion to ~2 s.
        produce(m.bootstrap, topic, recs, **{"batch.num.messages": 100, "linger.ms": 5})
        ends = self.ends(m, topic, parts)
        self.assertEqual(sum(ends.values()), n)
        m.ctl("rtt all 10")

        r = self.router(m, [(topic, "users", "raw", parts)])
        restarts = 0
        # Round 1: every worker, early; round 2: two of them, later on.
        for lo, hi, shards in ((n // 10, n // 2, range(4)), (n * 6 // 10, n * 9 // 10, (1, 2))):
            self.wait_progress(r, topic, lo, hi)
            old = r.workers()
            for s in shards:
                r.kill_worker(s)
            for s in shards:
                self.assertIsNotNone(r.wait_worker(s, not_pid=old[s], timeout=10),
                                     "shard %d was not restarted" % s)
                restarts += 1
        m.ctl("rtt all 0")
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)
        self.assertEqual(sum(s["applied"] for s in st.values()), n)
        self.assertEqual(self.ends(m, topic, parts), ends)
        self.assertGreater(len(latest), nkeys * 9 // 10)
        self.assert_values(r.addr, "users", latest)
        self.assertEqual(r.stderr().count("restarting shard"), restarts)

    def test_broker_down_and_up(self):
        topic, parts = "users", 8
        m = self.mock({topic: parts}, brokers=3, control=True)
        rnd = random.Random(5)
        first = [(b"a-%d" % i, b"first-%d" % i) for i in range(2000)]
        second = [(b"key-%d" % rnd.randrange(5000), b"%d" % i) for i in range(60000)]
        produce(m.bootstrap, topic, first)
        r = self.router(m, [(topic, "users", "raw", parts)])
        pids = r.workers()
        self.wait_caught_up(r, topic, self.ends(m, topic, parts))

        # Small batches (a fetch returns one per partition) and a broker delay
        # stretch the ingestion of `second` over a few seconds.
        m.ctl("rtt all 50")
        produce(m.bootstrap, topic, second, **{"batch.num.messages": 100, "linger.ms": 5})
        done = self.wait_progress(r, topic, len(first) + 1, len(first) + len(second) // 2)
        m.ctl("broker-down all")
        t_down = time.monotonic()
        # Reads keep being served while every broker is down.
        probe = {k: v for k, v in first[:200]}
        while time.monotonic() - t_down < 3.0:
            self.assert_values(r.addr, "users", probe)
            parts_now = kafka_parts(info(r), topic)
            self.assertEqual(sorted(parts_now), list(range(parts)))
            time.sleep(0.2)
        stalled = self.applied_total(r, topic)
        self.assertGreaterEqual(stalled, done)
        self.assertLess(stalled, len(first) + len(second),
                        "ingestion went on with every broker down")
        m.ctl("broker-up all")
        m.ctl("rtt all 0")
        ends = self.ends(m, topic, parts)
        self.assertEqual(sum(ends.values()), len(first) + len(second))
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)
        latest = dict(first)
        for k, v in second:
            latest[k] = v
        self.assert_values(r.addr, "users", latest)
        self.assertEqual(r.workers(), pids, "no worker may restart")
        # The outage was reported in the workers' log.
        self.assertTrue(re.search(r"node\[\d\] (WARN|ERROR) +(kafka|librdkafka).*"
                                  r"(refused|down|unreachable)", r.stderr()),
                        "the broker outage must be logged")

    def test_end_offset_age_shows_brokers_out_of_reach(self):
        # Lag 0 and the last end offset are all a worker cut off from the
        # brokers can show; end_offset_age_ms says how old that word is.
        topic, parts, every = "users", 4, 400  # topic.metadata.refresh.interval.ms
        m = self.mock({topic: parts}, control=True)
        produce(m.bootstrap, topic, [(b"k%d" % i, b"v") for i in range(200)])
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2,
                        properties={"topic.metadata.refresh.interval.ms": str(every)})
        ends = self.ends(m, topic, parts)
        self.wait_caught_up(r, topic, ends)

        def ages():
            return {p: f["end_offset_age_ms"] for p, f in kafka_parts(info(r), topic).items()}
        # Idle and healthy: each partition is asked about once an interval,
        # so no age grows past about 1.5 of them (plus a tick): 2.1 s. For
        # longer than that (six intervals), so that an age nothing refreshed
        # would pass it.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            now = ages()
            self.assertEqual(sorted(now), list(range(parts)))
            self.assertTrue(all(0 <= a <= 1.5 * every + 1500 for a in now.values()), now)
            time.sleep(0.2)
        m.ctl("broker-down all")
        self.assertTrue(wait_until(lambda: all(a > 4000 for a in ages().values()), 10), ages())
        stale = kafka_parts(info(r), topic)
        for p, f in stale.items():  # what the worker shows otherwise: nothing is wrong
            self.assertEqual(f["end_offset"], ends[p])
            self.assertEqual(f["lag"], 0)
        m.ctl("broker-up all")
        self.assertTrue(wait_until(lambda: all(0 <= a < 3000 for a in ages().values()), 15),
                        ages())
        req = pb.CommandRequest()
        req.metrics.SetInParent()
        with Client(r.addr) as c:
            resp = c.call(req)
        self.assertEqual(resp.status, 200, resp.message)
        samples = [x for f in resp.ops.metrics if f.name == "kvs_partition_end_offset_age_seconds"
                   for x in f.samples]  # a family per worker
        self.assertEqual(len(samples), parts)
        self.assertTrue(all(0 <= x.value < 3 for x in samples), samples)

    def test_restart_with_brokers_down_serves_reads_and_reports_stored_state(self):
        topic, parts = "users", 8
        m = self.mock({topic: parts}, control=True)
        first = [(b"a-%d" % i, b"first-%d" % i) for i in range(3000)]
        second = [(b"a-%d" % i, b"second-%d" % i) for i in range(0, 3000, 3)]
        produce(m.bootstrap, topic, first)
        ends1 = self.ends(m, topic, parts)
        r = self.router(m, [(topic, "users", "raw", parts)])
        self.wait_caught_up(r, topic, ends1)
        self.assertEqual(r.stop(), 0)
        produce(m.bootstrap, topic, second)
        ends2 = self.ends(m, topic, parts)

        m.ctl("broker-down all")
        r.start()
        self.assertTrue(wait_until(lambda: len(r.workers()) == 4, 10))
        pids = r.workers()
        # Kafka is unreachable: every key ingested before is served, and Info
        # reports the offsets and counters stored in LMDB, not "nothing".
        t_down = time.monotonic()
        while time.monotonic() - t_down < 2.5:
            self.assert_values(r.addr, "users", dict(first))
            time.sleep(0.25)
        while_down = kafka_parts(info(r), topic)
        self.assertTrue(re.search(r"node\[\d\] WARN +kafka: no metadata for topic users yet "
                                  r"\(brokers .* unreachable", r.stderr()),
                        "the unreachable brokers must be logged")

        m.ctl("broker-up all")
        st = self.wait_caught_up(r, topic, ends2)
        self.assert_exactly_once(st, ends2)
        latest = dict(first)
        latest.update(dict(second))
        self.assert_values(r.addr, "users", latest)
        self.assertEqual(r.workers(), pids, "no worker may restart")
        self.assertEqual({p: (s["next_offset"], s["applied"], s["skipped"])
                          for p, s in while_down.items()},
                         {p: (end, end, 0) for p, end in ends1.items()},
                         "while the brokers were down after a restart, Info must report the "
                         "per-partition next_offset/applied/skipped stored in LMDB")
        if HAVE_CK:  # the cluster the stored offsets are positions in
            self.assertEqual({s["cluster_id"] for s in while_down.values()},
                             {cluster_id(m.bootstrap)})

    def test_injected_request_errors(self):
        topic, parts = "users", 8
        m = self.mock({topic: parts}, brokers=3, control=True)
        rnd = random.Random(6)
        recs = [(b"key-%d" % rnd.randrange(8000), b"%d" % i) for i in range(60000)]
        produce(m.bootstrap, topic, recs, **{"batch.num.messages": 100, "linger.ms": 5})
        ends = self.ends(m, topic, parts)
        self.assertEqual(sum(ends.values()), len(recs))
        m.ctl("rtt all 5")
        # Errors waiting for the first fetches, then more in mid-stream.
        m.ctl("error Fetch NOT_LEADER_FOR_PARTITION 3")
        m.ctl("error Metadata LEADER_NOT_AVAILABLE 1")
        r = self.router(m, [(topic, "users", "raw", parts)])
        pids = r.workers()
        self.wait_progress(r, topic, 5000, len(recs) // 2)
        for line in ("error Fetch UNKNOWN_TOPIC_OR_PART 4",
                     "error Fetch NOT_LEADER_FOR_PARTITION 4",
                     "error Fetch OFFSET_OUT_OF_RANGE 2",   # the consumer rewinds to earliest
                     "error Fetch _TRANSPORT 2",
                     "error Fetch REQUEST_TIMED_OUT 2",
                     "error OffsetCommit COORDINATOR_NOT_AVAILABLE 2"):
            m.ctl(line)
            time.sleep(0.1)
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)
        latest = {}
        for k, v in recs:
            latest[k] = v
        self.assert_values(r.addr, "users", latest)
        self.assertEqual(r.workers(), pids, "no worker may restart")
        self.assertNotIn("exited", r.stderr())

    def test_partition_count_mismatch_is_a_startup_error(self):
        m = self.mock({"users": 8})
        produce(m.bootstrap, "users", [(b"k-%d" % i, b"v") for i in range(100)])
        for parts, names in ((4, "kafka.bindings[].partitions"), (None, "cluster.partitions")):
            with self.subTest(partitions=parts):
                r = Router(shards=4, partitions=64, start=False, extra_yaml=ingest_yaml(
                    m.bootstrap, [("users", "users", "raw", parts)]))
                self._routers.append(r)
                self.addCleanup(r.close)
                r.proc = r.spawn()
                why = (r"kafka topic users has 8 partitions but kvs places table users by %d "
                       r".*partitions: 8" % (parts or 64))
                # A config that can never work is not restarted: the worker
                # exits with EX_CONFIG (78), the router stops with 78 too and
                # says why in its last line.
                try:
                    rc = r.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.fail("kvs-router still running 20 s after its workers refused the "
                              "mismatch:\n" + r.stderr())
                log = r.stderr()
                self.assertEqual(rc, 78, log)
                self.assertRegex(log, r"node\[(\d)\] ERROR .*" + why)
                self.assertRegex(log, r"router ERROR +shard \d \(pid \d+\) exited with status 78 "
                                      r"\(a fatal error: not restarting it\): " + why)
                last = log.rstrip("\n").split("\n")[-1]
                self.assertRegex(last, r"router ERROR +stopped: shard \d cannot run with this "
                                       r"configuration: " + why + r".*\(kvs-node exited with "
                                       r"status 78, EX_CONFIG; fix what it names and start again\)")
                self.assertIn(names, log)
                self.assertNotIn("restarting shard", log)
                self.assertNotIn("kafka: consuming", log, "no partition may be consumed")
                self.assertTrue(r.wait_all_gone(10), "processes left: %r"
                                % procs_for_config(r.config))

    def test_table_limit_never_stops_ingestion(self):
        # Two bound tables and storage.max_tables: 4. The bound tables exist
        # from the start, so a client creating tables until it is refused
        # gets two, and ingestion into both bound tables goes on. (Once
        # clients had taken every slot, ingestion used to fail mid-batch,
        # commit a prefix without its offsets and retry forever.)
        m = self.mock({"ta": 4, "tb": 4})
        n = self.node(m, [("ta", "a", "raw", 4), ("tb", "b", "raw", 4)],
                      storage={"max_tables": 4})
        created = 0
        with n.client() as c:
            for i in range(10):
                r = c.hset("client%d" % i, "k", "v")
                if r.status != 200:
                    self.assertEqual(r.status, 507, r.message)
                    self.assertIn("storage.max_tables (4)", r.message)
                    break
                created += 1
        self.assertEqual(created, 2, "clients may create max_tables minus the bound tables")
        recs = {t: [(b"%s-%d" % (t.encode(), i), b"v%d" % i) for i in range(1000)]
                for t in ("ta", "tb")}
        for t, rs in recs.items():
            produce(m.bootstrap, t, rs)
        for t, table in (("ta", "a"), ("tb", "b")):
            ends = self.ends(m, t, 4)
            self.assert_exactly_once(self.wait_caught_up(n, t, ends), ends)
            self.assert_values(n.addr, table, dict(recs[t]))
        self.assertNotIn("not stored", n.stderr())

    def test_full_disk_pauses_ingestion_and_loses_nothing(self):
        # While the worker's data file cannot grow, batches of records fail
        # at commit. No record may be stored without its offset, retries
        # back off instead of spinning (and logging) many times a second,
        # and once there is room every record is applied exactly once.
        m = self.mock({"users": 4})
        n = self.node(m, [("users", "users", "raw", 4)])
        n.limit_growth(0)
        recs = [(b"k-%d" % i, b"x" * 1000 + b"%d" % i) for i in range(3000)]
        produce(m.bootstrap, "users", recs)
        ends = self.ends(m, "users", 4)
        self.assertTrue(wait_until(lambda: "not stored" in n.stderr(), 15),
                        "no batch of records failed: the file size limit did not bite")
        time.sleep(3)
        log = n.stderr()
        self.assertLessEqual(log.count("write batch"), 12, "retries must back off")
        self.assertLessEqual(log.count("re-reading"), 2, "the log must not be flooded")
        for p, st in kafka_parts(info_pairs(n.addr), "users").items():
            self.assertEqual(st["applied"], max(st["next_offset"], 0),
                             "partition %d: records stored without their offsets: %r" % (p, st))
            self.assertLess(st["next_offset"], ends[p])
        n.unlimit_growth()
        parts = self.wait_caught_up(n, "users", ends)
        self.assert_exactly_once(parts, ends)
        self.assert_values(n.addr, "users", dict(recs))
        # `ingested` (records this process took from Kafka) counts each
        # record once, however often a lost batch made it read again.
        for p, st in parts.items():
            self.assertEqual(st["ingested"], st["applied"], "partition %d: %r" % (p, st))

    def test_records_stored_before_a_refused_reservation_count_once(self):
        # One turn of ingestion takes the records in reservations of up to
        # 1,024; the second is refused as on a disk without room (a test
        # hook), after the first was applied. The turn's batch commits the
        # first, and the rewind re-reads from the stored offsets: those
        # records are not read again, and must stay counted in `ingested`
        # (they were taken out of it: `ingested` ended below `applied`).
        m = self.mock({"users": 1})
        recs = [(b"k-%d" % i, b"v%d" % i) for i in range(4000)]
        produce(m.bootstrap, "users", recs)  # all there when the worker starts: one turn's
        ends = self.ends(m, "users", 1)
        n = self.node(m, [("users", "users", "raw", 1)],
                      env={"KVS_TEST_REFUSE_RESERVATION": "2"})
        parts = self.wait_caught_up(n, "users", ends)
        self.assert_exactly_once(parts, ends)
        self.assertIn("reservation 2 of records is refused", n.stderr())
        self.assertIn("not stored", n.stderr())
        self.assertEqual((parts[0]["applied"], parts[0]["ingested"]), (4000, 4000), parts[0])

    def test_records_not_followed_by_saved_offsets_count_once(self):
        # Fifty records without a key are skipped (counted, nothing
        # written), then the next record of the same reservation fails
        # before it writes (a test hook, as a failed allocation). Nothing
        # was written, so the turn's batch commits without the offsets
        # that would have moved past the fifty: they are read again and
        # must be counted once, not once a try.
        m = self.mock({"users": 1})
        recs = [(None, b"v%d" % i) for i in range(50)] + [(b"k", b"v")]
        produce(m.bootstrap, "users", recs)
        ends = self.ends(m, "users", 1)
        n = self.node(m, [("users", "users", "raw", 1)], env={"KVS_TEST_FAIL_RECORD": "51"})
        parts = self.wait_caught_up(n, "users", ends)
        self.assertIn("record 51 fails", n.stderr())
        self.assertIn("not stored", n.stderr())
        self.assertEqual((parts[0]["applied"], parts[0]["skipped"], parts[0]["ingested"]),
                         (1, 50, 51), parts[0])

    def test_batches_lost_between_stored_ones_are_logged_at_most_every_10_s(self):
        # Every other sync of the worker's data fails for 2 s (the shim of
        # test_eio) while records keep coming: lost batches alternate with
        # stored ones. Each lost batch was logged, since the one before had
        # been stored: ten lines a second where the README promises one per
        # 10 s. Every record is still applied exactly once.
        shim = os.path.join(BUILD_DIR, "libkvs_test_eio.so")
        at_ms = int(time.time() * 1000) + (1500 if not SANITIZED else 4000)
        env = {"LD_PRELOAD": shim, "KVS_TEST_EIO_ROLE": "node", "KVS_TEST_EIO_EVERY": "2",
               "KVS_TEST_EIO_CALLS": "fdatasync", "KVS_TEST_EIO_AT_MS": str(at_ms),
               "KVS_TEST_EIO_FOR_MS": "2000"}
        if SANITIZED:
            asan = os.environ.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
        m = self.mock({"users": 4})
        r = self.router(m, [("users", "users", "raw", 4)], shards=1, env=env, start=False)
        r.env["KVS_TEST_EIO_PATH"] = r.data_dir
        r.start()
        self.assertTrue(wait_until(lambda: len(r.workers()) == 1, 10))
        pids = r.workers()
        prod = kafkatest.producer(m.bootstrap, **{"linger.ms": 5})
        n = 0
        while time.time() * 1000 < at_ms + 2200:
            for _ in range(20):
                prod.produce("users", key=b"k%d" % n, value=b"v%d" % n)
                n += 1
            prod.poll(0)
            time.sleep(0.02)
        self.assertEqual(prod.flush(10), 0)
        ends = self.ends(m, "users", 4)
        self.assert_exactly_once(self.wait_caught_up(r, "users", ends), ends)
        self.assert_values(r.addr, "users", {b"k%d" % i: b"v%d" % i for i in range(0, n, 7)})
        log = r.stderr()
        lost = [ln for ln in log.splitlines() if "was not stored" in ln]
        self.assertGreater(log.count("ERROR commit:"), 3, "the shim failed too few syncs")
        self.assertEqual(len(lost), 1, "\n".join(lost[:5]))
        self.assertEqual(r.workers(), pids, "no worker may restart")

    def test_resume_after_restart_applies_nothing_twice(self):
        topic, parts = "users", 8
        m = self.mock({topic: parts})
        rnd = random.Random(8)
        first = [(b"key-%d" % rnd.randrange(3000), b"first-%d" % i) for i in range(6000)]
        second = [(b"key-%d" % rnd.randrange(4000), b"second-%d" % i) for i in range(4000)]
        produce(m.bootstrap, topic, first)
        ends1 = self.ends(m, topic, parts)
        r = self.router(m, [(topic, "users", "raw", parts)])
        self.assert_exactly_once(self.wait_caught_up(r, topic, ends1), ends1)
        self.assertEqual(r.stop(), 0, "kvs-router must exit 0 on SIGTERM")
        self.assertTrue(r.wait_all_gone())

        # The stored offsets and counters, read straight from LMDB.
        if MDB_DUMP:
            meta = {}
            for s in range(4):
                meta.update(self.kafka_meta(os.path.join(r.data_dir, "shard-%d" % s), topic))
            self.assertEqual(meta, {p: (end, end, 0, 0) for p, end in ends1.items()},
                             "LMDB __kvs kafka/<topic>/<p> = (next, applied, skipped, "
                             "misplaced)")

        produce(m.bootstrap, topic, second)
        ends2 = self.ends(m, topic, parts)
        r.start()
        st = self.wait_caught_up(r, topic, ends2)
        self.assert_exactly_once(st, ends2)
        self.assertEqual(sum(s["applied"] for s in st.values()), len(first) + len(second))
        latest = {}
        for k, v in first + second:
            latest[k] = v
        self.assert_values(r.addr, "users", latest)

    def kafka_meta(self, env, topic):
        """{partition: (next, applied, skipped, misplaced)} from `mdb_dump -s
        __kvs env` (hex dump: after HEADER=END, lines alternate key and
        value)."""
        out = subprocess.run([MDB_DUMP, "-s", "__kvs", env], capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.decode().splitlines()
        body = lines[lines.index("HEADER=END") + 1:]
        body = [ln.strip() for ln in body if ln.startswith(" ")]
        res = {}
        prefix = ("kafka/%s/" % topic).encode()
        for kh, vh in zip(body[0::2], body[1::2]):
            k, v = bytes.fromhex(kh), bytes.fromhex(vh)
            if k.startswith(prefix):
                self.assertEqual(len(v), 32, k)
                res[int(k[len(prefix):])] = tuple(int.from_bytes(v[i:i + 8], "little")
                                                  for i in (0, 8, 16, 24))
        return res

    def test_consumer_group_offsets_committed(self):
        topic, parts, group = "users", 8, "kvs-group-it"
        m = self.mock({topic: parts})
        produce(m.bootstrap, topic, [(b"k-%d" % i, b"v-%d" % i) for i in range(4000)])
        ends = self.ends(m, topic, parts)
        r = self.router(m, [(topic, "users", "raw", parts)], group_id=group)
        self.wait_caught_up(r, topic, ends)
        got = wait_until(lambda: committed(m.bootstrap, group, topic, parts) == ends and ends,
                         5.0, 0.2)
        self.assertEqual(committed(m.bootstrap, group, topic, parts), ends,
                         "offsets committed to group %s" % group)
        self.assertTrue(got)
        # And they follow new records.
        produce(m.bootstrap, topic, [(b"k-%d" % i, b"w-%d" % i) for i in range(1000)])
        ends2 = self.ends(m, topic, parts)
        self.wait_caught_up(r, topic, ends2)
        wait_until(lambda: committed(m.bootstrap, group, topic, parts) == ends2, 5.0, 0.2)
        self.assertEqual(committed(m.bootstrap, group, topic, parts), ends2)

    def test_consumer_group_offsets_recommitted_after_commit_errors(self):
        # A group commit the coordinator refuses once must be retried: the
        # group offsets may not stay behind LMDB until new records arrive.
        topic, parts, group = "users", 8, "kvs-group-err"
        m = self.mock({topic: parts}, control=True)
        r = self.router(m, [(topic, "users", "raw", parts)], group_id=group)
        self.assertTrue(wait_until(lambda: "kafka: consuming" in r.stderr(), 10))
        m.ctl("error OffsetCommit UNKNOWN_MEMBER_ID 4")  # one failed commit per worker
        produce(m.bootstrap, topic, [(b"k-%d" % i, b"v-%d" % i) for i in range(2000)])
        ends = self.ends(m, topic, parts)
        self.wait_caught_up(r, topic, ends)
        # kvs reports the failed group commit itself (librdkafka's own
        # COMMITFAIL line may be rate-limited away).
        self.assertTrue(wait_until(lambda: "committing offsets to consumer group" in r.stderr()
                                   or "COMMITFAIL" in r.stderr(), 5),
                        "the injected commit errors were never hit")
        wait_until(lambda: committed(m.bootstrap, group, topic, parts) == ends, 5.0, 0.2)
        self.assertEqual(committed(m.bootstrap, group, topic, parts), ends,
                         "offsets committed to group %s after a failed commit" % group)

    def test_value_format_round_trip(self):
        topic, parts = "typed", 4
        m = self.mock({topic: parts})

        def v(**kw):
            x = pb.Value()
            for name, val in kw.items():
                setattr(x, name, val)
            return x

        values = {
            b"int-0": v(integer_value=0),
            b"int-pos": v(integer_value=42),
            b"int-neg": v(integer_value=-7),
            b"int-max": v(integer_value=2 ** 63 - 1),
            b"int-min": v(integer_value=-2 ** 63),
            b"float-0": v(float_value=0.0),
            b"float": v(float_value=3.25),
            b"float-neg-tiny": v(float_value=-5e-324),
            b"float-big": v(float_value=1.7976931348623157e308),
            b"float-inf": v(float_value=float("-inf")),
            b"bool-true": v(bool_value=True),
            b"bool-false": v(bool_value=False),
            b"str": v(string_value="h\u00e9llo w\u00f6rld \U0001F600"),
            b"str-empty": v(string_value=""),
            b"str-nul": v(string_value="\x00a\x00b\x00"),  # U+0000 is text like any other
            b"bin": v(binary_value=bytes(range(256))),
            b"bin-empty": v(binary_value=b""),
        }
        # The payloads are the original KV protocol's encoding: integers are
        # int64 (two's complement varint, ten bytes when negative), not sint64.
        self.assertEqual(values[b"int-neg"].SerializeToString(), b"\x18\xf9" + b"\xff" * 8 + b"\x01")
        self.assertEqual(values[b"int-pos"].SerializeToString(), b"\x18\x2a")
        recs = [(k, val.SerializeToString()) for k, val in values.items()]
        # A later record of another type replaces the earlier one.
        recs.insert(0, (b"int-pos", v(string_value="old").SerializeToString()))
        produce(m.bootstrap, topic, recs)
        ends = self.ends(m, topic, parts)
        r = self.router(m, [(topic, "typed", "value", parts)])
        self.assert_exactly_once(self.wait_caught_up(r, topic, ends), ends)
        with r.client() as c:
            for k, want in values.items():
                resp = c.hget("typed", k)
                self.assertEqual(resp.status, 200, "%r: %s" % (k, resp.message))
                self.assertEqual(len(resp.values), 1)
                got = resp.values[0]
                self.assertEqual(got.WhichOneof("kind"), want.WhichOneof("kind"), k)
                self.assertEqual(got, want, k)
                self.assertEqual(got.SerializeToString(), want.SerializeToString(), k)
            resp = c.hmget("typed", sorted(values))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(list(resp.values), [values[k] for k in sorted(values)])

    def test_info_next_offset_before_any_record(self):
        """Before a partition has given a record, Info shows where ingestion
        starts, not "-1": the partition's first offset (0 for an empty
        one) with auto.offset.reset earliest, its end with latest; lag is
        measured from there."""
        topic, parts = "sparse", 8
        m = self.mock({topic: parts})
        # Two records: at most two of the eight partitions are not empty.
        placed = produce(m.bootstrap, topic, [(b"a", b"1"), (b"b", b"2")])
        ends = self.ends(m, topic, parts)
        used = {p for p, _ in placed}
        self.assertEqual(sum(ends.values()), 2)
        r = self.router(m, [(topic, "sparse", "raw", parts)])
        st = self.wait_caught_up(r, topic, ends)
        for p in range(parts):
            self.assertEqual(st[p]["next_offset"], ends[p], "partition %d: %r" % (p, st[p]))
            self.assertEqual(st[p]["lag"], 0, "partition %d: %r" % (p, st[p]))
            if p not in used:
                self.assertEqual((st[p]["next_offset"], st[p]["applied"]), (0, 0), st[p])
        self.assertEqual(r.stop(), 0)

        # auto.offset.reset latest: records produced before the first start
        # are never read, so they are not lag; ingestion starts at the end.
        m2 = self.mock({"late": 4})
        produce(m2.bootstrap, "late", [(b"k-%d" % i, b"old") for i in range(40)])
        ends = self.ends(m2, "late", 4)
        r2 = self.router(m2, [("late", "late", "raw", 4)],
                         properties={"auto.offset.reset": "latest"})
        st = self.wait_caught_up(r2, "late", ends)
        self.assertEqual({p: (s["next_offset"], s["lag"], s["applied"]) for p, s in st.items()},
                         {p: (end, 0, 0) for p, end in ends.items()})
        produce(m2.bootstrap, "late", [(b"k-%d" % i, b"new") for i in range(40)])
        ends2 = self.ends(m2, "late", 4)
        st = self.wait_caught_up(r2, "late", ends2)
        self.assertEqual(sum(s["applied"] for s in st.values()), 40)
        self.assert_values(r2.addr, "late", {b"k-%d" % i: b"new" for i in range(40)})


if __name__ == "__main__":
    unittest.main()
