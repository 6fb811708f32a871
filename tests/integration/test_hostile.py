"""Hostile clients against the front doors' TLS, Auth and Redis protocol
bounds: what a client that cheats at the byte level (a TLS record left
unfinished, a TLS handshake on a plaintext Redis port, a flood of Auth
attempts, a Redis request of a million empty arguments) can make a node
spend, and that each such client is told, bounded and logged.

TLS is spoken through Python's ssl.MemoryBIO, so a test decides exactly
which ciphertext bytes reach the server and when. Memory is read from
/proc/<pid>/status as in test_bounds (the figures are skipped in a
sanitizer build).
"""
import socket
import ssl
import time

from kvstest import SANITIZED, Client, encode, req_ping, resp_exchange, tls_context, tls_yaml
from routertest import RouterTestCase, free_port, router_pids
from test_auth import req_auth, token_hash
from test_bounds import MIB, closed_by_peer, rss_anon

FAST = 3.0  # seconds within which a refused peer must be told


class BioClient:
    """A TLS client whose ciphertext passes through memory: `records(data)`
    encrypts without sending, `send(raw)` puts any bytes on the wire."""

    def __init__(self, addr, ctx=None, server_hostname="localhost"):
        self.sock = socket.create_connection(addr, timeout=FAST)
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = (ctx or tls_context()).wrap_bio(self.inb, self.outb,
                                                   server_hostname=server_hostname)
        deadline = time.monotonic() + FAST
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outb.read())
                data = self.sock.recv(65536)
                if not data or time.monotonic() > deadline:
                    raise ConnectionError("handshake did not complete")
                self.inb.write(data)
        self.sock.sendall(self.outb.read())

    def records(self, data):
        """The ciphertext of `data`, not sent."""
        self.tls.write(data)
        return self.outb.read()

    def send(self, raw):
        self.sock.sendall(raw)

    def recv_frame(self):
        """The next answer frame's payload (TLS 1.3 tickets are taken on the way)."""
        buf = b""
        while True:
            try:
                buf += self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("closed")
                self.inb.write(data)
                continue
            if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                return buf[4:]

    def close(self):
        self.sock.close()


def client_hello():
    """The first flight of a TLS client: a ClientHello record."""
    inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tls_context().wrap_bio(inb, outb, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outb.read()


class TlsRecordTest(RouterTestCase):
    def test_unfinished_tls_record_after_the_handshake_times_out(self):
        """A TLS record started and never finished waits inside the session,
        where the frame decoder cannot see it: it is a request started like
        any other, and limits.frame_timeout closes the connection."""
        r = self.router(shards=1, partitions=8, tls=tls_context(), extra_yaml=(
            tls_yaml(router={"enabled": "true"}) + "limits: {frame_timeout: 1s}\n"))
        hostile = BioClient(r.addr)
        self.addCleanup(hostile.close)
        hostile.send(hostile.records(encode(req_ping())))
        self.assertIn(b"PONG", hostile.recv_frame())
        rec = hostile.records(encode(req_ping()))
        hostile.send(rec[:-1])  # all but the record's last byte
        idle = BioClient(r.addr)  # handshake done, nothing started: never timed out
        self.addCleanup(idle.close)
        t0 = time.monotonic()
        self.assertTrue(closed_by_peer(hostile.sock, 4.0), "the unfinished record was not "
                        "bounded by limits.frame_timeout")
        self.assertGreaterEqual(time.monotonic() - t0, 0.5)
        self.assertIn("a TLS record it started did not complete within limits.frame_timeout",
                      r.stderr())
        idle.send(idle.records(encode(req_ping())))
        self.assertIn(b"PONG", idle.recv_frame())


    def test_tls_connection_that_never_starts_its_handshake_times_out(self):
        """A TLS client sends its ClientHello as soon as it connects; a
        connection to a TLS port that sends nothing holds a session and a
        client slot: its handshake's limits.frame_timeout runs from the
        accept, not from a first byte that may never come."""
        r = self.router(shards=1, partitions=8, tls=tls_context(), extra_yaml=(
            tls_yaml(router={"enabled": "true"}) + "limits: {frame_timeout: 1s}\n"))
        silent = socket.create_connection(r.addr, timeout=FAST)
        self.addCleanup(silent.close)
        t0 = time.monotonic()
        self.assertTrue(closed_by_peer(silent, 4.0), "a silent TLS connection was kept")
        self.assertGreaterEqual(time.monotonic() - t0, 0.5)
        self.assertIn("its TLS handshake did not complete within limits.frame_timeout",
                      r.stderr())
        with r.client() as c:
            self.assertEqual(c.ping().message, "PONG")


class RespTlsHelloTest(RouterTestCase):
    def test_tls_client_on_the_plaintext_redis_port_is_told_fast_and_logged(self):
        """A ClientHello on the plaintext Redis port is recognized as TLS,
        answered in plaintext and logged once, as on the protobuf port: not
        parsed as inline commands (its bytes up to the first 0x0a would be
        one, answered with an "unknown command" error full of binary)."""
        port = free_port()
        r = self.router(shards=1, partitions=8,
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % port])
        s = socket.create_connection(("127.0.0.1", port), timeout=FAST)
        self.addCleanup(s.close)
        t0 = time.monotonic()
        s.sendall(client_hello())
        got = b""
        while True:
            data = s.recv(4096)
            if not data:
                break
            got += data
        self.assertLess(time.monotonic() - t0, FAST)
        self.assertEqual(got, b"-ERR this port does not use TLS; connect without TLS\r\n")
        with self.assertRaises(ssl.SSLError):  # a real TLS client fails at once too
            tls_context().wrap_socket(socket.create_connection(("127.0.0.1", port),
                                                               timeout=FAST),
                                      server_hostname="localhost")
        deadline = time.monotonic() + FAST
        while r.stderr().count("TLS handshake on a plaintext port") < 2:
            self.assertLess(time.monotonic(), deadline, r.stderr())
            time.sleep(0.02)
        lines = [x for x in r.stderr().splitlines() if "WARN" in x or "ERROR" in x]
        self.assertEqual(len(lines), 2, lines)  # one per attempt


