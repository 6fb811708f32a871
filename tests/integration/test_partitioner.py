"""Integration tests for kafka.bindings[].partitioner (issue: every Kafka
producer lands where the router looks), through a real kvs-router, its
kvs-node workers and kvs-mock-kafka.

- Each producer family with its own partitioner (kcat and confluent-kafka
  with each librdkafka `partitioner=`, and confluent-kafka's default) puts
  5,000 keys (text and non-UTF-8) on the partitions the Python reference
  (routertest.partition_by: the Java murmur2 port, zlib.crc32, FNV-1a) says;
  kvs bound with the matching `partitioner:` finds every key through the
  router with Hget and Hmget, counts nothing as misplaced, and
  `kvs-cli keyslot` names each record's partition.
- A mismatched pair (kcat consistent_random, binding murmur2): the
  `misplaced` counters equal the records whose partitions differ, the log
  names `partitioner: crc32` (at ERROR for the first batch), the records
  are stored (Hscan) but only the ones placed alike are found by key, and
  rebinding with crc32 makes every key readable with no re-ingestion.
- Two records sent to explicit partitions among records placed right: the
  log blames their producers, not the binding (no partitioner named).
- `partitioner: none` with records sent to explicit partitions: every key
  readable through the router (reads ask every owning shard); writes 400.
- Offsets records of the previous 24-byte format still load.

The fixtures are test_ingest.KafkaFixtures, shared with test_ingest. Every wait is bounded; each test takes seconds.

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import os
import random
import shutil
import subprocess
import unittest

import kafkatest
import test_ingest
from kafkatest import KCAT, kcat_consume, kcat_produce, produce, wait_until
from kvstest import BUILD_DIR, req_hexist, req_hget, req_hmexist
from routertest import partition_by, partition_of

HAVE_CK = kafkatest.Producer is not None
CLI = os.path.join(BUILD_DIR, "kvs-cli")
MDB_DUMP, MDB_LOAD = shutil.which("mdb_dump"), shutil.which("mdb_load")
PARTS, SHARDS, KEYS = 8, 4, 5000
# Key bytes: anything but what kcat's "key:value\n" input and the
# "%k\t%p..." output format split on (and NUL, which kcat's -K cannot carry).
KEY_BYTES = [b for b in range(1, 256) if b not in b":\n\t\r"]


def make_keys(tag, n=KEYS):
    """n distinct keys: a third plain text, the rest random bytes (mostly
    not UTF-8) with a unique suffix."""
    rnd = random.Random(tag)
    keys = []
    for i in range(n):
        if i % 3 == 0:
            keys.append(b"%s-%d" % (tag.encode(), i))
        else:
            keys.append(bytes(rnd.choice(KEY_BYTES) for _ in range(rnd.randrange(0, 20)))
                        + b"~%d" % i)
    return keys


def cli_quote(b):
    """A kvs-cli session token holding exactly the bytes b."""
    return '"' + "".join("\\x%02x" % c for c in b) + '"'


@unittest.skipIf(KCAT is None or not HAVE_CK, "kcat and python3-confluent-kafka are needed")
class PartitionerTest(test_ingest.KafkaFixtures, unittest.TestCase):
    # ---- helpers ---------------------------------------------------------------------

    def assert_hget_all(self, r, table, expected, chunk=500):
        """Hget (pipelined) of every key through the router: 200 and its value."""
        keys = sorted(expected)
        wrong = []
        with r.client(timeout=30) as c:
            for i in range(0, len(keys), chunk):
                part = keys[i:i + chunk]
                for k, resp in zip(part, c.pipeline(req_hget(table, k) for k in part)):
                    if resp.status != 200 or resp.values[0].binary_value != expected[k]:
                        wrong.append((k, resp.status, resp.message))
        self.assertEqual(wrong[:5], [], "%d of %d keys not found by Hget through the router"
                         % (len(wrong), len(keys)))

    def keyslots(self, r, table, keys):
        """[(partition, shard)] per key from one `kvs-cli --config --raw`
        session of keyslot lines."""
        lines = "".join("keyslot %s %s\n" % (table, cli_quote(k)) for k in keys)
        p = subprocess.run([CLI, "--config", r.config, "--port", str(r.port), "--raw"],
                           input=lines.encode(), capture_output=True, timeout=30)
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        out = [tuple(int(x) for x in ln.split()) for ln in p.stdout.decode().splitlines()]
        self.assertEqual(len(out), len(keys))
        return out

    def check_family(self, r, m, topic, table, partitioner, keys):
        """Every record of `topic` is on the partition `partitioner` gives its
        key; kvs ingested it there (misplaced 0) and finds it by key."""
        landed = kcat_consume(m.bootstrap, topic)
        self.assertEqual(len(landed), len(keys), topic)
        wrong = [(k, p) for k, p, _ in landed if p != partition_by(partitioner, k, PARTS)]
        self.assertEqual(wrong[:5], [], "%s: records not where %s puts them"
                         % (topic, partitioner))
        self.assertGreater(len({p for _, p, _ in landed}), PARTS // 2, topic)
        st = self.wait_caught_up(r, topic, self.ends(m, topic, PARTS))
        self.assertEqual({p: s["misplaced"] for p, s in st.items()},
                         {p: 0 for p in range(PARTS)}, topic)
        expected = {k: b"v-" + k for k in keys}
        self.assert_hget_all(r, table, expected)
        self.assert_values(r.addr, table, expected)
        sample = keys[::10]
        slots = self.keyslots(r, table, sample)
        where = {k: p for k, p, _ in landed}
        self.assertEqual(slots, [(where[k], where[k] % SHARDS) for k in sample],
                         "kvs-cli keyslot must name the partition each record is on")

    # ---- tests -----------------------------------------------------------------------------

    def test_kcat_each_partitioner_found_through_router(self):
        fams = [("murmur2_random", "murmur2"), ("consistent_random", "crc32"),
                ("fnv1a_random", "fnv1a")]
        m = self.mock({"k-" + kvs: PARTS for _, kvs in fams})
        keys = {kvs: make_keys("k-" + kvs) for _, kvs in fams}
        for rdk, kvs in fams:
            kcat_produce(m.bootstrap, "k-" + kvs, [(k, b"v-" + k) for k in keys[kvs]],
                         partitioner=rdk)
        r = self.router(m, [("k-" + kvs, "t" + kvs, "raw", PARTS, kvs) for _, kvs in fams],
                        shards=SHARDS)
        for _, kvs in fams:
            self.check_family(r, m, "k-" + kvs, "t" + kvs, kvs, keys[kvs])
        self.assertNotRegex(r.stderr(), "came on another partition|exited")

    def test_confluent_kafka_each_partitioner_found_through_router(self):
        # None: no `partitioner` property, librdkafka's default
        # (consistent_random), as a Python/Go/.NET user produces by default.
        fams = [(None, "crc32"), ("murmur2_random", "murmur2"), ("fnv1a_random", "fnv1a")]
        m = self.mock({"c-" + kvs: PARTS for _, kvs in fams})
        keys = {kvs: make_keys("c-" + kvs) for _, kvs in fams}
        for rdk, kvs in fams:
            produce(m.bootstrap, "c-" + kvs, [(k, b"v-" + k) for k in keys[kvs]],
                    partitioner=rdk)
        r = self.router(m, [("c-" + kvs, "t" + kvs, "raw", PARTS, kvs) for _, kvs in fams],
                        shards=SHARDS)
        for _, kvs in fams:
            self.check_family(r, m, "c-" + kvs, "t" + kvs, kvs, keys[kvs])
        self.assertNotRegex(r.stderr(), "came on another partition|exited")

    def test_mismatch_counted_reported_stored_and_fixable(self):
        topic = "users"
        m = self.mock({topic: PARTS})
        keys = make_keys("mis")
        kcat_produce(m.bootstrap, topic, [(k, b"v-" + k) for k in keys],
                     partitioner="consistent_random")
        landed = kcat_consume(m.bootstrap, topic)
        ends = self.ends(m, topic, PARTS)
        want = {p: 0 for p in range(PARTS)}
        for k, p, _ in landed:
            want[p] += p != partition_of(k, PARTS)
        self.assertGreater(sum(want.values()), KEYS * 3 // 4)

        r = self.router(m, [(topic, "users", "raw", PARTS)], shards=SHARDS)  # murmur2
        pids = r.workers()
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)
        self.assertEqual({p: s["misplaced"] for p, s in st.items()}, want,
                         "misplaced per partition = records whose partition differs from "
                         "murmur2's")

        # Reported within seconds, naming crc32, at ERROR for a first batch.
        reports = lambda: [ln for ln in r.stderr().splitlines()  # noqa: E731
                           if "came on another partition than partitioner: murmur2" in ln]
        self.assertTrue(wait_until(lambda: len(reports()) >= SHARDS, 5), r.stderr()[-3000:])
        for ln in reports():
            self.assertRegex(ln, r"node\[\d\] (WARN|ERROR) +kafka users: ")
            self.assertRegex(ln, r'e\.g\. key "[^"]*" came on partition \d+ where kvs expected '
                                 r"\d+")
            self.assertTrue("set partitioner: crc32 in the kafka.bindings entry of topic users"
                            in ln or "partitioners crc32 and" in ln, ln)
            self.assertNotRegex(ln, "set partitioner: (murmur2|fnv1a|none)")
        self.assertTrue(any("ERROR" in ln and "nearly all records of the first batch" in ln
                            for ln in reports()))

        # Stored: a scan sees every key; by key, only those placed alike.
        with r.client() as c:
            self.assertEqual(sorted(k for k, _ in c.scan_all("users")), sorted(keys))
            alike = [k for k in keys if partition_by("crc32", k, PARTS) % SHARDS ==
                     partition_of(k, PARTS) % SHARDS]
            found = [k for k in keys if c.hget("users", k).status == 200]
        self.assertEqual(sorted(found), sorted(alike))
        self.assertEqual(r.workers(), pids, "no worker may restart")
        self.assertNotIn("exited", r.stderr())

        # Rebound with the producers' partitioner, every key is found, with
        # nothing ingested again; the counters persisted.
        self.assertEqual(r.stop(), 0)
        with open(r.config) as f:
            text = f.read()
        with open(r.config, "w") as f:
            f.write(text.replace("format: raw, partitions: 8}",
                                 "format: raw, partitions: 8, partitioner: crc32}"))
        r.start()
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)
        self.assertEqual({p: s["misplaced"] for p, s in st.items()}, want)
        self.assert_values(r.addr, "users", {k: b"v-" + k for k in keys})

    def test_a_stray_record_is_not_blamed_on_the_partitioner(self):
        """Records placed by the binding's partitioner and two sent to explicit
        partitions where crc32 (not murmur2) puts their keys: a stray fits
        some other hash often, so the log says the producers chose those
        partitions, names no partitioner to set, and is no ERROR."""
        topic = "orders"
        m = self.mock({topic: PARTS})
        keys = make_keys("ok", 2000)
        kcat_produce(m.bootstrap, topic, [(k, b"v-" + k) for k in keys],
                     partitioner="murmur2_random")
        strays = [k for k in make_keys("stray", 200)
                  if partition_by("crc32", k, PARTS) != partition_of(k, PARTS)][:2]
        prod = kafkatest.producer(m.bootstrap)
        for k in strays:
            prod.produce(topic, key=k, value=b"s", partition=partition_by("crc32", k, PARTS))
        self.assertEqual(prod.flush(30), 0)
        del prod
        ends = self.ends(m, topic, PARTS)
        r = self.router(m, [(topic, "orders", "raw", PARTS)], shards=SHARDS)  # murmur2
        st = self.wait_caught_up(r, topic, ends)
        self.assertEqual(sum(s["misplaced"] for s in st.values()), len(strays))
        reports = lambda: [ln for ln in r.stderr().splitlines()  # noqa: E731
                           if "came on another partition than partitioner: murmur2" in ln]
        self.assertTrue(wait_until(lambda: sum(int(ln.split(": ")[1].split()[0])
                                               for ln in reports()) == len(strays), 15),
                        r.stderr()[-3000:])
        for ln in reports():
            self.assertRegex(ln, r"node\[\d\] WARN +kafka orders: ")
            # (a stray that came a fetch later, in a period of its own, is
            # judged on every record its worker took)
            self.assertRegex(ln, r"the other \d+ of \d+ record\(s\)( this worker has taken)? came "
                                 r"where partitioner: "
                                 r"murmur2 puts them: the misplaced ones were sent to partitions "
                                 r"of their producers' choosing")
            self.assertNotIn("set partitioner: crc32", ln)
        self.assertNotIn("nearly all records", r.stderr())

    def test_partitioner_none_reads_ask_every_shard(self):
        topic, n = "events", 2000
        m = self.mock({topic: PARTS})
        rnd = random.Random(11)
        keys = make_keys("none", n)
        prod = kafkatest.producer(m.bootstrap)
        for k in keys:  # explicit partitions, unrelated to any hash
            prod.produce(topic, key=k, value=b"v-" + k, partition=rnd.randrange(PARTS))
        self.assertEqual(prod.flush(30), 0)
        del prod
        ends = self.ends(m, topic, PARTS)
        r = self.router(m, [(topic, "events", "raw", PARTS, "none")], shards=SHARDS)
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)
        self.assertEqual(sum(s["misplaced"] for s in st.values()), 0)
        expected = {k: b"v-" + k for k in keys}
        self.assert_hget_all(r, "events", expected)
        missing = [b"nope-%d" % i for i in range(20)]
        self.assert_values(r.addr, "events", {**expected, **{k: None for k in missing}})
        with r.client() as c:
            sample = keys[:200] + missing
            got = [x.values[0].bool_value for x in c.pipeline(req_hexist("events", k)
                                                              for k in sample)]
            self.assertEqual(got, [k in expected for k in sample])
            resp = c.call(req_hmexist("events", sample))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual([v.bool_value for v in resp.values], [k in expected for k in sample])
            self.assertEqual(c.hget("events", b"nope-1").status, 404)
            for resp in (c.hset("events", keys[0], b"x"), c.hdel("events", keys[0]),
                         c.hmset("events", [(keys[0], b"x")]), c.hmdel("events", keys[:3])):
                self.assertEqual(resp.status, 400)
                self.assertIn('bound to Kafka topic "events" with partitioner: none',
                              resp.message)
            self.assertEqual(len(c.scan_all("events")), n)
        self.assert_values(r.addr, "events", {keys[0]: b"v-" + keys[0]})  # unchanged
        self.assertNotRegex(r.stderr(), "came on another partition|exited")

    def test_edge_keys_odd_partition_counts_and_table_names(self):
        # What a hash port gets wrong: 1- to 3-byte keys (the tail, every
        # byte value, high bits included), keys of 4 to 16 bytes around
        # the block size, keys up to the 511-byte limit, partition counts
        # that are not powers of two (7 over 3 shards, 12 over 5), and table
        # names holding '/' and non-ASCII text. kcat places every key with
        # each librdkafka partitioner; the router must find each one (its
        # local reads and its workers alike) and no record is misplaced.
        rnd = random.Random(7)
        keys = [bytes([b]) for b in KEY_BYTES]
        keys += [bytes(rnd.choice(KEY_BYTES) for _ in range(n)) for n in (2, 3) for _ in range(150)]
        keys += [bytes(rnd.choice(KEY_BYTES) for _ in range(n)) for n in range(4, 17)
                 for _ in range(8)]
        keys += [bytes(rnd.choice(KEY_BYTES) for _ in range(rnd.randrange(200, 512)))
                 for _ in range(40)]
        keys += [bytes(rnd.choice(KEY_BYTES) for _ in range(511)) for _ in range(5)]
        keys = list(dict.fromkeys(keys))  # distinct, in order
        fams = [("murmur2_random", "murmur2", 7), ("consistent_random", "crc32", 12),
                ("fnv1a_random", "fnv1a", 7), ("consistent", "crc32", 7)]
        topics = {"e-%s-%d" % (rdk, n): n for rdk, _, n in fams}
        tables = {"e-%s-%d" % (rdk, n): "edge/%s/\u00e9t\u00e9-%d" % (rdk, n) for rdk, _, n in fams}
        m = self.mock(topics)
        landed, ends = {}, {}
        for rdk, kvs, n in fams:
            topic = "e-%s-%d" % (rdk, n)
            kcat_produce(m.bootstrap, topic, [(k, b"v-" + k) for k in keys], partitioner=rdk)
            # Where kcat put each record: read once (0.6 s a topic); each
            # router below must find them all there. That the topics do not
            # change meanwhile, their end offsets show at each router.
            landed[topic] = kcat_consume(m.bootstrap, topic)
            self.assertEqual(sorted(k for k, _, _ in landed[topic]), sorted(keys), topic)
            wrong = [(k, p) for k, p, _ in landed[topic] if p != partition_by(kvs, k, n)]
            self.assertEqual(wrong[:5], [], "%s: records not where %s puts them" % (topic, kvs))
            ends[topic] = self.ends(m, topic, n)
        for shards in (3, 5):
            r = self.router(m, [(t, tables[t], "raw", topics[t], kvs) for rdk, kvs, n in fams
                                for t in ["e-%s-%d" % (rdk, n)]], shards=shards)
            for rdk, kvs, n in fams:
                topic = "e-%s-%d" % (rdk, n)
                self.assertEqual(self.ends(m, topic, n), ends[topic], topic)
                st = self.wait_caught_up(r, topic, ends[topic])
                self.assertEqual(sum(s["misplaced"] for s in st.values()), 0, topic)
                expected = {k: b"v-" + k for k in keys}
                self.assert_hget_all(r, tables[topic], expected)
                self.assert_values(r.addr, tables[topic], expected)
                sample = keys[::7]
                where = {k: p for k, p, _ in landed[topic]}
                self.assertEqual(self.keyslots(r, tables[topic], sample),
                                 [(where[k], where[k] % shards) for k in sample], topic)
            self.assertNotRegex(r.stderr(), "came on another partition|exited")
            self.assertEqual(r.stop(), 0)

    @unittest.skipIf(MDB_DUMP is None or MDB_LOAD is None, "mdb_dump and mdb_load are needed")
    def test_offsets_record_of_24_bytes_still_loads(self):
        # Data directories written before `misplaced` existed hold 24-byte
        # kafka/<topic>/<p> records (next, applied, skipped): they load with
        # misplaced 0, resume where they were, and are rewritten as 32 bytes.
        topic = "users"
        m = self.mock({topic: PARTS})
        recs = [(b"k-%d" % i, b"v-%d" % i) for i in range(1000)]
        kcat_produce(m.bootstrap, topic, recs)
        ends = self.ends(m, topic, PARTS)
        r = self.router(m, [(topic, "users", "raw", PARTS)], shards=SHARDS)
        self.wait_caught_up(r, topic, ends)
        self.assertEqual(r.stop(), 0)
        for s in range(SHARDS):
            self.truncate_offsets_records(os.path.join(r.data_dir, "shard-%d" % s), topic)
        r.start()
        st = self.wait_caught_up(r, topic, ends)
        self.assert_exactly_once(st, ends)  # applied == end: nothing applied twice
        self.assertEqual(sum(s["misplaced"] for s in st.values()), 0)
        more = [(b"k-%d" % i, b"w-%d" % i) for i in range(500)]
        kcat_produce(m.bootstrap, topic, more)
        ends2 = self.ends(m, topic, PARTS)
        self.assert_exactly_once(self.wait_caught_up(r, topic, ends2), ends2)
        self.assert_values(r.addr, "users", dict(recs + more))

    def truncate_offsets_records(self, env, topic):
        """Rewrites every kafka/<topic>/<p> record of env's __kvs to its first
        24 bytes (the previous format), with mdb_dump and mdb_load."""
        out = subprocess.run([MDB_DUMP, "-s", "__kvs", env], capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.decode().splitlines()
        start = lines.index("HEADER=END") + 1
        prefix = ("kafka/%s/" % topic).encode().hex()
        n = 0
        for i in range(start, len(lines) - 1, 2):
            if lines[i].startswith(" " + prefix):
                self.assertEqual(len(lines[i + 1].strip()), 64, "a 32-byte record")
                lines[i + 1] = lines[i + 1][:1 + 48]
                n += 1
        self.assertGreater(n, 0)
        load = subprocess.run([MDB_LOAD, "-s", "__kvs", env], input="\n".join(lines) + "\n",
                              text=True, capture_output=True, timeout=10)
        self.assertEqual(load.returncode, 0, load.stderr)


if __name__ == "__main__":
    unittest.main()
