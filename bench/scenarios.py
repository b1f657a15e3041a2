"""Scenario registry.

A scenario = unmeasured `setup` (create topics, pre-fill data) + a list of client `jobs` that
run concurrently, each in its own process, while the runner samples the broker's CPU and peak
RSS around them + `summarize` turning the job results into figures.

To add one: subclass Scenario, set `name`/`title`, implement `setup` and `jobs`, decorate with
@register. Options:
- `isolated_broker = True` starts a fresh broker just for this scenario (e.g. needs different
  broker settings: put them in `broker_settings[<broker name>]`, passed as `--set` to streamd,
  and as `storage_engine` to Tansu; or override `broker_opts()` to compute them per round and
  to start side services such as a moto S3 server, and `release()` to stop them).
- Several job specs = several client processes (e.g. 2 producers on 8 partitions); the default
  `summarize` sums bytes/records over the union of their time windows.
- A job may return extra numbers (latency percentiles...): override `summarize` and put them in
  the returned dict under "extra"; they land in the JSON, and the ones named in `extra_columns`
  get their own table (median over rounds + streamd/tansu ratio).
- When the records to check are not the sum over the jobs (a producer and a consumer of the
  same records), override `expected_records`.
Job kinds live in client.py (JOBS).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import procstat
from brokers import Broker, MotoServer

MiB = 1 << 20
GiB = 1 << 30

REGISTRY: dict[str, Scenario] = {}


def register(cls: type[Scenario]) -> type[Scenario]:
    REGISTRY[cls.name] = cls()
    return cls


@dataclass
class Ctx:
    broker: Broker
    records: int
    record_size: int
    round: int
    timeout_s: float
    # (topic partitions, records, record size) -> name of a topic already holding that data
    filled: dict[tuple, str]
    run_jobs: Callable[[list[dict], str], list[dict]]  # (job specs, label) -> results
    create_topic: Callable[..., None]  # (name, partitions, config=None)
    notes: list[str] = field(default_factory=list)
    opts: Any = None  # the runner's argparse namespace (scenario-specific options)
    progress: Any = None  # the runner's rich Progress (for unmeasured waits)

    def job(self, kind: str, **kw: Any) -> dict:
        spec = {
            "kind": kind,
            "bootstrap": self.broker.bootstrap,
            "record_size": self.record_size,
            "records": self.records,
            "timeout_s": self.timeout_s,
        }
        spec.update(kw)
        return spec


@dataclass
class BrokerOpts:
    """Extra broker settings for an isolated scenario: `settings` become `--set` for streamd
    (`storage_engine` is Tansu's --storage-engine); `env` is added to the broker's environment."""

    settings: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


class Scenario:
    name = ""
    title = ""
    isolated_broker = False
    broker_settings: dict[str, dict[str, str]] = {}
    # (key in summarize()["extra"], column header, format spec) shown in a per-scenario table
    extra_columns: list[tuple[str, str, str]] = []
    # extra columns whose streamd/tansu ratio means nothing (settings, not results)
    no_ratio: frozenset[str] = frozenset()

    def broker_opts(self, broker: str, rnd: int, workdir: Path, opts: Any) -> BrokerOpts:
        """Settings of the fresh broker of an isolated scenario (may start side services)."""
        return BrokerOpts(settings=dict(self.broker_settings.get(broker, {})))

    def release(self, broker: str) -> None:
        """Called after the isolated broker of `broker_opts` has been stopped."""

    def start_failure(self, broker: str, error: str) -> str:
        """The message recorded when the isolated broker cannot start with `broker_opts`."""
        return f"{broker} did not start with this scenario's settings: {error}"

    def setup(self, ctx: Ctx) -> None:
        pass

    def expected_records(self, ctx: Ctx, specs: list[dict]) -> int:
        return sum(int(sp["records"]) for sp in specs)

    def jobs(self, ctx: Ctx) -> list[dict]:
        raise NotImplementedError

    def after(self, ctx: Ctx, results: list[dict]) -> None:
        """Called after a successful measured phase (e.g. to register filled topics)."""

    def summarize(self, ctx: Ctx, results: list[dict]) -> dict:
        start = min(r["t_start"] for r in results)
        end = max(r["t_end"] for r in results)
        out = {
            "bytes": sum(r["bytes"] for r in results),
            "records": sum(r["records"] for r in results),
            "seconds": max(end - start, 1e-9),
            "client_cpu_s": sum(r.get("client_cpu_s", 0.0) for r in results),
            "errors": sum(r.get("errors", 0) for r in results),
        }
        if len(results) > 1:
            # Concurrent jobs: how well the start barrier lined them up, and each job's own rate.
            out["extra"] = {
                "start_skew_ms": (max(r["t_start"] for r in results) - start) * 1000,
                "end_skew_ms": (end - min(r["t_end"] for r in results)) * 1000,
                "job_mb_s": [
                    r["bytes"] / MiB / max(r["t_end"] - r["t_start"], 1e-9) for r in results
                ],
            }
        return out


def fill_topic(ctx: Ctx, partitions: int) -> str:
    """A topic with `partitions` partitions holding ctx.records records (reused if present)."""
    key = (partitions, ctx.records, ctx.record_size)
    if key in ctx.filled:
        return ctx.filled[key]
    topic = f"bench-fill-{partitions}p-r{ctx.round}"
    ctx.create_topic(topic, partitions)
    per = ctx.records // partitions
    specs = (
        [
            ctx.job(
                "produce",
                topic=topic,
                partition=p,
                records=per + (1 if p < ctx.records % partitions else 0),
            )
            for p in range(partitions)
        ]
        if partitions > 1
        else [ctx.job("produce", topic=topic, partition=0)]
    )
    res = ctx.run_jobs(specs, "fill")
    got = sum(r["records"] for r in res)
    if got != ctx.records:
        raise RuntimeError(f"fill of {topic}: {got}/{ctx.records} records acknowledged")
    ctx.filled[key] = topic
    return topic


@register
class Produce1P(Scenario):
    name = "produce"
    title = "produce 1 KiB, acks=all, 1 partition, 1 producer"

    def setup(self, ctx: Ctx) -> None:
        self.topic = f"bench-produce-1p-r{ctx.round}"
        ctx.create_topic(self.topic, 1)

    def jobs(self, ctx: Ctx) -> list[dict]:
        return [ctx.job("produce", topic=self.topic, partition=0)]

    def after(self, ctx: Ctx, results: list[dict]) -> None:
        if sum(r["records"] for r in results) == ctx.records:
            ctx.filled.setdefault((1, ctx.records, ctx.record_size), self.topic)


@register
class Consume1P(Scenario):
    name = "consume"
    title = "consume from offset 0 (local log), 1 partition, manual assign"

    def setup(self, ctx: Ctx) -> None:
        self.topic = fill_topic(ctx, 1)

    def jobs(self, ctx: Ctx) -> list[dict]:
        return [
            ctx.job(
                "consume",
                topic=self.topic,
                partitions=[0],
                start_offset=0,
                group=f"bench-{ctx.round}",
            )
        ]


@register
class Produce8P(Scenario):
    name = "produce8"
    title = "produce 1 KiB, acks=all, 8 partitions, 2 producer processes"
    partitions = 8
    producers = 2

    def setup(self, ctx: Ctx) -> None:
        self.topic = f"bench-produce-8p-r{ctx.round}"
        ctx.create_topic(self.topic, self.partitions)

    def jobs(self, ctx: Ctx) -> list[dict]:
        # The records are split between the producers; each sends round-robin over all 8
        # partitions (record by record, starting at a different partition), so both producers
        # write every partition. Same total payload as `produce`.
        per, rest = divmod(ctx.records, self.producers)
        parts = list(range(self.partitions))
        return [
            ctx.job(
                "produce",
                topic=self.topic,
                partitions=parts,
                rr_offset=j * self.partitions // self.producers,
                records=per + (1 if j < rest else 0),
            )
            for j in range(self.producers)
        ]


@register
class Produce1000P(Scenario):
    """Memory with many partitions: a fresh broker, one topic of 1,000 partitions, one
    producer writing record by record round-robin over all of them (a fifth of --records)."""

    name = "partitions1000"
    title = "produce 1 KiB round-robin over 1,000 partitions (fresh broker; watch peak RSS)"
    isolated_broker = True
    partitions = 1000

    def _n(self, ctx: Ctx) -> int:
        return max(self.partitions, ctx.records // 5)

    def setup(self, ctx: Ctx) -> None:
        self.topic = f"bench-produce-1000p-r{ctx.round}"
        ctx.create_topic(self.topic, self.partitions)

    def jobs(self, ctx: Ctx) -> list[dict]:
        return [
            ctx.job(
                "produce",
                topic=self.topic,
                partitions=list(range(self.partitions)),
                records=self._n(ctx),
            )
        ]


@register
class Consume1000P(Produce1000P):
    """Fetch cost with many partitions: the same topic (filled unmeasured by one round-robin
    producer), then one consumer assigned all 1,000 partitions reads everything."""

    name = "consume1000"
    title = "consume 1,000 partitions from offset 0 (fresh broker; fill unmeasured)"

    def setup(self, ctx: Ctx) -> None:
        super().setup(ctx)
        res = ctx.run_jobs(super().jobs(ctx), "fill")
        got = sum(r["records"] for r in res)
        if got != self._n(ctx):
            raise RuntimeError(f"fill of {self.topic}: {got}/{self._n(ctx)} records acknowledged")

    def jobs(self, ctx: Ctx) -> list[dict]:
        return [
            ctx.job(
                "consume",
                topic=self.topic,
                partitions=list(range(self.partitions)),
                start_offset=0,
                records=self._n(ctx),
                group=f"bench-1000-{ctx.round}",
            )
        ]


@register
class Transactions(Scenario):
    """Transactional produce (issue 16): 100 records of 1 KiB per transaction, acks=all, one
    producer, against an idempotent producer sending the same records in the same round (run
    first, during setup). Reports both rates and txn/idempotent (target >= 0.7).

    The client's own ceiling is measured in the same round: the same transactional job against
    librdkafka's built-in mock cluster (``test.mock.num.brokers``: an in-process broker with no
    disk and no network), so that every transaction costs only what the client itself spends on
    it. ``ceiling`` = that rate / the idempotent rate on the broker: the txn/idempotent ratio a
    broker whose transactions cost nothing would show. ``of ceiling`` = txn / client-only txn:
    how much of what the client allows the broker reaches."""

    name = "txn"
    title = "transactional produce, 100 x 1 KiB per txn (--txn-records-per-txn), acks=all"
    extra_columns = [
        ("idempotent_mb_s", "idempotent MB/s", ".1f"),
        ("txn_mb_s", "txn MB/s", ".1f"),
        ("txn_per_s", "txn/s", ",.0f"),
        ("txn_vs_idempotent", "txn/idempotent", ".2f"),
        ("client_only_txn_per_s", "client-only txn/s", ",.0f"),
        ("ceiling", "ceiling", ".2f"),
        ("of_ceiling", "of ceiling", ".2f"),
    ]
    MOCK = {"test.mock.num.brokers": 1}

    def _per_txn(self, ctx: Ctx) -> int:
        return int(getattr(ctx.opts, "txn_records_per_txn", 100) or 100)

    def setup(self, ctx: Ctx) -> None:
        self.topic = f"bench-txn-r{ctx.round}"
        idem = f"bench-idempotent-r{ctx.round}"
        ctx.create_topic(self.topic, 1)
        ctx.create_topic(idem, 1)
        res = ctx.run_jobs(
            [ctx.job("produce", topic=idem, partition=0, config={"enable.idempotence": True})],
            "idempotent",
        )
        r = res[0]
        if r["records"] != ctx.records:
            raise RuntimeError(f"idempotent produce: {r['records']}/{ctx.records} acknowledged")
        self.idempotent_mb_s = r["bytes"] / MiB / max(r["t_end"] - r["t_start"], 1e-9)
        res = ctx.run_jobs(
            [
                ctx.job(
                    "txn_produce",
                    topic=f"bench-mock-r{ctx.round}",
                    partition=0,
                    records_per_txn=self._per_txn(ctx),
                    config=self.MOCK,
                )
            ],
            "client-only txn (librdkafka mock cluster)",
        )
        r = res[0]
        if r["records"] != ctx.records:
            raise RuntimeError(f"client-only txn produce: {r['records']}/{ctx.records} committed")
        self.mock_txn_mb_s = r["bytes"] / MiB / max(r["t_end"] - r["t_start"], 1e-9)

    def jobs(self, ctx: Ctx) -> list[dict]:
        return [
            ctx.job(
                "txn_produce",
                topic=self.topic,
                partition=0,
                records_per_txn=self._per_txn(ctx),
            )
        ]

    def summarize(self, ctx: Ctx, results: list[dict]) -> dict:
        out = super().summarize(ctx, results)
        per = self._per_txn(ctx)
        txn_mb_s = out["bytes"] / MiB / out["seconds"]
        mib_per_txn = per * ctx.record_size / MiB
        out["extra"] = {
            "records_per_txn": per,
            "idempotent_mb_s": self.idempotent_mb_s,
            "txn_mb_s": txn_mb_s,
            "txn_per_s": out["records"] / per / out["seconds"],
            "txn_vs_idempotent": txn_mb_s / max(self.idempotent_mb_s, 1e-9),
            "client_only_txn_mb_s": self.mock_txn_mb_s,
            "client_only_txn_per_s": self.mock_txn_mb_s / mib_per_txn,
            "ceiling": self.mock_txn_mb_s / max(self.idempotent_mb_s, 1e-9),
            "of_ceiling": txn_mb_s / max(self.mock_txn_mb_s, 1e-9),
        }
        return out


@register
class Latency(Scenario):
    name = "latency"
    title = "end-to-end latency at a fixed rate, 1 partition (producer process -> consumer process)"
    extra_columns = [
        ("target_rate", "target rec/s", ",.0f"),
        ("achieved_rate", "sent rec/s", ",.0f"),
        ("p50_ms", "p50 ms", ".2f"),
        ("p99_ms", "p99 ms", ".2f"),
        ("p999_ms", "p99.9 ms", ".2f"),
        ("max_ms", "max ms", ".1f"),
        ("behind_schedule_max_ms", "producer late ms", ".1f"),
    ]
    no_ratio = frozenset({"target_rate", "behind_schedule_max_ms"})

    def _n(self, ctx: Ctx) -> int:
        return max(1, int(ctx.opts.latency_rate * ctx.opts.latency_seconds))

    def setup(self, ctx: Ctx) -> None:
        self.topic = f"bench-latency-r{ctx.round}"
        ctx.create_topic(self.topic, 1)

    def jobs(self, ctx: Ctx) -> list[dict]:
        n = self._n(ctx)
        o = ctx.opts
        return [
            ctx.job(
                "latency_consume",
                topic=self.topic,
                partition=0,
                records=n,
                group=f"bench-latency-{ctx.round}",
                config={"fetch.wait.max.ms": o.latency_fetch_wait_ms, "fetch.min.bytes": 1},
            ),
            ctx.job(
                "latency_produce",
                topic=self.topic,
                partition=0,
                records=n,
                rate=o.latency_rate,
                config={"linger.ms": o.latency_linger_ms},
            ),
        ]

    def expected_records(self, ctx: Ctx, specs: list[dict]) -> int:
        return self._n(ctx)  # every produced record must reach the consumer

    def summarize(self, ctx: Ctx, results: list[dict]) -> dict:
        cons = next(r for r in results if r["kind"] == "latency_consume")
        prod = next(r for r in results if r["kind"] == "latency_produce")
        extra = {k: cons.get(k) for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")}
        extra.update(
            target_rate=prod["target_rate"],
            achieved_rate=prod["achieved_rate"],
            behind_schedule_max_ms=prod["behind_schedule_max_ms"],
            produced=prod["records"],
            produce_errors=prod["errors"],
            duplicates=cons.get("duplicates", 0),
        )
        return {
            # Payload delivered to the consumer, over first send -> last receive.
            "bytes": cons["bytes"],
            "records": cons["records"],
            "seconds": max(cons["t_end"] - prod["t_start"], 1e-9),
            "client_cpu_s": cons["client_cpu_s"] + prod["client_cpu_s"],
            "errors": cons["errors"] + prod["errors"],
            "extra": extra,
        }


class TieringUnavailable(RuntimeError):
    pass


@register
class Replay(Scenario):
    name = "replay"
    title = "replay N MB from S3 (moto) from offset 0, local data evicted, 1 partition"
    isolated_broker = True
    extra_columns = [
        ("replay_mb", "MB", ".0f"),
        ("remote_fraction", "from S3", ".0%"),
        ("fill_mb_s", "fill MB/s", ".1f"),
        ("evict_wait_s", "evict wait s", ".1f"),
        ("bucket_objects", "objects", ",.0f"),
        ("store_cpu_s_per_gb", "moto CPU s/GB", ".2f"),
    ]
    no_ratio = frozenset({"replay_mb", "remote_fraction", "evict_wait_s", "bucket_objects"})

    def __init__(self) -> None:
        self._moto: dict[str, tuple[MotoServer, str]] = {}

    # ---- broker + moto -------------------------------------------------------------------
    def broker_opts(self, broker: str, rnd: int, workdir: Path, opts: Any) -> BrokerOpts:
        moto = MotoServer(workdir / f"moto-{broker}-r{rnd}")
        moto.start()
        bucket = f"bench-{broker}-r{rnd}"
        try:
            moto.create_bucket(bucket)
        except Exception:
            moto.stop()
            raise
        self._moto[broker] = (moto, bucket)
        if broker == "streamd":
            return BrokerOpts(
                settings={
                    "tiering.store": f"s3://{bucket}/streamd",
                    "tiering.s3.endpoint_url": moto.endpoint,
                    "tiering.s3.access_key_id": MotoServer.ACCESS_KEY,
                    "tiering.s3.secret_access_key": MotoServer.SECRET_KEY,
                    "tiering.s3.region": MotoServer.REGION,
                    "tiering.upload_interval_ms": "200",
                    "defaults.remote.storage.enable": "true",
                    # Only shortens the unmeasured wait for local deletion.
                    "log.housekeeping_interval_ms": "500",
                }
            )
        return BrokerOpts(
            settings={"storage_engine": f"s3://{bucket}/"},
            env={
                "AWS_ENDPOINT": moto.endpoint,
                "AWS_ACCESS_KEY_ID": MotoServer.ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": MotoServer.SECRET_KEY,
                "AWS_DEFAULT_REGION": MotoServer.REGION,
                "AWS_ALLOW_HTTP": "true",
            },
        )

    def release(self, broker: str) -> None:
        entry = self._moto.pop(broker, None)
        if entry is not None:
            entry[0].stop()

    def start_failure(self, broker: str, error: str) -> str:
        if broker == "streamd":
            return (
                f"streamd tiering not available (broker did not start with tiering.*=s3): {error}"
            )
        return super().start_failure(broker, error)

    # ---- measured phase ------------------------------------------------------------------
    def _n(self, ctx: Ctx) -> int:
        return max(1, int(ctx.opts.replay_mb * MiB) // ctx.record_size)

    def setup(self, ctx: Ctx) -> None:
        n = self._n(ctx)
        bname = ctx.broker.name
        self.topic = f"bench-replay-r{ctx.round}"
        self.extra: dict[str, Any] = {"replay_mb": n * ctx.record_size / MiB}
        config: dict[str, str] = {}
        if bname == "streamd":
            seg = int(min(16 * MiB, max(1 * MiB, n * ctx.record_size // 10)))
            config = {
                "remote.storage.enable": "true",
                "segment.bytes": str(seg),
                "local.retention.ms": "1000",
            }
            self.extra["segment_bytes"] = seg
        try:
            ctx.create_topic(self.topic, 1, config)
        except Exception as e:
            if bname == "streamd":
                raise TieringUnavailable(f"streamd tiering not available: {e}") from e
            raise
        self._fill(ctx, bname, ctx.job("produce", topic=self.topic, partition=0, records=n), n)
        moto, bucket = self._moto[bname]
        objs, size = moto.bucket_stats(bucket)
        self.extra["bucket_objects"] = objs
        self.extra["bucket_mb"] = size / MiB
        self._moto_pid = moto.pid

    def _fill(self, ctx: Ctx, bname: str, job: dict, n: int) -> None:
        """Run the (unmeasured) fill job, check every record was acknowledged, and on streamd
        wait until the data has left the local disk (``remote_fraction``)."""
        res = ctx.run_jobs([job], "fill")
        got = sum(r["records"] for r in res)
        if got != n:
            raise RuntimeError(f"fill of {self.topic}: {got}/{n} records acknowledged")
        r = res[0]
        self.extra["fill_mb_s"] = r["bytes"] / MiB / max(r["t_end"] - r["t_start"], 1e-9)
        if bname == "streamd":
            t0 = time.monotonic()
            self.extra["remote_fraction"] = self._wait_evicted(ctx, n)
            self.extra["evict_wait_s"] = time.monotonic() - t0
        else:
            self.extra["remote_fraction"] = 1.0  # the s3:// engine keeps nothing locally

    def _storage(self, ctx: Ctx) -> dict:
        url = f"{ctx.broker.admin_url}/v1/topics/{self.topic}/storage"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            body = " ".join(e.read()[:300].decode(errors="replace").split())
            raise TieringUnavailable(
                f"streamd tiering not available: GET {url} -> HTTP {e.code} {body}"
            ) from e
        except (OSError, ValueError) as e:
            raise TieringUnavailable(f"streamd tiering not available: GET {url}: {e}") from e

    def _wait_evicted(self, ctx: Ctx, n: int) -> float:
        """Poll the admin API until local_start_offset >= replay_min_remote * high watermark."""
        want = ctx.opts.replay_min_remote
        timeout = ctx.opts.replay_evict_timeout
        task = ctx.progress.add_task("  streamd: upload + evict", total=n) if ctx.progress else None
        deadline = time.monotonic() + timeout
        p: dict = {}
        try:
            while True:
                doc = self._storage(ctx)
                parts = doc.get("partitions") or []
                if not parts:
                    raise TieringUnavailable(
                        f"streamd tiering not available: storage report without partitions: "
                        f"{json.dumps(doc)[:300]}"
                    )
                p = parts[0]
                local = int(p.get("local_start_offset", 0))
                hwm = int(p.get("high_watermark", n)) or n
                if task is not None:
                    ctx.progress.update(task, completed=min(local, n))
                if local >= want * hwm:
                    self.extra["storage_report"] = p
                    return local / hwm
                if time.monotonic() > deadline:
                    keys = (
                        "mode",
                        "local_start_offset",
                        "remote_start_offset",
                        "last_uploaded_offset",
                        "high_watermark",
                        "local_segments",
                        "pending_uploads",
                        "errors",
                    )
                    state = {k: p.get(k) for k in keys}
                    what = (
                        "uploaded nothing"
                        if int(p.get("last_uploaded_offset", -1)) < 0
                        else "did not evict local data"
                    )
                    raise TieringUnavailable(
                        f"streamd tiering {what} within {timeout:.0f}s "
                        f"(need local_start_offset >= {want:.0%} of the high watermark): {state}"
                    )
                time.sleep(0.25)
        finally:
            if task is not None:
                ctx.progress.remove_task(task)

    def jobs(self, ctx: Ctx) -> list[dict]:
        self._moto_cpu0 = procstat.cpu_seconds(self._moto_pid)
        return [
            ctx.job(
                "consume",
                topic=self.topic,
                partitions=[0],
                start_offset=0,
                records=self._n(ctx),
                group=f"bench-replay-{ctx.round}",
            )
        ]

    def summarize(self, ctx: Ctx, results: list[dict]) -> dict:
        store_cpu = procstat.cpu_seconds(self._moto_pid) - self._moto_cpu0
        s = super().summarize(ctx, results)
        self.extra["store_cpu_s"] = store_cpu
        self.extra["store_cpu_s_per_gb"] = store_cpu / (s["bytes"] / GiB) if s["bytes"] else None
        s["extra"] = dict(self.extra)
        return s


def _per_gb(before: dict[str, int], after: dict[str, int], nbytes: float) -> dict[str, float]:
    """Requests by method between two counts, per GiB of ``nbytes``."""
    gb = nbytes / GiB
    return {
        verb: (after.get(verb, 0) - before.get(verb, 0)) / gb
        for verb in sorted(set(after) | set(before))
        if gb and after.get(verb, 0) - before.get(verb, 0)
    }


@register
class ReplayLatency(Replay):
    """Replay from a bucket with a real bucket's latency: moto behind ``bench/latency_proxy.py``
    (every response's first byte held ``--replay-ttfb-ms``, 30 ms by default), several
    partitions, small segments: per-request round trips dominate unless they overlap."""

    name = "replay30"
    title = "replay N MB from S3 with a 30 ms time to first byte, P partitions, small segments"
    extra_columns = [
        ("replay_mb", "MB", ".0f"),
        ("partitions", "parts", ".0f"),
        ("segment_mb", "seg MiB", ".0f"),
        ("ttfb_ms", "TTFB ms", ".0f"),
        ("remote_fraction", "from S3", ".0%"),
        ("fill_mb_s", "fill MB/s", ".1f"),
        ("bucket_objects", "objects", ",.0f"),
        ("get_per_gb_replayed", "GET/GB read", ",.0f"),
        ("put_per_gb_archived", "PUT/GB fill", ",.0f"),
        ("store_cpu_s_per_gb", "moto CPU s/GB", ".2f"),
        ("proxy_cpu_s_per_gb", "proxy CPU s/GB", ".2f"),
        ("live_p99_during_ms", "live p99 replay ms", ".1f"),
        ("live_p99_quiet_ms", "live p99 quiet ms", ".1f"),
    ]
    no_ratio = frozenset(
        {"replay_mb", "partitions", "segment_mb", "ttfb_ms", "remote_fraction", "evict_wait_s",
         "bucket_objects"}
    )

    def __init__(self) -> None:
        super().__init__()
        self._proxies: dict[str, Any] = {}

    def broker_opts(self, broker: str, rnd: int, workdir: Path, opts: Any) -> BrokerOpts:
        from brokers import LatencyProxyProcess

        base = super().broker_opts(broker, rnd, workdir, opts)
        moto, _bucket = self._moto[broker]
        proxy = LatencyProxyProcess(
            moto.endpoint, opts.replay_ttfb_ms, workdir / f"proxy-{broker}-r{rnd}"
        )
        try:
            proxy.start()
        except Exception:
            self.release(broker)
            raise
        self._proxies[broker] = proxy
        settings = dict(base.settings)
        env = dict(base.env)
        if broker == "streamd":
            settings["tiering.s3.endpoint_url"] = proxy.endpoint
            # The default upload interval (10 s), not replay's 200 ms: what a tick finds sealed
            # is merged into one object (up to tiering.merge_target_bytes), as in production.
            settings.pop("tiering.upload_interval_ms", None)
        else:
            env["AWS_ENDPOINT"] = proxy.endpoint
        return BrokerOpts(settings=settings, env=env)

    def release(self, broker: str) -> None:
        proxy = self._proxies.pop(broker, None)
        if proxy is not None:
            proxy.stop()
        super().release(broker)

    def _n(self, ctx: Ctx) -> int:
        return max(1, int(ctx.opts.replay30_mb * MiB) // ctx.record_size)

    def setup(self, ctx: Ctx) -> None:
        o = ctx.opts
        n = self._n(ctx)
        parts = o.replay30_partitions
        bname = ctx.broker.name
        self.topic = f"bench-replay30-r{ctx.round}"
        self.partitions = parts
        seg = int(o.replay30_segment_mb * MiB)
        self.extra = {
            "replay_mb": n * ctx.record_size / MiB,
            "partitions": parts,
            "segment_mb": seg / MiB,
            "ttfb_ms": o.replay_ttfb_ms,
        }
        config: dict[str, str] = {}
        if bname == "streamd":
            config = {
                "remote.storage.enable": "true",
                "segment.bytes": str(seg),
                "local.retention.ms": "1000",
            }
        try:
            ctx.create_topic(self.topic, parts, config)
        except Exception as e:
            if bname == "streamd":
                raise TieringUnavailable(f"streamd tiering not available: {e}") from e
            raise
        self.live_topic = None
        if o.replay_live_rate > 0:
            self.live_topic = f"bench-live-r{ctx.round}"
            ctx.create_topic(self.live_topic, 1)
        proxy = self._proxies[bname]
        before = proxy.request_counts()
        self._fill(
            ctx, bname,
            ctx.job("produce", topic=self.topic, partitions=list(range(parts)), records=n), n,
        )
        archived = proxy.request_counts()
        fill_bytes = n * ctx.record_size
        self.extra["requests_per_gb_archived"] = _per_gb(before, archived, fill_bytes)
        self.extra["put_per_gb_archived"] = self.extra["requests_per_gb_archived"].get("PUT", 0)
        self._requests_before = archived
        moto, bucket = self._moto[bname]
        objs, size = moto.bucket_stats(bucket)
        self.extra["bucket_objects"] = objs
        self.extra["bucket_mb"] = size / MiB
        self._moto_pid = moto.pid

    def _wait_evicted(self, ctx: Ctx, n: int) -> float:
        """Poll the admin API until, over all partitions, the local start offsets reach
        ``replay_min_remote`` of the high watermarks; returns that fraction."""
        want = ctx.opts.replay_min_remote
        deadline = time.monotonic() + ctx.opts.replay_evict_timeout
        while True:
            parts = self._storage(ctx).get("partitions") or []
            local = sum(int(p.get("local_start_offset", 0)) for p in parts)
            hwm = sum(int(p.get("high_watermark", 0)) for p in parts) or n
            if parts and local >= want * hwm:
                self.extra["storage_report"] = parts
                return local / hwm
            if time.monotonic() > deadline:
                raise TieringUnavailable(
                    f"streamd tiering did not evict {want:.0%} of the offsets within "
                    f"{ctx.opts.replay_evict_timeout:.0f}s (local starts "
                    f"{[p.get('local_start_offset') for p in parts]}, high watermarks "
                    f"{[p.get('high_watermark') for p in parts]})"
                )
            time.sleep(0.25)

    def _live_n(self, ctx: Ctx) -> int:
        return int(ctx.opts.replay_live_rate * ctx.opts.replay_live_seconds)

    def jobs(self, ctx: Ctx) -> list[dict]:
        self._moto_cpu0 = procstat.cpu_seconds(self._moto_pid)
        self._proxy_pid = self._proxies[ctx.broker.name].proc.pid
        self._proxy_cpu0 = procstat.cpu_seconds(self._proxy_pid)
        jobs = [
            ctx.job(
                "consume",
                topic=self.topic,
                partitions=list(range(self.partitions)),
                start_offset=0,
                records=self._n(ctx),
                group=f"bench-replay30-{ctx.round}",
            )
        ]
        if self.live_topic is not None:
            # Live traffic on another topic while the replay runs, and for a while after it:
            # the p99 of records sent during the replay against the p99 of those sent after.
            n = self._live_n(ctx)
            jobs += [
                ctx.job("latency_consume", topic=self.live_topic, partition=0, records=n,
                        group=f"bench-live-{ctx.round}", samples=True,
                        config={"fetch.wait.max.ms": 5, "fetch.min.bytes": 1}),
                ctx.job("latency_produce", topic=self.live_topic, partition=0, records=n,
                        rate=ctx.opts.replay_live_rate, config={"linger.ms": 1}),
            ]
        return jobs

    def expected_records(self, ctx: Ctx, specs: list[dict]) -> int:
        return self._n(ctx) + (self._live_n(ctx) if self.live_topic is not None else 0)

    def summarize(self, ctx: Ctx, results: list[dict]) -> dict:
        replay = [r for r in results if r["kind"] == "consume"]
        live = next((r for r in results if r["kind"] == "latency_consume"), None)
        proxy_cpu = procstat.cpu_seconds(self._proxy_pid) - self._proxy_cpu0
        s = super().summarize(ctx, replay)
        s["extra"]["proxy_cpu_s"] = proxy_cpu
        s["extra"]["proxy_cpu_s_per_gb"] = proxy_cpu / (s["bytes"] / GiB) if s["bytes"] else None
        after = self._proxies[ctx.broker.name].request_counts()
        per_gb = _per_gb(self._requests_before, after, s["bytes"])
        s["extra"]["requests_per_gb_replayed"] = per_gb
        s["extra"]["get_per_gb_replayed"] = per_gb.get("GET", 0)
        if live is not None:
            start, end = replay[0]["t_start"], replay[0]["t_end"]
            samples = live.pop("samples", [])
            during = sorted(lat for sent, lat in samples if start <= sent <= end)
            quiet = sorted(lat for sent, lat in samples if sent > end + 0.5)

            def p99(xs: list[float]) -> float | None:
                return xs[min(len(xs) - 1, int(0.99 * len(xs)))] * 1000 if xs else None

            s["extra"].update(
                live_p99_during_ms=p99(during),
                live_p99_quiet_ms=p99(quiet),
                live_samples_during=len(during),
                live_samples_quiet=len(quiet),
            )
            s["records"] += live["records"]
        return s
