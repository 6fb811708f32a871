"""A client thread that pipelines batches of requests through a fault
window (test_eio.py, test_enomem.py).

PipelineThread keeps one connection, sends each batch in one write from a
sender thread while it reads the answers in order, and reconnects when
the node closes the connection, until `stop` is set. What a test sends
and what it makes of each answer are its own: a subclass gives `batch`
and `answer`, and where it needs to, what it does with the requests whose
answers were lost (`lost`), how it connects (`connect`), and between
batches (`after_batch`). The defaults speak kvs's protobuf protocol
through kvstest.Client; `encode`, `receive`, `name` and `status_key`
let a subclass speak another (test_enomem.py's RESP driver).

Every answer is awaited at most `timeout` seconds: no answer in time is a
problem. Problems are collected in `problems` (the test asserts there are
none), answers counted in `answers` and by `status_key` in `statuses`,
connections the node closed in `closes`.
"""
import random
import socket
import ssl
import threading

from kvstest import Client, encode

# What reading an answer raises when the node closed the connection (with
# TLS, an alert: the router could not go on).
CLOSED = (EOFError, ConnectionResetError, BrokenPipeError, ssl.SSLError)


class PipelineThread(threading.Thread):
    """One connection pipelining batches until `stop` is set. Its keys
    (`key`) are its own: "t<tid>-<n>", never written twice."""

    timeout = 10.0  # seconds, for the connection and for each answer

    def __init__(self, addr, tid, seed, stop):
        super().__init__(daemon=True)
        self.addr, self.tid, self.stop = addr, tid, stop
        self.rng = random.Random(seed * 1000 + tid)
        self.problems, self.statuses = [], {}
        self.answers = self.closes = self.n = 0

    def key(self):
        self.n += 1
        return ("t%d-%06d" % (self.tid, self.n)).encode()

    # ---- what a subclass gives
    def batch(self):
        """[(request, what)]: `what` is passed to `answer` and `lost`."""
        raise NotImplementedError

    def answer(self, req, what, resp):
        """Takes in the answer to `req`; returns a problem text or None."""
        raise NotImplementedError

    def lost(self, items):
        """The answers to these (request, what) items will not come: the
        connection closed or an answer was late."""

    def connect(self):
        """A new connection, or None if this attempt counts as a close and
        the loop tries again. OSError or EOFError: a problem, the thread
        ends."""
        return Client(self.addr, timeout=self.timeout)

    def after_batch(self):
        """Runs after each batch (and after the close that may end it)."""

    # ---- the protocol (kvs protobuf unless overridden)
    def encode(self, req):
        return encode(req)

    def receive(self, conn):
        """The next answer. One of CLOSED when the node closed the
        connection; ValueError for an answer that is not well-formed."""
        return conn.recv()

    def name(self, req):
        return req.WhichOneof("command")

    def status_key(self, resp):
        return resp.status

    # ---- the loop
    def run(self):
        conn = None
        try:
            while not self.stop.is_set():
                if conn is None:
                    try:
                        conn = self.connect()
                    except (OSError, EOFError) as e:
                        self.problems.append("cannot connect: %r" % (e,))
                        return
                    if conn is None:
                        self.closes += 1
                        continue
                if not self.one_batch(conn):
                    conn.close()
                    conn = None
                    self.closes += 1
                self.after_batch()
        finally:
            if conn is not None:
                conn.close()

    def one_batch(self, conn):
        """Sends a batch pipelined and takes in its answers; False once the
        connection is done for (closed, an answer late or malformed)."""
        items = self.batch()
        data = b"".join(self.encode(req) for req, _ in items)
        sender = threading.Thread(target=self.send_all, args=(conn.sock, data), daemon=True)
        sender.start()
        try:
            for i, (req, what) in enumerate(items):
                try:
                    resp = self.receive(conn)
                except CLOSED:
                    self.lost(items[i:])
                    return False
                except socket.timeout:
                    self.problems.append("no answer within %g s to %s"
                                         % (self.timeout, self.name(req)))
                    self.lost(items[i:])
                    return False
                except ValueError as e:
                    self.problems.append("%s: %s" % (self.name(req), e))
                    self.lost(items[i:])
                    return False
                self.answers += 1
                key = self.status_key(resp)
                self.statuses[key] = self.statuses.get(key, 0) + 1
                bad = self.answer(req, what, resp)
                if bad is not None:
                    self.problems.append("%s: %s" % (self.name(req), bad))
            return True
        finally:
            sender.join(10)

    @staticmethod
    def send_all(sock, data):
        try:
            sock.sendall(data)
        except OSError:
            pass  # the reader sees the close
