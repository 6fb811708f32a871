"""Answers whose size grows with the configuration rather than the request,
and configurations at the sizes the parser accepts: a process whose metrics
do not fit limits.max_frame is shown as left out of a scrape (never as up
with its families missing); a router process that would need more
descriptors than its limit for its links to workers refuses to start,
saying so, rather than failing at random or spinning on reconnects.
"""
import resource
import signal
import subprocess
import time

from kvstest import HOST
from routertest import RouterTestCase, free_port, free_port_range
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


def replicas_yaml(shards, replicas, base_port):
    """A cluster.nodes map where this node (n0, on base_port) and
    replicas - 1 others (on loopback addresses nothing listens on) each
    serve every shard: shards x replicas links per router process."""
    lines = ["  bootstrap: replay", "  nodes:"]
    for i in range(replicas):
        addr = "127.0.0.1:%d" % base_port if i == 0 else "127.0.%d.%d:20000" % (i // 250 + 1,
                                                                               i % 250 + 1)
        lines.append('    - {name: n%d, address: "%s", shards: [%s]}'
                     % (i, addr, ", ".join(str(s) for s in range(shards))))
    return lines


class DescriptorLimitTest(RouterTestCase):
    def spawn_limited(self, r, nofile):
        """Starts r's kvs-router with RLIMIT_NOFILE (soft and hard) `nofile`."""
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        log = open(r.log_path, "ab")
        try:
            r.proc = subprocess.Popen([r.exe, "--config", r.config], stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=log, preexec_fn=limit)
        finally:
            log.close()

    def test_more_links_than_descriptors_is_refused_at_start(self):
        # 4 shards x 64 replicas = 256 links, local reads of 4 shards (8
        # files), 32 for clients of its own socket, 64 kept: 361 descriptors
        # with one client.
        base = free_port_range(4)
        r = self.router(start=False, shards=4, partitions=8, node_name="n0",
                        cluster_yaml=replicas_yaml(4, 64, base))
        self.spawn_limited(r, 300)
        try:
            code = r.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            code = None
        self.assertEqual(code, 78, r.stderr()[-3000:])
        self.assertRegex(r.stderr(), r"needs 361 descriptors for itself \(a link to each of the "
                                     r"256 replicas .*, 32 for clients of its own socket, 64 "
                                     r"more\) .*descriptor limit \(RLIMIT_NOFILE\) is 300")
        # With room for them it starts and serves.
        r2 = self.router(start=False, shards=4, partitions=8, node_name="n0",
                         cluster_yaml=replicas_yaml(4, 64, free_port_range(4)))
        self.spawn_limited(r2, 400)
        r2.wait_accepting("kvs-router", 30)
        with r2.client() as c:
            self.assertEqual(c.ping().status, 200)

    def test_a_reload_keeps_the_descriptors_of_links_and_local_reads(self):
        # 4 shards, local reads: 4 links + 8 files + 32 for clients of its
        # own socket + 64 kept = 108 of 132 descriptors, so 24 clients fit,
        # below limits.max_clients. A reload recomputes the cap and must
        # count the same descriptors.
        r = self.router(start=False, shards=4, partitions=8,
                        extra_yaml="limits: {max_clients: 30}\n")
        self.spawn_limited(r, 132)
        r.wait_accepting("kvs-router", 30)
        self.assertIn("serving at most 24 clients per listener", r.stderr())
        with open(r.config) as f:
            text = f.read()
        with open(r.config, "w") as f:
            f.write(text.replace("max_clients: 30", "max_clients: 31"))
        line = "router INFO  configuration reloaded"
        before = r.stderr().count(line)
        r.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while r.stderr().count(line) < before + 2:  # the master's, then the router process's
            self.assertLess(time.monotonic(), deadline, r.stderr()[-3000:])
            time.sleep(0.05)
        clients = []
        try:
            for i in range(24):
                c = r.client()
                clients.append(c)
                self.assertEqual(c.ping().status, 200, "client %d" % i)
            c = r.client()
            clients.append(c)
            resp = c.ping()
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("too many clients", resp.message)
        finally:
            for c in clients:
                c.close()
