"""Deployment: systemd readiness.

NotifyTest starts kvs-router with NOTIFY_SOCKET naming a unix datagram
socket the test owns, as systemd does for Type=notify services, and reads
what the router sends: READY=1 only once clients are accepted (a client
connected the moment it arrives is served), never when a worker cannot
start, STOPPING=1 on SIGTERM, STATUS= lines on the way.
"""
import os
import shutil
import signal
import socket
import tempfile
import time
import unittest

from kvstest import Client
from routertest import RouterTestCase

WAIT = 15.0


# ---- sd_notify ---------------------------------------------------------------------


class NotifySocket:
    """A unix datagram socket in a temporary directory, like systemd's."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kvs-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []  # every message so far, as {key: value}

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def receive(self, timeout):
        """The next message, or None after `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(msg)
        return msg

    def wait_for(self, key, timeout=WAIT):
        """Receives until a message holds `key`; returns it (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.receive(deadline - time.monotonic())
            if msg is not None and key in msg:
                return msg
        return None

    def drain(self):
        while self.receive(0.05) is not None:
            pass
        return self.messages


class NotifyTest(RouterTestCase):
    def notify_socket(self):
        n = NotifySocket()
        self.addCleanup(n.close)
        return n

    def test_ready_once_accepting_and_stopping_on_sigterm(self):
        n = self.notify_socket()
        r = self.router(shards=3, start=False, env={"NOTIFY_SOCKET": n.path})
        r.proc = r.spawn()
        ready = n.wait_for("READY")
        self.assertIsNotNone(ready, "no READY=1 within %.0f s:\n%s" % (WAIT, r.stderr()))
        # At the moment READY=1 arrives the router accepts and serves, and
        # every local worker is up.
        with Client(r.addr, timeout=5) as c:
            self.assertEqual(c.ping().status, 200)
        self.assertEqual(sorted(r.workers()), [0, 1, 2])
        self.assertEqual(ready["READY"], "1")
        self.assertIn("serving clients on 127.0.0.1:%d" % r.port, ready["STATUS"])
        before = n.messages[:-1]
        self.assertTrue(any(m.get("STATUS", "").startswith("starting: waiting for 3 local")
                            for m in before), n.messages)
        self.assertFalse(any("READY" in m or "STOPPING" in m for m in before), n.messages)

        r.proc.send_signal(signal.SIGTERM)
        stopping = n.wait_for("STOPPING")
        self.assertIsNotNone(stopping, "no STOPPING=1 after SIGTERM:\n%s" % r.stderr())
        self.assertEqual(stopping["STATUS"], "draining clients")
        self.assertEqual(r.proc.wait(WAIT), 0)
        statuses = [m.get("STATUS") for m in n.drain()]
        self.assertIn("clients drained; stopping workers", statuses)
        self.assertEqual(sum("READY" in m for m in n.messages), 1)

    def test_no_ready_when_a_worker_cannot_start(self):
        # A data directory made for another placement: the worker refuses it
        # (EX_CONFIG), so the node never becomes ready and says why.
        r = self.router(shards=1, partitions=8)
        self.assertEqual(r.stop(), 0)
        with open(r.config) as f:
            text = f.read()
        with open(r.config, "w") as f:
            f.write(text.replace("  partitions: 8\n", "  partitions: 16\n"))
        n = self.notify_socket()
        r.env["NOTIFY_SOCKET"] = n.path
        r.proc = r.spawn()
        self.assertEqual(r.proc.wait(WAIT), 78, r.stderr())
        msgs = n.drain()
        self.assertFalse(any("READY" in m for m in msgs), msgs)
        stopping = [m for m in msgs if "STOPPING" in m]
        self.assertEqual(len(stopping), 1, msgs)
        self.assertIn("shard 0 cannot run with this configuration", stopping[0]["STATUS"])

    def test_without_notify_socket_nothing_is_sent(self):
        # Outside systemd the router runs as before (no warning either).
        r = self.router(shards=1)
        with r.client() as c:
            self.assertEqual(c.ping().status, 200)
        self.assertEqual(r.stop(), 0)
        self.assertNotIn("notify", r.stderr())

    def test_unreachable_notify_socket_is_reported_once(self):
        missing = os.path.join(tempfile.gettempdir(), "kvs-no-such-notify-socket-%d" % os.getpid())
        r = self.router(shards=1, env={"NOTIFY_SOCKET": missing})
        with r.client() as c:
            self.assertEqual(c.ping().status, 200)
        self.assertEqual(r.stop(), 0)
        self.assertEqual(r.stderr().count("cannot notify the service manager at "
                                          "NOTIFY_SOCKET=%s" % missing), 1, r.stderr())

    def test_sighup_is_logged_and_changes_nothing(self):
        # systemctl reload sends SIGHUP (ExecReload): until live reload
        # exists the node must survive it, not die of it.
        r = self.router(shards=1)
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
            r.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + WAIT
            while "received SIGHUP" not in r.stderr() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertIn("received SIGHUP: live reload is not supported yet", r.stderr())
            self.assertEqual(c.hget("t", "k").status, 200)
        self.assertTrue(r.alive())
        self.assertEqual(r.stop(), 0)


if __name__ == "__main__":
    unittest.main()