class LogFloodTest(RouterTestCase):
    def test_a_peer_that_breaks_rules_at_will_cannot_flood_the_log(self):
        """Each connection that breaks a rule is worth a line (here a TLS
        handshake on the plaintext protobuf port), so one peer opening
        connections in a loop could write the log as fast as it connects:
        300 such connections give at most kvs_log's budget of 20 lines
        (the summary of what was left out comes when the 10 s window is
        over: test_log covers it), and the router serves on."""
        r = self.router(shards=1, partitions=8)
        hello = client_hello()
        for _ in range(300):
            s = socket.create_connection(r.addr, timeout=FAST)
            s.sendall(hello)
            while s.recv(4096):
                pass
            s.close()
        c = Client(r.addr)
        self.addCleanup(c.close)
        self.assertEqual(c.call(req_ping()).status, 200)
        told = r.stderr().count("TLS handshake on a plaintext port")
        self.assertGreaterEqual(told, 1)
        self.assertLessEqual(told, 20, r.stderr()[-3000:])


class AuthFloodTest(RouterTestCase):
    def test_auth_flood_from_one_address_is_checked_at_its_limit_only(self):
        """30 connections from one address send a wrong Auth at once: its
        checks run one at a time, so limits.auth_failures_per_minute (5)
        bounds how many tokens are hashed, the rest are refused unchecked;
        a pool of connections sending the right token at once gets in."""
        users = ('users:\n  - {name: alice, token: "%s", allow: {"*": [read]}}\n'
                 % token_hash("alice-pw"))
        r = self.router(shards=1, partitions=8,
                        extra_yaml=users + "limits: {auth_failures_per_minute: 5}\n")
        pool = [Client(r.addr) for _ in range(10)]
        for c in pool:
            self.addCleanup(c.close)
            c.send(req_auth("alice", "alice-pw"))
        self.assertEqual([c.recv().status for c in pool], [200] * 10)
        flood = [Client(r.addr) for _ in range(30)]
        for c in flood:
            self.addCleanup(c.close)
            c.send(req_auth("alice", "guess"))
        msgs = [c.recv().message for c in flood]
        checked = [m for m in msgs if m == "invalid user or token"]
        unchecked = [m for m in msgs if "too many failed Auth attempts from 127.0.0.1" in m]
        self.assertEqual((len(checked), len(unchecked)), (5, 25), msgs)

    def test_a_user_name_cannot_forge_log_lines(self):
        """The failed-Auth log line quotes the user name a client sent, before
        it authenticated: a newline in it must not start a line of its own,
        an ESC must not reach the operator's terminal (both doors)."""
        port = free_port()
        users = ('users:\n  - {name: alice, token: "%s", allow: {"*": [read]}}\n'
                 % token_hash("alice-pw"))
        r = self.router(shards=1, partitions=8, extra_yaml=users,
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % port])
        forged = "2026-01-01T00:00:00.000Z router ERROR  forged"
        with Client(r.addr) as c:
            self.assertEqual(c.call(req_auth("x\n" + forged + " \x1b[2J", "t")).status, 401)
        with socket.create_connection(("127.0.0.1", port), timeout=FAST) as s:
            s.sendall(b'AUTH "y\\r\\n%s" t\r\n' % forged.encode())
            self.assertTrue(s.recv(4096).startswith(b"-WRONGPASS"))
        deadline = time.monotonic() + FAST
        while r.stderr().count("failed Auth as") < 2:
            self.assertLess(time.monotonic(), deadline, r.stderr())
            time.sleep(0.02)
        log = r.stderr()
        self.assertFalse([x for x in log.splitlines() if x.startswith(forged[:24])], log)
        self.assertNotIn("\x1b", log)
        self.assertIn('failed Auth as "x\\n%s \\x1b[2J"' % forged, log)
        self.assertIn('failed Auth as "y\\r\\n%s"' % forged, log)


