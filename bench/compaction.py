"""Log compaction: cleaner throughput, and live produce -> consume latency while it works.

Usage: python bench/compaction.py [REPO] [--dirty-mb 200] [--keys 20000] [--rate 2000]
                                  [--windows 6] [--window-s 2] [--io-limit BYTES_PER_S]
                                  [--set KEY=VALUE ...]

Starts a broker from REPO (default: this checkout) with fsync=always and two topics holding
--dirty-mb MiB of keyed records each (--keys keys rewritten many times), created with
cleanup.policy=delete so that nothing is cleaned yet.

1. Throughput: the first topic is switched to cleanup.policy=compact (incremental
   AlterConfigs) and the cleaner's pass is timed from the broker's own report
   (/v1/topics/{t}/compaction): MiB of dirty log cleaned per second.
2. Latency: a probe runs on a third topic, a producer paced at --rate records/s (linger.ms=1,
   acks=all) and a consumer measuring each record's produce -> consume latency. The second
   topic is switched to compact, and while its pass runs the cleaner process is alternately
   stopped (SIGSTOP: the "quiet" windows) and running (the "cleaning" windows), --windows times
   each, --window-s seconds each. Paired windows measure both figures under the same
   background load, which on a shared machine moves p99 more than the cleaner does.

Prints p50/p99/max of both and the p99 ratio (issue 17's target: cleaning <= 2 x quiet).
--io-limit sets log.cleaner.io_max_bytes_per_second; the pass must outlast the windows, so
size --dirty-mb (or the limit) accordingly: it is reported when it ends early.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

STAMP = struct.Struct(">d")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Probe:
    """Paced producer + consumer on one partition; samples are (send time, latency s)."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def produce(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 1, "acks": "all"})
        pad = os.urandom(200)
        t0 = time.monotonic()
        i = 0
        while not self.stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while i < due:
                p.produce(self.topic, STAMP.pack(time.monotonic()) + pad, partition=0)
                i += 1
            p.poll(0)
            time.sleep(0.0005)
        p.flush(10)

    def consume(self) -> None:
        c = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": "bench-compaction-probe",
            "enable.auto.commit": False, "fetch.wait.max.ms": 5, "fetch.min.bytes": 1,
        })
        c.assign([TopicPartition(self.topic, 0, 0)])
        while not self.stop.is_set():
            msg = c.poll(0.1)
            if msg is not None and msg.error() is None:
                now = time.monotonic()
                sent = STAMP.unpack_from(msg.value())[0]
                self.samples.append((sent, now - sent))
        c.close()


