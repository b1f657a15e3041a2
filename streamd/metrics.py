"""The broker's Prometheus metrics, built on prometheus_client and rendered at ``/metrics``.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (not the process-global one), so
several brokers in one test process never share series.

What is measured, and where:

- Kafka requests: a latency histogram per API *name* (``api="Produce"``), observed by the
  connection when the response is ready (decode -> handler -> encode); unknown keys show as
  ``api="unknown"``. Counts come with the histogram (``_count``).
- Per topic: produced bytes and records (records from the offsets the append assigned, so no
  batch is parsed) and fetched bytes. Fetched *records* are not counted: a fetch answers with
  file ranges that are never parsed (sendfile), so counting them would cost a header read per
  response; the consumer groups' lag is the operator's view of progress instead.
- Object store calls (through :class:`streamd.broker.metered_store.MeteredStore`): a latency
  histogram by verb and outcome; upload latency is ``verb="put_file"`` (segments) and
  remote-read latency ``verb="get_range"``.
- Process metrics (CPU, memory, descriptors) and ``streamd_build_info``.
- Other layers' counters through :meth:`Metrics.add_collector`: a callable returning
  ``(name, help, type, samples)`` families (the tiering service's ``metric_families``), adapted
  to prometheus_client metric families at scrape time, so a layer never imports this module.

Hot-path cost: every writer runs on the event loop thread; labelled children are bound once
and kept in dicts, so a request pays one dict lookup and one ``observe`` (~1 us), and a
produce one ``inc`` pair per topic. Nothing is computed per record.

Topic filtering: :meth:`render` takes an optional predicate on topic names; samples carrying a
``topic`` label the caller may not describe are dropped (the admin API passes the caller's
DESCRIBE permission when authorization is on).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

Sample = tuple[dict[str, str], float]
Family = tuple[str, str, str, list[Sample]]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
)
STORE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Families(Collector):
    """Adapts ``(name, help, type, samples)`` tuples of other layers to prometheus_client."""

    def __init__(self, source: Callable[[], Iterable[Family]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for name, help_text, kind, samples in self._source():
            mtype = kind if kind in ("counter", "gauge", "histogram", "summary") else "untyped"
            # prometheus_client appends ``_total`` to counters itself.
            counter = mtype == "counter" and name.endswith("_total")
            base = name[: -len("_total")] if counter else name
            family = Metric(base, help_text, mtype)
            sample_name = base + "_total" if mtype == "counter" else base
            for labels, value in samples:
                family.add_sample(sample_name, dict(labels), float(value))
            yield family


class _Filtered:
    """A registry view whose samples with a ``topic`` label pass ``allowed``."""

    def __init__(self, registry: CollectorRegistry, allowed: Callable[[str], bool]) -> None:
        self._registry = registry
        self._allowed = allowed

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if any("topic" in s.labels for s in family.samples):
                kept = [
                    s for s in family.samples
                    if "topic" not in s.labels or self._allowed(s.labels["topic"])
                ]
                family.samples = kept
            yield family


class Metrics:
    def __init__(
        self,
        api_names: Callable[[int], str | None] = lambda key: None,
        *,
        version: str = "unknown",
    ) -> None:
        disable_created_metrics()  # ``*_created`` series double the output and help no one
        self.registry = registry = CollectorRegistry()
        self._api_names = api_names
        self.produced_bytes = 0
        self.fetched_bytes = 0
        self.sendfile_bytes = 0
        self.connections = 0
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Info("streamd_build", "streamd version.", registry=registry).info({"version": version})
        Gauge(
            "streamd_connections", "Open Kafka connections.", registry=registry
        ).set_function(lambda: self.connections)
        self._latency = Histogram(
            "streamd_kafka_request_duration_seconds",
            "Kafka request latency from decoded request to encoded response, by API.",
            ["api"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self._by_key: dict[int, Any] = {}
        self._produced_bytes = Counter(
            "streamd_kafka_produced_bytes", "Record batch bytes appended, by topic.", ["topic"],
            registry=registry,
        )
        self._produced_records = Counter(
            "streamd_kafka_produced_records", "Records appended, by topic.", ["topic"],
            registry=registry,
        )
        self._fetched_bytes = Counter(
            "streamd_kafka_fetched_bytes", "Record batch bytes served to consumers, by topic.",
            ["topic"], registry=registry,
        )
        self._produce_children: dict[str, tuple[Any, Any]] = {}
        self._fetch_children: dict[str, Any] = {}
        self.add_collector(self._broker_totals)
        self._store = Histogram(
            "streamd_object_store_request_duration_seconds",
            "Object store calls by verb (put, put_file = segment upload, get, get_range = "
            "remote read, head, list, delete) and outcome (ok, not_found, exists, error).",
            ["verb", "outcome"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self._store_children: dict[tuple[str, str], Any] = {}

    # ---- writers (event loop thread) --------------------------------------------------------

    def count_request(self, api_key: int, seconds: float = 0.0) -> None:
        """One handled Kafka request and its latency."""
        child = self._by_key.get(api_key)
        if child is None:
            name = self._api_names(api_key) or "unknown"
            child = self._by_key[api_key] = self._latency.labels(name)
        child.observe(seconds)

    def produced(self, topic: str, nbytes: int, records: int) -> None:
        children = self._produce_children.get(topic)
        if children is None:
            children = self._produce_children[topic] = (
                self._produced_bytes.labels(topic),
                self._produced_records.labels(topic),
            )
        children[0].inc(nbytes)
        children[1].inc(records)
        self.produced_bytes += nbytes

    def fetched(self, topic: str, nbytes: int) -> None:
        child = self._fetch_children.get(topic)
        if child is None:
            child = self._fetch_children[topic] = self._fetched_bytes.labels(topic)
        child.inc(nbytes)
        self.fetched_bytes += nbytes

    def store_call(self, verb: str, outcome: str, seconds: float) -> None:
        key = (verb, outcome)
        child = self._store_children.get(key)
        if child is None:
            child = self._store_children[key] = self._store.labels(verb, outcome)
        child.observe(seconds)

    def retain_topics(self, existing: Container[str]) -> None:
        """Drop the series of topics that no longer exist (called at scrape time), so topic
        churn does not grow the registry; a re-created topic starts again from zero."""
        for topic in [t for t in self._produce_children if t not in existing]:
            del self._produce_children[topic]
            self._produced_bytes.remove(topic)
            self._produced_records.remove(topic)
        for topic in [t for t in self._fetch_children if t not in existing]:
            del self._fetch_children[topic]
            self._fetched_bytes.remove(topic)

    # ---- readers ----------------------------------------------------------------------------

    def _broker_totals(self) -> list[Family]:
        """Broker-wide byte totals (kept for dashboards built on them before per-topic
        series existed)."""
        return [
            ("streamd_produced_bytes_total", "Record batch bytes appended.", "counter",
             [({}, self.produced_bytes)]),
            ("streamd_fetched_bytes_total", "Record batch bytes served to consumers.", "counter",
             [({}, self.fetched_bytes)]),
            ("streamd_fetch_sendfile_bytes_total",
             "Record batch bytes sent from segment files with sendfile (no copy).", "counter",
             [({}, self.sendfile_bytes)]),
        ]

    def add_collector(self, fn: Callable[[], Iterable[Family]]) -> None:
        self.registry.register(_Families(fn))

    def render(self, allowed_topic: Callable[[str], bool] | None = None) -> bytes:
        """The Prometheus text exposition; with ``allowed_topic``, topic series it rejects are
        left out."""
        if allowed_topic is None:
            return generate_latest(self.registry)
        return generate_latest(_Filtered(self.registry, allowed_topic))  # type: ignore[arg-type]
