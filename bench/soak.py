"""Soak: many faults against a broker under load, judged by the suite's one checker.

This is the long version of ``tests/reliability`` (minutes, many kills). For each fault a
fresh broker (fsync=always) and topic; idempotent producers write flat out with acks=all the
whole time; the fault is injected again and again; then every acknowledged record is read back
and compared (``tests/support/checker.py``: acknowledged, lost, duplicated, moved).

Faults:

- ``sigterm``: SIGTERM (the exit code must be 0), restart;
- ``kill9``: kill -9, restart;
- ``upload-kill``: a tiered topic on a moto bucket; kill -9 when the proxy in front of the
  bucket sees the next step of the upload pipeline (segment, index, manifest; before the
  request reaches the bucket and after the bucket answered it), restart;
- ``bucket``: a tiered topic on a bucket that is slow, throttles, drops connections, truncates
  and corrupts answers, while consumers read archived data back through it.

Run from the repository root::

    .venv/bin/python bench/soak.py --faults sigterm --rounds 20
    .venv/bin/python bench/soak.py --faults sigterm,kill9,upload-kill,bucket --rounds 30
    .venv/bin/python bench/soak.py --faults kill9 --minutes 5 --json soak.json

The exit code is 0 when no fault lost, duplicated or moved an acknowledged record (and every
SIGTERM exited 0), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.broker import BrokerProcess  # noqa: E402
from tests.support.checker import (  # noqa: E402
    RDKAFKA_LOG,
    LoadProducer,
    Report,
    check_topic,
)
from tests.support.moto import check_bucket_consistent, start_moto, wait_until  # noqa: E402
from tests.support.ops import create_topic  # noqa: E402
from tests.support.proxy import BucketFaults  # noqa: E402

UPLOAD_STEPS = [
    (r"\.log(\?|$)", False),
    (r"\.log(\?|$)", True),
    (r"\.index(\?|$)", False),
    (r"\.index(\?|$)", True),
    (r"/manifest\.json(\?|$)", False),
    (r"/manifest\.json(\?|$)", True),
]
READ_WINDOW = 20_000
"""Records read back through the faulty bucket per round, from a random archived offset."""
TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "524288",
    "local.retention.bytes": "524288",
}


@dataclass
class Outcome:
    fault: str
    rounds: int = 0
    seconds: float = 0.0
    bad_exits: list[int] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    report: Report = field(default_factory=Report)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.bad_exits and not self.fatal

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 1),
            **self.report.as_dict(),
            "stored": self.report.stored,
            "bad_exit_codes": self.bad_exits,
            "fatal_producer_errors": self.fatal,
            "notes": self.notes,
            "ok": self.ok,
        }


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.moto: Any = None
        self.moto_proc: Any = None

    def deadline_reached(self, rounds: int, started: float) -> bool:
        if self.args.minutes:
            return time.monotonic() - started >= self.args.minutes * 60
        return rounds >= self.args.rounds

    def broker(self, name: str, settings: dict[str, str]) -> BrokerProcess:
        data = self.workdir / name / "data"
        return BrokerProcess(
            data,
            {"fsync": "always", "log.housekeeping_interval_ms": "200", **settings},
            log_path=self.workdir / f"{name}.log",
        )

    def producers(self, bootstrap: str, topic: str, partitions: int) -> list[LoadProducer]:
        loads = [
            LoadProducer(bootstrap, topic, partitions, tag=f"p{i}")
            for i in range(self.args.producers)
        ]
        for load in loads:
            load.start()
        return loads

    def finish(
        self, outcome: Outcome, broker: BrokerProcess, topic: str, partitions: int,
        loads: list[LoadProducer],
    ) -> None:
        for load in loads:
            load.stop(timeout=180)
            if load.fatal:
                outcome.fatal.append(f"{load.tag}: {load.fatal}")
        acked = [a for load in loads for a in load.acked]
        outcome.report = check_topic(broker.bootstrap, topic, partitions, acked)

    def pause(self) -> None:
        time.sleep(self.rng.uniform(*self.args.between))

    # ---- faults --------------------------------------------------------------------------

    def restarts(self, fault: str) -> Outcome:
        outcome = Outcome(fault)
        broker = self.broker(fault, {})
        partitions = self.args.partitions
        topic = f"soak-{fault}"
        started = time.monotonic()
        try:
            broker.start()
            create_topic(broker.bootstrap, topic, partitions)
            loads = self.producers(broker.bootstrap, topic, partitions)
            while not self.deadline_reached(outcome.rounds, started):
                self.pause()
                if fault == "sigterm":
                    code = broker.stop()
                    if code != 0:
                        outcome.bad_exits.append(code or -1)
                else:
                    broker.kill9()
                broker.start()
                outcome.rounds += 1
                progress(outcome)
            self.pause()
            self.finish(outcome, broker, topic, partitions, loads)
        finally:
            broker.close()
        outcome.seconds = time.monotonic() - started
        return outcome

    def tiered_broker(self, name: str) -> tuple[BrokerProcess, Any, str]:
        if self.moto is None:
            self.moto_proc, self.moto = start_moto(self.workdir)
        bucket = self.moto.new_bucket()
        proxy = self.moto.proxy()
        broker = self.broker(
            name,
            self.moto.broker_settings(bucket, proxy.endpoint_url)
            | {"tiering.upload_interval_ms": "200"},
        )
        return broker, proxy, bucket

    def caught_up(self, broker: BrokerProcess, topic: str) -> None:
        from tests.support.moto import storage_report

        def done() -> bool:
            try:
                parts = storage_report(broker.admin_port, topic)["partitions"]
            except OSError:
                return False
            return all(p["pending_uploads"] == 0 for p in parts)

        wait_until("uploads to catch up", done, timeout=180)

    def upload_kills(self) -> Outcome:
        outcome = Outcome("upload-kill")
        broker, proxy, bucket = self.tiered_broker("upload-kill")
        topic = "soak-upload-kill"
        started = time.monotonic()
        try:
            broker.start()
            create_topic(broker.bootstrap, topic, 1, TIERED)
            loads = self.producers(broker.bootstrap, topic, 1)
            while not self.deadline_reached(outcome.rounds, started):
                pattern, after = UPLOAD_STEPS[outcome.rounds % len(UPLOAD_STEPS)]
                trap = proxy.trap("PUT", pattern, broker.kill9, after_response=after)
                if not trap.fired.wait(120):
                    outcome.notes.append(f"no PUT matching {pattern} within 120 s")
                    break
                broker.start()
                outcome.rounds += 1
                progress(outcome)
            self.pause()
            for load in loads:
                load.stop(timeout=180)
            self.caught_up(broker, topic)
            check_bucket_consistent(self.moto, bucket)
            acked = [a for load in loads for a in load.acked]
            outcome.fatal = [f"{x.tag}: {x.fatal}" for x in loads if x.fatal]
            outcome.report = check_topic(broker.bootstrap, topic, 1, acked)
        finally:
            broker.close()
            proxy.close()
        outcome.seconds = time.monotonic() - started
        return outcome

    def bucket_faults(self) -> Outcome:
        outcome = Outcome("bucket")
        broker, proxy, bucket = self.tiered_broker("bucket")
        topic = "soak-bucket"
        started = time.monotonic()
        try:
            broker.start()
            create_topic(broker.bootstrap, topic, 1, TIERED)
            loads = self.producers(broker.bootstrap, topic, 1)
            faults = proxy.faults = BucketFaults(rate=0.3, delay_s=0.2, seed=self.args.seed)
            failed_reads = 0
            while not self.deadline_reached(outcome.rounds, started):
                self.pause()
                acked = {a.offset: a.value for load in loads for a in list(load.acked)}
                start = self.rng.randrange(max(1, max(acked, default=0) - READ_WINDOW))
                try:
                    got = read_range(broker.bootstrap, topic, start, READ_WINDOW)
                except Exception:  # noqa: BLE001  (a read may fail; it may not return garbage)
                    failed_reads += 1
                    continue
                wrong = [o for o, v in got if o in acked and acked[o] != v]
                outcome.report.moved += len(wrong)
                outcome.rounds += 1
                progress(outcome)
            proxy.faults = None
            outcome.notes.append(f"faults injected: {dict(faults.counts)}")
            outcome.notes.append(f"reads through the faulty bucket that failed: {failed_reads}")
            for load in loads:
                load.stop(timeout=180)
            self.caught_up(broker, topic)
            check_bucket_consistent(self.moto, bucket)
            garbled = outcome.report.moved
            acked = [a for load in loads for a in load.acked]
            outcome.fatal = [f"{x.tag}: {x.fatal}" for x in loads if x.fatal]
            outcome.report = check_topic(broker.bootstrap, topic, 1, acked)
            outcome.report.moved += garbled
        finally:
            broker.close()
            proxy.close()
        outcome.seconds = time.monotonic() - started
        return outcome

    def run(self, fault: str) -> Outcome:
        if fault in ("sigterm", "kill9"):
            return self.restarts(fault)
        if fault == "upload-kill":
            return self.upload_kills()
        if fault == "bucket":
            return self.bucket_faults()
        raise SystemExit(f"unknown fault {fault!r}: use sigterm, kill9, upload-kill, bucket")

    def close(self) -> None:
        if self.moto_proc is not None:
            self.moto_proc.terminate()
            self.moto_proc.wait(10)


def read_range(bootstrap: str, topic: str, start: int, count: int) -> list[tuple[int, Any]]:
    """``count`` records of partition 0 from ``start`` (archived data: read through the
    bucket); raises on an error or when they do not arrive within a minute."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "streamd-soak",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
            "logger": RDKAFKA_LOG,
        }
    )
    out: list[tuple[int, Any]] = []
    try:
        consumer.assign([TopicPartition(topic, 0, start)])
        deadline = time.monotonic() + 60
        while len(out) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=count - len(out), timeout=1.0):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                out.append((msg.offset(), msg.value()))
        if len(out) < count:
            raise TimeoutError(f"read {len(out)} of {count} records from {start}")
    finally:
        consumer.close()
    return out


