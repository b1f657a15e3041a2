#!/usr/bin/env python
"""Read replicas: replay from a replica against replay from its origin, and two replicas at once.

One moto bucket; an origin broker archives a topic into ``s3://bucket/origin`` (small segments,
local retention of a second, so nearly every offset is replayed from the bucket); two replica
brokers (``s3://bucket/replica-1``, ``-2``) serve it with ``remote.readreplica``. Each broker
reaches moto through its own ``bench/latency_proxy.py`` (``--ttfb-ms``, 30 by default: a real
bucket's time to first byte; 0 for raw loopback). Every round measures, with cold caches (each
broker is restarted first; its chunk cache starts empty):

1. ``origin``: one librdkafka consumer (``bench/client.py consume``) replays the topic from the
   origin;
2. ``replica``: the same from replica 1 alone (the order of 1 and 2 alternates per round);
3. ``two replicas``: one consumer on each replica at the same time (start barrier); the figure
   is the bytes of both over the wall time from the first start to the last end.

Targets (issue 20): replica / origin within 10 % (0.9-1.1), two replicas / one >= 1.6.

    python bench/readreplica.py                         # 200 MB, 4 partitions, 30 ms, 3 rounds
    python bench/readreplica.py --mb 100 --rounds 5 --json /tmp/rr.json
    python bench/readreplica.py --ttfb-ms 0 --rounds 1  # loopback moto, no added latency
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import procstat  # noqa: E402
from brokers import LatencyProxyProcess, MotoServer, StreamdBroker  # noqa: E402

MiB = 1 << 20
TOPIC = "bench-replica"


def storage(broker: StreamdBroker) -> dict[str, Any]:
    url = f"{broker.admin_url}/v1/topics/{TOPIC}/storage"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def job(spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(BENCH / "client.py"), json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def results(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        result = None
        assert proc.stdout is not None
        for line in proc.stdout:
            doc = json.loads(line)
            if "error" in doc:
                raise SystemExit(f"client job failed: {doc['error']}")
            result = doc.get("result", result)
        proc.wait(timeout)
        if result is None:
            raise SystemExit("client job ended without a result")
        out.append(result)
    return out


def run_jobs(specs: list[dict[str, Any]], timeout: float = 600) -> list[dict[str, Any]]:
    """Start every job, wait until all are ready (barrier), release them together."""
    procs = [job({**s, "barrier": True}) for s in specs]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise SystemExit(f"client job did not get ready: {line!r}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return results(procs, timeout)


def consume_spec(broker: StreamdBroker, records: int, partitions: int, tag: str) -> dict[str, Any]:
    return {
        "kind": "consume", "bootstrap": broker.bootstrap, "topic": TOPIC,
        "partitions": list(range(partitions)), "start_offset": 0, "records": records,
        "group": f"bench-{tag}",
    }


class CpuMeter:
    """CPU seconds of the brokers, moto and the latency proxies during one phase: on a small
    machine the two-replica figure is bounded by the cores, not by the replicas."""

    def __init__(self, parts: dict[str, list[int]]) -> None:
        self.parts = parts
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        return {k: sum(procstat.cpu_seconds(pid) for pid in pids) for k, pids in self.parts.items()}

    def per_gb(self, res: list[dict[str, Any]]) -> dict[str, float]:
        end = self._now()
        gb = sum(r["bytes"] for r in res) / (1 << 30)
        out = {k: (end[k] - self.start[k]) / gb for k in end}
        out["clients"] = sum(r["client_cpu_s"] for r in res) / gb
        out["total"] = sum(out.values())
        return out


def mb_s(res: list[dict[str, Any]]) -> float:
    nbytes = sum(r["bytes"] for r in res)
    wall = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
    return nbytes / MiB / max(wall, 1e-9)


def wait(what: str, check: Any, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200, help="MiB written and replayed")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--segment-mb", type=float, default=1)
    parser.add_argument("--record-size", type=int, default=1024)
    parser.add_argument("--ttfb-ms", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-readreplica-"))
    moto = MotoServer(work / "moto")
    proxies: list[LatencyProxyProcess] = []
    brokers: list[StreamdBroker] = []
    records = int(args.mb * MiB) // args.record_size
    try:
        moto.start()
        bucket = "bench-readreplica"
        moto.create_bucket(bucket)

        def make(name: str, prefix: str, **extra: str) -> StreamdBroker:
            proxy = LatencyProxyProcess(moto.endpoint, args.ttfb_ms, work / f"proxy-{name}")
            proxy.start()
            proxies.append(proxy)
            broker = StreamdBroker(workdir=work / name, name=name, extra_settings={
                "tiering.store": f"s3://{bucket}/{prefix}",
                "tiering.s3.endpoint_url": proxy.endpoint,
                "tiering.s3.access_key_id": MotoServer.ACCESS_KEY,
                "tiering.s3.secret_access_key": MotoServer.SECRET_KEY,
                "tiering.s3.region": MotoServer.REGION,
                "tiering.readreplica_sync_interval_ms": "1000",
                **extra,
            })
            broker.start()
            brokers.append(broker)
            return broker

        origin = make("origin", "origin", **{"tiering.upload_interval_ms": "500",
                                              "tiering.segment_max_upload_interval_ms": "1000",
                                              "log.housekeeping_interval_ms": "500"})
        from confluent_kafka.admin import AdminClient, NewTopic

        def create(broker: StreamdBroker, config: dict[str, str], partitions: int) -> None:
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            fut = admin.create_topics([NewTopic(TOPIC, partitions, 1, config=config)])[TOPIC]
            fut.result(60)

        create(origin, {"remote.storage.enable": "true",
                        "segment.bytes": str(int(args.segment_mb * MiB)),
                        "local.retention.ms": "1000"}, args.partitions)
        t0 = time.monotonic()
        run_jobs([{"kind": "produce", "bootstrap": origin.bootstrap, "topic": TOPIC,
                   "partitions": list(range(args.partitions)), "records": records,
                   "record_size": args.record_size}])
        print(f"filled {args.mb:.0f} MiB into {args.partitions} partitions in "
              f"{time.monotonic() - t0:.1f}s; waiting for upload and local eviction")

        def evicted() -> dict[str, Any] | None:
            parts = storage(origin)["partitions"]
            local = sum(p["local_start_offset"] for p in parts)
            hwm = sum(p["high_watermark"] for p in parts)
            return {"remote_fraction": local / hwm} if local >= 0.95 * hwm else None

        fraction = wait("the origin to archive and evict", evicted)["remote_fraction"]
        replicas = [make(f"replica-{i}", f"replica-{i}") for i in (1, 2)]
        for r in replicas:
            create(r, {"remote.readreplica": f"s3://{bucket}/origin"}, -1)
        archived = sum(p["last_uploaded_offset"] + 1 for p in storage(replicas[0])["partitions"])
        print(f"{fraction:.0%} of the offsets replay from the bucket; replicas serve "
              f"{archived} archived records; TTFB {args.ttfb_ms:.0f} ms")

        rows = []
        n = archived
        for rnd in range(args.rounds):
            for b in brokers:  # cold chunk caches
                b.stop()
                b.start()

            def meter(served_by: list[StreamdBroker]) -> CpuMeter:
                return CpuMeter({
                    "brokers": [b.pid for b in served_by],
                    "moto": [moto.pid],
                    "proxies": [proxies[brokers.index(b)].pid for b in served_by],
                })

            def replay(broker: StreamdBroker, tag: str) -> tuple[list[Any], dict[str, float]]:
                cpu = meter([broker])
                res = run_jobs([consume_spec(broker, n, args.partitions, tag)])
                return res, cpu.per_gb(res)

            # The order alternates from round to round, so neither side always goes first.
            if rnd % 2 == 0:
                one_origin, cpu_origin = replay(origin, f"o{rnd}")
                one_replica, cpu_replica = replay(replicas[0], f"r{rnd}")
            else:
                one_replica, cpu_replica = replay(replicas[0], f"r{rnd}")
                one_origin, cpu_origin = replay(origin, f"o{rnd}")
            for b in replicas:
                b.stop()
                b.start()
            cpu = meter(replicas)
            both = run_jobs([consume_spec(r, n, args.partitions, f"b{rnd}-{i}")
                             for i, r in enumerate(replicas)])
            cpu_both = cpu.per_gb(both)
            for res in (one_origin, one_replica, both):
                for r in res:
                    if r["records"] < n or r["errors"]:
                        raise SystemExit(f"a replay read {r['records']}/{n} records, "
                                         f"{r['errors']} errors: {r['first_error']}")
            row = {"round": rnd + 1, "origin_mb_s": mb_s(one_origin),
                   "replica_mb_s": mb_s(one_replica), "two_replicas_mb_s": mb_s(both)}
            row["replica_vs_origin"] = row["replica_mb_s"] / row["origin_mb_s"]
            row["two_vs_one"] = row["two_replicas_mb_s"] / row["replica_mb_s"]
            row["cpu_s_per_gb"] = {"origin": cpu_origin, "replica": cpu_replica,
                                   "two_replicas": cpu_both}
            rows.append(row)
            print(f"round {rnd + 1}: origin {row['origin_mb_s']:.1f} MB/s, replica "
                  f"{row['replica_mb_s']:.1f} MB/s ({row['replica_vs_origin']:.2f}x), two "
                  f"replicas {row['two_replicas_mb_s']:.1f} MB/s ({row['two_vs_one']:.2f}x)")
            for label, c in row["cpu_s_per_gb"].items():
                print(f"  CPU s/GB {label:>12}: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in c.items()))
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]
               if k not in ("round", "cpu_s_per_gb")}
        print(
            f"median of {len(rows)}: origin {med['origin_mb_s']:.1f} MB/s, replica "
            f"{med['replica_mb_s']:.1f} MB/s, replica/origin {med['replica_vs_origin']:.2f} "
            f"(target 0.90-1.10), two replicas {med['two_replicas_mb_s']:.1f} MB/s, two/one "
            f"{med['two_vs_one']:.2f} (target >= 1.6)"
        )
        cores = os.cpu_count() or 1
        total = statistics.median(r["cpu_s_per_gb"]["replica"]["total"] for r in rows)
        print(f"one replica's replay costs {total:.1f} CPU s per GB over broker, moto, proxy "
              f"and client: {cores} cores saturate at about {cores / total * 1024:.0f} MB/s "
              "whatever the number of replicas")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "rounds": rows, "median": med}, indent=1))
    finally:
        for b in brokers:
            b.stop()
        for p in proxies:
            p.stop()
        moto.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
