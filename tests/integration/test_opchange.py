"""Integration tests for configuration changes made to a node that holds
data, between a stop and a start: real kvs-router, kvs-node workers and
(for bound tables) kvs-mock-kafka on loopback.

Each test writes data first, changes the config file, starts the node
again and reads the data back. kvs must either serve every key it stored
where reads look for it, or refuse to start (exit status 78) naming the
table and what to set; never answer 404 for a key it holds.

Every wait is bounded; every process is killed at cleanup.
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from kvstest import pyval, req_hmget, req_hset
from routertest import Router, edit_config, procs_for_config
from kafkatest import KCAT, ingest_yaml, kcat_consume, kcat_produce, wait_until
from test_ingest import KafkaFixtures

EX_CONFIG = 78
KEYS = [b"key-%d" % i for i in range(24)]


class OpChangeTest(KafkaFixtures, unittest.TestCase):
    def rewrite(self, r, old, new):
        edit_config(r, old, new)

    def hmget(self, r, table):
        with r.client() as c:
            got = c.call(req_hmget(table, KEYS))
        self.assertEqual(got.status, 200, got.message)
        return [pyval(v) for v in got.values]

    def wait_values(self, r, table, value):
        ok = wait_until(lambda: self.hmget(r, table) == [value] * len(KEYS), 20)
        self.assertTrue(ok, "%s: %r" % (table, self.hmget(r, table)))

    def refused(self, r, why):
        """Starts r, which must exit 78 at once with `why` (a regex) as the
        reason of a worker and of the router's last line."""
        r.proc = r.spawn()
        try:
            rc = r.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.fail("kvs-router still running after 20 s:\n" + r.stderr()[-3000:])
        log = r.stderr()
        self.assertEqual(rc, EX_CONFIG, log[-3000:])
        self.assertRegex(log, r"node\[\d\] ERROR +" + why)
        last = log.rstrip("\n").split("\n")[-1]
        self.assertRegex(last, r"router ERROR +stopped: shard \d cannot run with this "
                               r"configuration: " + why)
        self.assertTrue(r.wait_all_gone(10), "left: %r" % procs_for_config(r.config))

    def fill_and_stop(self, m, r, partitioner="murmur2_random"):
        """Produces KEYS = "v1" to topic users (by librdkafka's
        `partitioner`), waits until table users serves them all, and stops
        the router."""
        kcat_produce(m.bootstrap, "users", [(k, b"v1") for k in KEYS], partitioner=partitioner)
        self.wait_values(r, "users", "v1")
        self.assertEqual(r.stop(), 0)

    def kafka_router(self, m, binding, partitions, shards=2):
        r = Router(shards=shards, partitions=partitions, start=False,
                   extra_yaml=ingest_yaml(m.bootstrap, [binding],
                                          properties={"reconnect.backoff.max.ms": "500"}))
        self._routers.append(r)
        self.addCleanup(r.close)
        r.start()
        return r

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_binding_whose_table_is_renamed_fills_the_new_table_whole(self):
        """Offsets are stored per topic: the new table of a renamed binding
        resumed where the old one was, so it got none of the topic's
        records already applied (every key below: 404, silently). It now
        reads the topic from its start; the old table keeps its keys."""
        m = self.mock({"users": 4})
        # cluster.partitions 4: the old table, now bound to nothing, is
        # looked up exactly where its keys are.
        r = self.kafka_router(m, ("users", "users", "string", 4), partitions=4)
        self.fill_and_stop(m, r)
        self.rewrite(r, "table: users,", "table: members,")
        r.start()
        self.wait_values(r, "members", "v1")
        self.assertEqual(self.hmget(r, "users"), ["v1"] * len(KEYS))
        self.assertRegex(r.stderr(), r"WARN +kafka users: the \d+ partition offset\(s\) stored in "
                                     r"\S+/shard-\d are those of table users, but kafka.bindings "
                                     r"now binds the topic to table members: members reads them "
                                     r"again from their first record")

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_refused_rename_does_not_say_the_topic_is_read_again(self):
        """Renaming a table bound by crc32 is refused (the old table, now
        unbound, would be looked up elsewhere). The WARN that the new
        table reads the topic again came first, though nothing was."""
        m = self.mock({"users": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4, "crc32"), partitions=64)
        self.fill_and_stop(m, r, partitioner="consistent_random")  # librdkafka's crc32
        self.rewrite(r, "table: users,", "table: members,")
        self.refused(r, r"\S+/shard-\d: table \"users\" holds \d+ key\(s\) placed by its binding "
                        r"to topic users \(partitioner crc32, 4 partitions\)")
        self.assertNotIn("reads them again from their first record", r.stderr())

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_unbinding_a_table_placed_by_its_topic_is_refused(self):
        """A table filled from a topic (crc32 over 4 partitions) whose binding
        is removed: reads then looked its keys up by murmur2 over
        cluster.partitions and missed most of them. Refused, naming the
        binding to put back; put back, every key is served."""
        m = self.mock({"users": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4, "crc32"), partitions=64)
        self.fill_and_stop(m, r, partitioner="consistent_random")  # librdkafka's crc32
        with open(r.config) as f:
            bound = f.read()
        with open(r.config, "w") as f:
            f.write(bound[:bound.index("kafka:")])
        self.refused(r, r"\S+/shard-\d: table \"users\" holds \d+ key\(s\) placed by its binding "
                        r"to topic users \(partitioner crc32, 4 partitions\), but kafka.bindings "
                        r"no longer binds it, .* Bind it again as it was \(\{topic: users, table: "
                        r"users, partitions: 4, partitioner: crc32\}\)")
        with open(r.config, "w") as f:
            f.write(bound)
        r.start()
        self.wait_values(r, "users", "v1")

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_partitioner_that_misplaces_the_stored_keys_is_refused(self):
        """The producers place keys by murmur2. A binding naming crc32 is
        fixed to murmur2 (README, misplaced records): taken, every key is
        found. Set back to crc32 on an idle topic, no record came to be
        reported misplaced, and reads silently missed half the keys: now
        refused, naming the partitioner the stored keys fit."""
        m = self.mock({"users": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4, "crc32"), partitions=64)
        kcat_produce(m.bootstrap, "users", [(k, b"v1") for k in KEYS])
        self.assertTrue(wait_until(lambda: "misplaced" in r.stderr(), 20), r.stderr()[-3000:])
        self.assertEqual(r.stop(), 0)
        self.rewrite(r, "partitioner: crc32", "partitioner: murmur2")
        r.start()
        self.wait_values(r, "users", "v1")
        self.assertEqual(r.stop(), 0)
        self.rewrite(r, "partitioner: murmur2", "partitioner: crc32")
        self.refused(r, r"\S+/shard-\d: table \"users\" is now placed by partitioner crc32 over "
                        r"4 partitions, but of the \d+ keys sampled on this shard that places \d+ "
                        r"on other shards, while murmur2 over 4 partitions, its binding when they "
                        r"were stored, places \d+ here: reads would miss the keys stored here. "
                        r"Set partitioner: murmur2, partitions: 4 again in the binding of table "
                        r"users")

    def served(self, r, table, keys, value):
        with r.client() as c:
            got = c.call(req_hmget(table, keys))
        return got.status == 200 and [pyval(v) for v in got.values] == [value] * len(keys)

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_wrong_partitioner_is_refused_on_shards_of_few_keys(self):
        """12 keys over 4 shards, 3 or so a shard: the sample that judges a
        partitioner change needed 8 keys, so a shard of fewer took any
        change silently, and reads missed most keys. The old binding
        placed every one of them here; the new one misses some: refused."""
        keys = KEYS[:12]
        m = self.mock({"users": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4, "crc32"), 64, shards=4)
        kcat_produce(m.bootstrap, "users", [(k, b"v1") for k in keys],
                     partitioner="consistent_random")  # librdkafka's crc32
        self.assertTrue(wait_until(lambda: self.served(r, "users", keys, "v1"), 20))
        self.assertEqual(r.stop(), 0)
        self.rewrite(r, "partitioner: crc32", "partitioner: murmur2")
        self.refused(r, r"\S+/shard-\d: table \"users\" is now placed by partitioner murmur2 over "
                        r"4 partitions, but of the [1-7] keys sampled on this shard that places "
                        r"[1-7] on other shards, while crc32 over 4 partitions, its binding when "
                        r"they were stored, places [1-7] here")

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_partitioner_none_changed_to_a_hash_the_keys_do_not_fit_is_refused(self):
        """Records on random partitions, bound with partitioner none (reads
        ask every shard). Bound to crc32 instead, reads ask one shard per
        key and missed three quarters of them, silently: refused, unless
        the stored keys fit the new hash."""
        m = self.mock({"users": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4, "none"), 64, shards=4)
        kcat_produce(m.bootstrap, "users", [(k, b"v1") for k in KEYS], partitioner="random")
        self.assertTrue(wait_until(lambda: self.served(r, "users", KEYS, "v1"), 20))
        self.assertEqual(r.stop(), 0)
        self.rewrite(r, "partitioner: none", "partitioner: crc32")
        self.refused(r, r"\S+/shard-\d: table \"users\" is now placed by partitioner crc32 over 4 "
                        r"partitions, but of the \d+ keys sampled on this shard that places \d+ "
                        r"on other shards; they were stored under partitioner none")

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_partition_count_changed_with_kafka_off_is_judged_by_the_stored_keys(self):
        """With kafka.brokers empty no worker asks the brokers, so a binding's
        `partitions` changed meanwhile went unchecked: with 3 shards,
        murmur2 over 8 partitions looks a third of the keys up elsewhere
        (404). Refused, naming the binding to set back."""
        m = self.mock({"users": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4), 64, shards=3)
        self.fill_and_stop(m, r)
        self.rewrite(r, 'brokers: "%s"' % m.bootstrap, 'brokers: ""')
        r.start()  # Kafka off, same binding: every key is served
        self.assertEqual(self.hmget(r, "users"), ["v1"] * len(KEYS))
        self.assertEqual(r.stop(), 0)
        self.rewrite(r, "partitions: 4", "partitions: 8")
        self.refused(r, r"\S+/shard-\d: table \"users\" is now placed by partitioner murmur2 over "
                        r"8 partitions, .* Set partitioner: murmur2, partitions: 4 again in the "
                        r"binding of table users")

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_new_partition_count_the_brokers_confirm_says_what_reads_miss(self):
        """With Kafka on, a binding's new count is the brokers' to check (the
        topic grew, or was made anew): taken, but the keys stored under the
        old count that are now looked up elsewhere are counted in a WARN,
        not left to be found missing one read at a time."""
        m = self.mock({"users": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4), 64, shards=3)
        self.fill_and_stop(m, r)
        m8 = self.mock({"users": 8})  # the topic made anew with 8 partitions
        self.rewrite(r, 'brokers: "%s"' % m.bootstrap, 'brokers: "%s"' % m8.bootstrap)
        self.rewrite(r, "partitions: 4", "partitions: 8")
        r.start()
        self.assertRegex(r.stderr(), r"node\[\d\] WARN +\S+/shard-\d: table \"users\" is now "
                                     r"placed over 8 partitions \(4 when its keys were stored\): "
                                     r"[1-9]\d* of the \d+ keys sampled on this shard are looked "
                                     r"up on other shards from now on")
        # Recorded once the brokers confirmed the count: said once, not at
        # every start.
        # (every worker past its check: it recorded the layout then; a
        # worker may say "consuming" twice, so each is counted once)
        def consuming(since):
            return {m.group(1) for m in re.finditer(r"node\[(\d+)\] INFO +kafka: consuming",
                                                    r.stderr()[since:])}
        self.assertTrue(wait_until(lambda: len(consuming(0)) == 3, 20), r.stderr()[-3000:])
        said = r.stderr().count("is now placed over 8 partitions")
        self.assertEqual(r.stop(), 0)
        second = len(r.stderr())
        r.start()
        self.assertTrue(wait_until(lambda: len(consuming(second)) == 3, 20),
                        r.stderr()[-3000:])
        self.assertEqual(r.stderr().count("is now placed over 8 partitions"), said)

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_start_refused_for_a_wrong_partition_count_records_nothing(self):
        """The brokers check a binding's count after the store opened: a
        start refused because the topic has another count used to leave
        that count recorded with the data, so the next start named it as
        the binding the keys were placed by ("bind it again as it was")."""
        m = self.mock({"users": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4), 64, shards=2)
        self.fill_and_stop(m, r)
        self.rewrite(r, "partitions: 4", "partitions: 8")
        self.refused(r, r"kafka topic users has 4 partitions but kvs places table users by 8")
        self.rewrite(r, "table: users,", "table: users2,")  # users is bound to no topic now
        self.refused(r, r"\S+/shard-\d: table \"users\" holds \d+ key\(s\) placed by its "
                        r"binding to topic users \(partitioner murmur2, 4 partitions\)")
        self.rewrite(r, "table: users2,", "table: users,")
        self.rewrite(r, "partitions: 8", "partitions: 4")
        r.start()
        self.assertEqual(self.hmget(r, "users"), ["v1"] * len(KEYS))
        self.assertNotIn("is now placed", r.stderr())

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_new_partition_count_waits_for_the_brokers_to_confirm_it(self):
        """A binding's count changed while the brokers are down at the
        start: nothing checked it, so reads were placed by the new count
        (34 of 60 stored keys answered 404) and writes were produced by it
        to the wrong partitions, answered 200, then found missing. The
        table's reads and writes are now refused (503) until the brokers
        confirm the count; a wrong one is then refused as a resize."""
        m = self.mock({"users": 8}, control=True)
        r = self.kafka_router(m, ("users", "users", "string", 8), 64, shards=3)
        self.fill_and_stop(m, r)
        m.ctl("broker-down all")
        self.rewrite(r, "partitions: 8", "partitions: 12")
        r.start()
        self.assertTrue(wait_until(lambda: "wait for the brokers to confirm" in r.stderr(), 10),
                        r.stderr()[-3000:])
        self.assertRegex(r.stderr(), r"node\[\d\] WARN +kafka: kafka.bindings places table users "
                                     r"by 12 partitions of topic users, its data here was stored "
                                     r"by 8")
        unconfirmed = ("kafka.bindings places table users by 12 partitions of topic users, not by "
                       "the count its data was stored by, and the brokers have not confirmed")
        with r.client() as c:
            for k in KEYS[:8]:
                got = c.hget("users", k)
                self.assertEqual(got.status, 503, got.message)
                self.assertIn(unconfirmed, got.message)
            got = c.call(req_hset("users", b"new-key", "x"))
            self.assertEqual(got.status, 503, got.message)
            self.assertIn(unconfirmed, got.message)
        # (every worker's first metadata query has failed: each serves its
        # other tables, and takes a count the brokers say later as a resize)
        self.assertTrue(wait_until(lambda: r.stderr().count("no metadata for topic users yet")
                                   >= 3, 10), r.stderr()[-3000:])
        m.ctl("broker-up all")
        # The brokers say 8: the table stays refused, as a grown topic's is
        # (the node was serving), and the next start is refused.
        resized = "topic users has 8 partitions, but kvs placed table users on 12"
        self.assertTrue(wait_until(lambda: r.stderr().count(resized) >= 3, 20),
                        r.stderr()[-3000:])
        with r.client() as c:
            got = c.hget("users", KEYS[0])
            self.assertEqual(got.status, 503, got.message)
            self.assertIn(resized, got.message)
        self.assertEqual(r.stop(), 0)
        self.assertEqual(len(kcat_consume(m.bootstrap, "users")), len(KEYS))  # nothing produced
        self.rewrite(r, "partitions: 12", "partitions: 8")
        r.start()
        self.assertEqual(self.hmget(r, "users"), ["v1"] * len(KEYS))

    def grown_node(self):
        """A node of 2 shards whose table users, bound to topic users by 4
        partitions, holds KEYS = "v1", stopped; the topic (of 8 on the mock)
        is then said to have 8 (KVS_TEST_TOPIC_PARTITIONS_FILE: the mock
        cannot add partitions) and the binding says 8. Returns (mock,
        router)."""
        d = tempfile.mkdtemp(prefix="kvs-counts-")
        self.addCleanup(shutil.rmtree, d, True)
        counts = os.path.join(d, "counts")
        with open(counts, "w") as f:
            f.write("users 4\n")
        m = self.mock({"users": 8}, control=True)
        r = Router(shards=2, partitions=64, start=False,
                   env={"KVS_TEST_TOPIC_PARTITIONS_FILE": counts},
                   extra_yaml=ingest_yaml(m.bootstrap, [("users", "users", "string", 4)],
                                          properties={"reconnect.backoff.max.ms": "500"}))
        self._routers.append(r)
        self.addCleanup(r.close)
        r.start()
        with r.client() as c:
            for k in KEYS:
                got = c.call(req_hset("users", k, "v1"))
                self.assertEqual(got.status, 200, got.message)
        self.assertEqual(r.stop(), 0)
        with open(counts, "w") as f:
            f.write("users 8\n")  # the topic grew while the node was stopped
        self.rewrite(r, "partitions: 4", "partitions: 8")
        return m, r

    def test_a_grown_topic_the_brokers_confirm_at_the_start_is_served_at_once(self):
        """The workers ask the brokers before they serve: a table whose new
        count is not confirmed yet is refused, and was, for the few
        milliseconds a reachable broker's answer took (503 to the first
        requests after a start)."""
        m, r = self.grown_node()
        r.start()
        with r.client() as c:
            got = c.call(req_hmget("users", KEYS))
            self.assertEqual(got.status, 200, got.message)
            got = c.call(req_hset("users", b"new-key", "x"))
            self.assertEqual(got.status, 200, got.message)

    def test_a_grown_topic_confirmed_late_is_served_by_its_new_count(self):
        """The same change the brokers confirm once they answer: reads and
        writes wait until then, and are served after. (The mock cannot
        add partitions: KVS_TEST_TOPIC_PARTITIONS_FILE stands for the
        brokers' count, as in test_topic_grow; the topic has 8.)"""
        m, r = self.grown_node()
        m.ctl("broker-down all")
        r.start()
        with r.client() as c:
            got = c.hget("users", KEYS[0])
            self.assertEqual(got.status, 503, got.message)
            self.assertIn("the brokers have not confirmed", got.message)
        m.ctl("broker-up all")
        self.assertTrue(wait_until(lambda: r.stderr().count("its reads and writes are served")
                                   >= 2, 20), r.stderr()[-3000:])
        with r.client() as c:
            # (the workers' producers reconnect to the brokers on their own
            # time.) A producer started with the brokers down once never
            # served a delivery report again: an event queued before its
            # queue's wake-up pipe was enabled kept the pipe from being
            # written; every write then got "no acknowledgement" for good.
            last = []
            self.assertTrue(wait_until(lambda: last.append(c.call(req_hset("users", b"new-key",
                                                                          "x"))) or
                                       last[-1].status == 200, 20), last[-1].message)
            self.assertTrue(wait_until(lambda: c.hget("users", b"new-key").status == 200, 10))
            self.assertEqual(pyval(c.hget("users", b"new-key").values[0]), "x")
            got = c.call(req_hmget("users", KEYS))  # the keys that moved: README
            self.assertEqual(got.status, 200, got.message)

    @unittest.skipIf(KCAT is None, "kcat is needed")
    def test_a_table_bound_to_another_topic_is_warned_of_until_rebuilt(self):
        """A bound table given another topic keeps the old topic's records
        (the documented way: rebuild it from the new topic after the
        restart): served as they were, with a WARN saying what to run."""
        m = self.mock({"users": 4, "users2": 4})
        r = self.kafka_router(m, ("users", "users", "string", 4), partitions=64)
        self.fill_and_stop(m, r)
        self.rewrite(r, "topic: users,", "topic: users2,")
        r.start()
        self.assertEqual(self.hmget(r, "users"), ["v1"] * len(KEYS))
        self.assertRegex(r.stderr(), r"node\[\d\] WARN +\S+/shard-\d: table \"users\" holds \d+ "
                                     r"key\(s\) from topic users, and is now bound to topic "
                                     r"users2: they stay until the table is rebuilt from it "
                                     r"\(kvs-cli --config FILE rebuild users\)")

    def test_binding_a_table_clients_wrote_is_refused_unless_placed_alike(self):
        """Keys written to an unbound table sit where murmur2 over
        cluster.partitions puts them; a binding that places the table's
        keys otherwise made reads miss them. Refused; a binding that places
        them alike (murmur2, partitions = cluster.partitions) serves them."""
        r = self.router_plain()
        self.assertEqual(r.stop(), 0)
        kafka = ('kafka:\n  brokers: ""\n  bindings:\n'
                 '    - {topic: users, table: users, partitions: 4, partitioner: crc32}\n')
        with open(r.config, "a") as f:
            f.write(kafka)
        self.refused(r, r"\S+/shard-\d: table \"users\" holds \d+ key\(s\) written while it was "
                        r"bound to no topic, placed by murmur2 over cluster.partitions \(64\), but "
                        r"kafka.bindings now binds it to topic users, whose keys are placed by "
                        r"crc32 over 4 partitions: reads would miss keys stored here")
        self.rewrite(r, "partitions: 4, partitioner: crc32", "partitions: 64")
        r.start()
        self.assertEqual(self.hmget(r, "users"), ["v1"] * len(KEYS))

    def test_a_data_dir_of_another_node_is_refused(self):
        """Two nodes of a cluster.remote cluster with their data_dir swapped
        both started, each with empty environments for its own shards, and
        answered every key as missing. A worker whose shard directory is
        missing while data_dir holds a shard another node runs now refuses
        to start; once its directory exists (created empty on purpose), it
        starts."""
        gone = "127.0.0.1:1"  # the other node: not needed to start
        r = Router(shards=4, partitions=64, start=False, remote={0: gone, 1: gone})
        self._routers.append(r)
        self.addCleanup(r.close)
        r.start()  # runs shards 2 and 3: their environments are in data_dir
        self.assertEqual(r.stop(), 0)
        self.rewrite(r, "shard: 0,", "shard: 2,")
        self.rewrite(r, "shard: 1,", "shard: 3,")
        self.refused(r, r"\S+/shard-[01] does not exist, but data_dir \S+ holds shard-2, shard-3, "
                        r"which this node does not run \(cluster.remote names the node that "
                        r"does\): data_dir looks like another node's, .* to start shard [01] "
                        r"empty, create the directory \S+/shard-[01]")
        for s in (0, 1):
            os.mkdir(os.path.join(r.data_dir, "shard-%d" % s), 0o700)
        r.start()
        self.assertEqual(sorted(r.workers()), [0, 1])

    def router_plain(self):
        """A 2-shard router with KEYS written to table users, bound to nothing."""
        r = Router(shards=2, partitions=64, start=False)
        self._routers.append(r)
        self.addCleanup(r.close)
        r.start()
        with r.client() as c:
            for k in KEYS:
                self.assertEqual(c.call(req_hset("users", k, "v1")).status, 200)
        return r


if __name__ == "__main__":
    unittest.main()
