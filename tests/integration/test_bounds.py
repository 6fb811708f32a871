"""Per-client bounds, with the real binaries: what one hostile client can make
a node spend (memory, descriptors, time) stays within the documented limits,
and other clients keep being served meanwhile.

Memory is read from /proc/<pid>/status (RssAnon: heap and anonymous
mappings; LMDB's file pages are not counted, they belong to the page cache).
In a sanitizer build the memory figures are ASan's (shadow, quarantine), so
there only the behaviour is checked, not the numbers.
"""
import os
import resource
import select
import socket
import struct
import threading
import time
import unittest

from kvstest import (SANITIZED, Client, NodeTestCase, encode, free_port, log_of, pb, pyval,
                     req_hget, req_hexist, req_hgetall, req_hmget, req_hmset, req_hset, req_ping)
from routertest import Router, RouterTestCase, keys_by_shard, router_pids, stopped
from test_ops import http_get, metrics_req, parse_metrics, total

MIB = 1 << 20


def rss_anon(pid):
    """Anonymous resident memory of `pid` in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon for %d" % pid)


def fill_table(client, table, n, size):
    """n keys of `size`-byte string values in `table`, 100 keys per Hmset."""
    for i in range(0, n, 100):
        pairs = [("k%06d" % j, "v" * size) for j in range(i, min(n, i + 100))]
        resp = client.hmset(table, pairs)
        assert resp.status == 200, resp.message


def raw_connect(addr, timeout=10.0):
    family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    return s


def read_frame(sock):
    """One frame's payload, or None at EOF/reset."""
    def need(n):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            try:
                k = sock.recv_into(view[got:])
            except ConnectionResetError:
                return None
            if k == 0:
                return None
            got += k
        return bytes(buf)
    hdr = need(4)
    if hdr is None:
        return None
    return need(struct.unpack(">I", hdr)[0] & 0x7FFFFFFF)


def closed_by_peer(sock, timeout):
    """True when the peer closes `sock` within `timeout` s (answers before
    the close are read and dropped)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


def tcp_timer(local_port, remote_port):
    """The kernel's timer on the established loopback socket from
    local_port to remote_port (/proc/net/tcp: kind 2 is keepalive) as
    (kind, seconds until it fires), or None if there is no such socket."""
    hz = os.sysconf("SC_CLK_TCK")
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                local, remote, state, timer = cols[1], cols[2], cols[3], cols[5]
                if (state == "01" and int(local.split(":")[1], 16) == local_port and
                        int(remote.split(":")[1], 16) == remote_port):
                    kind, when = timer.split(":")
                    return int(kind, 16), int(when, 16) / hz
    return None


def flood_without_reading(addr, n_clients, req, count):
    """n_clients connections that each send `count` copies of `req` in one
    write and read nothing (a small receive buffer)."""
    socks = []
    for _ in range(n_clients):
        family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(10.0)
        # Before connecting: a TCP receive buffer shrunk on an established
        # connection can leave the window closed after the reader drains it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.connect(addr)
        s.sendall(encode(req) * count)
        socks.append(s)
    return socks


def answers_until_closed(sock, count):
    """The answers `sock` gets before its peer closes it, at most `count`."""
    got = []
    while len(got) < count:
        payload = read_frame(sock)
        if payload is None:
            break
        got.append(payload)
    return got


def assert_some_closed_the_rest_whole(test, socks, count, want):
    """Some of `socks` were closed (their answers cut short), not all, and
    each of the others gets its `count` answers, every one `want`."""
    got = [answers_until_closed(s, count) for s in socks]
    kept = [g for g in got if len(g) == count]
    test.assertTrue(kept, "every connection was closed")
    test.assertLess(len(kept), len(socks), "none was closed")
    for g in kept:
        test.assertTrue(all(a == want for a in g))


def timed_call(c, req):
    """(the answer to `req` on client `c`, the seconds it took)."""
    t = time.monotonic()
    resp = c.call(req)
    return resp, time.monotonic() - t


def metric_of(family_list, name):
    """The sum of a Metrics answer's samples of family `name`."""
    return sum(s.value for f in family_list if f.name == name for s in f.samples)


