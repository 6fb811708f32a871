"""Bad input over TLS: test_badinput's scenarios against a worker whose TCP
listener speaks (mutual) TLS, and the fuzz corpus (tests/fuzz/corpus)
replayed through TLS connections, so TLS records cut frames at every odd
place. Whatever arrives, the worker answers what it can, closes what it
must, stays up and keeps serving others.
"""
import os
import socket
import ssl

import test_badinput
from kvstest import Client, NodeTestCase, encode, frame, req_ping, tls_context, tls_yaml

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "corpus")


def tls_node_kw(kw):
    kw = dict(kw)
    kw["extra_yaml"] = kw.get("extra_yaml", "") + tls_yaml(node={"enabled": "true"})
    kw["tls"] = tls_context(cert="node")
    return kw


class BadInputTlsTest(test_badinput.BadInputTest):
    """Each of test_badinput's scenarios, written out here so that ctest,
    which runs the methods a class's own text defines, runs them all
    (test_every_scenario_runs_over_tls keeps the list whole)."""

    def node(self, **kw):
        return super().node(**tls_node_kw(kw))

    def test_every_scenario_runs_over_tls(self):
        base = {n for n in dir(test_badinput.BadInputTest) if n.startswith("test_")}
        own = {n for n, v in vars(BadInputTlsTest).items() if n.startswith("test_")}
        self.assertEqual(sorted(base - own), [], "add them to BadInputTlsTest")

    def test_all_bad_inputs_in_one_session(self):
        self.assertIsInstance(self.c.sock, ssl.SSLSocket)
        super().test_all_bad_inputs_in_one_session()

    def test_truncated_frame_then_disconnect(self):
        super().test_truncated_frame_then_disconnect()

    def test_oversized_header_gets_413_and_close(self):
        super().test_oversized_header_gets_413_and_close()

    def test_frame_of_exactly_max_frame_is_accepted(self):
        super().test_frame_of_exactly_max_frame_is_accepted()

    def test_largest_pair_is_readable_within_max_frame(self):
        super().test_largest_pair_is_readable_within_max_frame()

    def test_answers_owed_go_before_a_frame_error(self):
        super().test_answers_owed_go_before_a_frame_error()

    def test_compressed_bit_gets_400_and_close(self):
        super().test_compressed_bit_gets_400_and_close()

    def test_bytes_protobuf_reads_otherwise_are_refused(self):
        super().test_bytes_protobuf_reads_otherwise_are_refused()

    def test_garbage_payload_gets_400_and_connection_survives(self):
        super().test_garbage_payload_gets_400_and_connection_survives()

    def test_request_with_no_command(self):
        super().test_request_with_no_command()

    def test_invalid_fields_name_the_field(self):
        super().test_invalid_fields_name_the_field()

    def test_unknown_command_and_unknown_field(self):
        super().test_unknown_command_and_unknown_field()

    def test_string_value_not_utf8_is_refused(self):
        super().test_string_value_not_utf8_is_refused()

    def test_string_value_with_nul_is_whole_or_refused(self):
        super().test_string_value_with_nul_is_whole_or_refused()

    def test_table_not_utf8_is_refused(self):
        super().test_table_not_utf8_is_refused()

    def test_table_with_nul_is_refused(self):
        super().test_table_with_nul_is_refused()

    def test_sigterm_with_a_client_that_never_reads(self):
        super().test_sigterm_with_a_client_that_never_reads()

    def test_bad_requests_inside_a_pipeline(self):
        super().test_bad_requests_inside_a_pipeline()

    def test_oversized_answer_gets_413(self):
        super().test_oversized_answer_gets_413()

    def test_pipelining_client_that_never_reads(self):
        super().test_pipelining_client_that_never_reads()

    def test_slow_client(self):
        super().test_slow_client()


def pieces(data):
    """Splits a fuzz_frame input into its stream's pieces (see
    tests/fuzz/fuzz_frame.c: byte 0 says how many piece-size bytes follow)."""
    if not data:
        return []
    n = (data[0] & 7) + 1
    sizes = [b + 1 if b < 0x80 else (b & 0x7F) * 128 + 1 for b in data[1:1 + n]] or [len(data)]
    stream, out, i = data[1 + n:], [], 0
    while stream:
        k = sizes[i % len(sizes)]
        out.append(stream[:k])
        stream = stream[k:]
        i += 1
    return out


class FuzzCorpusTlsTest(NodeTestCase):
    def tls_node(self):
        return self.node(**tls_node_kw({"max_frame": "4KiB"}))  # the fuzz harness' limit

    def test_request_corpus_over_tls(self):
        n = self.tls_node()
        d = os.path.join(CORPUS, "request")
        names = sorted(os.listdir(d))
        payloads = []
        for name in names:
            with open(os.path.join(d, name), "rb") as f:
                payloads.append(f.read())
        with n.client() as c:
            c.send_raw(b"".join(frame(p) for p in payloads))
            for name in names:  # exactly one answer each, in order
                r = c.recv()
                # A Digest of a table the writes before it in the same batch
                # are creating is 503 "retry shortly".
                allowed = (200, 400, 404, 413) + ((503,) if "digest" in name else ())
                self.assertIn(r.status, allowed, "%s: %s" % (name, r.message))
                if name.endswith("-metrics") and r.status == 413:  # over this node's 4 KiB
                    self.assertIn("this process's metrics", r.message)
            self.assertEqual(c.ping().message, "PONG")
        self.assertTrue(n.alive(), n.stderr())

    def test_frame_corpus_over_tls(self):
        n = self.tls_node()
        bystander = n.client()
        self.addCleanup(bystander.close)
        d = os.path.join(CORPUS, "frame")
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                parts = pieces(f.read())
            with Client(n.addr, tls=n.tls, timeout=0.5) as c:
                for p in parts:  # each piece its own TLS record
                    c.send_raw(p)
                try:
                    c.send_raw(encode(req_ping()))
                    while True:  # answers, until the Ping's, an EOF or a quiet 0.5 s
                        got = c.recv_raw()
                        if got is None or b"PONG" in got[1]:
                            break
                except (socket.timeout, ConnectionError, ssl.SSLError, EOFError):
                    pass
            self.assertTrue(n.alive(), "died on %s:\n%s" % (name, n.stderr()))
            self.assertEqual(bystander.ping().message, "PONG", name)
