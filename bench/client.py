"""Benchmark client jobs, run in their own process (never in the broker's or the runner's).

Usage (by run.py): python bench/client.py '<json job spec>'

stdout carries JSON lines: {"progress": n} now and then, and finally {"result": {...}}.
Start barrier: when the spec has "barrier": true, a job does its unmeasured setup (connect,
metadata, warm-up), prints {"ready": true} and waits for a line on stdin before its clock starts,
so concurrent jobs (2 producers; a latency producer and its consumer) start together.
Timestamps are time.monotonic() (CLOCK_MONOTONIC, comparable across processes on one host),
so the runner can merge several concurrent jobs into one wall-clock window.
Adding a job kind: write a function taking the spec dict and returning the result dict, and
register it in JOBS.
"""

from __future__ import annotations

import json
import math
import os
import struct
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


def wait_go(spec: dict) -> None:
    """Start barrier (see the module docstring); a no-op without "barrier" in the spec."""
    if not spec.get("barrier"):
        return
    emit({"ready": True})
    if not sys.stdin.readline():
        raise RuntimeError("runner closed stdin before the start signal")


def percentile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, math.ceil(q / 100 * len(sorted_xs)) - 1))
    return sorted_xs[k]


def produce(spec: dict) -> dict:
    from confluent_kafka import Producer

    n = int(spec["records"])
    size = int(spec["record_size"])
    topic = spec["topic"]
    partition = spec.get("partition")  # None -> librdkafka's partitioner
    # "partitions": [..] -> record i goes to partitions[(i + rr_offset) % len] (round robin)
    rr = [int(x) for x in spec.get("partitions") or []]
    rr_off = int(spec.get("rr_offset", 0))
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
    nrr = len(rr)
    wait_go(spec)
    cpu0 = _cpu()
    t0 = time.monotonic()
    for i in range(n):
        if nrr:
            kw["partition"] = rr[(i + rr_off) % nrr]
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


