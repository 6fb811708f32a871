"""Operations end to end: Prometheus metrics (router.metrics_listen, served
by the master for the whole node, and the Metrics command), the slow log
(kvs-cli slowlog, RESP SLOWLOG), request hook plugins (the shipped
audit_log, with the authenticated user on both front doors; a test plugin
that refuses writes; plugins that must not load), and live reload on
SIGHUP: the master checks the file, then its router processes and workers
apply it.

Metrics text is checked by promtool (Debian's prometheus package) and its
values against known activity: N writes move the request counters by N.
"""
import base64
import http.client
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import redis

from kafkatest import MockKafka, ingest_yaml, pos_entries, produce, wait_until
from kvstest import (BUILD_DIR, HOST, SANITIZED, Node, encode, frame, pb, pyval, recv_to_eof,
                     req_hget, req_hmget, req_hmset, req_hset, req_ping, resp_exchange,
                     tls_context, tls_yaml)
from routertest import (RouterTestCase, config_place, edit_config, free_port, router_pids,
                        stopped)
from test_auth import USERS, req_auth, users_yaml

PLUGINS = os.path.join(BUILD_DIR, "plugins")
CLI = os.path.join(BUILD_DIR, "kvs-cli")
WAIT = 15.0

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> [(name, {label: value}, float)] (comments skipped)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def total(samples, name, **labels):
    """The sum of every sample of `name` whose labels include `labels`."""
    return sum(v for n, ls, v in samples
               if n == name and all(ls.get(k) == w for k, w in labels.items()))


def basic(user, token):
    """An Authorization header of HTTP Basic credentials."""
    return {"Authorization": "Basic " + base64.b64encode(("%s:%s" % (user, token)).encode())
            .decode()}


def http_get(port, path="/metrics", method="GET", headers=None):
    c = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def read_lines(test, s, n):
    """Reads from socket `s` until `n` CRLF-ended lines came; fails the test
    if it closes first. Returns the bytes."""
    got = b""
    while got.count(b"\r\n") < n:
        chunk = s.recv(1 << 16)
        test.assertTrue(chunk, "closed after %d lines: %r" % (got.count(b"\r\n"), got[-200:]))
        got += chunk
    return got


