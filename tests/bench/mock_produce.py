#!/usr/bin/env python3
"""mock_produce.py: the floor under log-first write latency on
kvs-mock-kafka: a bare librdkafka producer (python3-confluent-kafka),
configured as a kvs worker's (acks=all, idempotent, linger.ms=0),
producing 100-byte records to a fresh mock cluster, with no kvs process
involved.

    tests/bench/mock_produce.py [--in-flight N]... [--messages N]
                                [--partitions N] [--consume] [--build DIR]

For each --in-flight value (default: 1 and 50, the clients of
logfirst.sh's pipeline-1 row) it keeps that many records outstanding
(a new one is produced as each acknowledgement arrives) until --messages
(default 50,000) were acknowledged, on a new mock cluster each time, and
prints the rate and the p50, p99 and maximum of produce-to-acknowledgement
latency. A log-first write cannot be answered sooner than its record is
acknowledged, so these are bounds on what logfirst.sh can show.
--consume adds what a kvs worker also does meanwhile: a consumer (the
worker's fetch settings: fetch.wait.max.ms 50, queued.min.messages
1000000) reading every partition from the beginning, which costs the mock
broker CPU (it walks a partition's log on every fetch).

The mock cluster is started from --build (default build-release/) and
stopped at exit; it listens on 127.0.0.1 only. Every wait is bounded.
"""
import argparse
import os
import subprocess
import sys
import time

try:
    from confluent_kafka import Consumer, Producer, TopicPartition
except ImportError:
    sys.exit("mock_produce.py: python3-confluent-kafka is needed (apt install python3-confluent-kafka)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 30  # seconds for the mock cluster to be ready
RUN_TIMEOUT = 300  # seconds for one run


def start_mock(build, partitions):
    mock = subprocess.Popen([os.path.join(build, "kvs-mock-kafka"), "--topic",
                             "bench:%d" % partitions], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    while not line.startswith(b"bootstrap.servers=") and time.monotonic() < deadline:
        line = mock.stdout.readline()
        if not line:
            break
    if not line.startswith(b"bootstrap.servers="):
        mock.kill()
        sys.exit("mock_produce.py: kvs-mock-kafka was not ready within %ds" % START_TIMEOUT)
    return mock, line.decode().strip().split("=", 1)[1]


def start_consumer(bootstrap, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "mock-produce",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 50,
                  "queued.min.messages": 1000000, "log_level": 3})
    c.assign([TopicPartition("bench", p, 0) for p in range(partitions)])
    return c


def run(bootstrap, in_flight, messages, consumer=None):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all",
                  "enable.idempotence": True, "log_level": 3})
    sent, lat, outstanding = 0, [], {}

    def acked(err, msg):
        t0 = outstanding.pop(msg.key())
        if err is not None:
            sys.exit("mock_produce.py: delivery failed: %s" % err)
        lat.append(time.perf_counter() - t0)

    start = time.perf_counter()
    deadline = time.monotonic() + RUN_TIMEOUT
    while len(lat) < messages:
        while len(outstanding) < in_flight and sent < messages:
            key = b"k%d" % sent
            sent += 1
            outstanding[key] = time.perf_counter()
            p.produce("bench", key=key, value=b"x" * 100, on_delivery=acked)
        p.poll(0.001)
        if consumer is not None:
            consumer.consume(10000, 0)
        if time.monotonic() > deadline:
            sys.exit("mock_produce.py: a run took longer than %ds" % RUN_TIMEOUT)
    elapsed = time.perf_counter() - start
    p.flush(10)
    lat.sort()
    return (messages / elapsed, lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3,
            lat[-1] * 1e3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in-flight", type=int, action="append")
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--consume", action="store_true")
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    a = ap.parse_args()
    print("kvs-mock-kafka from %s, topic bench: %d partitions; %d records of 100 bytes per run%s"
          % (a.build, a.partitions, a.messages, "; a consumer reads them back" if a.consume else ""))
    print("in flight | records/s | p50 ms | p99 ms | max ms")
    for n in a.in_flight or [1, 50]:
        mock, bootstrap = start_mock(a.build, a.partitions)
        consumer = start_consumer(bootstrap, a.partitions) if a.consume else None
        try:
            rate, p50, p99, top = run(bootstrap, n, a.messages, consumer)
        finally:
            if consumer is not None:
                consumer.close()
            mock.terminate()
            mock.wait(10)
        print("%9d | %9.0f | %6.3f | %6.3f | %6.3f" % (n, rate, p50, p99, top))


if __name__ == "__main__":
    main()
