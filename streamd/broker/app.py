"""Broker wiring and lifecycle: config -> log manager -> Kafka server, admin API, housekeeping.

Startup order: open (and recover) every partition log, then listen. Startup needs no free
space for existing data: on a full disk the broker starts read-only and appends resume once
space frees (see ``streamd.log.disk``).

Shutdown on SIGINT/SIGTERM, in this order (invariant 11: nothing acknowledged that is not in
the file, including during shutdown):

1. stop accepting connections and stop reading requests on every open connection;
2. let the requests already read finish and write their answers (at most
   ``SHUTDOWN_DRAIN_S``; what is still running then is cancelled unanswered);
3. close the connections, stop the background tasks, groups and tiering;
4. close the logs: each partition refuses new appends, flushes what was staged (its waiters
   are answered or failed), is marked closed, and only then closes its files.

Errors in one step are logged and do not keep the others from running: a stop exits 0 even on
a full disk. The cluster id is generated once and kept in ``data_dir/cluster.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamd.broker.admin_api import AdminServer, json_reply, text_reply
from streamd.broker.allocator import tune_allocator
from streamd.config import DEFAULTS_PREFIX, BrokerConfig, split_hostport
from streamd.errors import ConfigError, StreamdError
from streamd.groups.service import GroupService, group_config
from streamd.kafka.context import KafkaContext
from streamd.kafka.handlers.logdirs import disk_space, log_dir_sizes
from streamd.kafka.offsets_topic import OffsetsTopic, is_internal
from streamd.kafka.server import ConnectionRegistry, start_kafka_server
from streamd.log.descriptors import DESCRIPTORS
from streamd.log.manager import FsyncPolicy, LogManager
from streamd.log.topic_config import TopicConfig
from streamd.metrics import Metrics
from streamd.security.service import SecurityService
from streamd.security.tls import server_context
from streamd.tiering.cache import ChunkCache
from streamd.tiering.cluster_archive import ClusterArchive, topic_entries
from streamd.tiering.service import TieringService, TieringSettings

log = logging.getLogger("streamd")

SHUTDOWN_DRAIN_S = 5.0


def _cluster_id(data_dir: Path, configured: str) -> str:
    path = data_dir / "cluster.json"
    if configured:
        return configured
    try:
        return str(json.loads(path.read_text())["cluster_id"])
    except (OSError, ValueError, KeyError):
        pass
    cid = uuid.uuid4().hex[:22]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cluster_id": cid}))
    os.replace(tmp, path)
    return cid


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self.servers: list[asyncio.Server] = []
        self.connections = ConnectionRegistry()
        self.tasks: list[asyncio.Task[None]] = []
        self.logs: LogManager | None = None
        self.ctx: KafkaContext | None = None
        self.security: SecurityService | None = None
        self.groups: GroupService | None = None
        self.tiering: TieringService | None = None
        self.archive: ClusterArchive | None = None
        self._startup_log_level = logging.INFO

    async def start(self) -> None:
        cfg = self.config
        data_dir = cfg.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        for warning in cfg.load_dynamic():
            log.warning("%s", warning)
        self._startup_log_level = logging.getLogger().level
        self._apply_log_level()
        started = time.monotonic()
        if cfg["log.max_open_segment_files"]:
            DESCRIPTORS.limit = cfg["log.max_open_segment_files"]
        self.logs = LogManager(
            data_dir,
            defaults=dict(cfg.topic_defaults),
            fsync=FsyncPolicy.parse(cfg["fsync"]),
            page_cache_window=cfg["log.page_cache_window_bytes"],
            syncfs=cfg["log.syncfs"],
            tiering_veto=self._may_delete_local,
            max_partitions=cfg["log.max_partitions"],
        )
        await asyncio.to_thread(self.logs.load)
        log.info(
            "opened %d topics from %s in %.2fs",
            len(self.logs.topics()), data_dir, time.monotonic() - started,
        )
        import streamd.kafka.handlers  # noqa: F401  (registers the APIs)

        host, port = cfg.advertised
        self.ctx = KafkaContext(
            logs=self.logs,
            config=cfg,
            node_id=cfg["node_id"],
            cluster_id=_cluster_id(data_dir, cfg["cluster_id"]),
            advertised_host=host,
            advertised_port=port,
            metrics=self.metrics,
        )
        # --- group coordinator (streamd/groups) ---
        gconfig = group_config(cfg.values)
        offsets_topic = OffsetsTopic(self.logs, self.ctx.waiters, gconfig.offsets_retention_ms)
        self.groups = GroupService(data_dir, gconfig, observer=offsets_topic)
        await self.groups.open()
        self.ctx.groups = self.groups
        self.tasks.append(self.groups.start())
        if await asyncio.to_thread(offsets_topic.open):
            offsets_topic.seed(self.groups)
        self.tasks.append(asyncio.create_task(offsets_topic.refresh_loop(self.groups)))
        # --- end group coordinator ---
        # --- tiered storage (streamd/tiering) ---
        self.tiering = await self._start_tiering()
        self.ctx.tiering = self.tiering
        # --- end tiered storage ---
        # --- security and listeners (streamd/security) ---
        self.security = SecurityService(data_dir, cfg.values)
        await asyncio.to_thread(self.security.open)
        self.ctx.security = self.security
        self.ctx.authorizer = self.security.authorizer
        # The admin API starts before the Kafka listeners, so a client that sees the Kafka port
        # open can rely on the admin API too.
        if cfg["admin.listen"]:
            admin = self._admin_routes()
            ahost, aport = split_hostport(cfg["admin.listen"])
            self.servers.append(await admin.start(ahost, aport))
            log.info("admin API on http://%s", cfg["admin.listen"])
        await self._start_listeners()
        # --- end security and listeners ---
        # --- cluster metadata archive (streamd/tiering/cluster_archive.py) ---
        self.archive = self._start_archive()
        # --- end cluster metadata archive ---
        self._wire_dynamic_config()
        self.tasks.append(asyncio.create_task(self._housekeeping()))
        policy = FsyncPolicy.parse(cfg["fsync"])
        if policy.interval_ms:
            self.tasks.append(asyncio.create_task(self._flusher(policy.interval_ms)))

    # ---- security and listeners ------------------------------------------------------------------

    async def _start_listeners(self) -> None:
        """One server per listener; the first listener's address is the broker's default one."""
        assert self.ctx is not None
        cfg = self.config
        listeners = cfg.listeners
        first = listeners[0]
        self.ctx.advertised_host, self.ctx.advertised_port = (
            first.advertised_host,
            first.advertised_port,
        )
        tls = None
        if any(spec.protocol in ("SSL", "SASL_SSL") for spec in listeners):
            tls = server_context(
                cfg["tls.cert_file"],
                cfg["tls.key_file"],
                cfg["tls.ca_file"],
                cfg["tls.client_auth"],
            )
        for spec in listeners:
            ssl = tls if spec.protocol in ("SSL", "SASL_SSL") else None
            server = await start_kafka_server(
                self.ctx, spec.host, spec.port, listener=spec, ssl=ssl, registry=self.connections
            )
            self.servers.append(server)
            log.info(
                "kafka listener %s (%s) on %s:%d, advertised %s:%d",
                spec.name, spec.protocol, spec.host, spec.port,
                spec.advertised_host, spec.advertised_port,
            )

    def _admin_routes(self) -> AdminServer:
        admin = AdminServer()

        async def health(query: Any) -> Any:
            doc: dict[str, Any] = {"status": "ok", "node_id": self.config["node_id"]}
            if self.tiering is not None:
                doc["tiering"] = self.tiering.health()
            if self.logs is not None:
                doc["disk"] = self.logs.disk.health()
                if doc["disk"]["status"] != "ok":
                    doc["status"] = "degraded"
            return json_reply(doc)

        async def metrics(query: Any) -> Any:
            return text_reply(self.metrics.render(), content_type="text/plain; version=0.0.4")

        async def cluster(query: Any) -> Any:
            assert self.ctx is not None and self.logs is not None
            return json_reply(
                {
                    "cluster_id": self.ctx.cluster_id,
                    "node_id": self.ctx.node_id,
                    "kafka": f"{self.ctx.advertised_host}:{self.ctx.advertised_port}",
                    "topics": len(self.logs.topics()),
                }
            )

        admin.route("GET", "/v1/health", health)
        admin.route("GET", "/metrics", metrics)
        admin.route("GET", "/v1/cluster", cluster)
        self._tiering_routes(admin)
        self.admin = admin
        return admin

    # ---- tiered storage -------------------------------------------------------------------------

    def _may_delete_local(self, topic: str, partition: int, segment: Any) -> bool:
        """The log manager's tiering veto, given at construction: until tiering runs (or if it
        never starts) nothing tiered leaves local disk (invariant 4 fails closed)."""
        tiering = self.tiering
        return tiering is not None and tiering.may_delete_local(topic, partition, segment)

    async def _start_tiering(self) -> TieringService:
        """Open the object store and start the uploader. An unreachable or misconfigured bucket
        is logged and retried by every upload tick; it never stops the broker (invariant 4 keeps
        local data until archived)."""
        from streamd.broker.restore import open_configured_store

        cfg = self.config
        assert self.logs is not None
        store = open_configured_store(cfg)
        try:
            await asyncio.wait_for(store.check(), 10)
            log.info("tiered storage: object store %s", store.description)
        except (StreamdError, TimeoutError) as exc:
            log.error(
                "tiered storage: object store %s is not usable (%s); archiving will retry every "
                "%d ms and local data is kept until it succeeds",
                store.description, exc or "timed out", cfg["tiering.upload_interval_ms"],
            )
        cache = ChunkCache(
            cfg["tiering.cache_dir"],
            max_bytes=cfg["tiering.cache_max_bytes"],
            chunk_size=cfg["tiering.cache_chunk_bytes"],
            memory_bytes=cfg["tiering.cache_memory_bytes"],
        )
        service = TieringService(
            store,
            self.logs,
            cache,
            manifest_dir=cfg.data_dir / "tiering" / "manifests",
            settings=TieringSettings(
                upload_interval_ms=cfg["tiering.upload_interval_ms"],
                upload_concurrency=cfg["tiering.upload_concurrency"],
                read_ahead_chunks=cfg["tiering.read_ahead_chunks"],
                delete_on_topic_delete=cfg["tiering.delete_on_topic_delete"],
                fail_after_segment_upload=cfg["tiering.debug.fail_after_segment_upload"],
            ),
        )
        await service.start()
        self.metrics.add_collector(service.metric_families)
        return service

    def _tiering_routes(self, admin: AdminServer) -> None:
        async def storage(query: Any, topic: str) -> Any:
            report = self.tiering.storage_report(topic) if self.tiering is not None else None
            if report is None:
                return json_reply({"error": f"unknown topic {topic!r}"}, 404)
            return json_reply(report)

        admin.route("GET", "/v1/topics/{topic}/storage", storage)

        async def archive(query: Any) -> Any:
            if self.archive is None:
                return json_reply({"error": "cluster metadata archive not running"}, 404)
            return json_reply(self.archive.status())

        admin.route("GET", "/v1/cluster/archive", archive)

        async def logdirs(query: Any) -> Any:
            return json_reply(await self.log_dirs_report())

        admin.route("GET", "/v1/logdirs", logdirs)

    async def log_dirs_report(self) -> dict[str, Any]:
        """``GET /v1/logdirs``: what DescribeLogDirs answers, plus what the archive holds per
        partition (``archive_bytes``, streamd's own field; 0 when nothing is archived)."""
        assert self.logs is not None
        directory = self.logs.topics_dir
        total, usable = await asyncio.to_thread(disk_space, directory)
        partitions = []
        for name, sizes in log_dir_sizes(self.logs, None):
            report = self.tiering.storage_report(name) if self.tiering is not None else None
            archived = {
                p["partition"]: p["remote_bytes"] for p in (report or {}).get("partitions", [])
            }
            partitions += [
                {
                    "topic": name,
                    "partition": index,
                    "size_bytes": size,
                    "archive_bytes": archived.get(index, 0),
                }
                for index, size in sizes
            ]
        return {
            "log_dir": str(directory),
            "total_bytes": total,
            "usable_bytes": usable,
            "partitions": partitions,
        }

    # ---- cluster metadata archive ---------------------------------------------------------------

    def _start_archive(self) -> ClusterArchive:
        """Archive topics, ACLs, users and committed offsets for ``streamd restore``; the
        tiering tick drives it (see :mod:`streamd.tiering.cluster_archive`). Started after the
        security stores are open, so it never archives an empty stand-in for them."""
        assert self.tiering is not None and self.ctx is not None
        assert self.logs is not None and self.security is not None and self.groups is not None
        logs, security, groups = self.logs, self.security, self.groups

        def offsets() -> dict[str, list[dict[str, Any]]]:
            return {
                group: [
                    {"topic": t, "partition": p, "offset": i.offset,
                     "leader_epoch": i.leader_epoch, "metadata": i.metadata,
                     "commit_ts": i.commit_ts}
                    for (t, p), i in committed.items()
                ]
                for group, committed in groups.all_committed_offsets().items()
            }

        archive = ClusterArchive(
            self.tiering.store,
            cluster_id=self.ctx.cluster_id,
            # __consumer_offsets is derived from the offsets archived here: a restored broker
            # re-creates and seeds it when it starts (streamd.kafka.offsets_topic).
            topics=lambda: [e for e in topic_entries(logs) if not is_internal(e["name"])],
            acls=security.acls.acls,
            credentials=security.credentials.credentials,
            offsets=offsets,
            offsets_interval_ms=self.config["tiering.offsets_archive_interval_ms"],
        )
        self.tiering.tick_hooks.append(archive.tick)
        return archive

    # ---- dynamic broker configs ----------------------------------------------------------------

    def _wire_dynamic_config(self) -> None:
        """Make runtime changes of the dynamic keys (see :class:`streamd.config.Dynamic`) reach
        the services that read them once: every key marked dynamic has its applier here."""
        cfg = self.config
        logs, groups, tiering = self.logs, self.groups, self.tiering
        assert logs is not None and groups is not None and tiering is not None

        def check_topics(values: Mapping[str, Any], topic_defaults: Mapping[str, str]) -> None:
            for topic in logs.topics().values():
                try:
                    TopicConfig.from_overrides(topic_defaults, topic.overrides)
                except StreamdError as exc:
                    message = f"{exc} (with the overrides of topic {topic.name!r})"
                    raise ConfigError(message) from None

        def apply(changed: frozenset[str]) -> None:
            values = cfg.values
            if any(name.startswith(DEFAULTS_PREFIX) for name in changed):
                logs.set_defaults(cfg.topic_defaults)
            if any(name.startswith("group.") or name.startswith("offset") for name in changed):
                groups.reconfigure(group_config(values))
            if "tiering.upload_interval_ms" in changed:
                tiering.set_upload_interval(values["tiering.upload_interval_ms"])
            if "tiering.cache_max_bytes" in changed:
                tiering.cache.max_bytes = values["tiering.cache_max_bytes"]
            if "tiering.offsets_archive_interval_ms" in changed and self.archive is not None:
                self.archive.offsets_interval_ms = values["tiering.offsets_archive_interval_ms"]
            if "sasl.failed_authentication_delay_ms" in changed and self.security is not None:
                delay = values["sasl.failed_authentication_delay_ms"]
                self.security.failed_auth_delay_s = delay / 1000
            if "log.level" in changed:
                self._apply_log_level()
            log.info("dynamic broker configs changed: %s", ", ".join(sorted(changed)))

        cfg.dynamic.checks.append(check_topics)
        cfg.dynamic.appliers.append(apply)

    def _apply_log_level(self) -> None:
        level = self.config["log.level"] or self._startup_log_level
        logging.getLogger().setLevel(level)

    async def _housekeeping(self) -> None:
        assert self.logs is not None
        while True:
            await asyncio.sleep(self.config["log.housekeeping_interval_ms"] / 1000)
            try:
                await self.logs.run_housekeeping(int(time.time() * 1000))
            except Exception:
                log.exception("housekeeping failed; will retry")

    async def _flusher(self, interval_ms: int) -> None:
        assert self.logs is not None
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await self.logs.flush_all()
            except Exception:
                log.exception("periodic fsync failed; will retry")

    async def stop(self) -> None:
        """Stop in the order of the module docstring."""
        for server in self.servers:
            server.close()
        self.connections.stop_reading()
        busy = await self.connections.drain(SHUTDOWN_DRAIN_S)
        if busy:
            log.warning(
                "%d connections still had requests in flight after %.0f s; closing them "
                "unanswered", busy, SHUTDOWN_DRAIN_S,
            )
        self.connections.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        if self.archive is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.archive.flush(), 5)
        for name, closing in (("groups", self.groups), ("tiering", self.tiering)):
            if closing is not None:
                try:
                    await closing.close()
                except Exception:
                    log.exception("closing %s failed", name)
        if self.logs is not None:
            await self.logs.close()
        log.info("streamd stopped")


def _raise_open_file_limit() -> None:
    """Lift the soft descriptor limit to the hard one: connections need descriptors too, and
    the segment-file cache (``streamd.log.descriptors``) sizes itself from it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError) as exc:
        log.warning("could not raise the open file limit: %s", exc)


GC_THRESHOLD = (20_000, 20, 20)


def _settle_garbage_collector() -> None:
    """After start-up: move everything allocated so far (modules, kio schemas, loaded logs) out
    of the collector's reach and collect less often.

    Every request allocates a few hundred short-lived containers (kio entities, tuples), so
    the default gen-0 threshold of 700 ran a collection every few requests, and each full
    collection walked the whole start-up heap: about 20% of the broker's CPU during a consume
    (perf). Almost nothing the broker allocates per request is cyclic; reference counting
    frees it. The thresholds stay finite, so real cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


async def serve(config: BrokerConfig) -> None:
    _raise_open_file_limit()
    broker = Broker(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    _settle_garbage_collector()
    log.info("streamd ready")
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await broker.stop()


def run(config: BrokerConfig) -> None:
    tune_allocator()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
