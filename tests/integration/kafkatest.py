"""Harness for the Kafka ingestion integration tests.

MockKafka starts build/kvs-mock-kafka (librdkafka's mock cluster) on
loopback with its own temporary directory, waits for its --ready-file, and
exposes `bootstrap`; with control=True it drives the cluster through the
mock's stdin control commands (broker-down/up, rtt, error ...). It is always
stopped with SIGTERM, and killed if that does not end it.

Producing: `produce` uses python3-confluent-kafka with the Java-compatible
partitioner (murmur2_random) and batching, so the mock (which keeps at most
~5 MiB or 100,000 message sets per partition and silently drops the oldest)
gets few, large message sets; value=None produces a tombstone, key=None a
keyless record. `kcat_produce` feeds `key:value` lines to kcat.

Reading Kafka back: `watermarks` and `committed` use a confluent-kafka
Consumer (assign only, never subscribe: the mock refuses assign-style
commits for a group once anyone subscribed to it).

kvs side: `ingest_yaml` builds the `kafka:` config section for a Router
(routertest), `info(router)` returns the Info pairs as {name: int}, and
`kafka_parts(info, topic)` regroups them per partition. `pos_token` and
`pos_entries` write and read position tokens (CommandResponse.position,
CommandRequest.min_position) by the encoding documented in kvs.proto,
independently of kvs's own C code.

Every wait is bounded.

Environment: KVS_BUILD_DIR (default ../../build) locates kvs-mock-kafka.
"""
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

from kvstest import BUILD_DIR, Client, Managed, pb, pyval, recv_exact

try:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
except ImportError:  # tests that need it skip themselves
    Consumer = Producer = TopicPartition = KafkaException = None

MOCK = os.path.join(BUILD_DIR, "kvs-mock-kafka")
KCAT = shutil.which("kcat") or shutil.which("kafkacat")
READY_TIMEOUT = 15.0   # seconds for the mock to be ready
CLIENT_TIMEOUT = 60.0  # seconds for one produce run


def wait_until(pred, timeout, interval=0.05):
    """Calls pred() until it returns a truthy value (returned) or `timeout`
    seconds passed (the last falsy value is returned). Exceptions from pred
    count as falsy while time is left."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except Exception:
            if time.monotonic() >= deadline:
                raise
            v = None
        if v:
            return v
        if time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# ---- the mock cluster ---------------------------------------------------------------


class MockKafka(Managed):
    """kvs-mock-kafka with `brokers` brokers and `topics` {name: partitions}."""

    def __init__(self, topics, brokers=1, control=False):
        self.dir = tempfile.mkdtemp(prefix="kvs-kafka-")
        self.ready = os.path.join(self.dir, "ready")
        self.log_path = os.path.join(self.dir, "mock.log")
        self.control_enabled = control
        self.log_text = ""
        cmd = [MOCK, "--brokers", str(brokers), "--ready-file", self.ready]
        for name, parts in sorted(topics.items()):
            cmd += ["--topic", "%s:%d" % (name, parts)]
        if control:
            cmd.append("--control")
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE if control else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        finally:
            log.close()
        try:
            self.bootstrap = self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None:
                raise RuntimeError("kvs-mock-kafka exited with %d before it was ready:\n%s"
                                   % (self.proc.returncode, self.stderr()))
            if time.monotonic() > deadline:
                raise RuntimeError("kvs-mock-kafka not ready after %.0f s:\n%s"
                                   % (READY_TIMEOUT, self.stderr()))
            time.sleep(0.02)
        with open(self.ready) as f:
            bootstrap = f.read().strip()
        line = self.proc.stdout.readline()  # "bootstrap.servers=..." comes first
        if line.strip() != "bootstrap.servers=%s" % bootstrap:
            raise RuntimeError("kvs-mock-kafka printed %r, ready file says %r" % (line, bootstrap))
        return bootstrap

    def control(self, line):
        """Sends one control command; returns its one-line answer ("ok" or
        "error: ..."). Requires control=True."""
        assert self.control_enabled, "MockKafka(control=True) is needed for control commands"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("kvs-mock-kafka closed its stdout (exit %r):\n%s"
                               % (self.proc.poll(), self.stderr()))
        return answer.rstrip("\n")

    def ctl(self, line):
        """control() that must answer "ok"."""
        answer = self.control(line)
        if answer != "ok":
            raise AssertionError("kvs-mock-kafka control %r answered %r" % (line, answer))

    def _kill(self):
        self.stop()

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL if it does not exit within `timeout` s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        return self.proc.returncode

# ---- producing --------------------------------------------------------------------------


def producer(bootstrap, **extra):
    """A confluent-kafka Producer with the Java-compatible partitioner and
    batching (few, large message sets per partition). partitioner=None
    leaves librdkafka's default (consistent_random)."""
    conf = {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
            "linger.ms": 50, "batch.num.messages": 10000, "queue.buffering.max.messages": 1000000,
            "enable.idempotence": False, "acks": "all"}
    conf.update(extra)
    if conf["partitioner"] is None:
        del conf["partitioner"]
    return Producer(conf)


