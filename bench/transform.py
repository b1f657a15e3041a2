#!/usr/bin/env python
"""Data transforms: an identity transform replaying an archived topic vs what a user would write
instead, in the same run (not a test).

    python bench/transform.py [--mb 200] [--record-size 1024] [--partitions 1] [--json FILE]

One streamd broker (fsync always, tiered storage on a moto S3 server, transforms enabled) gets
two input topics filled with the same number of records; both are archived and their local
copies deleted (``local.retention.ms``), so each replay starts cold from the bucket. Then, one
after the other:

- **transform**: ``streamd transform deploy identity.py --from earliest`` (``return record``),
  timed from the moment its worker is ready (started, fenced, positions read) to the last
  input record committed (polled every 20 ms);
- **loop**: a confluent-kafka consume -> produce loop in Python with a transactional producer
  (``send_offsets_to_transaction`` + ``commit_transaction`` every 100 ms, the transform's
  default commit interval and Kafka Streams' exactly-once default), consuming with
  ``consume(10000)`` and ``read_committed``, timed from its first consume to its last commit.

Both replay the same bytes through the same remote reader; records/s of each and the ratio are
printed (issue 19's target: transform >= 2x the loop).

With ``--probe-rate R`` (default 200), a live producer/consumer pair on a third topic measures
end-to-end latency (produce -> consume) alone, then during each replay, and reports the p99 of
each phase and its ratio to the idle one (the issue's bound: within 2x while a transform
replays history). The probe runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procstat  # noqa: E402
from brokers import MotoServer, StreamdBroker  # noqa: E402

MiB = 1 << 20
IDENTITY = "def transform(record):\n    return record\n"


def admin(broker: StreamdBroker, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(broker.admin_url + path, data=data, method=method)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def create_topics(bootstrap: str, topics: dict[str, tuple[int, dict[str, str]]]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    client = AdminClient({"bootstrap.servers": bootstrap})
    futures = client.create_topics(
        [NewTopic(t, n, 1, config=c) for t, (n, c) in topics.items()], request_timeout=30
    )
    for f in futures.values():
        f.result(60)


def fill(bootstrap: str, topics: list[str], records: int, size: int, partitions: int) -> float:
    """The same ``records`` random records into each topic; returns MB/s."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 1 << 20, "compression.type": "none", "log_level": 3})
    payload = os.urandom(size)
    t0 = time.monotonic()
    for topic in topics:
        for i in range(records):
            while True:
                try:
                    p.produce(topic, payload, partition=i % partitions)
                    break
                except BufferError:
                    p.poll(0.01)
            if i & 1023 == 0:
                p.poll(0)
    assert p.flush(600) == 0
    return len(topics) * records * size / MiB / (time.monotonic() - t0)


def wait_archived(broker: StreamdBroker, topics: list[str], want: float, timeout: float) -> float:
    """Until every partition's local start offset is at ``want`` of its high watermark."""
    deadline = time.monotonic() + timeout
    fraction = 0.0
    while time.monotonic() < deadline:
        fractions = []
        for t in topics:
            for part in admin(broker, "GET", f"/v1/topics/{t}/storage")["partitions"]:
                hw = max(1, int(part["high_watermark"]))
                fractions.append(int(part["local_start_offset"]) / hw)
        fraction = min(fractions)
        if fraction >= want:
            return fraction
        time.sleep(0.5)
    raise SystemExit(f"the inputs did not leave local disk in {timeout:.0f}s ({fraction:.0%})")


def cpu(broker: StreamdBroker, moto: MotoServer) -> dict[str, float]:
    """CPU seconds so far: the broker process, its transform workers, moto, this process
    (the loop and its librdkafka threads)."""
    import resource

    broker_own = procstat._stat_ticks(broker.pid) / procstat.CLK_TCK
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "broker": broker_own,
        "workers": procstat.cpu_seconds(broker.pid) - broker_own,
        "moto": procstat.cpu_seconds(moto.pid),
        "client": usage.ru_utime + usage.ru_stime,
    }


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 2) for k in before}


def run_transform(broker: StreamdBroker, src: str, dst: str, total: int) -> dict[str, Any]:
    t_deploy = time.monotonic()
    admin(broker, "POST", "/v1/transforms", {
        "name": "identity", "input_topic": src, "output_topics": [dst], "start": "earliest",
        "code": IDENTITY, "file_name": "identity.py",
    })
    while True:
        doc = admin(broker, "GET", "/v1/transforms/identity")
        committed = sum(p["committed_offset"] or 0 for p in doc["partitions"])
        if committed >= total:
            break
        if doc["status"] == "failed":
            raise SystemExit(f"the transform failed: {doc['last_error']}")
        time.sleep(0.02)
    end_ms = time.time() * 1000
    # From the moment the worker was ready to read (process started, producer fenced, positions
    # read: what the loop has done before its clock starts) to the last commit seen.
    seconds = (end_ms - doc["worker"]["running_at_ms"]) / 1000
    return {
        "records": total,
        "seconds": seconds,
        "records_per_s": total / seconds,
        "with_start_s": time.monotonic() - t_deploy,
        "worker_seconds": doc["worker"]["seconds"],
    }


