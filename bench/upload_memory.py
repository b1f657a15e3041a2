"""Peak RSS of a streamd broker while it archives large segments (local-directory store).

Usage: python bench/upload_memory.py [REPO] [--mb 600] [--segment-mb 256]

Starts a broker from REPO (default: this checkout), produces --mb MiB of 1 KiB records into one
tiered partition with --segment-mb segments, and prints the broker's peak RSS while producing
(uploads of full segments already start then) and while the rest is uploaded. Compare two
checkouts with `git worktree add /tmp/old <rev>` and a run on each.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--mb", type=int, default=600)
    ap.add_argument("--segment-mb", type=int, default=256)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="streamd-upload-")
    kafka, admin = free_port(), free_port()
    settings = {
        "data_dir": f"{work}/data",
        "kafka.listen": f"127.0.0.1:{kafka}",
        "admin.listen": f"127.0.0.1:{admin}",
        "tiering.store": f"file://{work}/bucket",
        "tiering.upload_interval_ms": "500",
        "log.housekeeping_interval_ms": "500",
    }
    cmd = [sys.executable, "-m", "streamd", "serve"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONPATH": args.repo}
    with open(f"{work}/broker.log", "w") as log:
        broker = subprocess.Popen(cmd, cwd=args.repo, stdout=log, stderr=log, env=env)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", kafka), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        config = {
            "segment.bytes": str(args.segment_mb << 20),
            "remote.storage.enable": "true",
            "local.retention.ms": "1000",
        }
        client = AdminClient({"bootstrap.servers": f"127.0.0.1:{kafka}"})
        client.create_topics([NewTopic("t", 1, 1, config=config)])["t"].result(30)
        producer = Producer(
            {"bootstrap.servers": f"127.0.0.1:{kafka}", "linger.ms": 5, "batch.size": 1 << 20}
        )
        value = os.urandom(1024)
        for _ in range(args.mb * 1024):
            while True:
                try:
                    producer.produce("t", value, partition=0)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.flush(120)
        during_produce = peak_rss_mb(broker.pid)
        Path(f"/proc/{broker.pid}/clear_refs").write_text("5")
        want = args.mb // args.segment_mb
        url = f"http://127.0.0.1:{admin}/v1/topics/t/storage"
        deadline = time.monotonic() + 120
        report: dict = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url) as resp:
                report = json.load(resp)["partitions"][0]
            if report["remote_segments"] >= want:
                break
            time.sleep(0.5)
        print(
            f"{args.repo}: peak RSS {during_produce} MB while producing {args.mb} MiB, "
            f"{peak_rss_mb(broker.pid)} MB while the rest was archived "
            f"({report.get('remote_segments')} segments of {args.segment_mb} MiB in the bucket)"
        )
    finally:
        broker.terminate()
        broker.wait(30)


if __name__ == "__main__":
    main()