def produce(bootstrap, topic, records, timeout=CLIENT_TIMEOUT, **extra):
    """Produces (key, value) pairs in order (key None = keyless, value None =
    tombstone). Returns [(partition, offset)] per record, in input order.
    Raises AssertionError if any record was not delivered."""
    prod = producer(bootstrap, **extra)
    placed = [None] * len(records)
    errors = []

    def on_delivery(i):
        def cb(err, msg):
            if err is not None:
                errors.append((i, err))
            else:
                placed[i] = (msg.partition(), msg.offset())
        return cb

    for i, (k, v) in enumerate(records):
        while True:
            try:
                prod.produce(topic, key=k, value=v, on_delivery=on_delivery(i))
                break
            except BufferError:
                prod.poll(0.05)
        if i % 1000 == 0:
            prod.poll(0)
    left = prod.flush(timeout)
    if errors or left:
        raise AssertionError("produce to %s: %d delivery errors (first %r), %d undelivered"
                             % (topic, len(errors), errors[:1], left))
    return placed


def kcat_produce(bootstrap, topic, pairs, null_empty=False, timeout=CLIENT_TIMEOUT,
                 partitioner="murmur2_random"):
    """Produces key:value lines with kcat and the given librdkafka
    partitioner (default murmur2_random; None = kcat's own default).
    Keys and values must hold neither ':' nor a newline. null_empty: an
    empty value is produced as a NULL payload (kcat -Z)."""
    data = b"".join(k + b":" + v + b"\n" for k, v in pairs)
    cmd = [KCAT, "-P", "-b", bootstrap, "-t", topic, "-K:", "-X", "linger.ms=50"]
    if partitioner is not None:
        cmd += ["-X", "partitioner=" + partitioner]
    if null_empty:
        cmd.append("-Z")
    r = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("kcat %s failed (%d): %s"
                             % (" ".join(cmd), r.returncode, r.stderr.decode(errors="replace")))


def kcat_consume(bootstrap, topic, sizes=False, timeout=CLIENT_TIMEOUT):
    """[(key, partition, offset)] of every record in the topic (kcat -C to
    the end of every partition); sizes=True adds the payload size (-1 for a
    NULL payload) to each tuple. A fetch at a partition's end returns at
    once (fetch.wait.max.ms 10, not 500): -e stops at the end offsets the
    broker reports, so waiting there for more only made each call 0.5 s."""
    r = subprocess.run([KCAT, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e",
                        "-X", "fetch.wait.max.ms=10", "-q", "-f", "%k\t%p\t%o\t%S\n"],
                       capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("kcat -C failed (%d): %s"
                             % (r.returncode, r.stderr.decode(errors="replace")))
    out = []
    for line in r.stdout.splitlines():
        k, p, o, n = line.split(b"\t")
        out.append((k, int(p), int(o), int(n)) if sizes else (k, int(p), int(o)))
    return out


# ---- reading Kafka's view ------------------------------------------------------------------


def consumer(bootstrap, group="kvs-test-reader", **extra):
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "log_level": 3}
    conf.update(extra)
    return Consumer(conf)


