"""Every value can be huge: requests and answers at and just past
limits.max_frame, on the paths where the router adds to what a client
sent or a worker answered.

- The largest pair a frame can carry (a key, 1 or 511 bytes, and a value
  of limits.max_frame - 575 bytes together, as stored) is written through
  protobuf and RESP and read back whole by every read, through the
  router's local reads and through the workers; one byte more is 413
  whose message gives the sizes compared (the key and value, and the
  most they may take).
- A split Hmdel of exactly max_frame bytes whose part for one shard holds
  all but one tiny key: the part, with the answer budget the router adds,
  is a few bytes larger than the client's request. It must be refused
  (413, nothing written) rather than sent: a worker closes a connection
  that announces a frame past max_frame, and the router's link to it is
  shared by every client of the shard.

- An Hmget of exactly max_frame bytes on a table bound to a topic, after a
  write on the same connection: the router attaches the connection's
  write positions to it, and the request it forwards passes max_frame.
  That read alone gets 413; the link, and the next request, are fine.

- Kafka records at the key limit: a 511-byte key with the largest value
  it may have is stored, a 512-byte key is skipped and counted, and a
  record's headers, however large, are not stored nor in the way.
- kvs-cli reads a value as large as the server's limits.max_frame lets it
  store (past 64 MiB), prints it escaped (no byte of it reaches the
  terminal as a control character) or raw, whole, with memory that follows
  the bytes it received, not what a server announced.
- kvs-bench writes and reads values of several MiB (-d past 1 MiB) and
  takes answers past 4 MiB from a server whose max_frame allows them.

Real kvs-router / kvs-node processes on loopback; every wait is bounded.

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import os
import resource
import socket
import subprocess
import threading
import unittest

import kafkatest
from kafkatest import KCAT, ingest_yaml, producer
from kvstest import BUILD_DIR, SANITIZED, free_port, pyval, req_hmdel, req_hmget, req_hmset
from routertest import Router, RouterTestCase, keys_by_shard, shard_of
from test_answers import Bystander
from test_hostile_api import RespSocket
from test_ingest import KafkaFixtures

PARTITIONS = 64


def exact_size(req, size, pad_key, keep_shard, partitions=PARTITIONS):
    """Pads keys[0] of `req` (Hmdel/Hmget) so the request takes exactly
    `size` bytes, its key staying on shard `keep_shard` (of 2, the table
    having `partitions`)."""
    keys = req.hmdel.keys if req.WhichOneof("command") == "hmdel" else req.hmget.keys
    pad = size - len(req.SerializeToString())
    for _ in range(50):
        k = pad_key + b"x" * pad
        j = 0
        while shard_of(k + b"%03d" % j, partitions, 2) != keep_shard:
            j += 1
        keys[0] = k + b"%03d" % j
        n = len(req.SerializeToString())
        if n == size:
            return req
        pad += size - n
    raise AssertionError("could not pad the request to %d bytes" % size)


class LargestPairTest(RouterTestCase):
    def test_largest_pair_round_trips_on_every_path_and_one_byte_more_is_413(self):
        mf = 64 * 1024
        most = mf - 575  # a key and its value as stored (tag and length included)
        for local in ("true", "false"):
            rport = free_port()
            r = self.router(shards=2, partitions=PARTITIONS, max_frame="64KiB",
                            router_yaml=["local_reads: %s" % local,
                                         'resp_listen: "127.0.0.1:%d"' % rport])
            # A binary value of n bytes is stored in n + 4 (tag, 3-byte length).
            big = {b"k": b"\x00v" * ((most - 1 - 4) // 2) + b"v" * ((most - 1 - 4) % 2),
                   b"K" * 511: b"w" * (most - 511 - 4)}
            with r.client(timeout=30) as c:
                c.max_frame = mf
                for k, v in big.items():
                    self.assertOk(c.hset("t", k, v))
                    resp = c.hset("t", k, v + b"+")  # one byte more
                    self.assertEqual(resp.status, 413, resp.message)
                    self.assertIn("key and value take %d bytes" % (most + 1), resp.message)
                    self.assertIn("at most %d bytes" % most, resp.message)
                    other = keys_by_shard("o", 1, PARTITIONS, 2)[1 - shard_of(k, PARTITIONS, 2)][0]
                    resp = c.call(req_hmset("t", [(k, v + b"+"), (other, b"y")]))
                    self.assertEqual(resp.status, 413, resp.message)  # split: the router's check
                    self.assertIn("key and value take %d bytes" % (most + 1), resp.message)
                    self.assertIn("nothing was written", resp.message)
                    resp = c.hget("t", k)
                    self.assertOk(resp)
                    self.assertEqual(pyval(resp.values[0]), v)
                    resp = c.hmget("t", [k])
                    self.assertOk(resp)
                    self.assertEqual(pyval(resp.values[0]), v)
                self.assertEqual(c.hmget("t", list(big)).status, 413)  # two never fit
                self.assertEqual(c.hgetall("t").status, 413)
                for count in (1, 2, 100):
                    self.assertEqual(dict(c.scan_all("t", count)), big)
            for proto in (2, 3):
                s = RespSocket(rport)
                self.addCleanup(s.close)
                if proto == 3:
                    self.assertIsInstance(s.call("HELLO", "3"), bytes)  # a map: first line
                    s.buf.clear()
                    s.at = 0
                    s.sock.sendall(b"PING\r\n")
                    while not s.buf.endswith(b"+PONG\r\n"):
                        s._more()
                    s.buf.clear()
                for k, v in big.items():
                    self.assertEqual(s.call("HGET", "t", k), v)
                    self.assertEqual(s.call("HSTRLEN", "t", k), b":%d" % len(v))
                    self.assertEqual(s.call("HSET", "t", k, v), b":0")
                    err = s.call("HSET", "t", k, v + b"+")
                    self.assertTrue(err.startswith(b"-ERR value is too large"), err)
                fields, cursor = [], b"0"
                for _ in range(10):
                    cursor, page = s.call("HSCAN", "t", cursor, "COUNT", "1")
                    fields += page[::2]
                    if cursor == b"0":
                        break
                self.assertEqual(sorted(fields), sorted(big))
            self.assertNotIn(" down", r.stderr())
            r.close()


class SplitPartPastMaxFrameTest(RouterTestCase):
    def test_split_hmdel_at_max_frame_is_413_and_the_link_stays_up(self):
        mf = 64 * 1024
        r = self.router(shards=2, partitions=PARTITIONS, max_frame="64KiB",
                        router_yaml=["local_reads: false"])
        tiny = [bytes([c]) for c in range(ord("a"), ord("z") + 1)
                if shard_of(bytes([c]), PARTITIONS, 2) == 1][0]
        many = keys_by_shard("k" * 100, 700, PARTITIONS, 2)[0]
        keys = [b"p"] + many[:620] + [tiny]
        req = exact_size(req_hmdel("t", keys), mf, b"p", 0)
        self.assertEqual(len(req.SerializeToString()), mf)
        with r.client() as c:
            for k in (tiny, many[1]):
                self.assertOk(c.hset("t", k, b"kept"))
        log_from = len(r.stderr())
        by = Bystander(self, r, keys_by_shard("by", 10, PARTITIONS, 2)[0])
        with r.client(timeout=30) as c:
            c.max_frame = mf
            for _ in range(3):
                resp = c.call(req)
                self.assertEqual(resp.status, 413, resp.message)
                self.assertIn("limits.max_frame", resp.message)
                self.assertIn("nothing was sent or written", resp.message)
            for k in (tiny, many[1]):  # nothing was deleted, on either shard
                resp = c.hget("t", k)
                self.assertOk(resp)
                self.assertEqual(pyval(resp.values[0]), b"kept")
            # One key fewer on shard 0 fits, and is applied on both shards.
            del req.hmdel.keys[1]
            resp = c.call(req)
            self.assertOk(resp)
            self.assertEqual(c.hget("t", tiny).status, 404)
        by.finish()
        log = r.stderr()[log_from:]
        self.assertNotIn(" down", log, "no link may go down")
        self.assertNotIn("announcing", log, "no worker may see a frame past max_frame")


@unittest.skipIf(KCAT is None or kafkatest.Producer is None,
                 "kcat and python3-confluent-kafka are needed")
class PositionsPastMaxFrameTest(KafkaFixtures, unittest.TestCase):
    def test_read_at_max_frame_with_positions_attached_is_413_alone(self):
        mf, parts = 64 * 1024, 4
        m = self.mock({"bt": parts})
        for local in ("true", "false"):
            r = Router(shards=2, partitions=PARTITIONS, max_frame="64KiB", start=False,
                       router_yaml=["local_reads: %s" % local],
                       extra_yaml=ingest_yaml(m.bootstrap, [("bt", "bt", "raw", parts)], "kvs",
                                              {"reconnect.backoff.max.ms": "500"}))
            self._routers.append(r)
            self.addCleanup(r.close)
            r.start()
            keys = keys_by_shard("k" * 100, 700, parts, 2)[0]
            req = exact_size(req_hmget("bt", [b"p"] + keys[1:620]), mf, b"p", 0, parts)
            with r.client(timeout=30) as c:
                c.max_frame = mf
                resp = c.hset("bt", keys[1], b"written")  # the session now has a position
                self.assertEqual(resp.status, 200, resp.message)
                self.assertTrue(resp.position)
                for _ in range(3):
                    resp = c.call(req)
                    self.assertEqual(resp.status, 413, resp.message)
                    self.assertIn("limits.max_frame", resp.message)
                    resp = c.hget("bt", keys[1])
                    self.assertEqual(resp.status, 200, resp.message)
                    self.assertEqual(pyval(resp.values[0]), b"written")
                del req.hmget.keys[2]  # a key fewer fits, positions and all
                resp = c.call(req)
                self.assertEqual(resp.status, 200, resp.message)
                self.assertEqual(pyval(resp.values[1]), b"written")
            log = r.stderr()
            self.assertNotIn(" down", log, "no link may go down")
            self.assertNotIn("announcing", log, "no worker may see a frame past max_frame")
            r.close()


@unittest.skipIf(KCAT is None or kafkatest.Producer is None,
                 "kcat and python3-confluent-kafka are needed")
class IngestAtTheLimitsTest(KafkaFixtures, unittest.TestCase):
    def test_key_limit_and_large_headers(self):
        topic, parts, mf = "edge", 2, 64 * 1024
        m = self.mock({topic: parts})
        r = Router(shards=2, partitions=PARTITIONS, max_frame="64KiB", start=False,
                   extra_yaml=ingest_yaml(m.bootstrap, [(topic, "edge", "raw", parts)], "kvs",
                                          {"reconnect.backoff.max.ms": "500"}))
        self._routers.append(r)
        self.addCleanup(r.close)
        r.start()
        longest = b"L" * 511
        value = b"v" * (mf - 575 - 511 - 4)  # key + stored value: exactly the most
        prod = producer(m.bootstrap, **{"linger.ms": 0})
        errors = []

        def sent(err, msg):
            if err is not None:
                errors.append(err)

        prod.produce(topic, key=longest, value=value, on_delivery=sent)
        prod.produce(topic, key=b"M" * 512, value=b"x", on_delivery=sent)
        prod.produce(topic, key=b"hdr", value=b"h", headers=[("big", b"H" * (900 << 10))],
                     on_delivery=sent)
        self.assertEqual(prod.flush(30), 0)
        self.assertEqual(errors, [])
        ends = self.ends(m, topic, parts)
        st = self.wait_caught_up(r, topic, ends)
        self.assertEqual(sum(p["skipped"] for p in st.values()), 1, st)
        self.assertEqual(sum(p["applied"] for p in st.values()), 2, st)
        with r.client() as c:
            c.max_frame = mf
            resp = c.hget("edge", longest)
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), value)
            resp = c.hget("edge", b"hdr")
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), b"h")
            self.assertEqual([k for k, _ in c.scan_all("edge", 1)], [longest, b"hdr"])
        self.assertIn("key longer than 511 bytes", r.stderr())


class CliHugeValueTest(RouterTestCase):
    CLI = os.path.join(BUILD_DIR, "kvs-cli")

    def test_cli_prints_a_value_past_64_mib_whole_and_escaped(self):
        # Writing 66 MiB takes the sanitizer build on a loaded machine
        # seconds (receive, copy, commit): router.timeout is not the subject.
        r = self.router(shards=1, partitions=4, max_frame="80MiB", timeout="60s")
        value = b"\x1b[2J\x07" + b"v" * (66 << 20)  # a terminal escape, then 66 MiB
        with r.client(timeout=60) as c:
            self.assertOk(c.hset("t", b"k", value))
        del value
        base = ["--port", str(r.port), "--timeout", "60"]
        out = subprocess.run([self.CLI] + base + ["hget", "t", "k"], capture_output=True,
                             timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr[-500:])
        head = b'(binary) "\\x1b[2J\\x07'
        self.assertEqual(out.stdout[:len(head)], head)
        self.assertNotIn(b"\x1b", out.stdout)
        self.assertNotIn(b"\x07", out.stdout)
        self.assertEqual(len(out.stdout), len(head) + (66 << 20) + 2)  # quote and newline
        del out
        out = subprocess.run([self.CLI] + base + ["--raw", "hget", "t", "k"],
                             capture_output=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr[-500:])
        self.assertEqual(len(out.stdout), 5 + (66 << 20) + 1)
        self.assertEqual(out.stdout[:5], b"\x1b[2J\x07")

    @unittest.skipIf(SANITIZED, "ASan needs more address space than the limit this test sets")
    def test_an_announced_answer_costs_only_the_bytes_that_came(self):
        # A server that announces a 1 GiB answer and sends 1 KiB of it, then
        # closes: kvs-cli fails (exit 2) without taking a gigabyte first.
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        self.addCleanup(srv.close)

        def serve():
            conn, _ = srv.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"\x40\x00\x00\x00" + b"\x08" * 1024)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        def limit_memory():  # 512 MiB of address space: a gigabyte cannot be taken
            resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))

        out = subprocess.run([self.CLI, "--port", str(srv.getsockname()[1]), "--timeout", "10",
                              "ping"], capture_output=True, timeout=30, preexec_fn=limit_memory)
        t.join(10)
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertNotIn(b"memory", out.stderr, "kvs-cli asked for the bytes before they came")
        self.assertIn(b"closed", out.stderr)


class BenchHugeValueTest(RouterTestCase):
    BENCH = os.path.join(BUILD_DIR, "kvs-bench")

    def test_bench_values_and_answers_as_large_as_the_server_allows(self):
        r = self.router(shards=2, partitions=PARTITIONS, max_frame="16MiB")
        out = subprocess.run([self.BENCH, "-p", str(r.port), "-c", "1", "-n", "4", "-r", "4",
                              "-d", str(3 << 20), "--keys", "4", "-t", "hset,hget,hmget",
                              "--timeout", "30"], capture_output=True, timeout=120)
        text = out.stdout.decode()
        self.assertEqual(out.returncode, 0, out.stderr.decode()[-500:])
        for test in ("HSET", "HGET", "HMGET"):  # hmget: 4 values of 3 MiB, a 12 MiB answer
            self.assertIn("====== %s ======" % test, text)
        self.assertEqual(text.count("status: 200 x 4"), 3, text)
        # Past the server's max_frame: it answers 413 and closes, and the
        # run ends saying so (the node is fine).
        out = subprocess.run([self.BENCH, "-p", str(r.port), "-c", "1", "-n", "4",
                              "-d", str(17 << 20), "-t", "hset"], capture_output=True, timeout=60)
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertIn(b"the server closed the connection", out.stderr)
        with r.client() as c:
            self.assertOk(c.ping())


if __name__ == "__main__":
    unittest.main()