def run_loop(bootstrap: str, src: str, dst: str, total: int, partitions: int) -> dict[str, Any]:
    """What a user writes instead: consume -> produce, transactional, in Python."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "bench-loop", "enable.auto.commit": False,
        "isolation.level": "read_committed", "auto.offset.reset": "earliest",
        "fetch.max.bytes": 16 * MiB, "max.partition.fetch.bytes": 8 * MiB, "log_level": 3,
    })
    producer = Producer({
        "bootstrap.servers": bootstrap, "transactional.id": "bench-loop", "linger.ms": 5,
        "batch.size": 1 << 20, "compression.type": "none", "log_level": 3,
    })
    producer.init_transactions(30)
    consumer.assign([TopicPartition(src, p, 0) for p in range(partitions)])
    produce, poll = producer.produce, producer.poll
    seen = 0
    t0 = time.monotonic()
    producer.begin_transaction()
    txn_start = t0
    while seen < total:
        msgs = consumer.consume(num_messages=10000, timeout=1.0)
        for m in msgs:
            if m.error() is not None:
                continue
            while True:
                try:
                    produce(dst, m.value(), m.key(), partition=m.partition(),
                            timestamp=m.timestamp()[1], headers=m.headers())
                    break
                except BufferError:
                    poll(0.005)
        seen += len(msgs)
        poll(0)
        if time.monotonic() - txn_start >= 0.1 or seen >= total:
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata()
            )
            producer.commit_transaction()
            producer.begin_transaction()
            txn_start = time.monotonic()
    producer.abort_transaction()
    elapsed = time.monotonic() - t0
    consumer.close()
    return {"records": seen, "seconds": elapsed, "records_per_s": seen / elapsed}


# ---- live latency probe (its own process) ---------------------------------------------------


def probe_main(bootstrap: str, topic: str, rate: int, stop_file: str, out_file: str) -> None:
    """Produce ``rate`` records/s stamped with their send time and consume them; every
    ``phase`` marker written to ``stop_file`` ("PHASE-NAME") labels the samples after it."""
    import threading

    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                         "log_level": 3})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5, "log_level": 3})
    consumer.assign([TopicPartition(topic, 0, -1)])
    samples: list[tuple[str, float]] = []
    phase = ["idle"]
    done = threading.Event()

    def read_phase() -> None:
        while not done.is_set():
            try:
                text = Path(stop_file).read_text().strip()
            except FileNotFoundError:
                text = ""
            if text == "STOP":
                done.set()
            elif text:
                phase[0] = text
            time.sleep(0.05)

    def consume() -> None:
        while not done.is_set():
            for m in consumer.consume(num_messages=100, timeout=0.1):
                if m.error() is None and m.value():
                    sent_phase, sent = m.value().decode().split(" ")
                    samples.append((sent_phase, time.time() - float(sent)))

    threads = [threading.Thread(target=read_phase), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    interval = 1.0 / rate
    nxt = time.monotonic()
    while not done.is_set():
        producer.produce(topic, f"{phase[0]} {time.time()}".encode(), partition=0)
        producer.poll(0)
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    producer.flush(10)
    for t in threads:
        t.join()
    consumer.close()
    by_phase: dict[str, list[float]] = {}
    for name, latency in samples:
        by_phase.setdefault(name, []).append(latency * 1000)
    Path(out_file).write_text(json.dumps(by_phase))


def p99(xs: list[float]) -> float | None:
    if len(xs) < 20:
        return None
    return statistics.quantiles(xs, n=100)[98]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200.0, help="MiB per replayed input topic")
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--probe-rate", type=int, default=200, help="0: no latency probe")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--streamd-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--probe", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        b, topic, rate, stop, out = args.probe
        probe_main(b, topic, int(rate), stop, out)
        return

    root = Path(tempfile.mkdtemp(prefix="streamd-bench-transform-"))
    moto = MotoServer(root / "moto")
    moto.start()
    moto.create_bucket("bench")
    settings = {
        "tiering.store": "s3://bench/streamd",
        "tiering.s3.endpoint_url": moto.endpoint,
        "tiering.s3.access_key_id": MotoServer.ACCESS_KEY,
        "tiering.s3.secret_access_key": MotoServer.SECRET_KEY,
        "tiering.s3.region": MotoServer.REGION,
        "tiering.upload_interval_ms": "200",
        "log.housekeeping_interval_ms": "500",
        "transforms.enabled": "true",
    }
    for item in args.streamd_set:
        k, _, v = item.partition("=")
        settings[k] = v
    broker = StreamdBroker(workdir=root / "streamd", extra_settings=settings)
    results: dict[str, Any] = {"mb": args.mb, "record_size": args.record_size,
                               "partitions": args.partitions}
    probe: subprocess.Popen[bytes] | None = None
    phase_file, probe_out = root / "probe.phase", root / "probe.json"
    try:
        broker.start()
        records = int(args.mb * MiB) // args.record_size
        seg = str(int(min(16 * MiB, max(MiB, args.mb * MiB / 10))))
        tiered = {"remote.storage.enable": "true", "segment.bytes": seg,
                  "local.retention.ms": "1000"}
        n = args.partitions
        create_topics(broker.bootstrap, {
            "in-transform": (n, tiered), "in-loop": (n, tiered),
            "out-transform": (n, {}), "out-loop": (n, {}), "probe": (1, {}),
        })
        print(f"filling 2 x {records} records of {args.record_size} B ...", file=sys.stderr)
        results["fill_mb_s"] = fill(broker.bootstrap, ["in-transform", "in-loop"], records,
                                    args.record_size, n)
        t0 = time.monotonic()
        results["remote_fraction"] = wait_archived(
            broker, ["in-transform", "in-loop"], 0.9, 600
        )
        results["evict_wait_s"] = time.monotonic() - t0

        if args.probe_rate:
            probe = subprocess.Popen([sys.executable, __file__, "--probe", broker.bootstrap,
                                      "probe", str(args.probe_rate), str(phase_file),
                                      str(probe_out)])
            time.sleep(args.idle_seconds)
        phase_file.write_text("transform")
        print("transform replay ...", file=sys.stderr)
        c0 = cpu(broker, moto)
        results["transform"] = run_transform(broker, "in-transform", "out-transform", records)
        results["transform"]["cpu_s"] = cpu_delta(c0, cpu(broker, moto))
        phase_file.write_text("idle2")
        time.sleep(1.0)
        phase_file.write_text("loop")
        print("confluent-kafka transactional loop replay ...", file=sys.stderr)
        c0 = cpu(broker, moto)
        results["loop"] = run_loop(broker.bootstrap, "in-loop", "out-loop", records, n)
        results["loop"]["cpu_s"] = cpu_delta(c0, cpu(broker, moto))
        phase_file.write_text("STOP")
        if probe is not None:
            probe.wait(60)
            phases = json.loads(probe_out.read_text())
            idle = p99(phases.get("idle", []) + phases.get("idle2", []))
            results["latency_ms"] = {
                name: {"p99": p99(xs), "samples": len(xs),
                       "p99_vs_idle": (p99(xs) / idle) if idle and p99(xs) else None}
                for name, xs in [("idle", phases.get("idle", []) + phases.get("idle2", [])),
                                 ("transform", phases.get("transform", [])),
                                 ("loop", phases.get("loop", []))]
            }
        results["ratio"] = (results["transform"]["records_per_s"]
                            / results["loop"]["records_per_s"])
    finally:
        if probe is not None and probe.poll() is None:
            phase_file.write_text("STOP")
            try:
                probe.wait(20)
            except subprocess.TimeoutExpired:
                probe.kill()
        broker.stop()
        moto.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)

    t, lp = results["transform"], results["loop"]
    print(f"replay of {args.mb:g} MiB ({records} records of {args.record_size} B, "
          f"{args.partitions} partition(s)) from the bucket, "
          f"{results['remote_fraction']:.0%} remote")
    print(f"  transform (identity, exactly once): "
          f"{t['records_per_s']:,.0f} records/s  ({t['seconds']:.1f} s; "
          f"{t['with_start_s']:.1f} s from deploy)")
    print(f"  confluent-kafka transactional loop:  {lp['records_per_s']:,.0f} records/s  "
          f"({lp['seconds']:.1f} s)")
    print(f"  ratio transform / loop: {results['ratio']:.2f}x")
    print(f"  worker time: {t.get('worker_seconds')}")
    for name in ("transform", "loop"):
        c = results[name]["cpu_s"]
        print(f"  CPU s during {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in c.items()))
    for name, lat in (results.get("latency_ms") or {}).items():
        ratio = f"  ({lat['p99_vs_idle']:.2f}x idle)" if lat["p99_vs_idle"] else ""
        p = f"{lat['p99']:.1f} ms" if lat["p99"] is not None else "-"
        print(f"  live produce->consume p99 during {name}: {p}{ratio} "
              f"[{lat['samples']} samples]")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
