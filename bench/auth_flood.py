"""Produce latency while anonymous clients flood the SASL listener with PLAIN login attempts.

Issue 13 item 9: a PLAIN login derives a salted password (PBKDF2, 4096 rounds), and those jobs
once shared the default thread pool with group commit's fsync jobs, so a flood of bad logins
moved acks=all produce latency from milliseconds to hundreds. The broker now verifies passwords
on its own pool (``sasl.auth_threads``). Target: produce p99 under a 64-thread flood within 2x
of the quiet figure.

One streamd broker (fsync=always) with two listeners: PLAINTEXT for the measured producer, and
SASL_PLAINTEXT for the flood. The measured producer (this process, confluent-kafka, acks=all,
linger.ms=0) sends 1 KiB records paced at ``--rate`` per second and times each from
``produce()`` to its delivery report. Phase 1 (quiet) measures for ``--seconds``; phase 2 starts
``--threads`` flood threads in a separate process, each connecting, sending SaslHandshake(PLAIN)
and a SaslAuthenticate with a wrong password for an existing user, reading the answer, and
starting over; it measures again once the flood runs.

    python bench/auth_flood.py                        # this checkout, 64 threads, 10 s per phase
    python bench/auth_flood.py --repo /path/to/base   # another checkout (e.g. a baseline)
    python bench/auth_flood.py --json out.json --set sasl.auth_threads=2
    python bench/auth_flood.py --flood-nice 10        # the flood's own CPU second on 2 cores

Output: p50/p99/p99.9/max of produce latency per phase, the p99 ratio, the login attempts the
flood completed per second, and the broker's CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokers import REPO, StreamdBroker, free_port  # noqa: E402
from procstat import cpu_seconds  # noqa: E402

USER, PASSWORD = "victim", "right-password"


def _frame(request: object, correlation_id: int) -> bytes:
    from kio.serial import entity_writer

    cls = type(request)
    header = cls.__header_schema__(  # type: ignore[attr-defined]
        request_api_key=cls.__api_key__,  # type: ignore[attr-defined]
        request_api_version=cls.__version__,  # type: ignore[attr-defined]
        correlation_id=correlation_id,
        client_id="auth-flood",
    )
    buf = io.BytesIO()
    entity_writer(type(header))(buf, header)
    entity_writer(cls)(buf, request)
    payload = buf.getvalue()
    return struct.pack(">i", len(payload)) + payload


def _login_attempt() -> bytes:
    from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
    from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

    return _frame(SaslHandshakeRequest(mechanism="PLAIN"), 1) + _frame(
        SaslAuthenticateRequest(auth_bytes=f"\0{USER}\0wrong".encode()), 2
    )


def _flood(
    port: int, threads: int, stop: mp.Event, attempts: mp.Value, nice: int  # type: ignore[valid-type]
) -> None:
    if nice:
        os.nice(nice)
    payload = _login_attempt()
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():  # type: ignore[attr-defined]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(payload)
                    while s.recv(65536):  # answers, then the broker closes
                        pass
            except OSError:
                time.sleep(0.01)
                continue
            with lock:
                attempts.value += 1  # type: ignore[attr-defined]

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    stop.wait()  # type: ignore[attr-defined]
    for t in pool:
        t.join(15)


def _measure(producer: object, topic: str, rate: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    value = b"x" * 1024
    interval = 1.0 / rate
    started = time.monotonic()
    n = 0
    while True:
        due = started + n * interval
        now = time.monotonic()
        if now - started >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        sent = time.monotonic()

        def report(err: object, msg: object, sent: float = sent) -> None:
            if err is None:
                latencies.append((time.monotonic() - sent) * 1000)

        producer.produce(topic, value, on_delivery=report)  # type: ignore[attr-defined]
        producer.poll(0)  # type: ignore[attr-defined]
        n += 1
    producer.flush(30)  # type: ignore[attr-defined]
    return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")

    return {
        "records": len(ordered),
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
        "p999_ms": round(pct(0.999), 2),
        "max_ms": round(ordered[-1], 2) if ordered else float("nan"),
        "mean_ms": round(statistics.fmean(ordered), 2) if ordered else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout to run streamd from")
    ap.add_argument("--threads", type=int, default=64, help="flood threads")
    ap.add_argument("--rate", type=int, default=500, help="measured records per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    ap.add_argument("--ramp", type=float, default=2.0, help="flood seconds before measuring")
    ap.add_argument("--flood-nice", type=int, default=0,
                    help="run the flood generator at this niceness (on a small machine it "
                    "otherwise takes CPU a remote attacker's machine would not)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra streamd setting (repeatable)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    workdir = Path(tempfile.mkdtemp(prefix="auth-flood-"))
    plain_port, sasl_port = free_port(), free_port()
    broker = StreamdBroker(workdir, port=plain_port, repo=args.repo)
    broker.extra_settings.update({
        "kafka.listeners": f"PLAIN://127.0.0.1:{plain_port},SASL://127.0.0.1:{sasl_port}",
        "kafka.listener_security_protocols": "PLAIN:PLAINTEXT,SASL:SASL_PLAINTEXT",
        "sasl.mechanisms": "PLAIN",
        "security.bootstrap_users": f"{USER}:{PASSWORD}:SCRAM-SHA-256",
        "tiering.store": f"file://{workdir / 'bucket'}",
    })
    for item in args.set:
        key, _, value = item.partition("=")
        broker.extra_settings[key] = value
    broker.start()
    results: dict[str, object] = {"repo": str(args.repo), "threads": args.threads,
                                  "rate": args.rate, "seconds": args.seconds,
                                  "flood_nice": args.flood_nice,
                                  "settings": broker.extra_settings}
    try:
        topic = "auth-flood"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            f.result(30)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                             "linger.ms": 0, "enable.idempotence": False})
        _measure(producer, topic, args.rate, 1.0)  # warm-up
        cpu0 = cpu_seconds(broker.pid)
        quiet = _summary(_measure(producer, topic, args.rate, args.seconds))
        cpu1 = cpu_seconds(broker.pid)
        stop, attempts = mp.Event(), mp.Value("q", 0)
        flood = mp.Process(
            target=_flood, args=(sasl_port, args.threads, stop, attempts, args.flood_nice)
        )
        flood.start()
        time.sleep(args.ramp)
        before, cpu2, t0 = attempts.value, cpu_seconds(broker.pid), time.monotonic()
        flooded = _summary(_measure(producer, topic, args.rate, args.seconds))
        rate = (attempts.value - before) / (time.monotonic() - t0)
        cpu3 = cpu_seconds(broker.pid)
        stop.set()
        flood.join(30)
        results.update(
            quiet=quiet | {"broker_cpu": round((cpu1 - cpu0) / args.seconds, 2)},
            flood=flooded | {"broker_cpu": round((cpu3 - cpu2) / args.seconds, 2),
                             "login_attempts_per_s": round(rate, 1)},
            p99_ratio=round(flooded["p99_ms"] / quiet["p99_ms"], 2),
            p50_ratio=round(flooded["p50_ms"] / quiet["p50_ms"], 2),
        )
    finally:
        broker.stop()
    print(f"streamd from {args.repo}; {args.rate} records/s of 1 KiB, acks=all, fsync=always; "
          f"{args.threads} flood threads at nice {args.flood_nice}")
    print(f"{'phase':8} {'records':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'max ms':>8} {'broker CPU':>10} {'logins/s':>9}")
    for name in ("quiet", "flood"):
        r = results[name]
        assert isinstance(r, dict)
        print(f"{name:8} {r['records']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['p999_ms']:>9} "
              f"{r['max_ms']:>8} {r['broker_cpu']:>10} {r.get('login_attempts_per_s', '-'):>9}")
    print(f"p99 flood/quiet: {results['p99_ratio']}x (target <= 2x); "
          f"p50: {results['p50_ratio']}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
