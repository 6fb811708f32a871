"""log.format: json end to end: every line the router, its workers and
librdkafka (through the workers' log callback) write is one JSON object that
Python's json module reads, with the documented fields.

The data directory's name holds a quote, a backslash and a non-ASCII
letter, and appears in the workers' messages, so escaping is exercised by
real log lines; librdkafka's debug output (kafka.properties debug: broker,
log.level debug) supplies lines kvs does not format itself.
"""
import json
import os
import re
import unittest

from kafkatest import MockKafka, ingest_yaml, wait_until
from routertest import RouterTestCase

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WEIRD = 'da"ta \\ \u00e9'  # the data directory's last component


def json_lines(text):
    """Every line of `text` as a dict; fails on the first line that is not
    strict JSON (NaN and friends refused too) or lacks a field."""
    out = []
    for i, line in enumerate(text.split("\n")[:-1]):
        def no_constants(name):
            raise ValueError("not JSON: %s" % name)
        obj = json.loads(line, parse_constant=no_constants)
        if not isinstance(obj, dict):
            raise ValueError("line %d is not an object: %r" % (i + 1, line))
        keys = set(obj)
        if not {"time", "level", "role", "message"} <= keys <= {"time", "level", "role",
                                                                "message", "shard"}:
            raise ValueError("line %d has fields %s" % (i + 1, sorted(keys)))
        if not STAMP.match(obj["time"]) or obj["level"] not in ("debug", "info", "warn", "error"):
            raise ValueError("line %d: bad time or level: %r" % (i + 1, line))
        out.append(obj)
    if not text.endswith("\n"):
        raise ValueError("the log does not end with a newline: %r" % text[-200:])
    return out


class LogJsonTest(RouterTestCase):
    def test_router_workers_and_librdkafka_log_json(self):
        m = MockKafka({"users": 4})
        self.addCleanup(m.close)
        kafka = ingest_yaml(m.bootstrap, [("users", "users", "raw", 4)],
                            properties={"debug": "broker"})
        r = self.router(shards=2, partitions=4, log="{level: debug, format: json}",
                        extra_yaml=kafka, start=False)
        with open(r.config) as f:
            text = f.read()
        weird_dir = os.path.join(r.dir, WEIRD)
        quoted = weird_dir.replace("\\", "\\\\").replace('"', '\\"')
        text = text.replace("data_dir: %s\n" % r.data_dir, 'data_dir: "%s"\n' % quoted)
        with open(r.config, "w") as f:
            f.write(text)
        r.data_dir = weird_dir
        r.start()
        with r.client() as c:
            self.assertEqual(c.ping().status, 200)

        def rdkafka_seen():
            return any(o.get("shard") is not None and o["message"].startswith("librdkafka")
                       for o in json_lines(r.stderr()))
        self.assertTrue(wait_until(rdkafka_seen, 10.0), r.stderr()[-3000:])
        self.assertEqual(r.stop(), 0)

        lines = json_lines(r.stderr())
        roles = {(o["role"], o.get("shard")) for o in lines}
        self.assertIn(("router", None), roles)
        self.assertIn(("node", 0), roles)
        self.assertIn(("node", 1), roles)
        # The workers name their data directory: it comes back exactly.
        ready = [o["message"] for o in lines if o.get("shard") == 0 and "ready" in o["message"]]
        self.assertTrue(ready, "no ready line from shard 0")
        self.assertIn(weird_dir, ready[0])
        self.assertEqual(lines[-1]["role"], "router")
        self.assertEqual(lines[-1]["message"], "stopped")

    def test_a_warning_about_the_config_file_is_json_too(self):
        # The file loaded, so its format is known: the master's warning of
        # a file others may write is a JSON line like every other.
        r = self.router(shards=1, partitions=4, log="{format: json}", start=False)
        os.chmod(r.config, 0o666)
        r.start()
        self.assertEqual(r.stop(), 0)
        lines = json_lines(r.stderr())
        warned = [o for o in lines if "is writable by its group and others" in o["message"]]
        self.assertEqual(len(warned), 1, r.stderr()[-3000:])
        self.assertEqual((warned[0]["role"], warned[0]["level"]), ("router", "warn"))

    def test_config_error_before_the_format_is_known_is_text(self):
        # A file that does not load cannot say which format it wants: the
        # error is the usual text line, and the exit status 78.
        r = self.router(start=False, log="{format: json, level: chatty}")
        p = r.spawn()
        self.assertEqual(p.wait(15), 78)
        err = r.stderr()
        self.assertRegex(err, r"router ERROR .*config\.yaml:\d+:\d+: log\.level must be one of")


if __name__ == "__main__":
    unittest.main()