class RespMemoryTest(RouterTestCase):
    def test_incomplete_redis_requests_cost_their_bytes_only(self):
        """16 Redis clients each stall 2 MiB into a multibulk of a million
        empty arguments (6 bytes each): the router holds their bytes, which
        limits.input_buffers counts, and nothing per argument besides (16
        bytes of arrays for each 6 of input, before)."""
        port = free_port()
        r = self.router(shards=1, partitions=8,
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % port])
        # The router process that reads the clients, not the master (r.pid),
        # which holds none of their bytes: measured there, the wait below
        # always ran to its deadline and the bound held whatever the router did.
        pid = router_pids(r)[0]
        base = rss_anon(pid)
        body = b"*1000000\r\n" + b"$0\r\n\r\n" * (2 * MIB // 6)
        socks = []
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", port), timeout=FAST)
            self.addCleanup(s.close)
            s.sendall(body)
            socks.append(s)
        sent = 16 * len(body)
        deadline = time.monotonic() + 10
        while rss_anon(pid) - base < sent and time.monotonic() < deadline:
            time.sleep(0.05)  # until the router holds what was sent
        with socket.create_connection(("127.0.0.1", port), timeout=FAST) as c:
            c.sendall(b"PING\r\n")
            self.assertEqual(c.recv(64), b"+PONG\r\n")
        self.assertEqual(router_pids(r), {0: pid})
        grown = rss_anon(pid) - base
        self.assertGreater(grown, sent // 2, "the router process holds the bytes it read")
        if not SANITIZED:
            self.assertLess(grown, sent + sent // 2 + 16 * MIB,
                            "the router holds %d MiB for %d MiB of incomplete requests"
                            % (grown >> 20, sent >> 20))

    def test_command_info_of_repeated_names_is_bounded_by_max_frame(self):
        """COMMAND INFO CLIENT CLIENT ...: 12 request bytes a name, a 1 KiB
        entry each (CLIENT's lists its subcommands). 80,000 of them fit in
        a 1 MiB request and would have built an 80 MiB reply; the reply
        stops at limits.max_frame with an error, and the connection goes on."""
        port = free_port()
        r = self.router(shards=1, partitions=8, max_frame="1MiB",
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % port])
        pid = router_pids(r)[0]
        base = rss_anon(pid)
        n = 80000
        for sub in (b"INFO", b"DOCS"):
            req = b"*%d\r\n$7\r\nCOMMAND\r\n$4\r\n%s\r\n" % (n + 2, sub)
            req += b"$6\r\nclient\r\n" * n
            self.assertLess(len(req), MIB)
            got = resp_exchange(port, req + b"PING\r\n", end=b"+PONG\r\n")
            self.assertEqual(got, b"-ERR the reply would exceed limits.max_frame (1048576 "
                                  b"bytes): name fewer commands\r\n+PONG\r\n")
        if not SANITIZED:
            self.assertLess(rss_anon(pid) - base, 16 * MIB)

    def test_client_names_are_bounded_before_and_after_auth(self):
        """A client name lives as long as its connection and nothing counts
        it: CLIENT SETNAME and HELLO ... SETNAME take at most 512 bytes. 20
        clients that never authenticate, each sending HELLO ... SETNAME with
        a 3 MiB name, leave the router nothing to keep (before, each failed
        HELLO kept its name until the connection closed)."""
        port = free_port()
        users = ('users:\n  - {name: alice, token: "%s", allow: {"*": [read]}}\n'
                 % token_hash("alice-pw"))
        r = self.router(shards=1, partitions=8, extra_yaml=users,
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % port])
        rp = router_pids(r)[0]  # the router process (r.pid is the master)
        base = rss_anon(rp)
        name = b"n" * (3 * MIB)
        hello = b"*7\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n" \
                b"$5\r\nguess\r\n$7\r\nSETNAME\r\n$%d\r\n%s\r\n" % (len(name), name)
        socks = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=FAST)
            self.addCleanup(s.close)
            s.sendall(hello)
            socks.append(s)
        for s in socks:
            self.assertTrue(s.recv(4096).startswith(b"-"))
        grown = rss_anon(rp) - base
        if not SANITIZED:
            self.assertLess(grown, 16 * MIB, "20 clients that never authenticated cost the "
                            "router %d MiB" % (grown >> 20))

        def call(s, want, *args):
            """Sends a command; returns the first len(want) bytes of its reply."""
            s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a)
                                                        for a in args))
            got = b""
            while len(got) < len(want):
                data = s.recv(len(want) - len(got))
                if not data:
                    break
                got += data
            return got
        too_long = b"-ERR Client names may be at most 512 bytes\r\n"
        named = b"$512\r\n" + b"x" * 512 + b"\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=FAST) as s:
            self.assertEqual(call(s, too_long, b"HELLO", b"3", b"AUTH", b"alice", b"alice-pw",
                                  b"SETNAME", b"x" * 513), too_long)
            self.assertEqual(call(s, b"+OK\r\n", b"AUTH", b"alice", b"alice-pw"), b"+OK\r\n")
            self.assertEqual(call(s, b"+OK\r\n", b"CLIENT", b"SETNAME", b"x" * 512), b"+OK\r\n")
            self.assertEqual(call(s, named, b"CLIENT", b"GETNAME"), named)
            self.assertEqual(call(s, too_long, b"CLIENT", b"SETNAME", b"y" * 513), too_long)
            self.assertEqual(call(s, named, b"CLIENT", b"GETNAME"), named)


