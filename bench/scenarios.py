"""Scenario registry.

A scenario = unmeasured `setup` (create topics, pre-fill data) + a list of client `jobs` that
run concurrently, each in its own process, while the runner samples the broker's CPU and peak
RSS around them + `summarize` turning the job results into figures.

To add one: subclass Scenario, set `name`/`title`, implement `setup` and `jobs`, decorate with
@register. Options:
- `isolated_broker = True` starts a fresh broker just for this scenario (e.g. needs different
  broker settings: put them in `broker_settings[<broker name>]`, passed as `--set` to streamd,
  and as `storage_engine` to Tansu).
- Several job specs = several client processes (e.g. 2 producers on 8 partitions); the default
  `summarize` sums bytes/records over the union of their time windows.
- A job may return extra numbers (latency percentiles...): override `summarize` and put them in
  the returned dict under "extra"; they land in the JSON.
Job kinds live in client.py (JOBS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from brokers import Broker

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


class Scenario:
    name = ""
    title = ""
    isolated_broker = False
    broker_settings: dict[str, dict[str, str]] = {}

    def setup(self, ctx: Ctx) -> None:
        pass

    def jobs(self, ctx: Ctx) -> list[dict]:
        raise NotImplementedError

    def after(self, ctx: Ctx, results: list[dict]) -> None:
        """Called after a successful measured phase (e.g. to register filled topics)."""

    def summarize(self, ctx: Ctx, results: list[dict]) -> dict:
        start = min(r["t_start"] for r in results)
        end = max(r["t_end"] for r in results)
        return {
            "bytes": sum(r["bytes"] for r in results),
            "records": sum(r["records"] for r in results),
            "seconds": max(end - start, 1e-9),
            "client_cpu_s": sum(r.get("client_cpu_s", 0.0) for r in results),
            "errors": sum(r.get("errors", 0) for r in results),
        }


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