def read_topic(bootstrap, topic, partitions, timeout=30.0):
    """Every record of the topic as (partition, offset, key, value, headers)
    (value None = tombstone; headers a dict), partitions in order, each in
    offset order. Reads to the end offsets the brokers report now."""
    ends = watermarks(bootstrap, topic, partitions)
    c = consumer(bootstrap, group="kvs-test-topic-reader")
    out = []
    try:
        want = {p: hi for p, (lo, hi) in ends.items() if hi > lo}
        c.assign([TopicPartition(topic, p, ends[p][0]) for p in want])
        got = {p: [] for p in want}
        deadline = time.monotonic() + timeout
        while any(len(got[p]) < want[p] - ends[p][0] for p in want):
            if time.monotonic() > deadline:
                raise AssertionError("reading %s back timed out: have %r of %r"
                                     % (topic, {p: len(v) for p, v in got.items()}, want))
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            got[m.partition()].append((m.partition(), m.offset(), m.key(), m.value(),
                                       dict(m.headers() or [])))
        for p in sorted(got):
            out.extend(sorted(got[p], key=lambda r: r[1]))
    finally:
        c.close()
    return out


def watermarks(bootstrap, topic, partitions, timeout=10.0):
    """{partition: (low, high)} as the brokers report them now."""
    c = consumer(bootstrap)
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                for p in range(partitions)}
    finally:
        c.close()


def cluster_id(bootstrap):
    """The id of the Kafka cluster at `bootstrap`, as its metadata says."""
    p = Producer({"bootstrap.servers": bootstrap})
    try:
        return p.list_topics(timeout=10).cluster_id
    finally:
        p.flush(1)


def committed(bootstrap, group, topic, partitions, timeout=10.0):
    """{partition: committed offset} of consumer group `group` (negative =
    none committed)."""
    c = consumer(bootstrap, group=group)
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=timeout)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()



def _crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _zigzag(n):
    return _varint((n << 1) ^ (n >> 63))


def _marker_batch(commit, producer_id):
    """A v2 record batch holding one transaction marker (a control record:
    key = version 0, type 1 commit / 0 abort; value = version 0,
    coordinator epoch 0), as a broker writes at a transaction's end."""
    key = struct.pack(">hh", 0, 1 if commit else 0)
    val = struct.pack(">hi", 0, 0)
    rec = (b"\0" + _zigzag(0) + _zigzag(0) + _zigzag(len(key)) + key + _zigzag(len(val)) + val
           + _zigzag(0))
    now = int(time.time() * 1000)
    # attributes: transactional (0x10) | control (0x20); base sequence -1; 1 record
    body = struct.pack(">hiqqqhii", 0x30, 0, now, now, producer_id, 0, -1, 1)
    body += _zigzag(len(rec)) + rec
    tail = struct.pack(">ibI", -1, 2, _crc32c(body)) + body
    return struct.pack(">qi", 0, len(tail)) + tail