def txn_produce(spec: dict) -> dict:
    """A transactional producer: ``records_per_txn`` records per transaction (begin, produce,
    commit_transaction, which flushes and waits for the commit), one after the other."""
    from confluent_kafka import Producer

    n = int(spec["records"])
    per = int(spec.get("records_per_txn", 100))
    size = int(spec["record_size"])
    topic = spec["topic"]
    conf = {
        "bootstrap.servers": spec["bootstrap"],
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1 << 20,
        "compression.type": "none",
        "transactional.id": f"bench-txn-{topic}-{os.getpid()}",
        "log_level": 3,
    }
    conf.update(spec.get("config", {}))
    p = Producer(conf)
    p.list_topics(topic, timeout=30)
    p.init_transactions(30)
    payload = os.urandom(size)
    state = {"ok": 0, "err": 0, "first_err": None}

    def on_delivery(err, _msg) -> None:
        if err is None:
            state["ok"] += 1
        else:
            state["err"] += 1
            state["first_err"] = state["first_err"] or str(err)

    progress = Progress()
    partition = int(spec.get("partition", 0))
    committed = 0
    aborted = 0
    wait_go(spec)
    cpu0 = _cpu()
    t0 = time.monotonic()
    for start in range(0, n, per):
        count = min(per, n - start)
        p.begin_transaction()
        for _ in range(count):
            while True:
                try:
                    p.produce(topic, payload, partition=partition, on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.005)
        try:
            p.commit_transaction(60)
            committed += count
        except Exception as exc:  # noqa: BLE001  (a failed commit is counted, not fatal)
            state["first_err"] = state["first_err"] or f"commit: {exc}"
            aborted += count
            p.abort_transaction(60)
        progress(committed)
    t1 = time.monotonic()
    progress(committed, force=True)
    cpu1 = _cpu()
    return {
        "kind": "txn_produce",
        "t_start": t0,
        "t_end": t1,
        "records": committed,
        "bytes": committed * size,
        "errors": state["err"] + aborted,
        "first_error": state["first_err"],
        "transactions": (n + per - 1) // per,
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
    wait_go(spec)
    cpu0 = _cpu()
    t0 = time.monotonic()
    c.assign([TopicPartition(topic, int(p), int(spec.get("start_offset", 0))) for p in partitions])
    t_first = None
    last_progress = time.monotonic()
    t_last = t0
    while got < n:
        # consume() waits until it has num_messages or the timeout passes: never ask for more
        # than are still due, or the last call idles out its timeout inside the window.
        msgs = c.consume(num_messages=min(10000, n - got), timeout=0.5)
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


# ---- end-to-end latency ------------------------------------------------------------------------
# Value layout: <d send time (time.monotonic(), seconds)> <q sequence> then padding to
# record_size. Warm-up records carry sequence -1 and are ignored by the consumer.
STAMP = struct.Struct("<dq")


def latency_produce(spec: dict) -> dict:
    """Send `records` stamped records at `rate` records/s (paced against a schedule)."""
    from confluent_kafka import Producer

    n = int(spec["records"])
    size = max(int(spec["record_size"]), STAMP.size)
    rate = float(spec["rate"])
    topic = spec["topic"]
    partition = int(spec.get("partition", 0))
    conf = {
        "bootstrap.servers": spec["bootstrap"],
        "acks": "all",
        "linger.ms": 1,
        "enable.idempotence": False,
        "compression.type": "none",
        "log_level": 3,
    }
    conf.update(spec.get("config", {}))
    p = Producer(conf)
    p.list_topics(topic, timeout=30)
    buf = bytearray(os.urandom(size))
    state = {"ok": 0, "err": 0, "first_err": None}

    def on_delivery(err, _msg) -> None:
        if err is None:
            state["ok"] += 1
        else:
            state["err"] += 1
            state["first_err"] = state["first_err"] or str(err)

    # Warm-up (unmeasured): opens the connection to the partition leader, so the first measured
    # records do not pay for it. The consumer skips these (sequence -1).
    for _ in range(int(spec.get("warmup", 20))):
        STAMP.pack_into(buf, 0, time.monotonic(), -1)
        p.produce(topic, bytes(buf), partition=partition)
    if p.flush(30) != 0:
        raise RuntimeError("warm-up records were not acknowledged within 30s")
    progress = Progress()
    produce_ = p.produce
    poll = p.poll
    mono = time.monotonic
    pack = STAMP.pack_into
    interval = 1.0 / rate
    behind_max = 0.0
    wait_go(spec)
    cpu0 = _cpu()
    t0 = mono()
    i = 0
    first_send = last_send = t0
    while i < n:
        now = mono()
        due = min(n, int((now - t0) * rate) + 1)
        if due - i > 1:
            behind_max = max(behind_max, (due - i - 1) * interval)
        while i < due:
            t = mono()
            pack(buf, 0, t, i)
            while True:
                try:
                    produce_(topic, bytes(buf), partition=partition, on_delivery=on_delivery)
                    break
                except BufferError:
                    poll(0.001)
            if i == 0:
                first_send = t
            last_send = t
            i += 1
        poll(0)
        progress(i)
        delay = t0 + i * interval - mono()
        if delay > 0:
            time.sleep(delay)
    deadline = mono() + float(spec.get("timeout_s", 300))
    while state["ok"] + state["err"] < n and mono() < deadline:
        poll(0.05)
    progress(n, force=True)
    cpu1 = _cpu()
    window = max(last_send - first_send, 1e-9)
    return {
        "kind": "latency_produce",
        "t_start": first_send,
        "t_end": last_send,
        "records": state["ok"],
        "bytes": state["ok"] * size,
        "errors": state["err"],
        "first_error": state["first_err"],
        "sent": i,
        "target_rate": rate,
        "achieved_rate": (i - 1) / window if i > 1 else 0.0,
        "behind_schedule_max_ms": behind_max * 1000,
        "client_cpu_s": cpu1 - cpu0,
    }


def latency_consume(spec: dict) -> dict:
    """Receive the stamped records; latency = receive time (right after poll returns) - stamp."""
    from confluent_kafka import Consumer, TopicPartition

    n = int(spec["records"])
    topic = spec["topic"]
    partition = int(spec.get("partition", 0))
    conf = {
        "bootstrap.servers": spec["bootstrap"],
        "group.id": spec.get("group", "streamd-bench-latency"),
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 5,
        "log_level": 3,
    }
    conf.update(spec.get("config", {}))
    c = Consumer(conf)
    c.list_topics(topic, timeout=30)
    c.assign([TopicPartition(topic, partition, int(spec.get("start_offset", 0)))])
    # Warm-up (unmeasured): wait for the first warm-up record so the fetch path is established.
    warm_deadline = time.monotonic() + 30
    warmed = False
    pending = []  # measured records that arrived before the start signal (should not happen)
    while not warmed and time.monotonic() < warm_deadline:
        m = c.poll(0.1)
        if m is None or m.error() is not None:
            continue
        _t, seq = STAMP.unpack_from(m.value(), 0)
        if seq < 0:
            warmed = True
        else:
            pending.append((time.monotonic(), m))
    if not warmed:
        raise RuntimeError("no warm-up record arrived within 30s")
    progress = Progress()
    lat: list[float] = []
    nbytes = 0
    errors = 0
    first_err = None
    seen = set()
    dup = 0
    samples: list[tuple[float, float]] | None = [] if spec.get("samples") else None
    idle_timeout = float(spec.get("idle_timeout_s", 15))
    wait_go(spec)
    cpu0 = _cpu()
    t_first = None
    t_last = time.monotonic()
    last_rx = t_last
    mono = time.monotonic
    poll = c.poll
    unpack = STAMP.unpack_from

    def take(now: float, m) -> None:
        nonlocal nbytes, t_first, t_last, dup
        v = m.value()
        sent, seq = unpack(v, 0)
        if seq < 0:
            return
        if seq in seen:
            dup += 1
            return
        seen.add(seq)
        lat.append(now - sent)
        if samples is not None:
            samples.append((sent, now - sent))
        nbytes += len(v)
        if t_first is None:
            t_first = now
        t_last = now

    for now, m in pending:
        take(now, m)
    while len(lat) < n:
        m = poll(0.1)
        now = mono()
        if m is None:
            if now - last_rx > idle_timeout:
                break
            continue
        last_rx = now
        e = m.error()
        if e is not None:
            errors += 1
            first_err = first_err or str(e)
            continue
        take(now, m)
        if len(lat) & 255 == 0:
            progress(len(lat))
    progress(len(lat), force=True)
    cpu1 = _cpu()
    c.close()
    xs = sorted(lat)
    ms = 1000.0
    pct = {
        f"p{label}_ms": (v * ms if (v := percentile(xs, q)) is not None else None)
        for label, q in (("50", 50), ("99", 99), ("999", 99.9))
    }
    return {
        "kind": "latency_consume",
        "t_start": t_first or t_last,
        "t_end": t_last,
        "records": len(lat),
        "bytes": nbytes,
        "errors": errors,
        "first_error": first_err,
        "duplicates": dup,
        **pct,
        "max_ms": xs[-1] * ms if xs else None,
        "mean_ms": sum(xs) / len(xs) * ms if xs else None,
        **({"samples": samples} if samples is not None else {}),
        "min_ms": xs[0] * ms if xs else None,
        "client_cpu_s": cpu1 - cpu0,
    }


JOBS = {
    "produce": produce,
    "txn_produce": txn_produce,
    "consume": consume,
    "latency_produce": latency_produce,
    "latency_consume": latency_consume,
}


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
