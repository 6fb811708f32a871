"""Answers whose size grows with the configuration rather than the request,
and configurations at the sizes the parser accepts: a process whose metrics
do not fit limits.max_frame is shown as left out of a scrape (never as up
with its families missing); a router process that would need more
descriptors than its limit for its links to workers refuses to start,
saying so, rather than failing at random or spinning on reconnects.
"""
import os
import re
import time

from kvstest import HOST
from routertest import RouterTestCase, free_port
from test_ops import http_get, parse_metrics


class ScrapeOfOversizedAnswersTest(RouterTestCase):
    def test_a_process_whose_metrics_exceed_max_frame_is_not_up(self):
        # 2 KiB holds a request, but not a router process's own families
        # (its histograms alone take more) nor a worker's.
        mport = free_port()
        r = self.router(shards=1, partitions=8, max_frame="2KiB",
                        router_yaml=['metrics_listen: "%s:%d"' % (HOST, mport)])
        deadline = time.monotonic() + 10
        while True:
            status, _, body = http_get(mport)
            self.assertEqual(status, 200, body)
            samples = parse_metrics(body)
            up = {(k, ls[k]): v for n, ls, v in samples if n == "kvs_metrics_source_up"
                  for k in ("router", "shard") if k in ls}
            # The master's link to the router process comes up just after
            # the node is ready: wait for both to be asked.
            if ("router", "0") in up and ("shard", "0") in up or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertIn(("router", "0"), up, body[:2000])
        self.assertIn(("shard", "0"), up, body[:2000])
        # A family only the process itself sends (the master adds others
        # with these labels: restarts, its view of the process).
        theirs = {"router": "kvs_client_connections", "shard": "kvs_lmdb_map_size_bytes"}
        for (label, value), v in sorted(up.items()):
            sent = [ls for n, ls, _ in samples if n == theirs[label] and ls.get(label) == value]
            if v == 1:
                self.assertTrue(sent, "%s=%s is up, but its %s is not in the scrape"
                                % (label, value, theirs[label]))
            else:
                self.assertEqual(sent, [], "%s=%s is left out, yet has samples" % (label, value))
        # Here neither fits: both are left out, and the log says why.
        self.assertEqual(up[("router", "0")], 0, body[:2000])
        self.assertEqual(up[("shard", "0")], 0, body[:2000])
        log = r.stderr()
        self.assertRegex(log, r"metrics: router 0 answered 413 .*max_frame.*; left out")
        self.assertRegex(log, r"metrics: shard 0 answered 413 .*max_frame.*; left out")