def progress(outcome: Outcome) -> None:
    print(f"  {outcome.fault}: round {outcome.rounds}", flush=True)


HEADER = (
    f"{'fault':12} {'rounds':>6} {'seconds':>8} {'acknowledged':>13} {'lost':>5} "
    f"{'duplicated':>10} {'moved':>6}  notes"
)


def row(o: Outcome) -> str:
    notes = "; ".join([*([f"exit codes {o.bad_exits}"] if o.bad_exits else []), *o.fatal, *o.notes])
    text = (
        f"{o.fault:12} {o.rounds:6d} {o.seconds:8.0f} {o.report.acknowledged:13d} "
        f"{o.report.lost:5d} {o.report.duplicated:10d} {o.report.moved:6d}  {notes}"
    )
    if not o.report.ok:
        text += f"\n    {o.report.summary()}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default="sigterm,kill9,upload-kill,bucket")
    parser.add_argument("--rounds", type=int, default=20, help="faults per kind")
    parser.add_argument("--minutes", type=float, default=0, help="per kind, instead of rounds")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument(
        "--between", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"),
        help="seconds of load between two faults (uniform)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="streamd-soak-"))
    print(f"soak in {workdir}", flush=True)
    soak = Soak(args, workdir)
    outcomes: list[Outcome] = []
    try:
        for fault in args.faults.split(","):
            print(f"{fault}:", flush=True)
            outcomes.append(soak.run(fault.strip()))
            print(HEADER + "\n" + row(outcomes[-1]), flush=True)
            if args.json:
                args.json.write_text(json.dumps([o.as_dict() for o in outcomes], indent=2) + "\n")
    finally:
        soak.close()
    print()
    print(HEADER)
    for o in outcomes:
        print(row(o))
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