def cleaner_pid(broker: int) -> int:
    """The broker's cleaner process (``python -m streamd.log.compaction.worker``)."""
    for task in Path(f"/proc/{broker}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"streamd.log.compaction.worker" in cmdline:
                return int(child)
    raise RuntimeError("the broker has no cleaner process")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--dirty-mb", type=int, default=200)
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--value-bytes", type=int, default=500)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--windows", type=int, default=6)
    ap.add_argument("--window-s", type=float, default=2)
    ap.add_argument("--io-limit", type=int, default=20 << 20)  # the broker default; 0 = none
    ap.add_argument("--set", action="append", default=[], dest="extra")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="streamd-compaction-")
    kafka, admin_port = free_port(), free_port()
    settings = {
        "data_dir": f"{work}/data",
        "kafka.listen": f"127.0.0.1:{kafka}",
        "admin.listen": f"127.0.0.1:{admin_port}",
        "tiering.store": f"file://{work}/bucket",
        "fsync": "always",
        "log.cleaner.backoff_ms": "200",
        "log.cleaner.io_max_bytes_per_second": str(args.io_limit),
    }
    cmd = [sys.executable, "-m", "streamd", "serve"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    for item in args.extra:
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": args.repo}
    bootstrap = f"127.0.0.1:{kafka}"
    with open(f"{work}/broker.log", "w") as log:
        broker = subprocess.Popen(cmd, cwd=args.repo, stdout=log, stderr=log, env=env)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", kafka), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        client = AdminClient({"bootstrap.servers": bootstrap})
        dirty = {"cleanup.policy": "delete", "segment.bytes": str(8 << 20),
                 "min.cleanable.dirty.ratio": "0.01", "retention.ms": "-1"}
        topics = [NewTopic("bulk", 1, 1, config=dirty), NewTopic("dirty", 1, 1, config=dirty),
                  NewTopic("probe", 1, 1)]
        for future in client.create_topics(topics).values():
            future.result(30)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                             "batch.size": 1 << 20, "acks": 1})
        failed: list[str] = []

        def on_delivery(err, _msg) -> None:  # noqa: ANN001
            if err is not None:
                failed.append(str(err))

        value = os.urandom(args.value_bytes)
        records = (args.dirty_mb << 20) // (args.value_bytes + 30)
        started = time.monotonic()
        for topic in ("bulk", "dirty"):
            for i in range(records):
                key = b"key-%08d" % (i % args.keys)
                while True:
                    try:
                        producer.produce(topic, value, key=key, partition=0,
                                         on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.01)
        assert producer.flush(300) == 0 and not failed, failed[:3]
        print(f"wrote 2 x {records} records ({args.dirty_mb} MiB, {args.keys} keys) in "
              f"{time.monotonic() - started:.1f} s")
        url = f"http://127.0.0.1:{admin_port}/v1/topics/%s/compaction"

        def status(topic: str) -> dict:
            with urllib.request.urlopen(url % topic) as resp:
                return json.load(resp)["partitions"][0]  # type: ignore[no-any-return]

        def compact(topic: str) -> None:
            resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
                ConfigEntry("cleanup.policy", "compact",
                            incremental_operation=AlterConfigOpType.SET)])
            for future in client.incremental_alter_configs([resource]).values():
                future.result(30)

        def wait_pass(topic: str, running: bool, timeout: float = 600) -> dict:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                report = status(topic)
                if report["cleaning_now"] == running and (running or report["last_cleaning"]):
                    return report
                time.sleep(0.02)
            raise RuntimeError(f"{topic}: no pass {'started' if running else 'ended'}")

        compact("bulk")
        wait_pass("bulk", True)
        last = wait_pass("bulk", False)["last_cleaning"]
        seconds = last["duration_ms"] / 1000
        dirty_mib = last["map_bytes_read"] / (1 << 20)
        print(f"cleaner pass: {dirty_mib:.0f} MiB dirty log, {last['bytes_read'] / 2**20:.0f} "
              f"MiB rewritten -> {last['bytes_written'] / 2**20:.1f} MiB, "
              f"{last['records_read']} -> {last['records_written']} records in {seconds:.1f} s: "
              f"{dirty_mib / seconds:.1f} MiB/s of dirty log (io limit "
              f"{args.io_limit or 'none'})")

        probe = Probe(bootstrap, "probe", args.rate)
        threads = [threading.Thread(target=probe.produce), threading.Thread(target=probe.consume)]
        for t in threads:
            t.start()
        time.sleep(3)
        compact("dirty")
        wait_pass("dirty", True)
        worker = cleaner_pid(broker.pid)
        windows: dict[str, list[tuple[float, float]]] = {"quiet": [], "cleaning": []}
        ended_early = False
        for _ in range(args.windows):
            for name, sig in (("quiet", signal.SIGSTOP), ("cleaning", signal.SIGCONT)):
                os.kill(worker, sig)
                begin = time.monotonic()
                time.sleep(args.window_s)
                windows[name].append((begin, time.monotonic()))
            if not status("dirty")["cleaning_now"]:
                ended_early = True
                break
        os.kill(worker, signal.SIGCONT)
        time.sleep(1)
        probe.stop.set()
        for t in threads:
            t.join()
        figures = {}
        for name, spans in windows.items():
            xs = [lat * 1000 for sent, lat in probe.samples
                  if any(lo <= sent < hi for lo, hi in spans)]
            figures[name] = pct(xs, 0.99)
            print(f"probe {name:8s}: {len(xs):6d} records  p50 {pct(xs, 0.5):6.2f} ms  "
                  f"p99 {pct(xs, 0.99):6.2f} ms  max {max(xs, default=float('nan')):7.2f} ms")
        print(f"p99 cleaning / quiet = {figures['cleaning'] / figures['quiet']:.2f}"
              + ("  (the pass ended before the last window: raise --dirty-mb)"
                 if ended_early else ""))
    finally:
        broker.terminate()
        broker.wait(30)


if __name__ == "__main__":
    main()