def resp_command(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RespGlobTest(RouterTestCase):
    def test_a_costly_match_pattern_does_not_hold_the_router(self):
        """HSCAN's MATCH runs on the router's loop, for every field of a
        page; its cost is the pattern's length times the field's. A 256 KiB
        [...] class against 20 fields of 503 bytes held every client of the
        router for 12 s: the work per page is bounded now, and past the
        bound the client gets an error instead."""
        port = free_port()
        self.router(shards=1, partitions=8, router_yaml=['resp_listen: "127.0.0.1:%d"' % port])
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.addCleanup(s.close)
        s.sendall(b"".join(resp_command(b"HSET", b"t", b"%03d" % i + b"a" * 500, b"v")
                           for i in range(20)))
        got = b""
        while got.count(b"\r\n") < 20:
            got += s.recv(4096)
        self.assertEqual(got, b":1\r\n" * 20)
        s.sendall(resp_command(b"HSCAN", b"t", b"0", b"MATCH", b"01*", b"COUNT", b"100"))
        got = b""
        while not got.endswith(b"$1\r\nv\r\n") or got.count(b"$1\r\nv\r\n") < 10:
            got += s.recv(65536)
        self.assertEqual(got.count(b"$503\r\n01"), 10)  # 010..019
        t0 = time.monotonic()
        s.sendall(resp_command(b"HSCAN", b"t", b"0", b"MATCH",
                               b"*[" + b"b" * (256 << 10) + b"]", b"COUNT", b"20"))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as other:
            other.sendall(b"PING\r\n")
            self.assertEqual(other.recv(64), b"+PONG\r\n")
        self.assertLess(time.monotonic() - t0, FAST, "the router's loop was held")
        got = s.recv(4096)
        self.assertTrue(got.startswith(b"-ERR MATCH pattern too costly"), got)
        # even one field costs more than the bound: no smaller COUNT helps,
        # and the error does not say it would
        self.assertIn(b"against a field of 503 bytes: use a shorter pattern", got)
        self.assertNotIn(b"COUNT", got)

    def test_a_smaller_count_gets_past_a_costly_match(self):
        """The Redis door asks for at least 128 fields per HSCAN page, but
        with MATCH for no more than the pattern can be matched against
        within the bound on its work, so the error's advice (a smaller
        COUNT) gets the walk through: every matching field exactly once."""
        import redis
        port = free_port()
        self.router(shards=2, partitions=8, router_yaml=['resp_listen: "127.0.0.1:%d"' % port])
        c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        self.addCleanup(c.close)
        fields = {b"%03d" % i + b"a" * 499 + (b"b" if i % 2 == 0 else b"a"): b"v"
                  for i in range(40)}
        self.assertEqual(c.hset("t", mapping=fields), 40)
        pat = b"*[" + b"b" * 2048 + b"]"  # about a million steps per field
        with self.assertRaises(redis.ResponseError) as e:
            c.hscan("t", 0, match=pat, count=100)  # 40 fields: over the bound
        self.assertIn("too costly", str(e.exception))
        seen, cursor, pages = [], 0, 0
        while True:
            cursor, page = c.hscan("t", cursor, match=pat, count=4)
            seen += list(page)
            pages += 1
            self.assertLess(pages, 40)
            if cursor == 0:
                break
        self.assertEqual(sorted(seen), sorted(k for k in fields if k.endswith(b"b")))