class WorkerOutputTest(NodeTestCase):
    def test_worker_stops_executing_for_a_client_that_does_not_read(self):
        """150 Hgetall of a 1 MiB table sent in one write: the worker runs
        them only while its answers to that client stay under the high-water
        mark (a quarter of limits.client_output), so its memory stays
        bounded; once the client reads, every answer arrives, in order."""
        n = self.node()
        with n.client(unix=True) as c:
            fill_table(c, "big", 1000, 1000)
        base = rss_anon(n.pid)
        s = raw_connect(n.socket_path)
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(encode(req_hgetall("big")) * 150)
        peak = base
        for _ in range(40):  # 2 s: long enough for the old code to run them all
            time.sleep(0.05)
            peak = max(peak, rss_anon(n.pid))
        if not SANITIZED:
            self.assertLess(peak - base, 48 * MIB, "worker grew by %d MiB" % ((peak - base) >> 20))
        for i in range(150):
            payload = read_frame(s)
            self.assertIsNotNone(payload, "answer %d missing" % i)
            self.assertGreater(len(payload), 1000 * 1000)
        with n.client(unix=True) as c:
            self.assertOk(c.ping())

    def test_connections_that_stop_reading_are_bounded_together(self):
        """Twelve connections to the worker's TCP port each pipeline forty
        reads of a 100 KiB value and never read: each stays within its own
        bound (a quarter of limits.client_output), but together they would
        hold more than limits.output_buffers; the worker closes those owed
        the most until the rest fit, logs it and counts it, the ones it
        kept get every answer, and a client that reads larger answers as
        they come (as a router's link does), four at a time, is never the
        one closed (its answers were counted the moment they were queued,
        before they went into its socket, and it was)."""
        n = self.node(extra_yaml="limits: {max_frame: 256KiB, client_output: 1MiB, "
                                 "output_buffers: 4MiB}\n")
        big = b"x" * (200 * 1024)
        with n.client() as c:
            self.assertOk(c.hset("t", "big", big))
            self.assertOk(c.hset("t", "mid", big[:100 * 1024]))
            want = c.hget("t", "big").SerializeToString()
            want_mid = c.hget("t", "mid").SerializeToString()
        with n.client() as reader:
            socks = flood_without_reading(n.addr, 12, req_hget("t", "mid"), 40)
            for s in socks:
                self.addCleanup(s.close)
            # a second of reading at least, and until the worker ran enough
            # of the floods to evict (a loaded machine: longer), 20 s at most
            start = time.monotonic()
            while True:
                answers = reader.pipeline([req_hget("t", "big")] * 4)
                self.assertTrue(all(a.SerializeToString() == want for a in answers))
                m = reader.call(metrics_req())
                self.assertOk(m)
                waited = time.monotonic() - start
                if waited >= 20 or waited >= 1 and metric_of(
                        m.ops.metrics, "kvs_worker_output_evictions_total") > 0:
                    break
        self.assertGreater(metric_of(m.ops.metrics, "kvs_worker_output_evictions_total"), 0)
        self.assertLessEqual(metric_of(m.ops.metrics, "kvs_worker_output_bytes"), 4 * MIB)
        assert_some_closed_the_rest_whole(self, socks, 40, want_mid)
        self.assertIn("limits.output_buffers", log_of(n))

    def test_the_unix_socket_has_no_output_budget(self):
        """The worker's unix socket is where the node's own router
        processes' links come in (each carries many clients' answers) and
        the master's scrapes: its connections share no output budget, so
        however much they are owed together, none is closed for it."""
        n = self.node(extra_yaml="limits: {max_frame: 256KiB, client_output: 1MiB, "
                                 "output_buffers: 2MiB}\n")
        big = b"x" * (200 * 1024)
        with n.client(unix=True) as c:
            self.assertOk(c.hset("t", "big", big))
            want = c.hget("t", "big").SerializeToString()
        socks = flood_without_reading(n.socket_path, 12, req_hget("t", "big"), 40)
        for s in socks:
            self.addCleanup(s.close)
        time.sleep(0.5)
        for s in socks:
            self.assertEqual(answers_until_closed(s, 40), [want] * 40)
        self.assertNotIn("limits.output_buffers", log_of(n))

    @unittest.skipIf(SANITIZED, "ASan's quarantine keeps freed memory by design")
    def test_buffers_are_given_back_after_a_burst(self):
        """After answers of 3 MiB each went out, the worker's anonymous memory
        returns near where it was: grown buffers are freed once drained."""
        n = self.node()
        with n.client(unix=True) as c:
            fill_table(c, "big", 3000, 1000)
            c.hgetall("big")
            time.sleep(0.2)
            base = rss_anon(n.pid)
            for _ in range(5):
                resps = c.pipeline([req_hgetall("big")] * 8)
                self.assertTrue(all(r.status == 200 for r in resps))
            time.sleep(0.3)
            after = rss_anon(n.pid)
        self.assertLess(after - base, 8 * MIB, "kept %d MiB after the burst" % ((after - base) >> 20))