def raw_http(port, data, source=None):
    """Sends raw bytes (from `source`, a local address, if given); returns
    the status line of the answer."""
    with socket.create_connection((HOST, port), timeout=10,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(data)
        got = b""
        while b"\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    return got.split(b"\r\n")[0].decode()


def promtool_check(test, text):
    p = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    test.assertEqual(p.returncode, 0, "promtool: %s %s\n%s"
                     % (p.stdout.decode(), p.stderr.decode(), text[:3000]))


def metrics_req():
    req = pb.CommandRequest()
    req.metrics.SetInParent()
    return req


def slowlog_req(count=0, reset=False):
    req = pb.CommandRequest()
    req.slowlog.count = count
    req.slowlog.reset = reset
    return req


class MetricsCase(RouterTestCase):
    def metrics_router(self, router_yaml=(), **kw):
        self.mport = free_port()
        return self.router(router_yaml=['metrics_listen: "%s:%d"' % (HOST, self.mport)]
                           + list(router_yaml), **kw)

    def scrape(self):
        status, ctype, body = http_get(self.mport)
        self.assertEqual(status, 200, body)
        self.assertEqual(ctype, "text/plain; version=0.0.4; charset=utf-8")
        return body

    def settled_scrape(self, timeout=10):
        """A scrape once the master reads its router process too (its link
        to it comes up just after the node says ready): before that, the
        router process's counters are missing, and a later scrape would
        count the harness's start-up connections as new."""
        deadline = time.monotonic() + timeout
        while True:
            m = parse_metrics(self.scrape())
            if any(s[0] == "kvs_client_connections_accepted_total" for s in m) or \
                    time.monotonic() > deadline:
                return m
            time.sleep(0.05)


class MetricsTest(MetricsCase):
    def test_every_family_a_scrape_shows_is_in_the_readme(self):
        """README's metrics tables name each family (a row's first cell,
        which may name several): a family added to the code and not to
        them is found here. The histograms' _bucket, _sum and _count
        samples are the histogram's."""
        r = self.metrics_router(shards=2, partitions=8)
        with r.client() as c:  # requests, so that their families have samples
            self.assertEqual(c.hset("t", "k", "v").status, 200)
            self.assertEqual(c.hget("t", "k").status, 200)
        shown = {re.sub(r"_(bucket|sum|count)$", "", name)
                 for name, _, _ in self.settled_scrape()}
        readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"),
                      encoding="utf-8").read()
        documented = {name for cell in re.findall(r"^\| (`kvs_[^|]*)\|", readme, re.M)
                      for name in re.findall(r"`(kvs_[a-z0-9_]+)`", cell)}
        missing = sorted(n for n in shown if n not in documented)
        self.assertEqual(missing, [], "families a scrape shows that README.md does not name")

    def test_scrape_passes_promtool_and_counts_activity(self):
        r = self.metrics_router(shards=2, partitions=8)
        before = self.settled_scrape()
        n = 7
        with r.client() as c:
            for i in range(n):
                self.assertEqual(c.hset("t", "k%d" % i, "v").status, 200)
            for i in range(3):
                self.assertEqual(c.hget("t", "missing%d" % i).status, 404)
        text = self.scrape()
        promtool_check(self, text)
        after = parse_metrics(text)

        def moved(name, **labels):
            return total(after, name, **labels) - total(before, name, **labels)
        self.assertEqual(moved("kvs_requests_total", command="Hset", status="200"), n)
        self.assertEqual(moved("kvs_requests_total", command="Hget", status="404"), 3)
        self.assertEqual(moved("kvs_request_duration_seconds_count", command="Hset"), n)
        self.assertEqual(moved("kvs_worker_requests_total", command="Hset", status="200"), n)
        self.assertEqual(moved("kvs_worker_request_duration_seconds_count", command="Hset"), n)
        self.assertEqual(moved("kvs_commit_batch_writes_sum"), n)  # one write per Hset
        self.assertEqual(moved("kvs_client_connections_accepted_total", protocol="kvs"), 1)
        self.assertGreater(moved("kvs_client_received_bytes_total"), n * 10)
        for s in ("0", "1"):
            self.assertEqual(total(after, "kvs_shard_link_up", shard=s), 1)
            self.assertEqual(total(after, "kvs_worker_up", shard=s), 1)
            self.assertEqual(total(after, "kvs_worker_restarts_total", shard=s), 0)
            self.assertGreater(total(after, "kvs_lmdb_map_size_bytes", shard=s), 0)
            self.assertGreater(total(after, "kvs_process_resident_memory_bytes", shard=s), 0)
            self.assertEqual(total(after, "kvs_metrics_source_up", shard=s), 1)
            self.assertEqual(total(after, "kvs_shard_replicas", shard=s), 1)
        # The master serves the port: the router process's samples say
        # which router process they are, the master's own are there too.
        self.assertGreater(total(after, "kvs_process_resident_memory_bytes", role="router",
                                 router="0"), 0)
        self.assertGreater(total(after, "kvs_process_resident_memory_bytes", role="master"), 0)
        self.assertEqual(total(after, "kvs_metrics_source_up", router="0"), 1)
        self.assertEqual(total(after, "kvs_router_up", router="0"), 1)
        self.assertTrue(all(ls.get("router") == "0" for n, ls, v in after
                            if n == "kvs_requests_total"))
        self.assertEqual(total(after, "kvs_replica_retries_total"), 0)

    def test_worker_restart_and_link_state_are_counted(self):
        r = self.metrics_router(shards=2, partitions=8)
        old = r.kill_worker(1)
        self.assertIsNotNone(r.wait_worker(1, not_pid=old))

        def restarted():
            m = parse_metrics(self.scrape())
            return (total(m, "kvs_worker_restarts_total", shard="1") == 1
                    and total(m, "kvs_shard_link_up", shard="1") == 1 and m)
        m = wait_until(restarted, WAIT)
        self.assertTrue(m, self.scrape())
        self.assertEqual(total(m, "kvs_worker_restarts_total", shard="0"), 0)
        self.assertEqual(total(m, "kvs_shard_link_failures_total", shard="1"), 1)

    def test_bad_http_requests_get_4xx(self):
        r = self.metrics_router(shards=1, partitions=8)
        p = self.mport
        self.assertEqual(http_get(p, "/other")[0], 404)
        self.assertEqual(http_get(p, "/metrics", method="POST")[0], 405)
        self.assertEqual(http_get(p, "/metrics?x=1")[0], 200)  # a query string is fine
        # Targets of other forms, well formed for their methods (they were
        # answered 400, "not a URL").
        self.assertEqual(raw_http(p, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % p),
                         "HTTP/1.1 405 Method Not Allowed")
        self.assertEqual(raw_http(p, b"OPTIONS * HTTP/1.1\r\n\r\n"),
                         "HTTP/1.1 405 Method Not Allowed")
        self.assertEqual(raw_http(p, b"BREW /metrics HTCPCP/1.0\r\n\r\n"),
                         "HTTP/1.1 501 Not Implemented")  # a method HTTP does not define
        self.assertEqual(raw_http(p, b"FOOBAR /metrics HTTP/1.1\r\n\r\n"),
                         "HTTP/1.1 501 Not Implemented")
        self.assertEqual(raw_http(p, b"\x01\x02\x03 /metrics HTTP/1.1\r\n\r\n"),
                         "HTTP/1.1 400 Bad Request")  # bytes, not a method
        # A TLS client: this port has no TLS setting, so its hello is a
        # malformed request like any other (it was closed unanswered, and
        # the log said to enable TLS on this listener, which it cannot).
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64
        self.assertEqual(raw_http(p, hello), "HTTP/1.1 400 Bad Request")
        self.assertNotIn("enable TLS on this listener", r.stderr())
        self.assertEqual(raw_http(p, b"GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
                         "HTTP/1.1 400 Bad Request")
        self.assertEqual(raw_http(p, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"),
                         "HTTP/1.1 431 Request Header Fields Too Large")
        # Many small headers: their names and values alone are under the
        # bound, the header section is not (it was answered 413).
        self.assertEqual(raw_http(p, b"GET /metrics HTTP/1.1\r\n" + b"X: a\r\n" * 2000 + b"\r\n"),
                         "HTTP/1.1 431 Request Header Fields Too Large")
        # A URL past the whole request's bound is still a URL too long.
        self.assertEqual(raw_http(p, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"),
                         "HTTP/1.1 414 URI Too Long")
        self.assertEqual(raw_http(p, b"POST /metrics HTTP/1.1\r\nContent-Length: 9000\r\n\r\n"
                                  + b"a" * 9000), "HTTP/1.1 413 Content Too Large")
        # A body declared past the bound is refused once the headers are
        # in, not after its bytes, which may never come (it waited for the
        # port's 10 s request bound, and was closed unanswered).
        start = time.monotonic()
        self.assertEqual(raw_http(p, b"GET /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
                                  b"abc"), "HTTP/1.1 413 Content Too Large")
        self.assertLess(time.monotonic() - start, 5.0)
        self.assertEqual(raw_http(p, b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
                         "HTTP/1.1 200 OK")
        self.assertEqual(raw_http(p, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n"),
                         "HTTP/1.1 414 URI Too Long")
        # A scraper set for https is told what the port speaks (it was
        # told only "malformed HTTP request").
        with socket.create_connection((HOST, p), timeout=10) as s:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with self.assertRaises((ssl.SSLError, OSError)):
                ctx.wrap_socket(s, server_hostname="x")
        with socket.create_connection((HOST, p), timeout=10) as s:
            s.sendall(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + b"\x00" * 32)
            got = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        self.assertTrue(got.startswith(b"HTTP/1.1 400 Bad Request\r\n"), got)
        self.assertIn(b"this port speaks plain HTTP, not TLS: scrape it with http://", got)
        self.assertIn("it started a TLS handshake; the metrics port speaks plain HTTP",
                      r.stderr())
        for version in (b" HTTP/9.9", b" HTTP/1.2", b" HTTP/2.0", b""):
            self.assertEqual(raw_http(p, b"GET /metrics" + version + b"\r\n\r\n"),
                             "HTTP/1.1 505 HTTP Version Not Supported", version)
        # Connections are bounded (16), but idle ones never keep a scrape
        # out: a new connection takes the place of the one idle longest.
        idle = [socket.create_connection((HOST, p), timeout=10)]
        time.sleep(0.3)
        idle += [socket.create_connection((HOST, p), timeout=10) for _ in range(15)]
        try:
            time.sleep(0.3)
            self.assertEqual(raw_http(p, b"GET /metrics HTTP/1.1\r\n\r\n"), "HTTP/1.1 200 OK")
            self.assertEqual(idle[0].recv(10), b"", "the oldest idle connection is closed")
            for s in idle[1:]:
                s.setblocking(False)
                with self.assertRaises(BlockingIOError):  # still open, nothing to read
                    s.recv(10)
            # However many come, each gets its answer.
            for _ in range(40):
                self.assertEqual(http_get(p)[0], 200)
        finally:
            for s in idle:
                s.close()
        self.assertIn("metrics listener: at 16 connections, closing the one idle longest",
                      r.stderr())

    def test_a_burst_of_scrapers_each_gets_an_answer(self):
        """40 scrapers at once, each sending its request as soon as it is
        connected (or a few ms later), 5 rounds: each gets 200, or 503 when all 16 connections
        are busy, never a connection closed unanswered. Connections
        accepted in one loop turn were each taken for the one idle longest
        by the next (idle 0 ms, their request not read yet), and a refused
        one was closed with the request unread (a reset, which may take
        the 503 with it): 68 of 400 scrapes got a reset or nothing. (One
        thread does it all: a client thread that waits for the
        interpreter between its connect and its send is idle meanwhile,
        and may be closed as such.) A refused connection past the 16 that
        linger is closed once what it sent is read; a request arriving
        after that gets a reset, after the whole 503, which counts as
        answered (CI once saw one such reset, read as unanswered)."""
        self.metrics_router(shards=1, partitions=8)
        req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

        def answered(raw):  # head and a body as long as Content-Length says
            head, sep, body = raw.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^content-length: *(\d+)", head)
            return bool(sep) and m is not None and len(body) >= int(m.group(1))

        got = {}
        for gap in (0, 0.005, 0, 0.005, 0.02):
            socks, data = [], {}
            for _ in range(40):
                s = socket.create_connection((HOST, self.mport), timeout=20)
                if not gap:
                    s.sendall(req)
                socks.append(s)
                data[s] = b""
            if gap:  # each request a few ms after its connection: not idle yet
                time.sleep(gap)
                for s in socks:
                    s.sendall(req)
            deadline = time.monotonic() + 30
            left = list(socks)
            while left and time.monotonic() < deadline:
                ready, _, _ = select.select(left, [], [], 1.0)
                for s in ready:
                    try:
                        chunk = s.recv(65536)
                    except OSError as e:
                        # A reset after a whole answer is the kernel's
                        # answer to a request that came after the refused
                        # connection was closed: the answer is read.
                        chunk = b""
                        if not answered(data[s]):
                            data[s] = type(e).__name__.encode()
                    if chunk:
                        data[s] += chunk
                    else:
                        left.remove(s)
            for s in socks:
                s.close()
                line = (data[s].split(b"\r\n")[0].decode() if answered(data[s]) else
                        "unanswered: %r" % data[s][:40])
                got[line] = got.get(line, 0) + 1
        self.assertEqual(sum(got.values()), 200, got)
        self.assertEqual(set(got) - {"HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable"},
                         set(), got)
        self.assertGreater(got.get("HTTP/1.1 200 OK", 0), 0, got)

    def test_metrics_command_merges_router_and_workers(self):
        r = self.router(shards=2, partitions=8)
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
            resp = c.call(metrics_req())
        self.assertEqual(resp.status, 200, resp.message)
        names = {f.name for f in resp.ops.metrics}
        self.assertIn("kvs_requests_total", names)
        self.assertIn("kvs_worker_requests_total", names)
        shards = {dict(zip(s.labels[::2], s.labels[1::2])).get("shard")
                  for f in resp.ops.metrics if f.name == "kvs_lmdb_pages_used"
                  for s in f.samples}
        self.assertEqual(shards, {"0", "1"})
        # A worker asked directly answers its own.
        with r.worker_client(0) as w:
            own = w.call(metrics_req())
        self.assertEqual(own.status, 200, own.message)
        self.assertNotIn("kvs_requests_total", {f.name for f in own.ops.metrics})

    def test_partition_metrics_follow_ingestion(self):
        m = MockKafka({"users": 4})
        self.addCleanup(m.close)
        self.metrics_router(shards=2, partitions=4,
                            extra_yaml=ingest_yaml(m.bootstrap, [("users", "users", "raw", 4)]))
        placed = produce(m.bootstrap, "users", [(b"k%d" % i, b"v") for i in range(20)])
        ends = {}
        for part, off in placed:
            ends[part] = max(ends.get(part, 0), off + 1)

        def caught_up():
            s = parse_metrics(self.scrape())
            ok = total(s, "kvs_partition_applied_records_total", topic="users") == 20 and all(
                total(s, "kvs_partition_lag_records", topic="users", partition=str(p)) == 0 and
                total(s, "kvs_partition_next_offset", topic="users", partition=str(p)) == e
                for p, e in ends.items())
            return ok and s
        s = wait_until(caught_up, WAIT)
        self.assertTrue(s, self.scrape())
        self.assertEqual(total(s, "kvs_partition_serving", topic="users"), 4)
        self.assertEqual(total(s, "kvs_partition_applied_records_total", shard="0")
                         + total(s, "kvs_partition_applied_records_total", shard="1"), 20)
        promtool_check(self, self.scrape())


def worker_scrapes(samples):
    """Metrics commands the workers executed: one per shard per scrape."""
    return total(samples, "kvs_worker_requests_total", command="Metrics")


def kernel_buffers():
    """Most bytes the kernel may hold for one connection to the metrics
    port: the master sets its send buffer to 64 KiB, which Linux doubles
    (the receiver's is set small by the tests)."""
    return 2 * 65536


def non_reading_socket(port, rcvbuf=4096):
    """A connection to `port` that will not read what it is sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: no autotuning
    s.settimeout(10)
    s.connect((HOST, port))
    return s


def send_for(s, data, seconds):
    """Sends `data` over and over for `seconds`, never reading; returns how
    many times it went whole into the socket."""
    s.settimeout(0.1)
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            s.sendall(data)
            n += 1
        except socket.timeout:
            pass  # the server stopped reading: as expected of a bound
    return n


class MetricsListenerBoundsTest(MetricsCase):
    """What a client of the metrics port can make the master spend."""

    GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"

    def test_pipelined_scrapes_wait_for_the_client_to_read(self):
        # A client that pipelines scrapes and never reads gets the next
        # one answered only once the last answer went into the socket: the
        # master holds one answer for it, not one per request.
        self.metrics_router(shards=2, partitions=8)
        before = self.settled_scrape()
        size = len(self.scrape().encode())
        s = non_reading_socket(self.mport)
        try:
            sent = send_for(s, self.GET * 64, 3.0)
            self.assertGreater(sent, 0)
            after = parse_metrics(self.scrape())  # another connection is served meanwhile
        finally:
            s.close()
        scrapes = (worker_scrapes(after) - worker_scrapes(before)) / 2 - 1  # per shard; not ours
        self.assertLessEqual(scrapes, kernel_buffers() // size + 4,
                             "%d scrapes of %d bytes for a client that read nothing"
                             % (scrapes, size))


    def test_a_flood_of_scrapes_asks_the_processes_at_most_ten_times_a_second(self):
        # Anyone who reaches the port may scrape as fast as they can; each
        # scrape would cost every process a Metrics answer. Scrapes share
        # fan-outs instead, which start at least 100 ms apart.
        self.metrics_router(shards=2, partitions=8)
        before = self.settled_scrape()
        answered = []
        stop = time.monotonic() + 2.0

        def flood():
            n = 0
            c = http.client.HTTPConnection(HOST, self.mport, timeout=10)
            try:
                while time.monotonic() < stop:
                    c.request("GET", "/metrics")
                    r = c.getresponse()
                    body = r.read()
                    if r.status == 200 and b"kvs_metrics_source_up" in body:
                        n += 1
            finally:
                c.close()
            answered.append(n)
        started = time.monotonic()
        threads = [threading.Thread(target=flood) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - started
        after = parse_metrics(self.scrape())
        asked = (worker_scrapes(after) - worker_scrapes(before)) / 2 - 1  # per shard; not ours
        self.assertEqual(len(answered), 8)
        self.assertLessEqual(asked, elapsed * 10 + 3, "fan-outs for %d scrapes" % sum(answered))
        self.assertGreater(sum(answered), 2 * asked, "scrapes share fan-outs")

    def test_an_http_1_0_keep_alive_is_said(self):
        # HTTP/1.0 closes after an answer unless the answer says it keeps
        # the connection: kvs kept it without saying so, and a client
        # reading to the end waited for the idle timeout (60 s) while
        # holding one of the port's 16 connections.
        self.metrics_router(shards=1, partitions=8)
        self.settled_scrape()
        for req, want in ((b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                           b"Connection: keep-alive\r\n"),
                          (b"GET /metrics HTTP/1.0\r\n\r\n", b"Connection: close\r\n")):
            with socket.create_connection((HOST, self.mport), timeout=10) as s:
                s.sendall(req)
                got = b""
                while b"\r\n\r\n" not in got:
                    chunk = s.recv(65536)
                    self.assertTrue(chunk, got)
                    got += chunk
                head = got.split(b"\r\n\r\n")[0] + b"\r\n"
                self.assertIn(b" 200 OK\r\n", head)
                self.assertIn(want, head)
        # HTTP/1.1 keeps the connection by default, saying nothing
        with socket.create_connection((HOST, self.mport), timeout=10) as s:
            s.sendall(self.GET)
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(65536)
                self.assertTrue(chunk, got)
                got += chunk
            self.assertNotIn(b"Connection:", got.split(b"\r\n\r\n")[0])

    def short_timeout_router(self, ms=1000):
        """A metrics port whose 10 s request and answer bound is `ms`
        (KVS_TEST_METRICS_TIMEOUT_MS, a test build's hook)."""
        return self.metrics_router(shards=1, partitions=8,
                                   env={"KVS_TEST_METRICS_TIMEOUT_MS": str(ms)})

    def test_clients_that_never_read_lose_their_connection(self):
        # Every connection the port takes is one that pipelines scrapes
        # and reads nothing: each is closed once an answer has waited past
        # the bound, and the port serves again. The bound (3 s) is longer
        # than taking the 16 connections may last on a loaded machine, so
        # that none is closed before the 17th is refused.
        self.short_timeout_router(3000)
        self.settled_scrape()
        hogs = [non_reading_socket(self.mport) for _ in range(16)]
        try:
            for s in hogs:
                send_for(s, self.GET * 64, 0.05)
            self.assertEqual(raw_http(self.mport, self.GET), "HTTP/1.1 503 Service Unavailable")
            self.assertTrue(wait_until(lambda: raw_http(self.mport, self.GET)
                                       == "HTTP/1.1 200 OK", 15), "the port stays taken")
        finally:
            for s in hogs:
                s.close()

    def test_a_request_sent_a_byte_at_a_time_is_cut_off(self):
        # Slowloris: headers that never end are closed at the request
        # bound, however steadily their bytes come.
        router = self.short_timeout_router()
        with socket.create_connection((HOST, self.mport), timeout=10) as s:
            start = time.monotonic()
            closed = False
            for b in b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 100:
                try:
                    s.sendall(bytes([b]))
                except OSError:
                    closed = True
                    break
                r, _, _ = select.select([s], [], [], 0.1)
                if r:
                    closed = True
                    break
            elapsed = time.monotonic() - start
        self.assertTrue(closed, "still open after %.1f s" % elapsed)
        self.assertLess(elapsed, 4.0)
        # The log line names the port's own bound, not a config key.
        self.assertTrue(wait_until(
            lambda: "closing metrics client %s:" % HOST in router.stderr(), 5), router.stderr())
        self.assertIn("a request it started", router.stderr())
        self.assertIn("did not complete within the metrics port's request time (1000 ms)",
                      router.stderr())
        self.assertNotIn("limits.frame_timeout", router.stderr())


    def test_clients_trickling_requests_keep_no_scrape_out(self):
        # 16 clients each sending a request a byte every 100 ms, and
        # reconnecting when closed, took every slot: none was idle, so
        # every scrape got 503 for as long as they went on (probe OO:
        # 12 of 13). The one whose request has been arriving longest, 1 s
        # at least, now makes room for a new connection.
        r = self.metrics_router(shards=1, partitions=8)
        stop = threading.Event()
        req = b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000

        def trickle():
            while not stop.is_set():
                try:
                    with socket.create_connection((HOST, self.mport), timeout=10) as s:
                        for b in req:
                            if stop.is_set():
                                return
                            s.sendall(bytes([b]))
                            time.sleep(0.1)
                except OSError:
                    time.sleep(0.05)  # closed: again at once

        threads = [threading.Thread(target=trickle, daemon=True) for _ in range(16)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)  # every slot taken, every request arriving for 1 s and more
            got = []
            for _ in range(6):
                got.append(http_get(self.mport)[0])
                time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
        self.assertEqual(got, [200] * 6)
        self.assertIn("none idle, closing the one whose request has been arriving longest",
                      r.stderr())

    def test_one_hosts_flood_never_keeps_another_hosts_scrape_out(self):
        # Probe BK: clients that reconnect as soon as they are closed, each
        # starting a request (a byte of junk, or a trickle), kept every one
        # of the 16 connections busy (fresh, or arriving for less than 1 s),
        # and scrapes got 503. When all are busy, a connection from another
        # host than the one that holds the most takes the place of that
        # host's first; the flooding host's own new connections get 503.
        r = self.metrics_router(shards=1, partitions=8)
        flood = "127.0.0.2"  # all of 127/8 is loopback
        socks = []
        try:
            for _ in range(16):
                s = socket.create_connection((HOST, self.mport), timeout=10,
                                             source_address=(flood, 0))
                s.sendall(b"G")  # a request begun: busy for 1 s
                socks.append(s)
            time.sleep(0.1)  # all 16 accepted and read
            self.assertEqual(raw_http(self.mport, self.GET, source=flood),
                             "HTTP/1.1 503 Service Unavailable")
            self.assertEqual(raw_http(self.mport, self.GET), "HTTP/1.1 200 OK")
            self.assertEqual(socks[0].recv(10), b"", "the flood's first connection is closed")
            for s in socks[1:]:
                s.setblocking(False)
                with self.assertRaises(BlockingIOError):  # still open, nothing to read
                    s.recv(10)
        finally:
            for s in socks:
                s.close()
        self.assertIn("all busy, 16 of them from 127.0.0.2: closing the first of those for a "
                      "new one from 127.0.0.1", r.stderr())

    def test_one_hosts_pipelined_scrapes_never_keep_another_hosts_scrape_out(self):
        # Probe BL: connections that pipeline scrapes are always busy (a
        # scrape in flight, an answer being written, a request waiting),
        # so the flooding host kept all 16: its first is closed anyway.
        self.metrics_router(shards=1, partitions=8)
        socks = []
        try:
            for _ in range(16):
                s = socket.create_connection((HOST, self.mport), timeout=10,
                                             source_address=("127.0.0.2", 0))
                s.sendall(self.GET * 8)  # and never read
                socks.append(s)
            time.sleep(0.3)
            self.assertEqual(raw_http(self.mport, self.GET), "HTTP/1.1 200 OK")
            got = b""
            while True:  # its answers so far, then the end
                chunk = socks[0].recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            self.assertTrue(got.startswith(b"HTTP/1.1 200 OK") or got == b"", got[:40])
        finally:
            for s in socks:
                s.close()

    def test_a_hosts_few_scrapes_in_flight_are_not_cut_for_a_newcomer(self):
        # Probe BM: with every connection busy with a scrape (a shard slow
        # to answer), a host holding two of them among fourteen hosts'
        # one each had its first closed unanswered for a newcomer, which
        # used to get 503. A busy connection is taken only from a host
        # holding more than half of them.
        r = self.metrics_router(shards=2, partitions=8)
        self.settled_scrape()
        got = {}

        def scrape(name, src, delay):
            time.sleep(delay)
            got[name] = raw_http(self.mport, self.GET, source=src) or "closed unanswered"
        jobs = [("host%d" % i, "127.0.0.%d" % (10 + i), 0) for i in range(14)]
        jobs += [("a-first", "127.0.0.2", 0.3), ("a-second", "127.0.0.2", 0.4),
                 ("newcomer", "127.0.0.50", 0.8)]
        threads = [threading.Thread(target=scrape, args=j) for j in jobs]
        with stopped(r.worker_pid(1)):  # every scrape waits for shard 1
            for t in threads:
                t.start()
            time.sleep(1.5)
        for t in threads:
            t.join(30)
        self.assertEqual((got.get("a-first"), got.get("a-second"), got.get("newcomer")),
                         ("HTTP/1.1 200 OK", "HTTP/1.1 200 OK",
                          "HTTP/1.1 503 Service Unavailable"), got)

    def test_connections_refused_after_they_are_accepted_linger_briefly(self):
        # A connection accepted to learn its host and then refused (probe
        # BL) lingered 2 s, as many at once as came: one host's reconnects
        # held hundreds of descriptors. It lingers as any refusal does: at
        # most 500 ms, at most 16 at a time (the others closed at once).
        r = self.metrics_router(shards=1, partitions=8)
        master = r.proc.pid

        def fds():
            return len(os.listdir("/proc/%d/fd" % master))
        flood = []
        try:
            for _ in range(16):
                s = socket.create_connection((HOST, self.mport), timeout=10,
                                             source_address=("127.0.0.2", 0))
                s.sendall(b"G")
                flood.append(s)
            time.sleep(0.1)
            base = fds()
            refused = []
            for _ in range(60):  # from the host that holds them all: 503 each
                s = socket.create_connection((HOST, self.mport), timeout=10,
                                             source_address=("127.0.0.2", 0))
                refused.append(s)
            time.sleep(0.1)
            self.assertLessEqual(fds(), base + 16 + 2)  # lingering: 16 at most
            self.assertTrue(wait_until(lambda: fds() <= base + 2, 2), (fds(), base))
            for s in refused:
                try:
                    head = s.recv(64)
                except ConnectionResetError:
                    head = b""
                self.assertTrue(head == b"" or head.startswith(b"HTTP/1.1 503"), head)
                s.close()
        finally:
            for s in flood:
                s.close()

    def test_a_request_that_just_started_is_not_taken_for_a_trickle(self):
        # 16 connections just made (none idle), one of them starting its
        # request: a 17th gets 503. The request's start, kept + 1 by
        # kvs_conn, was read as 2^64 - 1 ms ago and the request closed.
        # The master (which serves the port) is stopped meanwhile, so that
        # the byte and the 17th connection come in one loop turn.
        r = self.metrics_router(shards=1, partitions=8)
        socks = [socket.create_connection((HOST, self.mport), timeout=10) for _ in range(16)]
        try:
            time.sleep(0.1)  # all 16 accepted
            with stopped(r.proc.pid):
                socks[0].sendall(b"G")
                late = socket.create_connection((HOST, self.mport), timeout=10)
                socks.append(late)
                late.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            self.assertEqual(late.recv(4096).split(b"\r\n")[0], b"HTTP/1.1 503 Service Unavailable")
            socks[0].sendall(b"ET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                chunk = socks[0].recv(65536)
                if not chunk:
                    break
                got += chunk
            self.assertTrue(got.startswith(b"HTTP/1.1 200 OK"), got[:100])
        finally:
            for s in socks:
                s.close()

    def test_client_strings_never_become_labels(self):
        # Table names and command names are the clients' to choose; the
        # exposition's series are not: commands count under their kvs
        # command ("none" for any other), tables nowhere.
        rport = free_port()
        self.metrics_router(shards=1, partitions=8,
                            router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        rc = redis.Redis(host=HOST, port=rport, socket_timeout=10)
        self.addCleanup(rc.close)
        rc.hset("warm", "k", "v")
        with self.assertRaises(redis.ResponseError):
            rc.execute_command("NOSUCH0")

        def series(text):  # a histogram counts once
            return {(re.sub("_(bucket|sum|count)$", "", n),
                     tuple(sorted((k, v) for k, v in ls.items() if k != "le")))
                    for n, ls, v in parse_metrics(text)}
        self.scrape()  # the scrapes' own series (command Metrics) are there from now on
        before = series(self.scrape())
        for i in range(300):  # tables up to storage.max_tables (256), then refusals
            name = 't%d "\\\n\xe9' % i
            try:
                rc.hset(name, "k", "v")
            except redis.ResponseError as e:
                self.assertIn("max_tables", str(e))
            with self.assertRaises(redis.ResponseError):
                rc.execute_command(name.replace(" ", "_"), "x")
        text = self.scrape()
        promtool_check(self, text)
        new = series(text) - before
        self.assertLessEqual(len(new), 4, sorted(new))  # Hset's 507 (max_tables), say
        self.assertNotIn("t1 ", text)
        self.assertNotIn("NOSUCH0", text)


class MetricsSecurityTest(MetricsCase):
    """The metrics port over HTTPS (tls.metrics) and, with users, for users
    holding admin only (router.metrics_auth): HTTP Basic user:token or a
    client certificate naming the user, checked as Auth is."""

    def get(self, headers=None, ctx=None, conn=None):
        """(status, headers, body) of GET /metrics; over TLS with `ctx`; on
        `conn` (kept open) if given."""
        c = conn or (http.client.HTTPSConnection(HOST, self.mport, timeout=10, context=ctx)
                     if ctx is not None else http.client.HTTPConnection(HOST, self.mport,
                                                                        timeout=10))
        try:
            c.request("GET", "/metrics", headers=headers or {})
            r = c.getresponse()
            return r.status, r.headers, r.read().decode()
        finally:
            if conn is None:
                c.close()

    def users_router(self, metrics_auth=None, tls=None, limits="", env=None):
        router_yaml = [] if metrics_auth is None else ["metrics_auth: %s" % metrics_auth]
        extra = users_yaml(limits=limits) + (tls_yaml(metrics=tls) if tls else "")
        return self.metrics_router(router_yaml=router_yaml, shards=1, partitions=8,
                                   extra_yaml=extra, env=env)

    def test_https_serves_scrapes_and_tells_a_plain_client(self):
        r = self.metrics_router(shards=1, partitions=8,
                                extra_yaml=tls_yaml(metrics={"enabled": "true"}))
        status, _, body = self.get(ctx=tls_context())  # verifies the node's certificate
        self.assertEqual(status, 200, body)
        self.assertIn("kvs_worker_up", body)
        status, _, body = self.get()  # plain HTTP on the HTTPS port: told, in the clear
        self.assertEqual(status, 400)
        self.assertIn("this port speaks HTTPS (tls.metrics): scrape it with https://", body)
        self.assertIn("serving metrics on https://", r.stderr())
        r.proc.send_signal(signal.SIGHUP)  # the material is read again
        wait_until(lambda: "tls.metrics: certificate, key and CA reloaded" in r.stderr(), WAIT)
        m = parse_metrics(self.get(ctx=tls_context())[2])
        self.assertEqual(total(m, "kvs_tls_reloads_total", role="master", tls="tls.metrics",
                               result="ok"), 1)

    def test_client_certificates_may_be_required(self):
        self.metrics_router(shards=1, partitions=8, extra_yaml=tls_yaml(
            metrics={"enabled": "true", "client_cert": "require"}))
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.get(ctx=tls_context())  # no certificate: refused
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.get(ctx=tls_context(cert="wrong"))  # another CA's
        status, _, body = self.get(ctx=tls_context(cert="alice"))  # no users: anyone with one
        self.assertEqual(status, 200, body)

    def test_with_users_a_scrape_needs_a_user_holding_admin(self):
        r = self.users_router()
        status, headers, body = self.get()
        self.assertEqual(status, 401, body)
        self.assertEqual(headers["WWW-Authenticate"], 'Basic realm="kvs", charset="UTF-8"')
        self.assertIn("authentication required", body)
        self.assertNotIn("kvs_", body)
        status, _, body = self.get(basic("ops", "wrong"))
        self.assertEqual((status, body), (401, "invalid user or token\n"))
        status, _, body = self.get(basic("nobody", "x"))  # an unknown user: the same words
        self.assertEqual((status, body), (401, "invalid user or token\n"))
        status, _, body = self.get(basic("alice", USERS["alice"][0]))  # right token, no admin
        self.assertEqual(status, 403, body)
        self.assertIn('user "alice" may not run Metrics: it needs admin', body)
        status, _, body = self.get(basic("ops", USERS["ops"][0]))
        self.assertEqual(status, 200, body)
        self.assertIn("kvs_worker_up", body)
        self.assertIn('auth: failed Auth as "ops" from 127.0.0.1', r.stderr())
        for headers, words in (({"Authorization": "Bearer abc"}, "only HTTP Basic"),
                               ({"Authorization": "Basic !!!"}, "malformed Authorization"),
                               ({"Authorization": "Basic " + base64.b64encode(b"ops").decode()},
                                "malformed Authorization"),
                               ({"Authorization": "Basic " + "QUFB" * 600}, "too long")):
            status, _, body = self.get(headers)
            self.assertEqual(status, 401, (headers, body))
            self.assertIn(words, body)
        # two Authorization headers: which one counts is not guessed
        got = raw_http(self.mport, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                       + base64.b64encode(b"ops:ops-pw") + b"\r\nAuthorization: Basic "
                       + base64.b64encode(b"alice:alice-pw") + b"\r\n\r\n")
        self.assertEqual(got, "HTTP/1.1 400 Bad Request")

    def test_each_request_says_who_it_is(self):
        # A keep-alive connection whose first scrape proved a user: the next
        # request without credentials is nobody's (HTTP is per request).
        self.users_router()
        c = http.client.HTTPConnection(HOST, self.mport, timeout=10)
        self.addCleanup(c.close)
        ops = basic("ops", "ops-pw")
        self.assertEqual(self.get(ops, conn=c)[0], 200)
        self.assertEqual(self.get(ops, conn=c)[0], 200)  # remembered: no second check
        self.assertEqual(self.get(conn=c)[0], 401)

    def test_a_client_certificate_names_the_user(self):
        self.users_router(tls={"enabled": "true", "client_cert": "optional"})
        status, _, body = self.get(ctx=tls_context(cert="node"))  # CN kvs-node: admin
        self.assertEqual(status, 200, body)
        status, _, body = self.get(ctx=tls_context(cert="alice"))  # CN alice: no admin
        self.assertEqual(status, 403, body)
        status, _, body = self.get(ctx=tls_context())  # no certificate, no token
        self.assertEqual(status, 401, body)
        # a token over TLS, alice's certificate notwithstanding: the request's user
        ops = basic("ops", "ops-pw")
        self.assertEqual(self.get(ops, ctx=tls_context(cert="alice"))[0], 200)

    def test_failures_are_limited_per_address_as_auth_is(self):
        self.users_router(limits="auth_failures_per_minute: 2")
        bad, good = basic("ops", "wrong"), basic("ops", "ops-pw")
        for _ in range(2):
            self.assertEqual(self.get(bad)[0], 401)
        status, _, body = self.get(good)  # refused unchecked, right token or not
        self.assertEqual(status, 401, body)
        self.assertIn("too many failed Auth attempts from 127.0.0.1", body)

    def test_metrics_auth_false_leaves_the_port_open(self):
        self.users_router(metrics_auth="false")
        status, _, body = self.get()
        self.assertEqual(status, 200, body)
        self.assertIn("kvs_worker_up", body)

    def test_pipelined_scrapes_each_wait_for_their_own_check(self):
        # Three scrapes in one packet, each with its own credentials, while
        # the node starts (its router process's readiness held back): the
        # master answers a scrape at once from its own families then, so
        # the first one's answer read the second before the first check's
        # end was done with, and the third was read and checked beside the
        # second: the connection's checks were lost track of and one ended
        # on the connection after it was freed (a use after free in the
        # master). Each waits for its own check now: 200, 403, and the
        # third is never checked, the connection being closed after a 4xx.
        r = self.router(start=False, shards=1, partitions=8, extra_yaml=users_yaml(),
                        router_yaml=['metrics_listen: "%s:%d"' % (HOST, free_port())],
                        env={"KVS_TEST_ROUTER_READY_DELAY_MS": "3000"})
        self.mport = int(re.search(r'metrics_listen: "[0-9.]+:(\d+)"',
                                   open(r.config).read()).group(1))
        r.proc = r.spawn()
        deadline = time.monotonic() + 20
        while True:
            try:
                s = socket.create_connection((HOST, self.mport), timeout=10)
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, "the metrics port never listened")
                time.sleep(0.01)
        self.addCleanup(s.close)
        self.assertNotIn("node ready", r.stderr())
        req = lambda cred: (b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                            + base64.b64encode(cred) + b"\r\n\r\n")
        s.sendall(req(b"ops:ops-pw") + req(b"alice:alice-pw") + req(b"ops:wrong"))
        got = recv_to_eof(s)
        self.assertEqual(re.findall(rb"HTTP/1.1 (\d+)", got), [b"200", b"403"], got[-300:])
        wait_until(lambda: "node ready" in r.stderr(), WAIT)
        self.assertIsNone(r.proc.poll(), r.stderr()[-2000:])
        self.assertNotIn('failed Auth as "ops"', r.stderr())  # the third was never checked

    def slow_check(self, source=None):
        """A router whose token checks take 1.5 s each (a test hook: a dear
        hash without its CPU), and a connection (from `source`) whose
        scrape as ops is being checked; returns the connection."""
        self.users_router(env={"KVS_TEST_AUTH_CHECK_MS": "1500"})
        checked = self.connect(source, timeout=60)
        checked.sendall(self.GET_AS(b"ops:ops-pw"))
        return checked

    @staticmethod
    def GET_AS(cred):
        return (b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                + base64.b64encode(cred) + b"\r\n\r\n")

    def connect(self, source=None, timeout=10):
        s = socket.create_connection((HOST, self.mport), timeout=timeout,
                                     source_address=(source, 0) if source else None)
        self.addCleanup(s.close)
        return s

    def test_a_check_in_flight_keeps_its_connection_against_a_flood(self):
        # At the port's 16 connections a newcomer closes the one idle
        # longest, but not one whose token is being checked: its request
        # came whole and it waits for the answer.
        checked = self.slow_check()
        time.sleep(0.4)  # idle past the port's 250 ms by the time the flood comes
        for _ in range(20):
            self.connect()
        got = read_lines(self, checked, 1)
        self.assertTrue(got.startswith(b"HTTP/1.1 200 OK"), got[:200])

    def test_a_check_in_flight_is_not_closed_for_another_hosts_newcomer(self):
        # The checked connection's host holds most of the 16, all busy (their
        # checks parked behind its own, more of their input waiting): a
        # newcomer from another host takes the place of one of that host's,
        # never of the one being checked.
        checked = self.slow_check("127.0.0.1")
        parked = [self.connect("127.0.0.1") for _ in range(13)]
        for s in parked:
            s.sendall(self.GET_AS(b"ops:wrong"))
        time.sleep(0.3)
        for s in parked:  # read no more (paused): input waiting, never idle
            s.sendall(b"G")
        for _ in range(2):
            self.connect("127.0.0.3")
        time.sleep(0.1)
        self.connect("127.0.0.2")
        got = read_lines(self, checked, 1)
        self.assertTrue(got.startswith(b"HTTP/1.1 200 OK"), got[:200])


class SlowlogTest(RouterTestCase):
    def logged_router(self):
        """A one-shard router that logs every request, with a Redis port:
        (router, its Redis port, a Redis client of it)."""
        rport = free_port()
        r = self.router(shards=1, partitions=8, log="{level: info, slow_threshold: 0}",
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        rc = redis.Redis(host=HOST, port=rport, socket_timeout=10)
        self.addCleanup(rc.close)
        return r, rport, rc

    def test_slowlog_through_cli_resp_and_a_worker(self):
        rport = free_port()
        r = self.router(shards=2, partitions=8, log="{level: info, slow_threshold: 0}",
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        with r.client() as c:
            self.assertEqual(c.hset("users", "alice", "a").status, 200)
            self.assertEqual(c.hmget("users", [b"a", b"b", b"c"]).status, 200)
        out = subprocess.run([CLI, "--port", str(r.port), "slowlog", "2"], capture_output=True,
                             timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.decode().splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], r'^1\) #2 \d{4}-\d\d-\d\dT[\d:.]+Z \d+\.\d{3} ms Hmget "users" '
                                   r'3 keys, status 200, client 127\.0\.0\.1:\d+$')
        self.assertRegex(lines[1], r'^2\) #1 .* Hset "users" 1 key, status 200, client ')
        # 0 shows none, as Redis's SLOWLOG GET 0 (the protocol's 0 is "the default")
        out = subprocess.run([CLI, "--port", str(r.port), "slowlog", "0"], capture_output=True,
                             timeout=20)
        self.assertEqual((out.returncode, out.stdout), (0, b"(empty)\n"), out.stderr)
        # RESP: SLOWLOG LEN / GET / RESET on the same log.
        rc = redis.Redis(host=HOST, port=rport, socket_timeout=10)
        self.addCleanup(rc.close)
        n = rc.slowlog_len()
        self.assertGreaterEqual(n, 3)  # the two requests and kvs-cli's Slowlog
        entries = rc.slowlog_get(10)  # SLOWLOG LEN is in it now
        self.assertEqual([e["id"] for e in entries], list(range(n + 1, 0, -1)))
        self.assertEqual(entries[-1]["command"], b"Hset users 1 key")
        self.assertTrue(rc.slowlog_reset())
        self.assertEqual(rc.slowlog_len(), 1)  # SLOWLOG LEN itself, logged after it answered
        out = subprocess.run([CLI, "--port", str(r.port), "slowlog", "reset"],
                             capture_output=True, timeout=20)
        self.assertEqual(out.stdout, b"OK\n")
        # A worker asked directly answers its own log (its service times).
        with r.worker_client(r.shard_of(b"alice")) as w:
            resp = w.call(slowlog_req(count=100))
        self.assertEqual(resp.status, 200, resp.message)
        self.assertIn(("Hset", "users"), {(e.command, e.table) for e in resp.ops.slowlog})

    def test_a_table_that_is_not_utf8_leaves_the_slowlog_readable(self):
        # Requests refused for their table name are logged too; the
        # protobuf answer must still decode (strings are UTF-8) and the
        # RESP one show what was sent, escaped. (A Redis client's bad key is
        # refused before it is routed; a protobuf client's reaches the
        # hooks: its table is written here as bytes, in place of a
        # placeholder of the same length, since protobuf runtimes refuse to
        # encode a string that is not UTF-8.)
        r, rport, rc = self.logged_router()
        with r.client() as c:
            for table in (b"nul\x00x", b"\xff\xfe", b"a\xc3", b"x" + b"\xc3\xa9" * 150):
                placeholder = "T" * len(table)
                raw = req_hset(placeholder, "k", "v").SerializeToString()
                self.assertEqual(raw.count(placeholder.encode()), 1)
                c.send_raw(frame(raw.replace(placeholder.encode(), table)))
                self.assertEqual(c.recv().status, 400)
            resp = c.call(slowlog_req(count=4))
        self.assertEqual(resp.status, 200, resp.message)
        # a NUL byte, too, is shown where it is (the name was cut there)
        self.assertEqual([e.table for e in resp.ops.slowlog][1:],
                         ["a\\xc3", "\\xff\\xfe", "nul\\x00x"])
        self.assertTrue(resp.ops.slowlog[0].table.startswith("x\u00e9\u00e9"))
        self.assertTrue(resp.ops.slowlog[0].table.endswith("..."))
        got = rc.execute_command("SLOWLOG", "GET", "10")
        self.assertIn(b"\\xff\\xfe", [e[3][1] for e in got])
        # A name too long for a table (refused) is never shown as a valid
        # one cut to 200 bytes: it ends "..." (also one cut between
        # characters, or not), on both front doors.
        for table in (b"a" * 201, "\u00e9".encode() * 150, b"b" * 5000):
            with self.assertRaisesRegex(redis.ResponseError, "the key"):
                rc.hset(table, "f", "v")
            shown = rc.execute_command("SLOWLOG", "GET", "1")[0][3][1]
            self.assertTrue(shown.endswith(b"..."), shown)
            self.assertTrue(table.startswith(shown[:150]), shown)
        with r.client() as c:
            self.assertEqual(c.hset("c" * 201, "k", "v").status, 400)
            resp = c.call(slowlog_req(count=1))
        self.assertTrue(resp.ops.slowlog[0].table.startswith("c" * 150), resp.ops.slowlog[0])
        self.assertTrue(resp.ops.slowlog[0].table.endswith("..."), resp.ops.slowlog[0])
        with r.worker_client(0) as w:  # a worker's log too
            self.assertEqual(w.hset("d" * 201, "k", "v").status, 400)
            resp = w.call(slowlog_req(count=1))
        self.assertEqual(resp.ops.slowlog[0].command, "Hset", resp.ops.slowlog[0])
        self.assertTrue(resp.ops.slowlog[0].table.startswith("d" * 150), resp.ops.slowlog[0])
        self.assertTrue(resp.ops.slowlog[0].table.endswith("..."), resp.ops.slowlog[0])

    def test_a_redis_clients_name_is_in_its_entries(self):
        # CLIENT SETNAME's name (and HELLO's SETNAME) is the sixth field of a
        # RESP entry, as in Redis, and shown by kvs-cli; a long one is cut
        # to 60 bytes and "..."; a protobuf client's entries have none.
        r, rport, rc = self.logged_router()
        self.assertTrue(rc.client_setname("loader-1"))
        self.assertEqual(rc.hset("t", "a", "1"), 1)
        long_name = "n" * 70
        self.assertTrue(rc.client_setname(long_name))
        self.assertEqual(rc.hget("t", "a"), b"1")
        got = resp_exchange(rport, b"HELLO 2 SETNAME hello-named\r\nHLEN t\r\n", end=b":1\r\n",
                            host=HOST)
        self.assertTrue(got.endswith(b":1\r\n"), got)
        with r.client() as c:
            self.assertEqual(c.hget("t", "a").status, 200)
        entries = rc.execute_command("SLOWLOG", "GET", "-1")
        by_args = {tuple(e[3]): e for e in entries}
        self.assertEqual(by_args[(b"Hset", b"t", b"1 key")][5], b"loader-1")
        self.assertEqual(by_args[(b"Hget", b"t", b"1 key")][5], b"n" * 60 + b"...")
        self.assertEqual(by_args[(b"Hlen", b"t", b"0 keys")][5], b"hello-named")
        self.assertRegex(by_args[(b"Hset", b"t", b"1 key")][4], rb"^127\.0\.0\.1:\d+$")
        with r.client() as c:
            resp = c.call(slowlog_req(count=100))
        self.assertEqual(resp.status, 200, resp.message)
        hgets = [e.client_name for e in resp.ops.slowlog if e.command == "Hget"]
        self.assertEqual(sorted(hgets), ["", "n" * 60 + "..."])  # the protobuf client's: none
        out = subprocess.run([CLI, "--port", str(r.port), "slowlog", "100"], capture_output=True,
                             timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout.decode(),
                         r'Hset "t" 1 key, status 200, client 127\.0\.0\.1:\d+ name loader-1\n')
        raw = subprocess.run([CLI, "--port", str(r.port), "--raw", "slowlog", "100"],
                             capture_output=True, timeout=20)
        self.assertEqual(raw.returncode, 0, raw.stderr)
        fields = [ln.split(b"\t") for ln in raw.stdout.splitlines()]
        self.assertTrue(all(len(f) == 9 for f in fields), fields)
        self.assertIn(b"hello-named", [f[8] for f in fields if f[3] == b"Hlen"])
        # A table named with the text "\x0a" and one with a newline in it
        # print apart in --raw fields, each decoding to its own name.
        with r.client() as c:
            for name in ("a\\x0ab", "a\nb"):
                self.assertEqual(c.hset(name, "k", 1).status, 200)
        raw = subprocess.run([CLI, "--port", str(r.port), "--raw", "slowlog", "2"],
                             capture_output=True, timeout=20)
        self.assertEqual(raw.returncode, 0, raw.stderr)
        tables = [ln.split(b"\t")[4] for ln in raw.stdout.splitlines()]
        self.assertEqual(tables, [b"a\\x0ab", b"a\\x5cx0ab"])
        # An entry names the client as it was named when the command was
        # read, as Redis logs the name a command ran under, also when the
        # client renames itself before the answer comes (workers stopped).
        s = socket.create_connection((HOST, rport), timeout=10)
        self.addCleanup(s.close)
        with stopped(*r.workers().values()):
            s.sendall(b"CLIENT SETNAME first\r\nHSET t2 a 1\r\nCLIENT SETNAME second\r\n"
                      b"HGET t2 a\r\n")
            time.sleep(0.3)
        got = read_lines(self, s, 5)
        self.assertEqual(got, b"+OK\r\n:1\r\n+OK\r\n$1\r\n1\r\n")
        by_args = {tuple(e[3]): e for e in rc.execute_command("SLOWLOG", "GET", "-1")}
        self.assertEqual(by_args[(b"Hset", b"t2", b"1 key")][5], b"first")
        self.assertEqual(by_args[(b"Hget", b"t2", b"1 key")][5], b"second")

    def test_a_name_given_with_hello_auth_is_its_own_entrys(self):
        # HELLO ... AUTH ... SETNAME renames the client when its Auth
        # answer is written, after the HELLO left the client's list of
        # requests: its own entry must name the new name, not the freed old
        # one (the sanitizer build caught a use after free here).
        rport = free_port()
        r = self.router(shards=1, partitions=8, extra_yaml=users_yaml(),
                        log="{level: info, slow_threshold: 0}",
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        got = resp_exchange(rport, b"AUTH ops ops-pw\r\nCLIENT SETNAME " + b"A" * 300 +
                            b"\r\nHELLO 2 AUTH ops ops-pw SETNAME newname\r\nPING\r\n",
                            end=b"+PONG\r\n", host=HOST)
        self.assertTrue(got.startswith(b"+OK\r\n+OK\r\n*"), got[:200])
        self.assertTrue(got.endswith(b"+PONG\r\n"), got[-200:])
        rc = redis.Redis(host=HOST, port=rport, username="ops", password="ops-pw",
                         socket_timeout=10)
        self.addCleanup(rc.close)
        entries = rc.execute_command("SLOWLOG", "GET", "-1")
        names = [(e[3][0], e[5]) for e in entries if e[3][0] == b"Auth"]
        self.assertIn((b"Auth", b"newname"), names, entries)
        self.assertIn((b"Auth", b""), names, entries)  # the AUTH before any name
        self.assertIsNone(r.proc.poll(), r.stderr()[-3000:])

    def test_slowlog_pipelined_behind_commands_sees_them_logged(self):
        # As in Redis, which runs one command after the other: a SLOWLOG
        # pipelined behind commands answers once they are logged (they are
        # when answered), and a RESET clears them. It once ran as soon as
        # it was read: GET listed neither command before it, and a RESET
        # left the HSET sent ahead of it in the log.
        rport = free_port()
        r = self.router(shards=2, partitions=8, log="{level: info, slow_threshold: 0}",
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        rc = redis.Redis(host=HOST, port=rport, socket_timeout=10)
        self.addCleanup(rc.close)
        self.assertTrue(rc.slowlog_reset())
        p = rc.pipeline(transaction=False)
        p.hset("slo", "k", "v").hget("slo", "k").slowlog_get(10)
        got = p.execute()
        self.assertEqual([e["command"] for e in got[2]][:2],
                         [b"Hget slo 1 key", b"Hset slo 1 key"], got[2])
        p = rc.pipeline(transaction=False)
        p.hset("slo", "k2", "v").slowlog_reset().slowlog_len()
        self.assertEqual(p.execute(), [1, True, 1])  # the RESET itself, logged after it ran
        self.assertEqual(rc.slowlog_len(), 2)
        # Behind a write to a stopped worker, it waits for it. A client
        # that resets meanwhile is kept until its answers are written (both
        # run, the write fails, then it closes): nothing is left behind (the
        # sanitizer build's leak check at the router's clean stop).
        on1 = next("f%d" % i for i in range(1000) if r.shard_of(b"f%d" % i) == 1)
        pid = r.worker_pid(1)
        os.kill(pid, signal.SIGSTOP)
        try:
            s = socket.create_connection((HOST, rport), timeout=10)
            s.sendall(b"*4\r\n$4\r\nHSET\r\n$3\r\nslo\r\n$%d\r\n%s\r\n$1\r\nv\r\n"
                      % (len(on1), on1.encode()) + b"*2\r\n$7\r\nSLOWLOG\r\n$3\r\nLEN\r\n")
            s.settimeout(0.5)
            with self.assertRaises(socket.timeout):
                s.recv(100)  # neither answers while the worker is stopped
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # a reset, both requests unanswered
            s = socket.create_connection((HOST, rport), timeout=10)
            s.sendall(b"*4\r\n$4\r\nHSET\r\n$3\r\nslo\r\n$%d\r\n%s\r\n$1\r\nv\r\n"
                      % (len(on1), on1.encode()) + b"*2\r\n$7\r\nSLOWLOG\r\n$3\r\nLEN\r\n")
        finally:
            os.kill(pid, signal.SIGCONT)
        s.settimeout(10)
        got = read_lines(self, s, 2)
        s.close()
        first, second = got.split(b"\r\n")[:2]
        self.assertIn(first, (b":0", b":1"))  # the HSET
        self.assertRegex(second, rb"^:\d+$")
        self.assertGreaterEqual(int(second[1:]), 3)  # the HSETs were logged before it ran
        self.assertEqual(r.stop(), 0)
        self.assertNotRegex(r.stderr(), r"LeakSanitizer|AddressSanitizer|runtime error")

    def test_a_long_pipeline_of_slowlogs_behind_a_write_runs_flat(self):
        # Each deferred Slowlog once completed inside the flush that ran
        # it, which flushed the next: 30,000 pipelined behind one write
        # (limits.max_inflight raised) nested 30,000 flushes, past the
        # router process's stack.
        rport = free_port()
        n = 30000
        r = self.router(shards=2, partitions=8, max_inflight=n + 10,
                        log="{level: info, slow_threshold: 0, slow_max: %d}" % (2 * n),
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        on1 = next("f%d" % i for i in range(1000) if r.shard_of(b"f%d" % i) == 1)
        pid = r.worker_pid(1)
        s = socket.create_connection((HOST, rport), timeout=30)
        self.addCleanup(s.close)
        os.kill(pid, signal.SIGSTOP)
        try:
            s.sendall(b"*4\r\n$4\r\nHSET\r\n$3\r\nslo\r\n$%d\r\n%s\r\n$1\r\nv\r\n"
                      % (len(on1), on1.encode()) + b"*2\r\n$7\r\nSLOWLOG\r\n$3\r\nLEN\r\n" * n)
            time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        replies = read_lines(self, s, n + 1).split(b"\r\n")[:n + 1]
        self.assertIn(replies[0], (b":0", b":1"))
        self.assertTrue(all(x.startswith(b":") for x in replies[1:]), replies[1:5])
        # each one logged once answered, so each sees one more than the last
        lens = [int(x[1:]) for x in replies[1:]]
        self.assertEqual(lens[-1] - lens[0], n - 1)
        self.assertIsNone(r.proc.poll())

    def test_slowlog_holds_no_arguments_and_answers_at_most_its_ring(self):
        # An entry is the command, table, key count and address, whatever
        # the request carried (here a 1000-field, 1 MiB Hmset); any count
        # asked for answers at most log.slow_max entries.
        rport = free_port()
        r = self.router(shards=1, partitions=8, max_frame="8MiB",
                        log="{level: info, slow_threshold: 0, slow_max: 4}",
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        rc = redis.Redis(host=HOST, port=rport, socket_timeout=10)
        self.addCleanup(rc.close)
        big = {"k%d" % i: "v" * 1024 for i in range(1000)}
        for _ in range(6):
            self.assertEqual(rc.hset("t", mapping=big), 0 if _ else 1000)
        for count in ("-1", "4294967296", "9223372036854775807"):
            got = rc.execute_command("SLOWLOG", "GET", count)
            self.assertEqual(len(got), 4, count)
            self.assertLess(len(repr(got)), 4096)
            self.assertIn([b"Hmset", b"t", b"1000 keys"], [e[3] for e in got])
        for count in ("-2", "9223372036854775808", "x"):
            with self.assertRaises(redis.ResponseError):
                rc.execute_command("SLOWLOG", "GET", count)
        with r.client() as c:
            resp = c.call(slowlog_req(count=0xFFFFFFFF))
        self.assertEqual(resp.status, 200, resp.message)
        self.assertEqual(len(resp.ops.slowlog), 4)
        self.assertEqual(resp.ops.slowlog_len, 4)
        self.assertLess(resp.ByteSize(), 1024)


class PluginTest(RouterTestCase):
    def test_audit_log_writes_one_line_per_write(self):
        r = self.router(shards=2, partitions=8, start=False)
        audit = os.path.join(r.dir, "audit.log")
        with open(r.config, "a") as f:
            f.write('plugins:\n  - {path: "%s/audit_log.so", arg: "%s"}\n' % (PLUGINS, audit))
        r.start()
        with r.client() as c:
            self.assertEqual(c.hset("users", "alice", "a").status, 200)
            self.assertEqual(c.hget("users", "alice").status, 200)  # a read: not audited
            self.assertEqual(c.hmset("t \"q\"", [(b"a", "1"), (b"b", "2"), (b"c", "3")]).status,
                             200)
            self.assertEqual(c.hdel("users", "alice").status, 200)
            self.assertEqual(c.hset("users", "", "x").status, 400)  # refused: audited as such
        with open(audit) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 4, lines)
        stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z client=127\.0\.0\.1:\d+ user=-"
        self.assertRegex(lines[0], "^%s command=Hset table=\"users\" keys=1 status=200$" % stamp)
        self.assertRegex(lines[1], r'^%s command=Hmset table="t \\"q\\"" keys=3 status=200$' % stamp)
        self.assertRegex(lines[2], "^%s command=Hdel table=\"users\" keys=1 status=200$" % stamp)
        self.assertRegex(lines[3], "^%s command=Hset table=\"users\" keys=1 status=400$" % stamp)
        self.assertIn("plugin audit_log loaded from", r.stderr())

    def test_hook_times_never_run_backwards(self):
        # The router's send events took the time of the read that brought
        # the last answer, which for a split request could be before its
        # executed event's clock read: a plugin subtracting them wrapped.
        r = self.router(shards=4, partitions=16, start=False)
        out = os.path.join(r.dir, "clock.txt")
        with open(r.config, "a") as f:
            f.write('plugins:\n  - {path: "%s/test_clock_order.so", arg: "%s"}\n'
                    % (PLUGINS, out))
        r.start()
        with r.client() as c:
            for i in range(50):
                reqs = [req_hmset("t", [(b"k%d-%d" % (i, j), "v") for j in range(40)]),
                        req_hmget("t", [b"k%d-%d" % (i, j) for j in range(40)]),
                        req_hget("t", b"k%d-0" % i), req_ping()]
                c.send_raw(b"".join(encode(q) for q in reqs))
                for _ in reqs:
                    self.assertEqual(c.recv().status, 200)
        self.assertEqual(r.stop(), 0)
        with open(out) as f:
            lines = [ln.split() for ln in f.read().splitlines()]
        self.assertEqual(len(lines), 5, lines)  # the router process and 4 workers
        for _, role, shard, events, backwards in lines:
            self.assertGreater(int(events), 0, (role, shard))
            self.assertEqual(int(backwards), 0, "%s %s: %s events, %s backwards"
                             % (role, shard, events, backwards))

    def audited_router(self, shards):
        """A started router with users, a Redis port and the audit_log plugin:
        (router, its Redis port, the audit file)."""
        rport = free_port()
        r = self.router(shards=shards, partitions=8, start=False, extra_yaml=users_yaml(),
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        audit = os.path.join(r.dir, "audit.log")
        with open(r.config, "a") as f:
            f.write('plugins:\n  - {path: "%s/audit_log.so", arg: "%s"}\n' % (PLUGINS, audit))
        r.start()
        return r, rport, audit

    def test_audit_log_names_the_user_on_both_front_doors(self):
        r, rport, audit = self.audited_router(shards=2)
        with r.client() as c:
            self.assertEqual(c.call(req_auth("alice", "alice-pw")).status, 200)
            self.assertEqual(c.hset("orders", "o1", "x").status, 200)
            self.assertEqual(c.hset("other", "o1", "x").status, 403)  # refused: audited too
            self.assertEqual(c.call(slowlog_req()).status, 403)  # the slow log is admin's
        ops = redis.Redis(host=HOST, port=rport, username="ops", password="ops-pw",
                          socket_timeout=10)
        self.addCleanup(ops.close)
        self.assertEqual(ops.hset("pub", "k", "v"), 1)
        self.assertGreaterEqual(ops.slowlog_len(), 0)  # admin: allowed
        reader = redis.Redis(host=HOST, port=rport, username="reader", password="reader-pw",
                             socket_timeout=10)
        self.addCleanup(reader.close)
        with self.assertRaisesRegex(redis.ResponseError, "may not run Slowlog"):
            reader.slowlog_get()
        with self.assertRaisesRegex(redis.ResponseError, "may not run Slowlog"):
            reader.slowlog_reset()
        with open(audit) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 3, lines)
        stamp = r"^\S+Z client=127\.0\.0\.1:\d+ "
        self.assertRegex(lines[0], stamp + 'user="alice" command=Hset table="orders" keys=1 '
                                           'status=200$')
        self.assertRegex(lines[1], stamp + 'user="alice" command=Hset table="other" keys=1 '
                                           'status=403$')
        self.assertRegex(lines[2], stamp + 'user="ops" command=Hset table="pub" keys=1 '
                                           'status=200$')

    def test_redis_refusals_and_auth_reach_the_hooks_as_kvs_commands(self):
        # A RESP command the front door refuses itself (NOAUTH, a key that
        # is no table name) is the kvs request it would have become, for
        # the hooks and the metrics, as on the kvs protocol; AUTH is Auth.
        r, rport, audit = self.audited_router(shards=1)
        got = resp_exchange(rport, b"HSET orders k v\r\nHDEL orders a b\r\nAUTH alice alice-pw\r\n"
                                   b"HSET __x k v\r\nPING\r\n", 5, host=HOST)
        self.assertEqual(got.split(b"\r\n")[:3], [b"-NOAUTH Authentication required."] * 2 +
                         [b"+OK"])
        with r.client() as c:
            self.assertOk(c.call(req_auth("ops", "ops-pw")))
            m = c.call(metrics_req())
        requests = {(smp.labels[3], smp.labels[5]): smp.value for f in m.ops.metrics
                    if f.name == "kvs_requests_total" for smp in f.samples}
        self.assertEqual(requests.get(("Hset", "401")), 1, requests)
        self.assertEqual(requests.get(("Hmdel", "401")), 1, requests)
        self.assertEqual(requests.get(("Auth", "200")), 2, requests)  # RESP's and this one
        self.assertEqual(requests.get(("Hset", "400")), 1, requests)
        self.assertEqual(requests.get(("none", "200")), 1, requests)  # PING
        with open(audit) as f:
            lines = f.read().splitlines()
        stamp = r"^\S+Z client=127\.0\.0\.1:\d+ "
        self.assertEqual(len(lines), 3, lines)
        self.assertRegex(lines[0], stamp + 'user=- command=Hset table="orders" keys=1 status=401$')
        self.assertRegex(lines[1], stamp + 'user=- command=Hmdel table="orders" keys=2 '
                                           'status=401$')
        self.assertRegex(lines[2], stamp + 'user="alice" command=Hset table="__x" keys=1 '
                                           'status=400$')

    def test_redis_refusals_count_with_the_status_the_kvs_door_gives(self):
        # Past limits.max_keys the Redis door refuses a command itself; the
        # metrics and hooks see the 413 the protobuf door answers, not 400.
        rport = free_port()
        r = self.router(shards=2, partitions=8, extra_yaml="limits: {max_keys: 3}\n",
                        log="{level: info, slow_threshold: 0}",
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        got = resp_exchange(rport, b"HMGET t a b c d\r\nHSET t a 1 b 2 c 3 d 4\r\n"
                                   b"HGET t\r\n", 3, host=HOST)
        lines = got.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-ERR hmget names 4 fields, more than "
                                            b"limits.max_keys (3)"), got)
        self.assertTrue(lines[1].startswith(b"-ERR hset names 4 pairs"), got)
        self.assertEqual(lines[2], b"-ERR wrong number of arguments for 'hget' command")
        with r.client() as c:
            self.assertEqual(c.hmget("t", [b"a", b"b", b"c", b"d"]).status, 413)
            m = c.call(metrics_req())
            log = c.call(slowlog_req(count=10))
        requests = {(smp.labels[3], smp.labels[5]): smp.value for f in m.ops.metrics
                    if f.name == "kvs_requests_total" for smp in f.samples}
        self.assertEqual(requests.get(("Hmget", "413")), 2, requests)
        self.assertEqual(requests.get(("Hmset", "413")), 1, requests)
        self.assertEqual(requests.get(("Hget", "400")), 1, requests)
        self.assertNotIn(("Hmget", "400"), requests)
        self.assertEqual([(e.command, e.status) for e in log.ops.slowlog][1:],
                         [("Hmget", 413), ("Hget", 400), ("Hmset", 413), ("Hmget", 413)])
        # Both doors name the table of a command refused for its keys (the
        # protobuf door once handed the hooks none).
        self.assertEqual([log.ops.slowlog[i].table for i in (1, 3, 4)], ["t", "t", "t"])
        # A worker asked directly counts its refusal as the command too.
        with r.worker_client(0) as w:
            self.assertEqual(w.hmget("t", [b"a", b"b", b"c", b"d"]).status, 413)
            m = w.call(metrics_req())
        worker = {}
        for f in m.ops.metrics:
            for smp in f.samples:
                ls = dict(zip(smp.labels[::2], smp.labels[1::2]))
                if f.name == "kvs_worker_requests_total":
                    worker[(ls["command"], ls["status"])] = smp.value
        self.assertEqual(worker.get(("Hmget", "413")), 1, worker)

    def test_a_received_hook_sees_auth_on_both_front_doors(self):
        rport = free_port()
        r = self.router(shards=1, partitions=8, start=False, extra_yaml=users_yaml(),
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        with open(r.config, "a") as f:
            f.write('plugins:\n  - {path: "%s/test_deny_writes.so", arg: auth}\n' % PLUGINS)
        r.start()
        with r.client() as c:
            resp = c.call(req_auth("ops", "ops-pw"))
            self.assertEqual((resp.status, resp.message), (403, "Auth refused by deny_writes"))
        got = resp_exchange(rport, b"AUTH ops ops-pw\r\nHELLO 3 AUTH ops ops-pw\r\nPING\r\n", 3,
                            host=HOST)
        self.assertEqual(got, b"-NOPERM Auth refused by deny_writes\r\n" * 2 +
                         b"-NOAUTH Authentication required.\r\n")

    def test_a_plugin_hook_refuses_writes(self):
        r = self.router(shards=2, partitions=8, start=False)
        with open(r.config, "a") as f:
            f.write('plugins: ["%s/test_deny_writes.so"]\n' % PLUGINS)
        r.start()
        with r.client() as c:
            resp = c.hset("ro_users", "k", "v")
            self.assertEqual(resp.status, 403, resp.message)
            self.assertEqual(resp.message, 'Hset of table "ro_users" refused by deny_writes: '
                                           'tables ro_* are read-only')
            self.assertEqual(c.hget("ro_users", "k").status, 404)  # nothing was written
            self.assertEqual(c.hset("users", "k", "v").status, 200)
            self.assertEqual(c.hmdel("ro_x", [b"a", b"b"]).status, 403)
        # The workers load it too: a write sent to one directly is refused there.
        with r.worker_client(r.shard_of(b"k")) as w:
            self.assertEqual(w.call(req_hset("ro_users", b"k", "v")).status, 403)

    def deny_after(self, prefix, **kw):
        """A router whose deny_writes hook replaces, at EXECUTED, the answer
        of each write to a table named PREFIX* (the write has run by then)."""
        r = self.router(start=False, **kw)
        with open(r.config, "a") as f:
            f.write('plugins:\n  - {path: "%s/test_deny_writes.so", arg: "executed:%s"}\n'
                    % (PLUGINS, prefix))
        r.start()
        return r

    def assertReplaced(self, resp, unknown, command="Hset", table="ro_users"):
        self.assertEqual(resp.status, 403, resp.message)
        self.assertEqual(resp.message, '%s of table "%s" refused by deny_writes: tables ro_* '
                                       'are read-only' % (command, table))
        self.assertEqual(resp.outcome_unknown, unknown)

    def test_a_hook_replacing_a_writes_answer_keeps_its_outcome(self):
        # An error answer to a write without outcome_unknown or a position
        # says nothing was written: a hook's answer to a write that ran
        # must not say that.
        r = self.deny_after("ro_", shards=2, partitions=8)
        with r.client() as c:
            self.assertReplaced(c.hset("ro_users", "k", "v"), True)
            self.assertEqual(pyval(c.hget("ro_users", "k").values[0]), "v")  # it was written
            self.assertReplaced(c.hmset("ro_users", [(b"a", "1"), (b"b", "2")]), True, "Hmset")
            self.assertEqual([pyval(v) for v in c.hmget("ro_users", [b"a", b"b"]).values],
                             ["1", "2"])
            # A write refused before it ran (not a number to add to) says so still.
            inc = pb.CommandRequest()
            inc.hincr.table, inc.hincr.key, inc.hincr.by_int = "ro_users", b"k", 1
            refused = c.call(inc)
            self.assertReplaced(refused, False, "Hincr")
            self.assertEqual(refused.position, b"")
            self.assertEqual(pyval(c.hget("ro_users", "k").values[0]), "v")
            self.assertEqual(c.hset("users", "k", "v").status, 200)
        # A worker's own hook does the same to a write sent to it directly.
        with r.worker_client(r.shard_of(b"k2")) as w:
            self.assertReplaced(w.call(req_hset("ro_users", b"k2", "v")), True)

    def test_a_hook_replacing_an_unknown_writes_answer_keeps_it_unknown(self):
        # The worker holds the Hdel past router.timeout: the router's 503
        # says it may or may not have run, and the hook's 403 must too.
        r = self.router(start=False, shards=1, partitions=8, timeout="500ms")
        with open(r.config, "a") as f:
            f.write('plugins:\n  - {path: "%s/test_stall_writes.so", arg: "Hdel 2000"}\n'
                    '  - {path: "%s/test_deny_writes.so", arg: "executed:ro_"}\n'
                    % (PLUGINS, PLUGINS))
        r.start()
        with r.client(timeout=20) as c:
            self.assertReplaced(c.hdel("ro_users", "k"), True, "Hdel")

    def test_a_hook_replacing_a_logged_writes_answer_keeps_its_position(self):
        # A table bound to a topic: the write's records are in Kafka and
        # will be applied; the replacement names them by their position.
        m = MockKafka({"ro_users": 4})
        self.addCleanup(m.close)
        bound = ingest_yaml(m.bootstrap, [("ro_users", "ro_users", "string", 4)])
        r = self.deny_after("ro_", shards=2, partitions=4, extra_yaml=bound)
        with r.client() as c:
            resp = c.hset("ro_users", "k", "v")
            self.assertReplaced(resp, False)
            (entry,) = pos_entries(resp.position)
            self.assertEqual(entry[0], "ro_users")
            read = req_hget("ro_users", b"k")
            read.min_position = resp.position
            got = c.call(read)
            self.assertEqual(pyval(got.values[0]), "v", got.message)

    def test_missing_or_wrong_abi_plugin_refuses_to_start(self):
        # A FIFO: dlopen waited for a writer in every worker, and the node
        # gave up after router.ready_timeout (exit 1) with no reason given.
        fifo = os.path.join(tempfile.mkdtemp(prefix="kvs-plug-"), "plugin.so")
        os.mkfifo(fifo)
        self.addCleanup(shutil.rmtree, os.path.dirname(fifo), True)
        for path, why in [(fifo, "plugin.so is a FIFO, not a shared object file"),
                          ("/nonexistent/kvs_plugin.so", "cannot be loaded: "
                           "/nonexistent/kvs_plugin.so: cannot open shared object file"),
                          ("%s/test_wrong_abi.so" % PLUGINS, "test_wrong_abi.so was built for "
                           "kvs plugin ABI version 2, but this kvs has ABI version 1; rebuild it "
                           "against this kvs's kvs_plugin.h"),
                          ("%s/kvs-cli" % BUILD_DIR, "cannot be loaded: %s/kvs-cli: "
                           % BUILD_DIR)]:
            r = self.router(shards=1, start=False)
            with open(r.config) as f:
                lines = len(f.read().splitlines())
            with open(r.config, "a") as f:
                f.write("plugins:\n  - %s\n" % path)
            p = r.spawn()
            self.assertEqual(p.wait(WAIT), 78, r.stderr())
            self.assertIn("config.yaml:%d:5: plugins[0]" % (lines + 2), r.stderr())
            self.assertIn(why, r.stderr())
            self.assertEqual(r.workers(), {})  # refused before any worker started

    def test_a_plugin_file_every_user_may_write_is_refused(self):
        # Whoever may write the file decides the code every process runs.
        d = tempfile.mkdtemp(prefix="kvs-plug-")
        self.addCleanup(shutil.rmtree, d, True)
        so = os.path.join(d, "deny.so")
        shutil.copy("%s/test_deny_writes.so" % PLUGINS, so)
        for mode, status in ((0o666, 78), (0o664, None)):
            os.chmod(so, mode)
            r = self.router(shards=1, start=False)
            with open(r.config, "a") as f:
                f.write('plugins: ["%s"]\n' % so)
            if status is not None:
                p = r.spawn()
                self.assertEqual(p.wait(WAIT), status, r.stderr())
                self.assertIn("deny.so is writable by every user (mode 0666): any of them could "
                              "make kvs run their code; chmod o-w it", r.stderr())
                self.assertEqual(r.workers(), {})
            else:
                r.start()
                self.assertIn("deny.so is writable by its group (mode 0664)", r.stderr())
                with r.client() as c:
                    self.assertEqual(c.ping().message, "PONG")
                r.close()

    def test_a_plugin_in_a_directory_every_user_may_write_is_refused(self):
        # Whoever may write a directory on the way to the file may put
        # another in its place: the file's own mode is not enough. A
        # directory with the sticky bit keeps others' entries theirs.
        top = tempfile.mkdtemp(prefix="kvs-plug-")
        self.addCleanup(shutil.rmtree, top, True)
        safe = os.path.join(top, "safe")
        os.mkdir(safe, 0o755)
        so = os.path.join(safe, "deny.so")
        shutil.copy("%s/test_deny_writes.so" % PLUGINS, so)
        os.chmod(so, 0o644)
        open_dir = os.path.join(top, "open")
        os.mkdir(open_dir)
        link_in_open = os.path.join(open_dir, "link.so")
        os.symlink(so, link_in_open)
        link_to_open = os.path.join(safe, "to-open.so")
        os.symlink(os.path.join(open_dir, "deny.so"), link_to_open)
        shutil.copy(so, os.path.join(open_dir, "deny.so"))
        os.chmod(os.path.join(open_dir, "deny.so"), 0o644)
        refused = "a directory every user may write to (mode 0777): any of them could put " \
                  "their code in its place; chmod o-w it, or add the sticky bit"
        os.symlink(safe, os.path.join(open_dir, "dirlink"))
        os.symlink(so, os.path.join(open_dir, "l2"))
        os.symlink(os.path.join(open_dir, "l2"), os.path.join(safe, "l1"))
        cases = [(0o777, os.path.join(open_dir, "deny.so"), 78),
                 (0o777, link_in_open, 78),   # the link can be replaced
                 (0o777, link_to_open, 78),   # what it leads to can be
                 (0o777, os.path.join(open_dir, "dirlink", "deny.so"), 78),  # a link to a dir
                 (0o777, os.path.join(safe, "l1"), 78),  # a link on the way of a link
                 (0o1777, os.path.join(open_dir, "deny.so"), 0),
                 (0o775, os.path.join(open_dir, "deny.so"), 0)]
        for mode, path, status in cases:
            with self.subTest(mode=oct(mode), path=path):
                os.chmod(open_dir, mode)
                r = self.router(shards=1, start=False)
                with open(r.config, "a") as f:
                    f.write('plugins: ["%s"]\n' % path)
                if status:
                    p = r.spawn()
                    self.assertEqual(p.wait(WAIT), status, r.stderr())
                    self.assertIn("%s is in %s, %s" % (path, open_dir, refused), r.stderr())
                    self.assertEqual(r.workers(), {})
                    continue
                r.start()
                group = "is in %s, a directory its group may write to (mode 0775)" % open_dir
                if mode == 0o775:
                    self.assertIn(group, r.stderr())
                else:
                    self.assertNotIn(open_dir + ",", r.stderr())
                with r.client() as c:
                    self.assertEqual(c.hset("ro_t", "k", 1).status, 403)
                r.close()

    def test_a_plugin_another_user_owns_or_whose_directory_they_own_is_refused(self):
        # Mode bits are not all: the owner of the file, or of a directory
        # on its way, may change them (and so the code kvs runs). Only root
        # and the user kvs runs as are trusted.
        if os.geteuid() != 0:
            self.skipTest("giving files to another user needs root")
        top = tempfile.mkdtemp(prefix="kvs-plug-")
        self.addCleanup(shutil.rmtree, top, True)
        theirs = os.path.join(top, "theirs")
        os.mkdir(theirs, 0o755)
        for d in (top, theirs):
            os.chmod(d, 0o755)
        in_theirs = os.path.join(theirs, "deny.so")
        mine = os.path.join(top, "deny.so")
        for so in (in_theirs, mine):
            shutil.copy("%s/test_deny_writes.so" % PLUGINS, so)
            os.chmod(so, 0o644)
        os.chown(theirs, 65534, 65534)
        os.chown(mine, 65534, 65534)
        # A link another user owns, in a directory with the sticky bit: the
        # link's owner may replace it with one to other code.
        ours = os.path.join(top, "ours.so")
        shutil.copy("%s/test_deny_writes.so" % PLUGINS, ours)
        os.chmod(ours, 0o644)
        sticky = os.path.join(top, "sticky")
        os.mkdir(sticky)
        os.chmod(sticky, 0o1777)
        their_link = os.path.join(sticky, "p.so")
        os.symlink(ours, their_link)
        os.lchown(their_link, 65534, 65534)
        for path, why in ((in_theirs, "deny.so is in %s, a directory owned by uid 65534, neither "
                                      "root nor the user kvs runs as" % theirs),
                          (mine, "deny.so is owned by uid 65534, neither root nor the user kvs "
                                 "runs as"),
                          (their_link, "p.so goes through %s, a symbolic link owned by uid "
                                       "65534, neither root nor the user kvs runs as"
                                       % their_link)):
            with self.subTest(path=path):
                r = self.router(shards=1, start=False)
                with open(r.config, "a") as f:
                    f.write('plugins: ["%s"]\n' % path)
                p = r.spawn()
                self.assertEqual(p.wait(WAIT), 78, r.stderr())
                self.assertIn(why, r.stderr())

    def test_a_plugin_whose_directories_cannot_be_checked_is_refused(self):
        # The file opens, but the path it resolves to is longer than the
        # walk that checks its directories can follow: refused, not loaded
        # unchecked.
        top = tempfile.mkdtemp(prefix="kvs-plug-")
        self.addCleanup(shutil.rmtree, top, True)
        comp, chain = "d" * 200, []
        fd = os.open(top, os.O_RDONLY)
        for _ in range(21):  # 21 x 201 bytes: past PATH_MAX once resolved
            os.mkdir(comp, 0o755, dir_fd=fd)
            nfd = os.open(comp, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            chain.append(comp)
        with open("%s/test_deny_writes.so" % PLUGINS, "rb") as f:
            data = f.read()
        out = os.open("deny.so", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
        os.close(fd)
        os.symlink(os.path.join(top, *chain[:15]), os.path.join(top, "s"))
        path = os.path.join(top, "s", *chain[15:], "deny.so")
        r = self.router(shards=1, start=False)
        with open(r.config, "a") as f:
            f.write('plugins: ["%s"]\n' % path)
        p = r.spawn()
        self.assertEqual(p.wait(WAIT), 78, r.stderr())
        self.assertIn("plugins[0]: cannot check the directories on the way to the plugin (File "
                      "name too long), so it is not loaded: %s" % path[:100], r.stderr())

    def test_a_plugin_finds_the_libraries_beside_it(self):
        # A plugin linked with RUNPATH $ORIGIN finds the libraries it ships
        # in its own directory (the loader sees its real path).
        d = tempfile.mkdtemp(prefix="kvs-plug-")
        self.addCleanup(shutil.rmtree, d, True)
        for name in ("test_origin.so", "libtest_origin_helper.so"):
            shutil.copy(os.path.join(PLUGINS, name), d)
        r = self.router(shards=1, start=False)
        with open(r.config, "a") as f:
            f.write('plugins: ["%s/test_origin.so"]\n' % d)
        r.start()
        self.assertIn("origin: helper found beside the plugin", r.stderr())
        with r.client() as c:
            self.assertEqual(c.ping().message, "PONG")
        r.close()
        # Linked into a directory of its libraries: $ORIGIN is that of the
        # name the config gives (as the dynamic loader has it).
        real, linked = os.path.join(d, "real"), os.path.join(d, "linked")
        os.mkdir(real)
        os.mkdir(linked)
        os.rename(os.path.join(d, "test_origin.so"), os.path.join(real, "test_origin.so"))
        os.rename(os.path.join(d, "libtest_origin_helper.so"),
                  os.path.join(linked, "libtest_origin_helper.so"))
        os.symlink(os.path.join(real, "test_origin.so"), os.path.join(linked, "test_origin.so"))
        r = self.router(shards=1, start=False)
        with open(r.config, "a") as f:
            f.write('plugins: ["%s/test_origin.so"]\n' % linked)
        r.start()
        self.assertIn("origin: helper found beside the plugin", r.stderr())


class ReloadTest(RouterTestCase):
    def rewrite(self, r, old, new):
        edit_config(r, old, new)

    def hup(self, r, needle, count=1, timeout=WAIT):
        """SIGHUP, then wait up to `timeout` s for `count` log lines holding
        `needle`."""
        before = r.stderr().count(needle)
        r.proc.send_signal(signal.SIGHUP)
        ok = wait_until(lambda: r.stderr().count(needle) >= before + count, timeout)
        self.assertTrue(ok, "no %d x %r after SIGHUP:\n%s" % (count, needle, r.stderr()[-3000:]))

    def metrics_router(self, **kw):
        self.mport = free_port()
        return self.router(router_yaml=['metrics_listen: "%s:%d"' % (HOST, self.mport)], **kw)

    def reloads(self, r, headers=None):
        """{(role, shard, result): count} of kvs_config_reloads_total, from
        /metrics: the master's, the router process's and the workers'."""
        status, _, body = http_get(self.mport, headers=headers)
        self.assertEqual(status, 200, body)
        return {(ls["role"], ls.get("shard"), ls["result"]): v
                for n, ls, v in parse_metrics(body) if n == "kvs_config_reloads_total"}

    def test_sighups_sent_during_a_reload_make_one_more_not_one_each(self):
        # Reading a large config keeps a loop busy for a while; SIGHUPs
        # sent meanwhile were each a full reload after it, so a burst of
        # them kept the master (and so /metrics) busy for as many reloads.
        # They now make one more reload: the file may have changed after
        # the read began. Every process ends on the last file.
        r = self.metrics_router(shards=1, log="{level: info, slow_threshold: off}")
        with open(r.config, "a") as f:
            f.write(("#" + "x" * 1023 + "\n") * (40 << 10))  # 40 MiB of comments
        done = "configuration reloaded from %s" % r.config
        t0 = time.monotonic()
        r.proc.send_signal(signal.SIGHUP)
        for _ in range(8):
            time.sleep(0.02)
            r.proc.send_signal(signal.SIGHUP)
        sent = time.monotonic() - t0
        self.assertTrue(wait_until(lambda: r.stderr().count(done) >= 1, WAIT), r.stderr()[-2000:])
        took = time.monotonic() - t0
        self.assertGreater(took, sent + 0.1, "the reload ended before the SIGHUPs were sent")
        time.sleep(3 * took + 1)  # room for more reloads, were there any
        passed = "router INFO  SIGHUP: passed on to 1 router process(es) and 1 worker(s)"
        self.assertEqual(r.stderr().count(passed), 2, r.stderr()[-3000:])
        self.rewrite(r, "slow_threshold: off", "slow_threshold: 0")
        self.hup(r, done + " (log.slow_threshold)", count=3)  # master, router, worker
        with r.client() as c:
            self.assertEqual(c.ping().message, "PONG")

    def test_a_slow_log_turned_on_keeps_the_tables_of_requests_in_flight(self):
        # Requests read while no hook kept table names, answered after a
        # reload turned the slow log on: their entries showed table "".
        r = self.router(shards=1, log="{level: info, slow_threshold: off}")
        names = ["inflight_%02d" % i for i in range(20)]
        with r.client() as c:
            with stopped(r.worker_pid(0)):
                c.send(*[req_hset(t, "k", "v") for t in names])
                time.sleep(0.3)  # read by the router, held by the stopped worker
                self.rewrite(r, "slow_threshold: off", "slow_threshold: 0")
                self.hup(r, "configuration reloaded from %s (log.slow_threshold)" % r.config,
                         count=2)  # master and router; the worker after it continues
            self.assertEqual({c.recv().status for _ in names}, {200})
            resp = c.call(slowlog_req(count=100))
        self.assertEqual(resp.status, 200, resp.message)
        self.assertEqual(sorted(e.table for e in resp.ops.slowlog if e.command == "Hset"), names)

    def test_a_lowered_router_timeout_holds_for_a_request_behind_an_older_one(self):
        """router.timeout lowered by a reload holds for requests sent from
        then on, also behind one sent before it: the router watched only
        the oldest request's deadline, so a request sent under the new 1 s
        waited out the old 10 s (behind a request to the same stopped
        worker) before its 503."""
        r = self.router(shards=1, partitions=8, timeout="10s")
        with r.client(timeout=30) as a, r.client(timeout=30) as b, stopped(r.worker_pid(0)):
            a.send(req_hset("t", "k", "old"))
            time.sleep(0.3)
            self.rewrite(r, "timeout: 10s", "timeout: 1s")
            self.hup(r, "configuration reloaded from %s (router.timeout)" % r.config, count=2)
            t0 = time.monotonic()
            got = b.call(req_hset("t", "k", "new"))
            elapsed = time.monotonic() - t0
            self.assertEqual(got.status, 503, got.message)
            self.assertIn("no answer within router.timeout (1000 ms)", r.stderr())
            self.assertLess(elapsed, 4.0)
            self.assertEqual(a.recv().status, 503)  # the link was reset: it failed too

    def test_a_lowered_client_output_leaves_the_workers_links_up(self):
        """limits.client_output is for every connection, connected ones
        included, but a worker's link from its router process carries
        every client's answers: at 64 MiB it held 18.6 MB of them (its
        high-water mark, 16 MiB, and the answer that passed it) while the
        router process lagged, and a reload to 16 MiB closed it, every
        request on it failing 503. The link now keeps what it owed on top
        of the new limit, coming down to it as it drains."""
        r = self.router(shards=1, partitions=8, timeout="20s", router_yaml=["local_reads: false"],
                        extra_yaml="limits: {client_output: 64MiB}\n")
        value = b"v" * (3 << 20)
        with r.client(timeout=30) as c:
            self.assertEqual(c.hset("t", "k", value).status, 200)
        rp = router_pids(r)[0]
        clients = [r.client(timeout=60) for _ in range(2)]
        for c in clients:
            self.addCleanup(c.close)
        with stopped(rp):
            with stopped(r.worker_pid(0)):
                os.kill(rp, signal.SIGCONT)  # it forwards the reads to the stopped worker
                for c in clients:
                    c.send(*[req_hget("t", "k")] * 6)
                time.sleep(0.5)
                os.kill(rp, signal.SIGSTOP)
            # The worker answers into the link up to its high-water mark.
            time.sleep(1.0)
            self.rewrite(r, "client_output: 64MiB", "client_output: 16MiB")
            r.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(lambda: re.search(
                r"node\[0\] INFO  configuration reloaded.*limits.client_output", r.stderr()), WAIT),
                r.stderr()[-3000:])
        answers = [c.recv() for c in clients for _ in range(6)]
        self.assertEqual([a.status for a in answers], [200] * 12, answers[0].message)
        self.assertEqual({len(pyval(a.values[0])) for a in answers}, {len(value)})
        self.assertNotIn("closing unix socket peer", r.stderr())
        self.assertNotRegex(r.stderr(), r"link to shard 0 .* down")

    def test_good_config_reaches_router_and_workers(self):
        r = self.metrics_router(shards=2, partitions=8, log="{level: warn, slow_threshold: off}")
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
            self.assertEqual(len(c.call(slowlog_req()).ops.slowlog), 0)
        # Level warn -> info: the reload lines (info) of the master, the
        # router process and both workers show the new level took effect
        # in every process.
        self.rewrite(r, "log: {level: warn, slow_threshold: off}",
                     "log: {level: info, slow_threshold: 0}\nlimits: {max_inflight: 7}")
        self.hup(r, "configuration reloaded from %s (limits.max_inflight, log.level, "
                    "log.slow_threshold)" % r.config, count=4)
        self.assertRegex(r.stderr(), r"node\[0\] INFO  configuration reloaded")
        self.assertRegex(r.stderr(), r"node\[1\] INFO  configuration reloaded")
        # The master logs this after signalling every child, which may
        # already have logged their reload lines by then.
        passed = "router INFO  SIGHUP: passed on to 1 router process(es) and 2 worker(s)"
        self.assertTrue(wait_until(lambda: passed in r.stderr(), WAIT), r.stderr()[-3000:])
        with r.client() as c:  # the slow log is on now, in the router and the workers
            self.assertEqual(c.hset("t", "k", "w").status, 200)
            self.assertEqual(c.call(slowlog_req()).ops.slowlog[0].command, "Hset")
        with r.worker_client(r.shard_of(b"k")) as w:
            self.assertIn("Hset", [e.command for e in w.call(slowlog_req()).ops.slowlog])
        got = self.reloads(r)
        self.assertEqual(got[("master", None, "ok")], 1)
        self.assertEqual(got[("router", None, "ok")], 1)
        self.assertEqual(got[("node", "0", "ok")], 1)
        self.assertEqual(got[("node", "1", "ok")], 1)

    def test_config_with_errors_changes_nothing(self):
        r = self.metrics_router(shards=2, partitions=8, log="{level: info, slow_threshold: off}")
        self.rewrite(r, "log: {level: info, slow_threshold: off}",
                     "log: {level: info, slow_threshold: 0, color: blue}")
        self.hup(r, "the running configuration is unchanged")
        self.assertRegex(r.stderr(), r"router ERROR reload: %s:\d+:\d+: unknown key \"color\" "
                                     r"in \"log\"; the running" % re.escape(r.config))
        time.sleep(0.3)
        self.assertNotIn("node[", "".join(l for l in r.stderr().splitlines() if "reload" in l))
        with r.client() as c:  # still serving, slow log still off
            self.assertEqual(c.hset("t", "k", "v").status, 200)
            self.assertEqual(len(c.call(slowlog_req()).ops.slowlog), 0)
        got = self.reloads(r)  # refused by the master: its children were not told
        self.assertEqual(got[("master", None, "error")], 1)
        self.assertEqual(sum(v for k, v in got.items() if k[0] != "master"), 0)

    def test_a_costly_config_is_refused_at_once_and_serving_goes_on(self):
        """Texts that cost far more than their size to load are refused at a
        reload at once, each with one error naming the file, line and key:
        deep flow nesting (libyaml's scanner is quadratic in it: this one
        held the master for half a minute), an alias repeating a 1 MiB value
        100 times (the master copied all of it), a tag, and a mapping of
        many keys (duplicates were found in quadratic time). The node keeps
        serving its running configuration and no child hears of them."""
        r = self.metrics_router(shards=2, partitions=8, log="{level: info, slow_threshold: off}")
        with open(r.config) as f:
            good = f.read()
        cases = [
            ("plugins: " + "[" * 100000 + "]" * 100000 + "\n",
             r"\d+:25: plugins(\[0\]){15}: nested more than 16 levels deep"),
            ("plugins:\n  - &p {path: /x, arg: " + "a" * (1 << 20) + "}\n" + "  - *p\n" * 100,
             r"\d+:5: plugins\[63\]: the file's values add up to more than 64 MiB of text"),
            ("limits: {max_inflight: !!int 7}\n",
             r"\d+:24: limits.max_inflight: YAML tags are not supported \(got !!int\)"),
            ("kafka:\n  properties:\n" + "".join("    p%d: v\n" % i for i in range(200000)) +
             "    p9: w\n",
             r"\d+:5: duplicate key \"p9\" in \"kafka.properties\" \(first at line \d+\)"),
        ]
        # Quadratic work took minutes; linear takes about a second, some six
        # to twelve under the sanitizers on a loaded machine (the 200,000
        # keys; 12.1 s seen at five tests per two cores).
        bound = 30.0 if SANITIZED else 10.0
        for i, (text, msg) in enumerate(cases):
            with open(r.config, "w") as f:
                f.write(good + text)
            start = time.monotonic()
            self.hup(r, "the running configuration is unchanged", count=1, timeout=bound)
            self.assertLess(time.monotonic() - start, bound)
            errors = [l for l in r.stderr().splitlines() if "router ERROR reload: " in l]
            self.assertEqual(len(errors), i + 1, errors)
            self.assertRegex(errors[-1], r"reload: %s:%s" % (re.escape(r.config), msg))
            with r.client() as c:  # still serving, slow log still off
                self.assertEqual(c.hset("t", "k", "v").status, 200)
                self.assertEqual(len(c.call(slowlog_req()).ops.slowlog), 0)
        got = self.reloads(r)
        self.assertEqual(got[("master", None, "error")], len(cases))
        self.assertEqual(sum(v for k, v in got.items() if k[0] != "master"), 0)

    def test_key_that_cannot_change_live_is_refused(self):
        r = self.metrics_router(shards=2, partitions=8, log="{level: info, slow_threshold: off}")
        self.rewrite(r, "  partitions: 8\n", "  partitions: 16\n")
        self.rewrite(r, "slow_threshold: off", "slow_threshold: 0")
        # Named at its place in the file, as a startup error names a key's.
        self.hup(r, "reload refused: %s: cluster.partitions changed, which cannot change while "
                    "the node runs" % config_place(r, "partitions: 16", "16"))
        with r.client() as c:  # nothing of the file applied, not even the live key
            self.assertEqual(c.hset("t", "k", "v").status, 200)
            self.assertEqual(len(c.call(slowlog_req()).ops.slowlog), 0)
        got = self.reloads(r)
        self.assertEqual(got[("master", None, "refused")], 1)
        self.assertEqual(sum(v for k, v in got.items() if k[0] != "master"), 0)

    def restart_worker(self, r, shard):
        """kill -9 of shard's worker; waits until its successor serves."""
        old = r.kill_worker(shard)

        def serves():
            if r.worker_pid(shard) in (None, old):
                return False
            try:
                with r.worker_client(shard, timeout=2) as w:
                    return w.ping().status == 200
            except OSError:
                return False
        self.assertTrue(wait_until(serves, WAIT, 0.05), r.stderr()[-3000:])

    def test_a_restarted_worker_starts_from_the_running_config_not_the_edited_file(self):
        """The master keeps the config text it runs (a snapshot, as the
        router processes run): a worker restarted after the file was edited,
        but not reloaded, starts from that text. Reading the file instead, a
        worker that crashed while an operator edited it stopped the whole
        node (a key that cannot change live, or a half-written file, is a
        configuration error: exit 78). After a reload, the reloaded text."""
        r = self.router(shards=2, partitions=8, log="{level: info, slow_threshold: off}")
        shard = r.shard_of(b"k")
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
        original = open(r.config).read()
        for edit in (("  partitions: 8\n", "  partitions: 16\n"),  # the data would not match
                     ("slow_threshold: off}", "slow_threshold: [")):  # does not load
            self.rewrite(r, *edit)
            self.restart_worker(r, shard)
            with r.client() as c:  # once the router's link is back
                self.assertTrue(wait_until(lambda: c.hget("t", "k").status == 200, WAIT))
                self.assertEqual(pyval(c.hget("t", "k").values[0]), "v")
            self.assertTrue(r.alive())
            self.assertNotIn("cannot run with this configuration", r.stderr())
            with open(r.config, "w") as f:
                f.write(original)
        # A live change, reloaded: a worker started after it runs it (its
        # slow log is on, in a process that never got the SIGHUP).
        self.rewrite(r, "slow_threshold: off", "slow_threshold: 0")
        self.hup(r, "SIGHUP: passed on to 1 router process(es) and 2 worker(s)")
        self.restart_worker(r, shard)
        with r.client() as c:
            self.assertTrue(wait_until(lambda: c.hset("t", "k", "w").status == 200, WAIT))
        with r.worker_client(shard) as w:
            self.assertIn("Hset", [e.command for e in w.call(slowlog_req()).ops.slowlog])

    def test_a_reload_applies_the_text_the_master_read_not_a_later_edit(self):
        """Each process handles a reload some time after the master
        accepted it (a worker during a membership change: at the switch,
        seconds later). It reads the master's snapshot of the file, not the
        file: an edit made meanwhile reaches no process. A worker stopped
        (SIGSTOP) holds the reload until the file is back as it was."""
        r = self.router(shards=2, partitions=8, log="{level: info, slow_threshold: off}")
        shard = r.shard_of(b"k")
        pid = r.worker_pid(shard)
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        self.rewrite(r, "slow_threshold: off", "slow_threshold: 0")
        self.hup(r, "SIGHUP: passed on to 1 router process(es) and 2 worker(s)")
        self.rewrite(r, "slow_threshold: 0", "slow_threshold: off")  # edited again
        os.kill(pid, signal.SIGCONT)
        line = re.compile(r"node\[%d\] INFO +configuration reloaded from %s "
                          r"\(log\.slow_threshold\)" % (shard, re.escape(r.config)))
        self.assertTrue(wait_until(lambda: line.search(r.stderr()), WAIT), r.stderr()[-3000:])
        self.assertNotIn("cannot read", r.stderr())
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
        with r.worker_client(shard) as w:
            self.assertIn("Hset", [e.command for e in w.call(slowlog_req()).ops.slowlog])

    def test_keys_of_security_and_replicas_are_classified(self):
        """router.retry_burst (replicas' retry budget) and limits.auth_failures
        change live in every process; users cannot (refused whole)."""
        self.mport = free_port()
        r = self.router(shards=2, partitions=8, extra_yaml=users_yaml(), max_inflight=1024,
                        router_yaml=['metrics_listen: "%s:%d"' % (HOST, self.mport),
                                     "retry_burst: 100"])
        self.rewrite(r, "retry_burst: 100", "retry_burst: 7")
        self.rewrite(r, "limits: {max_inflight: 1024}",
                     "limits: {max_inflight: 1024, auth_failures: 5}")
        self.hup(r, "configuration reloaded from %s (router.retry_burst, limits.auth_failures)"
                 % r.config, count=4)
        self.rewrite(r, "  - name: reader\n", "  - name: reader2\n")
        self.hup(r, "reload refused: %s: users changed, which cannot change while the node runs"
                 % config_place(r, "  - name: ", "- name"))
        got = self.reloads(r, basic("ops", "ops-pw"))  # the running users guard /metrics
        self.assertEqual(got[("master", None, "ok")], 1)
        self.assertEqual(got[("master", None, "refused")], 1)
        self.assertEqual(got[("router", None, "ok")], 1)
        self.assertEqual(got[("router", None, "refused")], 0)
        with r.client() as c:  # the running users are the old ones
            self.assertEqual(c.call(req_auth("reader", "reader-pw")).status, 200)

    def test_reloads_do_not_put_off_the_periodic_sync(self):
        """storage.sync_interval bounds how long the last commit's meta
        page (storage.sync: batch) stays unsynced. Each reload restarted the
        worker's sync timer, putting the sync a whole interval off: SIGHUPs
        more frequent than the interval kept it from ever running. The
        eio shim stalls every fdatasync under data_dir for 1 ms and logs it,
        which counts the worker's syncs."""
        env = {"LD_PRELOAD": os.path.join(BUILD_DIR, "libkvs_test_eio.so"),
               "KVS_TEST_EIO_ROLE": "node", "KVS_TEST_EIO_CALLS": "fdatasync",
               "KVS_TEST_EIO_EVERY": "1", "KVS_TEST_EIO_STALL_MS": "1"}
        if SANITIZED:
            env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                                   ":verify_asan_link_order=0").lstrip(":")
        r = self.router(start=False, shards=1, partitions=8, env=env,
                        storage_yaml=["sync_interval: 400ms"])
        r.env["KVS_TEST_EIO_PATH"] = r.data_dir
        r.start()
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
        # The worker takes a SIGHUP once it is a second old: count from
        # its first reload on.
        r.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "node[0] INFO  configuration reloaded" in r.stderr(),
                                   WAIT), r.stderr()[-3000:])
        syncs = r.stderr().count("stalling fdatasync")
        start = time.monotonic()
        while time.monotonic() - start < 2.0:  # a reload every 150 ms
            r.proc.send_signal(signal.SIGHUP)
            time.sleep(0.15)
        # 5 intervals went by: at least 3 periodic syncs, whatever the
        # scheduling (none before the fix).
        self.assertGreaterEqual(r.stderr().count("stalling fdatasync") - syncs, 3,
                                r.stderr()[-3000:])

    def test_standalone_worker_reloads_on_sighup(self):
        node = Node(extra_yaml="")
        self.addCleanup(node.close)
        with open(node.config) as f:
            text = f.read()
        with open(node.config, "w") as f:
            f.write(text.replace("log: {level: info}", "log: {level: info, slow_max: 3}"))
        node.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "configuration reloaded from %s (log.slow_max)"
                                   % node.config in node.stderr(), WAIT), node.stderr())
        with node.client() as c:
            self.assertEqual(c.ping().status, 200)


if __name__ == "__main__":
    unittest.main()
