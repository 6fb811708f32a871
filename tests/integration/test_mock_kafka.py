"""Integration tests for kvs-mock-kafka, the mock Kafka cluster for tests.

Each test starts build/kvs-mock-kafka on loopback with its own temporary
directory, waits for its --ready-file, and talks to it with real Kafka
clients: kcat (a librdkafka CLI) and python3-confluent-kafka. The keyed
round trips check that the partition every record lands in is the one Kafka's
default (Java) partitioner gives, murmur2 implemented here from the Kafka
source, which is the placement the kvs router relies on.

Every wait is bounded; tearDown kills whatever a test left running.

Environment: KVS_BUILD_DIR (default ../../build) locates kvs-mock-kafka.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.environ.get("KVS_BUILD_DIR") or os.path.join(HERE, "..", "..", "build")
MOCK = os.path.join(BUILD_DIR, "kvs-mock-kafka")
KCAT = shutil.which("kcat") or shutil.which("kafkacat")

try:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
except ImportError:  # the kcat tests still run
    Producer = None

READY_TIMEOUT = 15.0  # seconds for the mock to print bootstrap.servers
CLIENT_TIMEOUT = 30.0  # seconds for one produce or consume run
TOPIC = "users"
PARTITIONS = 8
RECORDS = 1000


def murmur2(data):
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2) as a
    signed 32-bit int, exactly as the Java client computes it."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail, rest = length - length % 4, length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def kafka_partition(key, partitions):
    """The partition Kafka's default partitioner picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def records(n=RECORDS, prefix="key"):
    """n (key, value) byte pairs with distinct keys and no ':' in keys."""
    return [(b"%s-%d" % (prefix.encode(), i), b"value-%d" % i) for i in range(n)]


class MockKafkaTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kvs-mock-kafka-test-")
        self.procs = []
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- helpers ------------------------------------------------------------------

    def stderr_of(self, name="mock.log"):
        with open(os.path.join(self.tmp, name), errors="replace") as f:
            return f.read()

    def start_mock(self, *args, control=False):
        """Starts kvs-mock-kafka and waits for its ready file. Returns
        (process, bootstrap servers). The stdout line must agree."""
        ready = os.path.join(self.tmp, "ready")
        log = open(os.path.join(self.tmp, "mock.log"), "w")
        cmd = [MOCK, "--ready-file", ready] + list(args) + (["--control"] if control else [])
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE if control else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        log.close()
        self.procs.append(p)
        deadline = time.monotonic() + READY_TIMEOUT
        while not os.path.exists(ready):
            if p.poll() is not None:
                self.fail("kvs-mock-kafka exited with %d before it was ready:\n%s"
                          % (p.returncode, self.stderr_of()))
            if time.monotonic() > deadline:
                self.fail("kvs-mock-kafka not ready after %.0f s:\n%s"
                          % (READY_TIMEOUT, self.stderr_of()))
            time.sleep(0.02)
        with open(ready) as f:
            bootstrap = f.read()
        self.assertTrue(bootstrap.endswith("\n"), "ready file must hold one whole line")
        bootstrap = bootstrap.strip()
        # The stdout line is flushed before the ready file is renamed into place.
        self.assertEqual(p.stdout.readline(), "bootstrap.servers=%s\n" % bootstrap)
        for hostport in bootstrap.split(","):
            host, port = hostport.rsplit(":", 1)
            self.assertEqual(host, "127.0.0.1")
            self.assertTrue(0 < int(port) < 65536)
        return p, bootstrap

    def control(self, p, line):
        """Sends one control command and returns its one-line answer."""
        p.stdin.write(line + "\n")
        p.stdin.flush()
        return p.stdout.readline().rstrip("\n")

    def kcat(self, *args, input=None):
        r = subprocess.run([KCAT] + list(args), input=input, capture_output=True,
                           timeout=CLIENT_TIMEOUT)
        self.assertEqual(r.returncode, 0, "kcat %s failed: %s" % (" ".join(args), r.stderr))
        return r.stdout

    def producer(self, bootstrap, **extra):
        conf = {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"}
        conf.update(extra)
        return Producer(conf)

    def consumer(self, bootstrap, group="kvs-mock-test", **extra):
        conf = {"bootstrap.servers": bootstrap, "group.id": group,
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50}
        conf.update(extra)
        c = Consumer(conf)
        self.clients.append(c)
        return c

    def produce_all(self, prod, recs, timeout=CLIENT_TIMEOUT):
        """Produces recs; returns {key: partition} of the delivered ones and
        the list of delivery errors."""
        placed, errors = {}, []

        def on_delivery(err, msg):
            if err is not None:
                errors.append(err)
            else:
                placed[msg.key()] = msg.partition()

        for k, v in recs:
            prod.produce(TOPIC, key=k, value=v, on_delivery=on_delivery)
            prod.poll(0)
        prod.flush(timeout)
        return placed, errors

    def consume_all(self, c, expected, timeout=CLIENT_TIMEOUT):
        """Reads every partition of TOPIC from the beginning until `expected`
        records arrived. Returns {key: (value, partition)}."""
        c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        got = {}
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for msg in c.consume(num_messages=500, timeout=0.5):
                self.assertIsNone(msg.error(), msg.error())
                got[msg.key()] = (msg.value(), msg.partition())
        return got

    def assert_placed_by_murmur2(self, recs, got):
        """got: {key: (value, partition)} must hold every record, each in the
        partition Kafka's murmur2 partitioner gives its key."""
        self.assertEqual(len(got), len(recs))
        for k, v in recs:
            self.assertIn(k, got)
            self.assertEqual(got[k], (v, kafka_partition(k, PARTITIONS)), k)

    # ---- tests ----------------------------------------------------------------------

    def test_murmur2_matches_kafka_vectors(self):
        # From Kafka's UtilsTest.testMurmur2.
        self.assertEqual(murmur2(b"21"), -973932308)
        self.assertEqual(murmur2(b"foobar"), -790332482)
        self.assertEqual(murmur2(b"a-little-bit-long-string"), -985981536)
        self.assertEqual(murmur2(b"a-little-bit-longer-string"), -1486304829)
        self.assertEqual(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971)
        self.assertEqual(murmur2(b"abc"), 479470107)

    @unittest.skipIf(KCAT is None, "kcat is not installed")
    def test_kcat_roundtrip_uses_murmur2_partitions(self):
        _, bootstrap = self.start_mock("--brokers", "3", "--topic", "%s:%d" % (TOPIC, PARTITIONS))
        recs = records()
        lines = b"".join(k + b":" + v + b"\n" for k, v in recs)
        self.kcat("-P", "-b", bootstrap, "-t", TOPIC, "-K:", "-X", "partitioner=murmur2_random",
                  input=lines)
        out = self.kcat("-C", "-b", bootstrap, "-t", TOPIC, "-o", "beginning", "-e", "-q",
                        "-f", "%k:%s:%p\n")
        got = {}
        for line in out.splitlines():
            k, v, p = line.split(b":")
            self.assertNotIn(k, got, "duplicate record %r" % k)
            got[k] = (v, int(p))
        self.assert_placed_by_murmur2(recs, got)

    @unittest.skipIf(Producer is None, "python3-confluent-kafka is not installed")
    def test_confluent_kafka_roundtrip_and_metadata(self):
        _, bootstrap = self.start_mock("--brokers", "3", "--topic", "%s:%d" % (TOPIC, PARTITIONS))
        prod = self.producer(bootstrap)
        md = prod.list_topics(TOPIC, timeout=10)
        self.assertEqual(len(md.brokers), 3)
        self.assertIsNone(md.topics[TOPIC].error)
        self.assertEqual(sorted(md.topics[TOPIC].partitions), list(range(PARTITIONS)))
        recs = records(prefix="ck")
        placed, errors = self.produce_all(prod, recs)
        self.assertEqual(errors, [])
        self.assertEqual(placed, {k: kafka_partition(k, PARTITIONS) for k, _ in recs})
        got = self.consume_all(self.consumer(bootstrap), len(recs))
        self.assert_placed_by_murmur2(recs, got)

    @unittest.skipIf(Producer is None, "python3-confluent-kafka is not installed")
    def test_assigned_consumer_commits_offsets(self):
        # What kvs-node does: assign() its partitions (no group rebalance) and
        # commit the next offsets after applying; standard tools then see them.
        _, bootstrap = self.start_mock("--topic", "%s:%d" % (TOPIC, PARTITIONS))
        placed, errors = self.produce_all(self.producer(bootstrap), records(200))
        self.assertEqual(errors, [])
        c = self.consumer(bootstrap, group="kvs")
        self.assertEqual(len(self.consume_all(c, 200)), 200)
        ends = {}
        for p in range(PARTITIONS):
            lo, hi = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)
            self.assertEqual(lo, 0)
            ends[p] = hi
        self.assertEqual(sum(ends.values()), 200)
        c.commit(offsets=[TopicPartition(TOPIC, p, ends[p]) for p in ends], asynchronous=False)
        other = self.consumer(bootstrap, group="kvs")
        committed = other.committed([TopicPartition(TOPIC, p) for p in ends], timeout=10)
        self.assertEqual({tp.partition: tp.offset for tp in committed}, ends)

    def test_sigterm_exits_zero_and_removes_ready_file(self):
        p, _ = self.start_mock("--brokers", "3", "--topic", "%s:%d" % (TOPIC, PARTITIONS))
        start = time.monotonic()
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=5), 0, self.stderr_of())
        self.assertLess(time.monotonic() - start, 5.0)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ready")))
        self.assertIn("shutting down", self.stderr_of())

    def test_help_and_bad_arguments(self):
        r = subprocess.run([MOCK, "--help"], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertIn("tests", r.stdout)
        self.assertIn("not for production", r.stdout)
        for bad in (["--topic", "users"], ["--topic", "users:zero"], ["--topic", "users:0"],
                    ["--topic", "bad/name:3"], ["--topic", "a:1", "--topic", "a:2"],
                    ["--brokers", "0"], ["--brokers", "2", "--replication", "3"], ["--nope"]):
            r = subprocess.run([MOCK] + bad, capture_output=True, text=True, timeout=10)
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertEqual(r.stdout, "", bad)  # nothing a script could take for bootstrap
            self.assertIn("kvs-mock-kafka: ", r.stderr, bad)
            self.assertIn("--help", r.stderr, bad)
        r = subprocess.run([MOCK, "--topic", "users"], capture_output=True, text=True, timeout=10)
        self.assertIn("NAME:PARTITIONS", r.stderr)

    @unittest.skipIf(Producer is None, "python3-confluent-kafka is not installed")
    def test_control_broker_down_and_up(self):
        p, bootstrap = self.start_mock("--brokers", "3", "--topic", "%s:%d" % (TOPIC, PARTITIONS),
                                       control=True)
        # log_level 2: the connection errors this test causes are expected.
        prod = self.producer(bootstrap, **{"message.timeout.ms": 1500,
                                           "reconnect.backoff.max.ms": 500, "log_level": 2})
        _, errors = self.produce_all(prod, records(50, "before"))
        self.assertEqual(errors, [])

        self.assertEqual(self.control(p, "broker-down all"), "ok")
        _, errors = self.produce_all(prod, records(50, "down"), timeout=10)
        self.assertEqual(len(errors), 50, "produce must fail while every broker is down")

        self.assertEqual(self.control(p, "broker-up all"), "ok")
        placed, errors = self.produce_all(prod, records(50, "up"), timeout=20)
        self.assertEqual(errors, [])
        self.assertEqual(len(placed), 50)

        self.assertTrue(self.control(p, "broker-down 9").startswith("error: "))
        self.assertTrue(self.control(p, "frobnicate").startswith("error: unknown command"))
        self.assertEqual(self.control(p, "quit"), "ok")
        self.assertEqual(p.wait(timeout=5), 0)


if __name__ == "__main__":
    unittest.main()