def produce_markers(bootstrap, topic, partition, count, commit=True, producer_id=4242):
    """Appends `count` transaction markers to `partition` of `topic`, one
    Produce request (v3) each, straight to the first bootstrap broker (the
    partition's leader: use one broker). The mock cluster writes no markers
    of its own at a transaction's end, but stores these as a broker would:
    consumers skip them, yet each takes an offset. Returns their offsets."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    offsets = []
    with socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT) as s:
        for i in range(count):
            batch = _marker_batch(commit, producer_id)
            name = topic.encode()
            body = (struct.pack(">hhi", -1, -1, 5000) + struct.pack(">i", 1)
                    + struct.pack(">h", len(name)) + name + struct.pack(">ii", 1, partition)
                    + struct.pack(">i", len(batch)) + batch)
            req = struct.pack(">hhih", 0, 3, i + 1, 4) + b"test" + body
            s.sendall(struct.pack(">i", len(req)) + req)
            size = struct.unpack(">i", recv_exact(s, 4))[0]
            resp = recv_exact(s, size)
            # correlation id, 1 topic (name), 1 partition: index, error, base offset
            at = 8 + 2 + struct.unpack_from(">h", resp, 8)[0] + 4
            _, err, base = struct.unpack_from(">ihq", resp, at)
            if err != 0:
                raise AssertionError("marker produce to %s [%d]: error %d" % (topic, partition, err))
            offsets.append(base)
    return offsets


# ---- the kvs side -------------------------------------------------------------------------------


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7f) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pos_token(entries):
    """A position token for [(topic, partition, offset)] (any order; the
    highest offset per partition wins); b"" for none."""
    best = {}
    for t, p, o in entries:
        t = t.encode() if isinstance(t, str) else t
        best[(t, p)] = max(o, best.get((t, p), -1))
    if not best:
        return b""
    out = bytearray([1])
    for t in sorted({t for t, _ in best}):
        parts = sorted(p for tt, p in best if tt == t)
        out += _varint(len(t)) + t + _varint(len(parts))
        for p in parts:
            out += _varint(p) + _varint(best[(t, p)])
    return bytes(out)


def pos_entries(tok):
    """[(topic, partition, offset)] of a position token, in token order."""
    if not tok:
        return []
    assert tok[0] == 1, "unknown position token version %d" % tok[0]
    i, out = 1, []

    def varint():
        nonlocal i
        n = shift = 0
        while True:
            b = tok[i]
            i += 1
            n |= (b & 0x7f) << shift
            shift += 7
            if b < 0x80:
                return n

    while i < len(tok):
        tl = varint()
        topic = tok[i:i + tl].decode()
        i += tl
        for _ in range(varint()):
            p = varint()
            out.append((topic, p, varint()))
    return out


def ingest_yaml(bootstrap, bindings, group_id="kvs", properties=None, max_lag=None):
    """The `kafka:` section of a kvs config. bindings: [(topic, table,
    format, partitions[, partitioner])]."""
    lines = ["kafka:", '  brokers: "%s"' % bootstrap, "  group_id: %s" % group_id,
             "  bindings:"]
    if max_lag is not None:
        lines.insert(3, "  max_lag: %d" % max_lag)
    for b in bindings:
        topic, table, fmt, parts = b[:4]
        lines.append("    - {topic: %s, table: %s, format: %s%s%s}"
                     % (topic, table, fmt, "" if parts is None else ", partitions: %d" % parts,
                        ", partitioner: %s" % b[4] if len(b) > 4 else ""))
    props = dict(properties or {})
    if props:
        lines.append("  properties:")
        for k, v in sorted(props.items()):
            lines.append('    "%s": "%s"' % (k, v))
    return "\n".join(lines) + "\n"


def info_pairs(addr, timeout=10.0):
    """The Info answer of the server at addr ((host, port) or a unix socket
    path) as {name: Python value}; raises AssertionError unless 200."""
    req = pb.CommandRequest()
    req.info.SetInParent()
    with Client(addr, timeout=timeout) as c:
        resp = c.call(req)
    if resp.status != 200:
        raise AssertionError("Info: %d %s" % (resp.status, resp.message))
    return {p.key.decode(): pyval(p.value) for p in resp.pairs}


def info(router, timeout=10.0):
    """Info through the router: every shard's pairs merged."""
    return info_pairs(router.addr, timeout)


def kafka_parts(pairs, topic):
    """Info pairs -> {partition: {"applied", "end_offset", "lag",
    "misplaced", "next_offset", "skipped"}} for `topic`."""
    prefix = "kafka.%s." % topic
    out = {}
    for k, v in pairs.items():
        if not k.startswith(prefix):
            continue
        part, _, field = k[len(prefix):].rpartition(".")
        out.setdefault(int(part), {})[field] = v
    return out


def unwritten_or_unsure(test, resp):
    """Assert that `resp` is the 503 of a write Kafka did not acknowledge,
    and return True if it says the write certainly did not happen (the
    record never left the producer, or a broker refused it), False if it
    says it may or may not have. Which one depends on whether the record
    was in flight when the broker went away."""
    test.assertEqual(resp.status, 503, resp.message)
    if "the write did not happen" in resp.message:
        test.assertFalse(resp.outcome_unknown, resp.message)
        return True
    test.assertIn("may or may not have happened", resp.message)
    test.assertTrue(resp.outcome_unknown, resp.message)
    return False


def caught_up(router, topic, ends):
    """The per-partition Info of `topic` if every partition in `ends`
    ({partition: end offset}) is reported with next_offset == end and lag 0,
    else None."""
    parts = kafka_parts(info(router), topic)
    for p, end in ends.items():
        st = parts.get(p)
        if st is None or st.get("next_offset") != end or st.get("lag") != 0:
            return None
    return parts
