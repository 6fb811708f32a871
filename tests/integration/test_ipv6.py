"""IPv6 end to end: routers listening on [::1], a two-node cluster whose
nodes reach each other's workers over [::1] with mutual TLS (certificates
checked against their IP subjectAltName ::1), the port census next to an
IPv4 wildcard listener, and Auth failures counted per IPv6 address.

The rest of the suite runs on 127.0.0.1; these tests skip when the machine
has no ::1. Every server runs on loopback, every wait is bounded.
"""
import os
import re
import socket
import subprocess

from kafkatest import wait_until
from kvstest import BUILD_DIR, pyval, tls_yaml
from routertest import Router, RouterTestCase, free_port_range, keys_by_shard

from test_auth import req_auth, users_yaml

CLI = os.path.join(BUILD_DIR, "kvs-cli")


def _has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_V6 = _has_ipv6_loopback()


class V6Router(Router):
    """A Router whose router.listen is [HOST]:PORT, HOST ::1; clients reach
    it at `client_host`."""

    host, client_host = "::1", "::1"

    def __init__(self, start=True, **kw):
        super().__init__(start=False, **kw)
        with open(self.config) as f:
            text = f.read()
        old = 'listen: "127.0.0.1:%d"' % self.port
        assert old in text, text
        with open(self.config, "w") as f:
            f.write(text.replace(old, 'listen: "[%s]:%d"' % (self.host, self.port)))
        if start:
            self.start()

    @property
    def addr(self):
        return (self.client_host, self.port)


class MappedRouter(V6Router):
    """A Router on an IPv6 socket that IPv4 clients reach: [::ffff:127.0.0.1]."""

    host, client_host = "::ffff:127.0.0.1", "127.0.0.1"


class IPv6Test(RouterTestCase):
    def setUp(self):
        if not HAS_V6:
            self.skipTest("no IPv6 loopback (::1) on this machine")

    def v6router(self, start=True, **kw):
        return self.router(start, router_class=V6Router, **kw)

    def wait_for(self, r, pattern, timeout=10):
        m = wait_until(lambda: re.search(pattern, r.stderr()), timeout)
        if not m:
            self.fail("%r not in the log of %s" % (pattern, r.name))
        return m

    def test_two_nodes_route_over_ipv6_with_mutual_tls(self):
        # Node a serves shard 0, node b shard 1; each router reaches the other
        # node's worker at [::1]:PORT+N over tls.link, which must verify the
        # worker's certificate against the IP SAN ::1 (node.crt has it;
        # server-wrongname.crt names only otherhost.example).
        base = {"a": free_port_range(2), "b": free_port_range(2)}

        def node(name, cert):
            nodes = ["  nodes:"] + ['    - {name: %s, address: "[::1]:%d", shards: [%d]}'
                                    % (n, base[n], i) for i, n in enumerate(("a", "b"))]
            return self.v6router(start=False, name=name, shards=2, partitions=8, timeout="2s",
                                 cluster_yaml=nodes, node_name=name,
                                 extra_yaml=tls_yaml(node={"enabled": "true"},
                                                     link={"enabled": "true"}, cert=cert))

        a, b = node("a", "node"), node("b", "node")
        a.start()
        b.start()
        self.wait_for(a, r"link to shard 1 \(\[::1\]:%d\) up( \(TLS\))?\n" % (base["b"] + 1))
        keys = keys_by_shard("k", 2, 8, 2)
        with a.client() as c:
            for s in (0, 1):
                for k in keys[s]:
                    self.assertOk(c.hset("t", k, "v-" + k.decode()))
        with b.client() as c:  # a's writes to shard 1 went over a's link to b
            for s in (0, 1):
                for k in keys[s]:
                    resp = c.hget("t", k)
                    self.assertOk(resp)
                    self.assertEqual(pyval(resp.values[0]), "v-" + k.decode())
        self.assertRegex(a.stderr(), r"link to shard 1 \(\[::1\]:%d\) up \(TLS\)" % (base["b"] + 1))
        self.assertRegex(b.stderr(), r"link to shard 0 \(\[::1\]:%d\) up \(TLS\)" % base["a"])
        self.assertNotIn("not a TLS handshake", a.stderr() + b.stderr())

        # b's certificate without IP ::1: a's link refuses it.
        b.stop()
        with open(b.config) as f:
            text = f.read()
        with open(b.config, "w") as f:
            f.write(text.replace("/node.crt", "/server-wrongname.crt")
                    .replace("/node.key", "/server-wrongname.key"))
        b.start()
        with a.client() as c:
            resp = c.hget("t", keys[1][0])
            self.assertEqual(resp.status, 503, resp.message)
        self.wait_for(a, r"closing \[::1\]:%d: TLS handshake failed: certificate verify failed: "
                         r"IP address mismatch" % (base["b"] + 1))

    def test_ipv6_listener_is_not_shared_with_an_ipv4_wildcard(self):
        # Another process on 0.0.0.0:PORT takes no IPv6 client: the router
        # on [::1]:PORT must not take it for a socket sharing its port.
        r = self.v6router(start=False, shards=1, partitions=8)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            other.bind(("0.0.0.0", r.port))
            other.listen(1)
            r.start()
            with r.client() as c:
                self.assertEqual(c.ping().status, 200)
            self.assertNotIn("is shared with a process", r.stderr())

    def test_auth_failures_are_counted_per_ipv6_address(self):
        r = self.v6router(shards=1, partitions=8,
                          extra_yaml=users_yaml(limits="auth_failures: 100, "
                                                       "auth_failures_per_minute: 2"))
        with r.client() as c:
            for _ in range(2):
                self.assertEqual(c.call(req_auth("alice", "bad")).status, 401)
            resp = c.call(req_auth("alice", "alice-pw"))  # refused unchecked
            self.assertEqual(resp.status, 401)
            self.assertIn("too many failed Auth attempts from ::1 ", resp.message)
        self.assertRegex(r.stderr(), r'failed Auth as "alice" from \[::1\]:\d+ \(1 on this')
        # kvs-cli takes an IPv6 --host as it is written, brackets or not.
        for host in ("::1", "[::1]"):
            p = subprocess.run([CLI, "--host", host, "--port", str(r.port), "ping"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
            self.assertEqual((p.returncode, p.stdout.strip()), (0, b"PONG"),
                             (host, p.stderr))

    def test_an_ipv4_client_of_an_ipv6_socket_is_named_as_ipv4(self):
        # The socket sees the client as ::ffff:127.0.0.1; log lines name it
        # as an IPv4 listener would, the way Auth counts its failures.
        r = self.router(True, router_class=MappedRouter, shards=1, partitions=8,
                        extra_yaml=users_yaml())
        with r.client() as c:
            self.assertEqual(c.call(req_auth("alice", "bad")).status, 401)
            port = c.sock.getsockname()[1]
        self.wait_for(r, r'failed Auth as "alice" from 127\.0\.0\.1:%d ' % port)
        self.assertNotIn("::ffff:127.0.0.1]:%d" % port, r.stderr())
