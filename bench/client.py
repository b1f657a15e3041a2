"""Benchmark client jobs, run in their own process (never in the broker's or the runner's).

Usage (by run.py): python bench/client.py '<json job spec>'

stdout carries JSON lines: {"progress": n} now and then, and finally {"result": {...}}.
Timestamps are time.monotonic() (CLOCK_MONOTONIC, comparable across processes on one host),
so the runner can merge several concurrent jobs into one wall-clock window.
Adding a job kind: write a function taking the spec dict and returning the result dict, and
register it in JOBS.
"""

from __future__ import annotations

import json
import os
import sys
import time


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Progress:
    def __init__(self, every_s: float = 0.2) -> None:
        self.every = every_s
        self.next = 0.0

    def __call__(self, n: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self.next:
            self.next = now + self.every
            emit({"progress": n})


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def produce(spec: dict) -> dict:
    from confluent_kafka import Producer

    n = int(spec["records"])
    size = int(spec["record_size"])
    topic = spec["topic"]
    partition = spec.get("partition")  # None -> librdkafka's partitioner
    conf = {
        "bootstrap.servers": spec["bootstrap"],
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1 << 20,
        "enable.idempotence": False,
        "compression.type": "none",
        "log_level": 3,
    }
    conf.update(spec.get("config", {}))
    p = Producer(conf)
    # Connect and fetch metadata before the clock starts.
    p.list_topics(topic, timeout=30)
    payload = os.urandom(size)
    state = {"ok": 0, "err": 0, "last": 0.0, "first_err": None}

    def on_delivery(err, _msg) -> None:
        if err is None:
            state["ok"] += 1
        else:
            state["err"] += 1
            if state["first_err"] is None:
                state["first_err"] = str(err)
        state["last"] = time.monotonic()

    progress = Progress()
    kw = {} if partition is None else {"partition": int(partition)}
    produce_ = p.produce
    poll = p.poll
    cpu0 = _cpu()
    t0 = time.monotonic()
    for i in range(n):
        while True:
            try:
                produce_(topic, payload, on_delivery=on_delivery, **kw)
                break
            except BufferError:
                poll(0.005)
        if i & 1023 == 0:
            poll(0)
            progress(state["ok"] + state["err"])
    deadline = time.monotonic() + float(spec.get("timeout_s", 300))
    while state["ok"] + state["err"] < n and time.monotonic() < deadline:
        poll(0.1)
        progress(state["ok"] + state["err"])
    progress(state["ok"] + state["err"], force=True)
    remaining = len(p)
    cpu1 = _cpu()
    return {
        "kind": "produce",
        "t_start": t0,
        "t_end": state["last"] or time.monotonic(),
        "records": state["ok"],
        "bytes": state["ok"] * size,
        "errors": state["err"],
        "first_error": state["first_err"],
        "undelivered": remaining,
        "client_cpu_s": cpu1 - cpu0,
    }


def consume(spec: dict) -> dict:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    n = int(spec["records"])
    topic = spec["topic"]
    partitions = spec.get("partitions", [0])
    conf = {
        "bootstrap.servers": spec["bootstrap"],
        "group.id": spec.get("group", "streamd-bench"),
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",
        "fetch.min.bytes": 1 << 20,
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 8 << 20,
        "fetch.max.bytes": 64 << 20,
        "queued.max.messages.kbytes": 256 << 10,
        "log_level": 3,
    }
    conf.update(spec.get("config", {}))
    c = Consumer(conf)
    c.list_topics(topic, timeout=30)
    progress = Progress()
    got = 0
    nbytes = 0
    errors = 0
    first_err = None
    idle_timeout = float(spec.get("idle_timeout_s", 30))
    cpu0 = _cpu()
    t0 = time.monotonic()
    c.assign([TopicPartition(topic, int(p), int(spec.get("start_offset", 0))) for p in partitions])
    t_first = None
    last_progress = time.monotonic()
    t_last = t0
    while got < n:
        msgs = c.consume(num_messages=10000, timeout=0.5)
        now = time.monotonic()
        if not msgs:
            if now - last_progress > idle_timeout:
                break
            continue
        for m in msgs:
            e = m.error()
            if e is not None:
                if e.code() != KafkaError._PARTITION_EOF:
                    errors += 1
                    first_err = first_err or str(e)
                continue
            got += 1
            nbytes += len(m.value() or b"")
        if t_first is None:
            t_first = now
        t_last = now
        last_progress = now
        progress(got)
    progress(got, force=True)
    cpu1 = _cpu()
    c.close()
    return {
        "kind": "consume",
        "t_start": t0,
        "t_first_record": t_first,
        "t_end": t_last,
        "records": got,
        "bytes": nbytes,
        "errors": errors,
        "first_error": first_err,
        "client_cpu_s": cpu1 - cpu0,
    }


JOBS = {"produce": produce, "consume": consume}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = JOBS[spec["kind"]](spec)
    except Exception as e:  # report, don't traceback-spam the progress display
        emit({"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)
    emit({"result": result})


if __name__ == "__main__":
    main()