class RouterBoundsTest(RouterTestCase):
    def router_and_pids(self, **kw):
        """The router and [its router process, its workers] (r.pid is the
        master, which serves no client)."""
        r = self.router(**kw)
        pids = [router_pids(r)[0]] + sorted(r.workers().values())
        return r, pids

    def test_client_that_pipelines_without_reading_is_bounded(self):
        """150 Hgetall of a 1 MiB table in one write, never read: the router
        routes them only while the answers it owes that client stay under the
        high-water mark, so router and workers stay bounded and another
        client is served throughout (no 503 from a flooded link); once the
        client reads, it gets every answer, in order."""
        r, pids = self.router_and_pids(shards=2)
        with r.client() as c:
            fill_table(c, "big", 1000, 1000)
            expected = c.hgetall("big")
        self.assertOk(expected)
        base = {p: rss_anon(p) for p in pids}
        hostile = raw_connect(r.addr)
        self.addCleanup(hostile.close)
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        hostile.sendall(encode(req_hgetall("big")) * 150)
        peak = dict(base)
        deadline = time.monotonic() + 3.0
        with r.client() as other:
            i = 0
            while time.monotonic() < deadline:
                self.assertOk(other.hset("t", "k%d" % i, "v"))
                self.assertOk(other.hget("t", "k%d" % i))
                i += 1
                for p in pids:
                    peak[p] = max(peak[p], rss_anon(p))
        grown = {p: (peak[p] - base[p]) >> 20 for p in pids}
        if not SANITIZED:
            self.assertLess(grown[pids[0]], 48, "router grew by %d MiB" % grown[pids[0]])
            for p in pids[1:]:
                self.assertLess(grown[p], 48, "worker grew by %d MiB" % grown[p])
        want = expected.SerializeToString()
        for i in range(150):
            payload = read_frame(hostile)
            self.assertIsNotNone(payload, "answer %d missing" % i)
            self.assertEqual(payload, want)

    @unittest.skipIf(SANITIZED, "ASan's quarantine keeps freed memory by design")
    def test_hscan_page_across_shards_holds_what_one_shards_page_holds(self):
        """An Hscan page that goes on to the next shard keeps the earlier
        shards' pairs (at most max_frame / 4) and decodes the last shard's
        answer once: its peak is that of the same shard's page alone, not
        one answer more."""
        r = self.router(shards=2, partitions=4, max_frame="16MiB")
        keys = keys_by_shard("k", 600, 4, 2)
        pid = router_pids(r)[0]  # the router process (r.pid is the master)

        def peak():  # VmHWM: the most the router process was ever resident
            with open("/proc/%d/status" % pid) as f:
                return next(int(x.split()[1]) << 10 for x in f if x.startswith("VmHWM:"))

        with r.client(timeout=30) as c:
            self.assertOk(c.hset("t", keys[0][0], "v"))
            for i in range(0, 600, 50):
                self.assertOk(c.hmset("t", [(k, "x" * 25000) for k in keys[1][i:i + 50]]))
            alone = c.hscan("t", b"S\x00\x01", 10000)  # shard 1's page (15 MB)
            self.assertEqual((alone.status, len(alone.pairs), alone.cursor), (200, 600, b""))
            before = peak()
            page = c.hscan("t", b"", 10000)  # shard 0's pair, then shard 1's
            self.assertEqual((page.status, len(page.pairs), page.cursor), (200, 601, b""))
            grown = (peak() - before) >> 20
        self.assertLess(grown, 4, "the page across shards took %d MiB more" % grown)

    def test_client_owed_more_than_client_output_is_closed(self):
        """Answers already asked for that exceed limits.client_output close
        the client, and the log names it; the others are not affected.
        (Answers owed by workers: with local reads the router would build
        these answers at once, and stop at the high-water mark instead; see
        the next test.)"""
        r = self.router(shards=2, extra_yaml="limits: {max_frame: 256KiB, client_output: 1MiB}\n",
                        router_yaml=["local_reads: false"])
        with r.client() as c:
            self.assertOk(c.hset("t", "big", b"x" * (200 * 1024)))
        hostile = raw_connect(r.addr)
        self.addCleanup(hostile.close)
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        hostile.sendall(encode(req_hget("t", "big")) * 100)
        time.sleep(0.5)
        with r.client() as other:
            self.assertOk(other.hget("t", "big"))
        self.assertTrue(closed_by_peer(hostile, 5.0))
        self.assertIn("limits.client_output", r.stderr())

    def test_clients_that_stop_reading_are_bounded_together(self):
        """Twenty clients each pipeline forty reads of a 200 KiB value and
        never read: each stays within its own bound (it stops being served
        at a quarter of limits.client_output), but together they would
        hold more than limits.output_buffers; the router closes the ones
        owed the most until the rest fit, names them in its log and counts
        them, a client that reads is served throughout, and the clients it
        kept get every answer once they read."""
        mport = free_port()
        r = self.router(shards=2, extra_yaml="limits: {max_frame: 256KiB, client_output: 1MiB, "
                                             "output_buffers: 4MiB}\n",
                        router_yaml=['metrics_listen: "127.0.0.1:%d"' % mport])
        big = b"x" * (200 * 1024)
        with r.client() as c:
            self.assertOk(c.hset("t", "big", big))
            want = c.hget("t", "big").SerializeToString()
        socks = flood_without_reading(r.addr, 20, req_hget("t", "big"), 40)
        for s in socks:
            self.addCleanup(s.close)
        # At least a second, and until the router evicted (the kernel's
        # socket buffers take the first answers: on a loaded machine the
        # router's own buffers took more than a second to pass the budget).
        start = time.monotonic()
        most = evicted = 0
        with r.client() as other:
            while time.monotonic() < start + 1.0 or (not evicted and
                                                     time.monotonic() < start + 20.0):
                self.assertEqual(other.hget("t", "big").SerializeToString(), want)
                status, _, body = http_get(mport)
                self.assertEqual(status, 200, body)
                m = parse_metrics(body)
                most = max(most, total(m, "kvs_client_output_bytes"))
                evicted = total(m, "kvs_client_output_evictions_total")
        self.assertGreater(evicted, 0)
        self.assertLessEqual(most, 4 * MIB)
        assert_some_closed_the_rest_whole(self, socks, 40, want)
        self.assertIn("limits.output_buffers", r.stderr())

    def test_clients_that_read_are_not_counted_against_the_output_budget(self):
        """limits.output_buffers counts what clients' answers take, not
        what they took: RESP clients that read a 200 KiB answer and QUIT,
        whose connections linger for up to 2 s keeping their sockets open,
        and clients that read large answers and then only Ping (their
        drained buffers kept for the next answer), together hold nothing
        the budget counts for long; a client that reads two large answers
        at a time is never closed, and nobody is."""
        mport, rport = free_port(), free_port()
        r, pids = self.router_and_pids(
            shards=2, extra_yaml="limits: {max_frame: 256KiB, client_output: 1MiB, "
                                 "output_buffers: 4MiB}\n",
            router_yaml=['metrics_listen: "127.0.0.1:%d"' % mport,
                         'resp_listen: "127.0.0.1:%d"' % rport, "local_reads: false"])
        big = b"x" * (200 * 1024)
        with r.client() as c:
            self.assertOk(c.hset("t", "big", big))
            want = c.hget("t", "big").SerializeToString()
        quitters = []
        for _ in range(19):
            s = socket.create_connection(("127.0.0.1", rport), timeout=10)
            self.addCleanup(s.close)
            s.sendall(b"*3\r\n$4\r\nHGET\r\n$1\r\nt\r\n$3\r\nbig\r\n*1\r\n$4\r\nQUIT\r\n")
            quitters.append(s)
        for s in quitters:  # every byte read, EOF seen; the socket stays open
            got = b""
            while True:
                d = s.recv(1 << 20)
                if not d:
                    break
                got += d
            self.assertTrue(got.endswith(b"+OK\r\n") and len(got) > len(big), got[:100])
        base = rss_anon(pids[0])
        pingers = [r.client() for _ in range(80)]
        for c in pingers:
            self.addCleanup(c.close)
            answers = c.pipeline([req_hget("t", "big")] * 2)
            self.assertTrue(all(a.SerializeToString() == want for a in answers))
        with r.client() as reader:
            for _ in range(20):
                answers = reader.pipeline([req_hget("t", "big")] * 2)
                self.assertTrue(all(a.SerializeToString() == want for a in answers))
                for c in pingers:
                    self.assertOk(c.ping())
            m = parse_metrics(http_get(mport)[2])
        self.assertEqual(total(m, "kvs_client_output_evictions_total"), 0, r.stderr()[-2000:])
        self.assertLess(total(m, "kvs_client_output_bytes"), 4 * MIB)
        if not SANITIZED:  # the buffers the pingers kept were given back
            time.sleep(1.5)  # (the heap's free pages go back once a second)
            grown = (rss_anon(pids[0]) - base) >> 20
            self.assertLess(grown, 12, "router grew by %d MiB" % grown)

    def test_whole_table_reads_in_flight_are_not_memory(self):
        """Each whole-table read in flight keeps a frame of its client's
        output bound for its answer (limits.max_frame), but that is room,
        not memory: twenty clients that each pipeline four Hgetalls of a
        small table through the workers and read every answer are never
        closed for limits.output_buffers, however many frames their reads
        in flight keep (80 MiB here, against 8 MiB)."""
        mport = free_port()
        r = self.router(shards=2, extra_yaml="limits: {max_frame: 1MiB, client_output: 4MiB, "
                                             "output_buffers: 8MiB}\n",
                        router_yaml=['metrics_listen: "127.0.0.1:%d"' % mport,
                                     "local_reads: false"])
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
            want = c.hgetall("t").SerializeToString()
        clients = [r.client() for _ in range(20)]
        for c in clients:
            self.addCleanup(c.close)
        for _ in range(5):
            for c in clients:
                c.send_raw(encode(req_hgetall("t")) * 4)
            for c in clients:
                for _ in range(4):
                    self.assertEqual(c.recv().SerializeToString(), want)
        m = parse_metrics(http_get(mport)[2])
        self.assertEqual(total(m, "kvs_client_output_evictions_total"), 0, r.stderr()[-2000:])
        self.assertNotIn("limits.output_buffers", r.stderr())

    def test_local_reads_stop_at_high_water_for_a_client_that_does_not_read(self):
        """Reads the router answers itself are built as they are routed, so
        a client that asks for more than it reads stops being served at the
        high-water mark (a quarter of limits.client_output): the router's
        memory stays bounded, the client is not closed, others are served,
        and the client gets every answer once it reads."""
        r = self.router(shards=2, extra_yaml="limits: {max_frame: 256KiB, client_output: 1MiB}\n")
        big = b"x" * (200 * 1024)
        with r.client() as c:
            self.assertOk(c.hset("t", "big", big))
            expected = c.hget("t", "big").SerializeToString()
        rp = router_pids(r)[0]  # the router process (r.pid is the master)
        base = rss_anon(rp)
        hostile = raw_connect(r.addr)
        self.addCleanup(hostile.close)
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        hostile.sendall(encode(req_hget("t", "big")) * 100)  # 20 MB of answers
        time.sleep(0.5)
        with r.client() as other:
            self.assertOk(other.hget("t", "big"))
        if not SANITIZED:
            grown = (rss_anon(rp) - base) >> 20
            self.assertLess(grown, 8, "router grew by %d MiB" % grown)
        for i in range(100):  # not closed: every answer comes
            self.assertEqual(read_frame(hostile), expected, "answer %d" % i)
        self.assertNotIn("limits.client_output", r.stderr())

    def test_split_parts_waiting_for_a_stopped_shard_count_as_output(self):
        """A client pipelines Hmgets of two keys, a 1 MiB value on shard 0
        and a small one on shard 1, whose worker is stopped. Shard 0's
        parts wait in the router for shard 1's: they are output owed to the
        client, so the client stops being read at the high-water mark and
        is closed past limits.client_output, and the router's memory stays
        near that bound. They were counted nowhere: 100 such Hmgets grew
        the router by 100 MiB (400 by 400), and another client is served
        throughout. Parts that answer for a closed client are not kept."""
        r = self.router(shards=2, partitions=8, timeout="20s",
                        extra_yaml="limits: {client_output: 16MiB}\n",
                        router_yaml=["local_reads: false"])
        keys = keys_by_shard("k", 1, 8, 2)
        a, b = keys[0][0], keys[1][0]
        with r.client() as c:
            self.assertOk(c.hset("t", a, b"x" * MIB))
            self.assertOk(c.hset("t", b, "y"))
        rp = router_pids(r)[0]
        base = rss_anon(rp)
        hostile = raw_connect(r.addr)
        self.addCleanup(hostile.close)
        with stopped(r.worker_pid(1)):
            hostile.sendall(encode(req_hmget("t", [a, b])) * 100)
            time.sleep(1.5)
            grown = (rss_anon(rp) - base) >> 20
            with r.client() as other:
                self.assertOk(other.hget("t", a))
        if not SANITIZED:
            self.assertLess(grown, 48, "router grew by %d MiB" % grown)
        self.assertTrue(closed_by_peer(hostile, 10.0))
        self.assertIn("more than limits.client_output", r.stderr())
        with r.client() as c:
            resp = c.call(req_hmget("t", [a, b]))
            self.assertOk(resp)
            self.assertEqual([len(pyval(v)) for v in resp.values], [MIB, 1])

    def test_held_requests_wait_while_the_clients_answers_are_at_high_water(self):
        """40 pipelined Hmgets of 1,000 keys over two shards (3.5 MB of
        answer each, 140 MB in all), read only after a second: the fair
        share sends about eight at a time, and the others are released as
        answers come back only while the client's output is under the
        high-water mark, as its frames would be read. The router released
        them regardless and closed the client past limits.client_output
        (64 MiB here) after one answer; now it gets all 40."""
        r = self.router(shards=2, partitions=64, router_yaml=["local_reads: false"])
        with r.client(timeout=30) as c:
            for i in range(0, 1000, 100):
                self.assertOk(c.hmset("t", [("k%05d" % j, b"v" * 3500)
                                            for j in range(i, i + 100)]))
        hostile = raw_connect(r.addr, timeout=60.0)
        self.addCleanup(hostile.close)
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        hostile.sendall(encode(req_hmget("t", ["k%05d" % j for j in range(1000)])) * 40)
        time.sleep(1.0)
        for i in range(40):
            payload = read_frame(hostile)
            self.assertIsNotNone(payload, "answer %d missing" % i)
            resp = pb.CommandResponse()
            resp.ParseFromString(payload)
            self.assertEqual((resp.status, len(resp.values)), (200, 1000))
        self.assertNotIn("more than limits.client_output", r.stderr())

    def test_stalled_partial_frames_are_bounded_in_memory_and_time(self):
        """20 connections each stall one byte short of a 4 MiB frame: past
        limits.input_buffers new ones are refused with 503, and every stalled
        one is closed after limits.frame_timeout; other clients are served."""
        r, pids = self.router_and_pids(
            shards=1, extra_yaml="limits: {frame_timeout: 1s, input_buffers: 16MiB}\n")
        rp = router_pids(r)[0]  # the router process (r.pid is the master)
        base = rss_anon(rp)
        body = b"\0" * ((4 << 20) - 1)
        socks, refused = [], 0
        for _ in range(20):
            s = raw_connect(r.addr)
            self.addCleanup(s.close)
            s.sendall(struct.pack(">I", 4 << 20))
            try:
                s.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            socks.append(s)
        time.sleep(0.3)
        grown = (rss_anon(rp) - base) >> 20
        if not SANITIZED:
            self.assertLess(grown, 40, "router holds %d MiB of partial frames" % grown)
        for s in socks:
            s.settimeout(0.2)
            try:
                payload = read_frame(s)
            except socket.timeout:
                continue
            if payload:
                self.assertIn(b"limits.input_buffers", payload)
                refused += 1
        self.assertGreaterEqual(refused, 14)  # 16 MiB hold about four 4 MiB frames
        with r.client() as c:
            self.assertOk(c.ping())
        self.assertTrue(all(closed_by_peer(s, 4.0) for s in socks))
        self.assertIn("limits.frame_timeout", r.stderr())
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))

    def test_connections_past_max_clients_are_refused_politely(self):
        r = self.router(shards=1, extra_yaml="limits: {max_clients: 20}\n")
        held = []
        for _ in range(20):  # one by one, each served: all 20 are in
            c = r.client()
            self.addCleanup(c.close)
            self.assertOk(c.ping())
            held.append(c)
        extra = raw_connect(r.addr)
        self.addCleanup(extra.close)
        payload = read_frame(extra)
        self.assertIsNotNone(payload)
        self.assertIn(b"limits.max_clients", payload)
        self.assertTrue(closed_by_peer(extra, 3.0))
        for c in held[:5]:
            c.close()
        deadline = time.monotonic() + 5
        while True:  # the router notices the closes on its next turns
            with r.client() as c:
                try:
                    if c.ping().status == 200:
                        break
                except (ConnectionError, OSError, AssertionError):
                    pass
            self.assertLess(time.monotonic(), deadline, "no room after clients left")
            time.sleep(0.05)
        # The limit the log names is the one in force (it once printed a
        # process's share as limits.max_clients, with every door's count).
        self.assertIn("refusing protobuf clients: at 20, limits.max_clients", r.stderr())

    def test_max_clients_never_refuses_the_nodes_own_links(self):
        """limits.max_clients bounds clients, not the node's own peers: a
        worker's unix socket, where the link of every router process comes
        in, takes them whatever the limit. At 1, the second router
        process's link was refused, so that process could serve nothing."""
        r = self.router(shards=1, partitions=4, processes=2,
                        extra_yaml="limits: {max_clients: 1}\n")
        deadline = time.monotonic() + 10  # the port answers once one router process listens
        while "node ready" not in r.stderr():
            self.assertLess(time.monotonic(), deadline, r.stderr()[-3000:])
            time.sleep(0.02)
        for i in range(2):  # each router process's own socket: its link
            with Client(os.path.join(r.data_dir, "router%d.sock" % i)) as c:
                self.assertOk(c.hset("t", "k%d" % i, "v"))
        with Client(r.socket_path(0)) as w:  # a local tool at the worker
            self.assertOk(w.ping())
        self.assertNotIn("refusing protobuf clients", r.stderr())

    def test_idle_timeout_closes_idle_clients_only(self):
        r = self.router(shards=1, extra_yaml="limits: {idle_timeout: 1s}\n")
        idle = raw_connect(r.addr)
        self.addCleanup(idle.close)
        with r.client() as busy:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.5:
                self.assertOk(busy.ping())
                time.sleep(0.2)
            self.assertTrue(closed_by_peer(idle, 0.5))
            self.assertOk(busy.ping())

    def test_client_connections_have_tcp_keepalive(self):
        """A client whose host vanishes without a FIN or a reset (power
        lost, a NAT that dropped the flow) held its connection and its
        max_clients slot for ever with idle_timeout off (the default):
        every TCP connection has keepalive, first probe after 300 s idle
        (the kernel's table shows the timer armed, kind 2)."""
        resp = free_port()
        r = self.router(shards=1, router_yaml=['resp_listen: "127.0.0.1:%d"' % resp])
        with r.client() as c, socket.create_connection(("127.0.0.1", resp), timeout=10) as s:
            self.assertOk(c.ping())
            s.sendall(b"PING\r\n")
            self.assertEqual(s.recv(64), b"+PONG\r\n")
            for server, client in ((r.addr[1], c.sock.getsockname()[1]),
                                   (resp, s.getsockname()[1])):
                timer = tcp_timer(server, client)
                self.assertIsNotNone(timer, "no socket %d -> %d" % (server, client))
                kind, seconds = timer
                self.assertEqual(kind, 2, "no keepalive timer on port %d's connection" % server)
                self.assertTrue(250 < seconds <= 300, seconds)

    def test_idle_timeout_spares_the_routers_links(self):
        """The idle timeout is for clients: the router's links to its
        workers, idle whenever its clients are, stay up, and so does the
        master's link to the router process's own socket (for scrapes)."""
        r = self.router(shards=2, extra_yaml="limits: {idle_timeout: 1s}\n",
                        router_yaml=['metrics_listen: "127.0.0.1:%d"' % free_port()])
        time.sleep(3.0)
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
            self.assertOk(c.hget("t", "k"))
        self.assertNotIn("down", r.stderr())

    def test_clients_dropped_for_want_of_descriptors_are_logged(self):
        """With no descriptor left (the limit lowered under the running
        process), the event loop takes each new connection and closes it
        without a word to kvs: the router says so in its log, once, and
        serves new clients again once the limit is back."""
        r = self.router(shards=1)
        rp = router_pids(r)[0]
        soft, hard = resource.prlimit(rp, resource.RLIMIT_NOFILE)
        self.addCleanup(lambda: resource.prlimit(rp, resource.RLIMIT_NOFILE, (soft, hard)))
        # The limit is the lowest descriptor number free now, so no new one
        # fits; set again before each client, since one the process had open
        # while it was listed (and closed since) leaves a number free below.
        for _ in range(10):
            fds = {int(x) for x in os.listdir("/proc/%d/fd" % rp)}
            free = min(set(range(len(fds) + 1)) - fds)
            resource.prlimit(rp, resource.RLIMIT_NOFILE, (free, hard))
            s = socket.create_connection(r.addr, timeout=10)
            self.addCleanup(s.close)
            deadline = time.monotonic() + 1.5  # the check runs once a second
            while "no file descriptor left" not in r.stderr() and time.monotonic() < deadline:
                time.sleep(0.1)
            if "no file descriptor left" in r.stderr():
                break
        self.assertIn("this process has no file descriptor left (RLIMIT_NOFILE", r.stderr())
        resource.prlimit(rp, resource.RLIMIT_NOFILE, (soft, hard))
        with r.client() as c:
            self.assertOk(c.ping())
        self.assertEqual(r.stderr().count("no file descriptor left"), 1)

    def test_descriptor_limit_lowers_max_clients_and_workers_still_restart(self):
        """With RLIMIT_NOFILE at 256, the router lowers max_clients so its own
        descriptors stay in reserve: clients past it are refused, and a
        killed worker is restarted at once, not after a crash-loop backoff."""
        r = NofileRouter(nofile=256, shards=2)
        self.addCleanup(r.close)
        self._routers.append(r)
        r.start()
        self.assertIn("does not fit the descriptor limit", r.stderr())
        conns, refused = [], 0
        for _ in range(300):
            try:
                s = raw_connect(r.addr, timeout=2.0)
            except OSError:
                break
            self.addCleanup(s.close)
            conns.append(s)
        readable, _, _ = select.select(conns, [], [], 2.0)  # refused ones get 503 at once
        for s in readable:
            s.settimeout(1.0)
            try:
                payload = read_frame(s)
            except OSError:
                continue
            if payload and b"limits.max_clients" in payload:
                refused += 1
        self.assertGreater(refused, 0)
        old = r.kill_worker(0)
        t0 = time.monotonic()
        self.assertIsNotNone(r.wait_worker(0, not_pid=old, timeout=5.0))
        self.assertLess(time.monotonic() - t0, 3.0)
        for s in conns[:50]:
            s.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with r.client(timeout=2.0) as c:
                    resp = c.hset("t", "key-on-any-shard", "v")
                    if resp.status == 200 and c.call(req_ping()).status == 200:
                        break
            except (ConnectionError, OSError, AssertionError):
                pass
            self.assertLess(time.monotonic(), deadline, r.stderr())
            time.sleep(0.1)


    @unittest.skipIf(SANITIZED, "memory figures are ASan's in a sanitizer build")
    def test_resp_clients_of_several_key_commands_that_do_not_read_are_bounded(self):
        """30 RESP clients each pipeline EXISTS and DEL of 1,024 keys and
        never read: each key is a request the client holds, so the router
        stops reading a client at limits.max_inflight requests (twice that
        with the last command's keys) and holds about 1-2 MB a client (the
        README's Bounds), while another client is served."""
        rport = free_port()
        r, pids = self.router_and_pids(shards=2,
                                        router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        keys = [b"t%d" % i for i in range(1024)]
        def command(name):
            parts = [name] + keys
            return (b"*%d\r\n" % len(parts)) + b"".join(
                b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        burst = (command(b"EXISTS") + command(b"DEL")) * 20  # 40,960 keys, ~0.5 MB
        base = rss_anon(pids[0])
        hostile = []
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", rport), timeout=10)
            self.addCleanup(s.close)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            s.setblocking(False)
            hostile.append([s, memoryview(burst)])
        peak = base
        deadline = time.monotonic() + 4.0
        served = 0
        with socket.create_connection(("127.0.0.1", rport), timeout=10) as other:
            while time.monotonic() < deadline:
                for h in hostile:
                    try:
                        if len(h[1]):
                            h[1] = h[1][h[0].send(h[1]):]
                    except BlockingIOError:
                        pass
                other.sendall(b"*4\r\n$4\r\nHSET\r\n$1\r\nx\r\n$1\r\nf\r\n$1\r\nv\r\n")
                got = b""
                while not got.endswith(b"\r\n"):
                    got += other.recv(100)
                self.assertIn(got, (b":0\r\n", b":1\r\n"))
                served += 1
                peak = max(peak, rss_anon(pids[0]))
        grown = (peak - base) / MIB
        self.assertGreater(served, 0)
        self.assertLess(grown, 30 * 2.5, "router grew by %.1f MiB for 30 clients" % grown)

    def test_a_pipeline_of_large_writes_is_progress_not_a_hang(self):
        """One client pipelines 40 Hmsets of 60,000 pairs (~0.8 MB each,
        well within every limit) through one router process with
        router.timeout 1 s: the workers answer each part in a few
        milliseconds, so no link is taken for hung and every request is
        answered 200. The router once delivered such frames from up to 32
        reads of one wakeup without returning to its loop (seconds of
        splitting), its requests to the workers unsent and their answers
        unread, and reset the links as hung: 503 for everyone on them.
        (sync: none: the test is about the router's loop; a busy machine's
        disk once took a worker's fdatasync past the 1 s bound.)"""
        r = self.router(shards=4, timeout="1s", sync="none")
        pairs = [(b"%05x" % i, b"") for i in range(60000)]
        frame = encode(req_hmset("wide", pairs))
        n = 40
        s = raw_connect(r.addr, timeout=60.0)
        self.addCleanup(s.close)
        sender = threading.Thread(target=s.sendall, args=(frame * n,))
        sender.start()
        statuses = {}
        for i in range(n):
            payload = read_frame(s)
            self.assertIsNotNone(payload, "answer %d missing" % i)
            resp = pb.CommandResponse.FromString(payload)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        sender.join()
        self.assertEqual(statuses, {200: n})
        self.assertNotIn("down: no answer within router.timeout", r.stderr())

    def test_a_client_flooding_a_worker_gets_a_fair_share_of_it(self):
        """A worker runs what it is sent in order, so a newcomer's request
        waits behind every request other clients have at that worker. One
        client pipelines 3,000 Hsets of one key (limits.max_inflight
        raised to let it) while the worker is stopped, then a second client
        writes the same key: the router sent the first client's requests
        only up to the fair share (1,024 while it was the only busy
        client) and held the rest, so the second client's write runs after
        the 1,024th (its answer, the previous value, says which ran last),
        and the held ones run after it, in order. The router once sent all
        3,000 ahead of it."""
        r = self.router(shards=1, partitions=8, max_inflight=4096)
        n, share = 3000, 1024
        flood, other = r.client(timeout=30), r.client(timeout=30)
        self.addCleanup(flood.close)
        self.addCleanup(other.close)
        with stopped(r.worker_pid(0)):
            flood.send(*[req_hset("fair", "x", str(i)) for i in range(1, n + 1)])
            time.sleep(0.5)  # routed: the share sent, the rest held
            other.send(req_hset("fair", "x", "other"))
            time.sleep(0.3)
        got = other.recv()
        self.assertOk(got)
        self.assertEqual(pyval(got.values[0]), str(share))
        prev = [pyval(flood.recv().values[0]) for _ in range(n)]
        self.assertEqual(prev[:share], [None] + [str(i) for i in range(1, share)])
        self.assertEqual(prev[share], "other")  # the held ones ran after it, in order
        self.assertEqual(prev[share + 1:], [str(i) for i in range(share + 1, n)])
        self.assertEqual(pyval(other.hget("fair", "x").values[0]), str(n))

    def test_the_fair_share_counts_the_keys_a_request_writes(self):
        """The share counts work, not requests: 40 pipelined Hmsets of 801
        keys each are 32,000 key writes, and a newcomer once waited behind
        all of them (350 ms behind one such flooder, where Redis answers in
        0.3 ms). Each costs about a hundred units of the 1,024 (one per 8
        keys past the first, one per 4 KiB), so the router sends about ten
        and holds the rest: the newcomer's write of the flooder's key runs
        after one of the first few Hmsets, not after the 40th."""
        r = self.router(shards=1, partitions=8)
        n, keys = 40, 801
        flood, other = r.client(timeout=30), r.client(timeout=30)
        self.addCleanup(flood.close)
        self.addCleanup(other.close)
        with stopped(r.worker_pid(0)):
            flood.send(*[req_hmset("wfair", [(b"x", str(i))] +
                                   [(b"k%d" % j, "v") for j in range(keys - 1)])
                         for i in range(1, n + 1)])
            time.sleep(0.5)  # routed: the share sent, the rest held
            other.send(req_hset("wfair", "x", "other"))
            time.sleep(0.3)
        got = other.recv()
        self.assertOk(got)
        ran_before = int(pyval(got.values[0]))
        self.assertGreaterEqual(ran_before, 2)
        self.assertLessEqual(ran_before, 16)
        prev = [pyval(flood.recv().values[0]) for _ in range(n)]
        self.assertEqual(prev[ran_before], "other")  # the held ones ran after it, in order
        self.assertEqual(pyval(other.hget("wfair", "x").values[0]), str(n))

    def test_the_fair_share_prices_value_reads_by_their_answers(self):
        """A worker's time goes into its answers' bytes, which a read's
        request does not show. A client whose reads of a key got a 1 MB
        answer pipelines 200 more (the worker stopped; local reads off, so
        they go to it), then a newcomer writes the key: priced at one unit
        each, all 200 were sent ahead of the newcomer's write (200 MB that
        every client of the shard waited behind; 2,000 of them from each of
        8 such clients held another client's writes up for 8 s). Priced
        by their answers (1 unit per 4 KiB of answer per key, 257 units
        here) a few go, and the newcomer's write runs after them."""
        r = self.router(shards=1, partitions=8, router_yaml=["local_reads: false"])
        big, n = "v" * 1000000, 200
        flood, other = r.client(timeout=30), r.client(timeout=30)
        self.addCleanup(flood.close)
        self.addCleanup(other.close)
        self.assertOk(flood.hset("rfair", "x", big))
        self.assertEqual(pyval(flood.hget("rfair", "x").values[0]), big)  # the price is learnt
        with stopped(r.worker_pid(0)):
            flood.send(*[req_hget("rfair", "x") for _ in range(n)])
            time.sleep(0.5)  # routed: a few sent, the rest held
            other.send(req_hset("rfair", "x", "other"))
            time.sleep(0.3)
        got = other.recv()
        self.assertOk(got)
        self.assertEqual(pyval(got.values[0]), big)
        seen = [pyval(flood.recv().values[0]) for _ in range(n)]
        ahead = seen.index("other")
        self.assertEqual(seen[:ahead], [big] * ahead)
        self.assertEqual(seen[ahead:], ["other"] * (n - ahead))  # the held ones ran after it
        self.assertGreaterEqual(ahead, 1)
        self.assertLessEqual(ahead, 8)

    def test_a_client_held_by_its_share_goes_on_after_the_cap(self):
        """A client held by its share (512 of 1,000 pipelined Hexists sent:
        another client has work there too) whose answers all came while
        the units at workers were past the 4,096 cap (a third client's
        Hmget of 300 keys, priced 64 KiB a key until answered) was left on
        no list: nothing released it, and it got 512 answers of 1,000 for
        ever (probe VV)."""
        r = self.router(shards=1, partitions=8, router_yaml=["local_reads: false"])
        a, b, d = (r.client(timeout=30) for _ in range(3))
        for c in (a, b, d):
            self.addCleanup(c.close)
        n = 1000
        with stopped(r.worker_pid(0)):
            d.send(*[req_hexist("t", b"d%d" % i) for i in range(600)])
            time.sleep(0.5)
            a.send(*[req_hexist("t", b"k%d" % i) for i in range(n)])
            time.sleep(0.5)
            b.send(req_hmget("t", [b"m%d" % i for i in range(300)]))
            time.sleep(0.5)
        self.assertOk(b.recv())
        for _ in range(600):
            self.assertOk(d.recv())
        for i in range(n):
            self.assertOk(a.recv())  # timed out at the 513th

    def test_a_stopped_worker_at_its_cap_holds_only_its_own_shard(self):
        """Ten clients each send an Hmset of 4,000 keys to shard 1, whose
        worker is stopped: past the 4,096 units where nobody sends it
        anything, held there until router.timeout (10 s here). The cap is
        shard 1's own: another client's writes and multi-key reads of
        shard 0 (forwarded: local_reads off) are answered at once, where
        with one cap on the total they waited out router.timeout; its
        write to shard 1 waits for the worker, and is answered once it
        runs. The router process's own metrics (the master's scrapes ask
        for them) cost the workers nothing: answered at once too."""
        partitions = 16
        r = self.router(shards=2, partitions=partitions, timeout="10s",
                        router_yaml=["local_reads: false"])
        keys = keys_by_shard("r", 4, partitions, 2)
        heavy = keys_by_shard("w", 4000, partitions, 2)[1]
        writers = [r.client(timeout=30) for _ in range(10)]
        for w in writers:
            self.addCleanup(w.close)
        with r.client(timeout=30) as c:
            with stopped(r.worker_pid(1)):
                for w in writers:
                    w.send_raw(encode(req_hmset("t", [(k, b"v") for k in heavy])))
                time.sleep(0.5)
                for i, k in enumerate(keys[0][:2]):
                    t = time.monotonic()
                    self.assertEqual(c.hset("t", k, b"zero%d" % i).status, 200)
                    got = c.hmget("t", keys[0][:2])
                    took = time.monotonic() - t
                    self.assertEqual(got.status, 200, got.message)
                    self.assertLess(took, 3.0, "shard 0's requests waited %.2f s behind "
                                    "shard 1's cap" % took)
                own = metrics_req()
                own.metrics.own = True
                m, took = timed_call(c, own)
                self.assertLess(took, 3.0, "Metrics waited %.2f s behind shard 1's cap" % took)
                self.assertOk(m)
                self.assertGreaterEqual(metric_of(m.ops.metrics, "kvs_shard_units_at_workers"),
                                        4096)  # shard 1's, at its cap
                c.send(req_hset("t", keys[1][0], b"one"))  # waits for the worker
                time.sleep(0.5)
            self.assertEqual(c.recv().status, 200)
            self.assertEqual(pyval(c.hget("t", keys[1][0]).values[0]), b"one")
        for w in writers:  # the worker back, every Hmset is answered
            self.assertEqual(w.recv().status, 200)
        with r.client() as c:  # and every unit came off its shard
            m = c.call(metrics_req())
        self.assertOk(m)
        units = [s.value for f in m.ops.metrics if f.name == "kvs_shard_units_at_workers"
                 for s in f.samples]
        self.assertEqual(units, [0, 0])

    def test_clients_held_at_a_shards_cap_go_in_the_order_they_were_held(self):
        """Shard 1's worker stopped past its cap (ten Hmsets of 4,000 keys),
        three clients then write one key of it, each held at the cap, one
        after another. Once the worker runs they go in the order they
        were held: the last one's value is what the key keeps. (The
        sessions came off the shard's list in order but onto the release
        list at its head, so the last held went first and the first
        held's value was kept.)"""
        partitions = 16
        r = self.router(shards=2, partitions=partitions, timeout="10s",
                        router_yaml=["local_reads: false"])
        key = keys_by_shard("r", 1, partitions, 2)[1][0]
        heavy = keys_by_shard("w", 4000, partitions, 2)[1]
        clients = [r.client(timeout=30) for _ in range(13)]
        for c in clients:
            self.addCleanup(c.close)
        writers, held = clients[:10], clients[10:]
        with stopped(r.worker_pid(1)):
            for w in writers:
                w.send_raw(encode(req_hmset("t", [(k, b"v") for k in heavy])))
            time.sleep(0.3)
            for i, c in enumerate(held):
                c.send(req_hset("t", key, b"held-%d" % i))
                time.sleep(0.2)
        for c in writers + held:
            self.assertEqual(c.recv().status, 200)
        with r.client() as c:
            self.assertEqual(pyval(c.hget("t", key).values[0]), b"held-2")

    def test_answers_done_behind_a_held_request_do_not_keep_it_held(self):
        """62 Hgets to a stopped worker (the 62nd held by the share), then
        200 Digests, each answered 400 by the router at once: those
        answers wait behind the held Hget, counted as output past the
        high-water mark, and the held Hget waited for that output to
        drain, which it could only do after it: 61 answers, then nothing
        (probe WW)."""
        r = self.router(shards=1, partitions=8, router_yaml=["local_reads: false"],
                        extra_yaml="limits: {max_frame: 16KiB, client_output: 64KiB}\n")
        c = r.client(timeout=30)
        self.addCleanup(c.close)
        dig = pb.CommandRequest()
        dig.digest.table = "t"
        with stopped(r.worker_pid(0)):
            c.send(*[req_hget("t", b"k%d" % i) for i in range(62)])
            time.sleep(0.5)
            c.send(*[dig] * 200)
            time.sleep(0.5)
        statuses = [c.recv().status for _ in range(262)]  # timed out at the 62nd
        self.assertEqual(statuses, [404] * 62 + [400] * 200)

    def count_answers(self, sock, n, idle=10.0):
        """Reads frames from `sock` until `n` came or none came for `idle`
        seconds; returns how many came."""
        sock.settimeout(idle)
        buf, got = b"", 0
        while got < n:
            try:
                chunk = sock.recv(1 << 20)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 4:
                size = struct.unpack(">I", buf[:4])[0]
                if len(buf) < 4 + size:
                    break
                buf = buf[4 + size:]
                got += 1
        return got

    def test_a_long_pipeline_of_small_requests_is_read_to_the_end(self):
        """One client pipelines 300,000 Pings (each answered at once by the
        router) and reads all the answers. A chain of delivery kicks once
        kept counting one loop turn's budget without end: each kick found
        it spent, yielded again, and the connection was never read again
        (10,922 to 119,892 answers, then nothing, and its socket kept after
        the client left)."""
        r = self.router(shards=2, partitions=16)
        n = 300000
        s = raw_connect(r.addr, timeout=30.0)
        self.addCleanup(s.close)
        sender = threading.Thread(target=s.sendall, args=(encode(req_ping()) * n,), daemon=True)
        sender.start()
        self.assertEqual(self.count_answers(s, n), n)
        sender.join(10)

    def test_held_whole_table_reads_count_against_the_output_bound(self):
        """A client whose requests the fair share holds (another client's
        3,000 wait at the stopped worker) pipelines Hsets and then 400
        Hgetalls, reading everything. Released together, the held Hgetalls
        each reserved a frame of its output at once, past
        limits.client_output, and the client was closed though it read
        all; a held one now holds its reservation already, so the client
        stops being read at the high-water mark as it would without the
        share, and gets every answer."""
        r = self.router(shards=1, partitions=8, max_inflight=4096,
                        router_yaml=["local_reads: false"])
        with r.client() as c:
            self.assertOk(c.hset("small", "k", "v"))
        a, b = raw_connect(r.addr, timeout=30.0), raw_connect(r.addr, timeout=30.0)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        counts = {}

        def reader(name, sock, n):
            counts[name] = self.count_answers(sock, n, idle=20.0)

        with stopped(r.worker_pid(0)):
            b.sendall(b"".join(encode(req_hset("tb", "k%d" % i, "v")) for i in range(3000)))
            time.sleep(0.3)
            a.sendall(b"".join(encode(req_hset("ta", "k%d" % i, "v")) for i in range(600)) +
                      encode(req_hgetall("small")) * 400)
            threads = [threading.Thread(target=reader, args=("a", a, 1000)),
                       threading.Thread(target=reader, args=("b", b, 3000))]
            for t in threads:
                t.start()
            time.sleep(0.5)
        for t in threads:
            t.join(60)
        self.assertEqual(counts, {"a": 1000, "b": 3000})
        self.assertNotIn("more than limits.client_output", r.stderr())


class NofileRouter(Router):
    """A router started with a hard RLIMIT_NOFILE of `nofile`."""

    def __init__(self, nofile, **kw):
        self.nofile = nofile
        super().__init__(start=False, **kw)

    def spawn(self):
        import subprocess
        log = open(self.log_path, "ab")

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        try:
            return subprocess.Popen([self.exe, "--config", self.config],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    preexec_fn=limit)
        finally:
            log.close()


if __name__ == "__main__":
    unittest.main()
