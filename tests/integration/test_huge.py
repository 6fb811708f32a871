"""Every value can be huge: requests and answers at and just past
limits.max_frame, on the paths where the router adds to what a client
sent or a worker answered.

- A split Hmdel of exactly max_frame bytes whose part for one shard holds
  all but one tiny key: the part, with the answer budget the router adds,
  is a few bytes larger than the client's request. It must be refused
  (413, nothing written) rather than sent: a worker closes a connection
  that announces a frame past max_frame, and the router's link to it is
  shared by every client of the shard.

Real kvs-router / kvs-node processes on loopback; every wait is bounded.

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import unittest

from kvstest import pyval, req_hmdel
from routertest import RouterTestCase, keys_by_shard, shard_of
from test_answers import Bystander

PARTITIONS = 64


def exact_size(req, size, pad_key, keep_shard):
    """Pads keys[0] of `req` (Hmdel/Hmget) so the request takes exactly
    `size` bytes, its key staying on shard `keep_shard` (2 shards)."""
    keys = req.hmdel.keys if req.WhichOneof("command") == "hmdel" else req.hmget.keys
    pad = size - len(req.SerializeToString())
    for _ in range(50):
        k = pad_key + b"x" * pad
        j = 0
        while shard_of(k + b"%03d" % j, PARTITIONS, 2) != keep_shard:
            j += 1
        keys[0] = k + b"%03d" % j
        n = len(req.SerializeToString())
        if n == size:
            return req
        pad += size - n
    raise AssertionError("could not pad the request to %d bytes" % size)


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


if __name__ == "__main__":
    unittest.main()
