"""Broker wiring and lifecycle: config -> log manager -> Kafka server, admin API, housekeeping.

Startup order: open (and recover) every partition log, then listen. Startup needs no free
space for existing data: on a full disk the broker starts read-only and appends resume once
space frees (see ``streamd.log.disk``).

Shutdown on SIGINT/SIGTERM, in this order (invariant 11: nothing acknowledged that is not in
the file, including during shutdown):

1. stop accepting connections and stop reading requests on every open connection;
2. let the requests already read finish and write their answers (at most
   ``DRAIN_TIMEOUT_S``; what is still running then is cancelled unanswered);
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

from aiohttp import web

from streamd.broker import admin_routes, console, transforms
from streamd.broker.admin_api import (
    AdminServer,
    BasicAuth,
    error,
    json_response,
    require_cluster,
    require_topic,
)
from streamd.broker.allocator import tune_allocator
from streamd.broker.health import Health
from streamd.broker.lock import DataDirLock
from streamd.broker.metered_store import MeteredStore
from streamd.broker.scheduler import Jobs
from streamd.broker.transactions import describe_json, transaction_service, transactions_json
from streamd.config import DEFAULTS_PREFIX, BrokerConfig, split_hostport
from streamd.errors import ConfigError, StreamdError
from streamd.groups.service import GroupService, group_config
from streamd.kafka.apis import REGISTRY
from streamd.kafka.codec import api_name
from streamd.kafka.context import AppendWaiters, KafkaContext
from streamd.kafka.handlers.logdirs import disk_space, log_dir_sizes
from streamd.kafka.offsets_topic import OffsetsTopic, is_internal
from streamd.kafka.server import ConnectionRegistry, start_kafka_server
from streamd.kafka.zerocopy import FileBudget
from streamd.log.compaction.cleaner import CleanerSettings, LogCleaner
from streamd.log.descriptors import DESCRIPTORS
from streamd.log.manager import FsyncPolicy, LogManager
from streamd.log.producer_ids import ProducerIdAllocator
from streamd.log.topic_config import TopicConfig
from streamd.metrics import Metrics
from streamd.security.sasl import new_mechanism
from streamd.security.scram import AuthenticationFailed
from streamd.security.service import SecurityService
from streamd.security.tls import server_context
from streamd.tiering.cache import ChunkCache
from streamd.tiering.cluster_archive import ClusterArchive, end_offsets, topic_entries
from streamd.tiering.readreplica import ReadReplicas
from streamd.tiering.service import TieringService, TieringSettings
from streamd.transforms.supervisor import Supervisor
from streamd.txn.service import TransactionService

log = logging.getLogger("streamd")
DRAIN_TIMEOUT_S = 2.0
"""Shutdown: how long connections may take to answer what they already read."""


def kafka_api_name(api_key: int) -> str | None:
    """Kafka's name of an API ("Produce", "CreateTopics"), for metrics labels."""
    spec = REGISTRY.get(api_key)
    if spec is not None:
        return spec.name
    raw = api_name(api_key)
    return "".join(part.title() for part in raw.split("_")) if raw else None


def streamd_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamd")
    except PackageNotFoundError:
        return "unknown"


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
        self.metrics = Metrics(kafka_api_name, version=streamd_version())
        self.lock = DataDirLock(config.data_dir)
        self.jobs: Jobs | None = None
        self.ready = False
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
        self.cleaner: LogCleaner | None = None
        self.replicas: ReadReplicas | None = None
        self.transforms: Supervisor | None = None
        self._transforms_side: transforms.TransformsBroker | None = None
        self.txn: TransactionService | None = None
        self.connections = ConnectionRegistry()
        self.health = Health(node_id=config["node_id"])
        self._startup_log_level = logging.INFO

    async def start(self) -> None:
        cfg = self.config
        data_dir = cfg.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        for warning in cfg.load_dynamic():
            log.warning("%s", warning)
        self.connections.configure(cfg)
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
        self.health.register("disk", self.logs.disk.health)
        await asyncio.to_thread(self.logs.load)
        log.info(
            "opened %d topics from %s in %.2fs",
            len(self.logs.topics()), data_dir, time.monotonic() - started,
        )
        # The cleaner exists before tiering, which asks it what was cleaned (compacted topics);
        # it starts cleaning once everything is up.
        self.cleaner = LogCleaner(
            self.logs,
            CleanerSettings(
                enabled=cfg["log.cleaner.enable"],
                map_bytes=cfg["log.cleaner.dedupe_buffer_bytes"],
                io_bytes_per_second=cfg["log.cleaner.io_max_bytes_per_second"],
                backoff_ms=cfg["log.cleaner.backoff_ms"],
                crash_at=cfg["log.cleaner.debug.crash_at"],
            ),
        )
        import streamd.kafka.handlers  # noqa: F401  (registers the APIs)

        waiters = AppendWaiters()
        # --- group coordinator (streamd/groups) ---
        gconfig = group_config(cfg.values)
        offsets_topic = OffsetsTopic(self.logs, waiters, gconfig.offsets_retention_ms)
        self.groups = GroupService(data_dir, gconfig, observer=offsets_topic)
        await self.groups.open()
        self.tasks.append(self.groups.start())
        if await asyncio.to_thread(offsets_topic.open):
            offsets_topic.seed(self.groups)
        self.tasks.append(asyncio.create_task(offsets_topic.refresh_loop(self.groups)))
        # --- end group coordinator ---
        # --- transaction coordinator (streamd/txn) ---
        producer_ids = ProducerIdAllocator(data_dir)
        self.txn = transaction_service(
            data_dir, cfg.values, producer_ids, self.logs, waiters, self.groups
        )
        await self.txn.open()
        self.tasks.append(self.txn.start())
        # --- end transaction coordinator ---
        # --- tiered storage (streamd/tiering) ---
        self.tiering = await self._start_tiering()
        self.replicas = await self._start_replicas(waiters)
        # --- end tiered storage ---
        # --- security and listeners (streamd/security) ---
        self.security = SecurityService(data_dir, cfg.values)
        await asyncio.to_thread(self.security.open)
        first = cfg.listeners[0]
        self.ctx = KafkaContext(
            logs=self.logs,
            config=cfg,
            node_id=cfg["node_id"],
            cluster_id=_cluster_id(data_dir, cfg["cluster_id"]),
            advertised_host=first.advertised_host,
            advertised_port=first.advertised_port,
            waiters=waiters,
            metrics=self.metrics,
            groups=self.groups,
            tiering=self.tiering,
            replicas=self.replicas,
            authorizer=self.security.authorizer,
            security=self.security,
            producer_ids=producer_ids,
            txn=self.txn,
            file_budget=FileBudget(_sendfile_descriptor_budget()),
        )
        log.info("cluster id %s, node id %d", self.ctx.cluster_id, self.ctx.node_id)
        # --- data transforms (streamd/transforms); workers start at the end of start() ---
        self.transforms, self._transforms_side = transforms.supervisor(
            cfg, self.ctx, self.logs, self.groups
        )
        if self.security.authorizer is not None:
            authorizer = self.security.authorizer
            authorizer.super_users = authorizer.super_users | {transforms.PRINCIPAL}
        # --- end data transforms ---
        # The admin API starts before the Kafka listeners, so a client that sees the Kafka port
        # open can rely on the admin API too (and finds every stored transform deployment).
        if self.transforms is not None:
            await self.transforms.load()
        if cfg["admin.listen"]:
            admin = self._admin_server()
            ahost, aport = split_hostport(cfg["admin.listen"])
            self.servers.append(await admin.start(ahost, aport))  # type: ignore[arg-type]
            log.info(
                "admin API on http://%s (console: /console, authentication %s)",
                cfg["admin.listen"], "required" if cfg["admin.require_auth"] else "optional",
            )
        await self._start_listeners()
        # --- end security and listeners ---
        # --- cluster metadata archive (streamd/tiering/cluster_archive.py) ---
        self.archive = self._start_archive()
        # --- end cluster metadata archive ---
        self._wire_dynamic_config()
        self.jobs = self._start_jobs()
        # --- log compaction (streamd/log/compaction) ---
        self.cleaner.start()
        self.metrics.add_collector(self.cleaner.metric_families)
        # --- end log compaction ---
        if self.transforms is not None:
            await self.transforms.open()
        self.ready = True

    # ---- security and listeners ------------------------------------------------------------------

    async def _start_listeners(self) -> None:
        """One server per listener; the first listener's address is the broker's default one."""
        assert self.ctx is not None
        cfg = self.config
        listeners = cfg.listeners
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

    def _admin_server(self) -> AdminServer:
        """The admin API (see :mod:`streamd.broker.admin_api`): routes read the broker through
        :class:`~streamd.broker.admin_routes.AdminSources`."""
        assert self.ctx is not None and self.logs is not None and self.security is not None
        ctx, security = self.ctx, self.security

        def check_password(user: str, password: str) -> bool:
            plain = new_mechanism("PLAIN", security.credentials.get)
            try:
                plain.step(f"\0{user}\0{password}".encode())
            except AuthenticationFailed:
                return False
            return True

        server = AdminServer(
            BasicAuth(check_password, required=self.config["admin.require_auth"]),
            security.authorizer,
        )
        sources = admin_routes.AdminSources(
            node_id=self.config["node_id"],
            cluster_id=lambda: ctx.cluster_id,
            kafka_address=lambda: f"{ctx.advertised_host}:{ctx.advertised_port}",
            logs=self.logs,
            metrics=self.metrics,
            health=lambda: self.health.report()[1],
            ready=lambda: self.ready,
            tiering=lambda: self.tiering,
            archive=lambda: self.archive,
            log_dirs=self.log_dirs_report,
        )
        admin_routes.install(server, sources)
        kafka = console.kafka_access(
            self.config, lambda user, mech: security.credentials.get(user, mech) is not None
        )
        console.install(server, sources, self.groups, kafka)
        self._transaction_routes(server)
        self._compaction_routes(server)
        if self.transforms is not None and self._transforms_side is not None:
            transforms.install_routes(server, self.transforms, self._transforms_side)
        return server

    def _compaction_routes(self, server: AdminServer) -> None:
        """``/v1/topics/{topic}/compaction``: per partition, the dirty section and the last
        cleaning (``streamd topic describe`` shows it); DESCRIBE on the topic."""

        async def compaction(request: web.Request) -> web.Response:
            topic = request.match_info["topic"]
            require_topic(request, topic)
            rows = self.cleaner.status(topic) if self.cleaner is not None else None
            if rows is None:
                return error(404, f"unknown topic {topic!r}")
            return json_response({"topic": topic, "partitions": rows})

        server.get("/v1/topics/{topic}/compaction", compaction)

    def _transaction_routes(self, server: AdminServer) -> None:
        """``/v1/transactions[?state=S,...]`` and ``/v1/transactions/{id}`` (``streamd
        transaction list|describe``); DESCRIBE on the cluster, as the Kafka listings need."""

        async def listing(request: web.Request) -> web.Response:
            require_cluster(request)
            assert self.txn is not None
            states = [s for s in request.query.get("state", "").split(",") if s]
            try:
                return json_response(transactions_json(self.txn, states))
            except ValueError as exc:
                return error(400, str(exc))

        async def one(request: web.Request) -> web.Response:
            require_cluster(request)
            assert self.txn is not None
            transactional_id = request.match_info["transactional_id"]
            d = self.txn.describe(transactional_id)
            if d is None:
                return error(404, f"unknown transactional id {transactional_id!r}")
            return json_response(describe_json(d, int(time.time() * 1000)))

        server.get("/v1/transactions", listing)
        server.get("/v1/transactions/{transactional_id}", one)

    # ---- tiered storage -------------------------------------------------------------------------

    def _may_delete_local(self, topic: str, partition: int, segment: Any) -> bool:
        """The log manager's tiering veto, given at construction: until tiering runs (or if it
        never starts) nothing tiered leaves local disk (invariant 4 fails closed)."""
        tiering = self.tiering
        return tiering is not None and tiering.may_delete_local(topic, partition, segment)

    async def _start_tiering(self) -> TieringService:
        """Open the object store and start the uploader. An unreachable or misconfigured bucket
        is logged, reported by ``/v1/health`` and retried by every upload tick; it never stops
        the broker (invariant 4 keeps local data until archived)."""
        from streamd.broker.restore import open_configured_store

        cfg = self.config
        assert self.logs is not None
        inner = open_configured_store(cfg)
        store = MeteredStore(inner, self.metrics)
        if cfg["tiering.store"].startswith("s3://"):
            self.metrics.add_collector(_s3_retry_counter(inner))
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
            compaction=self.cleaner,
            settings=TieringSettings(
                upload_interval_ms=cfg["tiering.upload_interval_ms"],
                upload_concurrency=cfg["tiering.upload_concurrency"],
                read_ahead_chunks=cfg["tiering.read_ahead_chunks"],
                delete_on_topic_delete=cfg["tiering.delete_on_topic_delete"],
                merge_target_bytes=cfg["tiering.merge_target_bytes"],
                segment_max_upload_interval_ms=cfg["tiering.segment_max_upload_interval_ms"],
                shutdown_upload_timeout_ms=cfg["tiering.shutdown_upload_timeout_ms"],
                fail_after_segment_upload=cfg["tiering.debug.fail_after_segment_upload"],
            ),
        )
        await service.start()  # probes the bucket: an unusable one shows in /v1/health at once
        if service.store_error is None:
            log.info(
                "tiered storage: object store %s%s", store.description,
                " (tiering.store not set: next to data_dir)"
                if "tiering.store" in cfg.defaulted else "",
            )
        self.metrics.add_collector(service.metric_families)
        self.health.register("tiering", service.health)
        return service

    async def _start_replicas(self, waiters: AppendWaiters) -> ReadReplicas:
        """Read replicas (``remote.readreplica``): served from their origins' stores, opened
        with this broker's own ``tiering.s3.*`` settings, through the shared chunk cache."""
        from streamd.broker.restore import s3_options
        from streamd.tiering.store import open_store

        cfg = self.config
        tiering = self.tiering
        assert tiering is not None and self.logs is not None
        options = s3_options(cfg)
        replicas = ReadReplicas(
            self.logs,
            tiering.cache,
            state_dir=cfg.data_dir / "tiering" / "readreplicas",
            own_store=cfg["tiering.store"],
            open_store=lambda url: open_store(url, s3_options=options),
            sync_interval_ms=cfg["tiering.readreplica_sync_interval_ms"],
            read_ahead_chunks=cfg["tiering.read_ahead_chunks"],
            on_moved=waiters.notify,
            on_promoted=tiering.on_topic_changed,
            own_archive_bytes=tiering.archived_bytes,
        )
        tiering.borrowed = replicas
        await replicas.start()
        self.metrics.add_collector(replicas.metric_families)
        self.health.register("read_replicas", replicas.health)
        return replicas

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
            ends=lambda: end_offsets(logs),
            offsets_interval_ms=self.config["tiering.offsets_archive_interval_ms"],
            transforms=self.transforms.documents if self.transforms is not None else None,
        )
        self.tiering.tick_hooks.append(archive.tick)
        self.health.register("cluster_archive", archive.health)
        return archive

    async def _archive_tail(self) -> None:
        """Shutdown step (tiering): once nothing appends any more and before the logs close,
        archive every tiered partition's tail within ``tiering.shutdown_upload_timeout_ms``, so
        a planned stop followed by a wipe and restore loses nothing."""
        if self.tiering is None:
            return
        try:
            await self.tiering.archive_tail()
        except Exception:
            log.exception("archiving the tail at shutdown failed; local data is kept")

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
            if "tiering.readreplica_sync_interval_ms" in changed and self.replicas is not None:
                self.replicas.set_sync_interval(values["tiering.readreplica_sync_interval_ms"])
            if "tiering.cache_max_bytes" in changed:
                tiering.cache.max_bytes = values["tiering.cache_max_bytes"]
            if "tiering.offsets_archive_interval_ms" in changed and self.archive is not None:
                self.archive.offsets_interval_ms = values["tiering.offsets_archive_interval_ms"]
            if "sasl.failed_authentication_delay_ms" in changed and self.security is not None:
                delay = values["sasl.failed_authentication_delay_ms"]
                self.security.failed_auth_delay_s = delay / 1000
            if "log.level" in changed:
                self._apply_log_level()
            if any(name.startswith("log.cleaner.") for name in changed) and self.cleaner:
                self.cleaner.reconfigure(
                    map_bytes=values["log.cleaner.dedupe_buffer_bytes"],
                    io_bytes_per_second=values["log.cleaner.io_max_bytes_per_second"],
                    backoff_ms=values["log.cleaner.backoff_ms"],
                )
            if "log.housekeeping_interval_ms" in changed and self.jobs is not None:
                self.jobs.reschedule("housekeeping", values["log.housekeeping_interval_ms"])
            self.connections.configure(cfg)
            log.info("dynamic broker configs changed: %s", ", ".join(sorted(changed)))

        cfg.dynamic.checks.append(check_topics)
        cfg.dynamic.appliers.append(apply)

    def _apply_log_level(self) -> None:
        level = self.config["log.level"] or self._startup_log_level
        logging.getLogger().setLevel(level)

    def _start_jobs(self) -> Jobs:
        """Housekeeping (segment roll, retention) and, with an interval fsync policy, the
        periodic flush run on one apscheduler (see :mod:`streamd.broker.scheduler`)."""
        logs = self.logs
        assert logs is not None
        jobs = Jobs()

        async def housekeeping() -> None:
            removed = await logs.run_housekeeping(int(time.time() * 1000))
            for name, segments in sorted(removed.items()):
                log.info(
                    "%s: local retention removed %d segment(s), offsets %d-%d (%d bytes)",
                    name, len(segments), segments[0].base_offset,
                    segments[-1].next_offset - 1, sum(s.size for s in segments),
                )

        jobs.every(
            "housekeeping", self.config["log.housekeeping_interval_ms"], housekeeping,
            on_error="housekeeping failed; will retry",
        )
        policy = FsyncPolicy.parse(self.config["fsync"])
        if policy.interval_ms:
            jobs.every(
                "interval-fsync", policy.interval_ms, logs.flush_all,
                on_error="periodic fsync failed; will retry",
            )
        jobs.start()
        return jobs

    async def stop(self) -> None:
        if self.jobs is not None:
            self.jobs.shutdown()
        if self.transforms is not None:
            # Workers first: each commits its open transaction through the broker.
            with contextlib.suppress(Exception):
                await self.transforms.close()
        for server in self.servers:
            server.close()
        self.connections.stop_reading()
        busy = await self.connections.drain(DRAIN_TIMEOUT_S)
        if busy:
            log.warning(
                "%d connections still had requests in flight after %.0f s; closing them "
                "unanswered", busy, DRAIN_TIMEOUT_S,
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
        if self.cleaner is not None:
            await self.cleaner.stop()
        await self._archive_tail()
        if self.archive is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.archive.flush(), 5)
        for name, closing in (
            ("transactions", self.txn),
            ("groups", self.groups),
            ("read replicas", self.replicas),
            ("tiering", self.tiering),
        ):
            if closing is not None:
                try:
                    await closing.close()
                except Exception:
                    log.exception("closing %s failed", name)
        if self.logs is not None:
            await self.logs.close()
        if self.security is not None:
            self.security.close()
        self.lock.release()
        log.info("streamd stopped")


def _s3_retry_counter(store: Any) -> Any:
    """Retries the S3 backend counts itself (requests by verb are the tiering layer's
    ``streamd_tiering_bucket_requests_total``)."""
    from streamd.tiering.s3_store import S3Store

    assert isinstance(store, S3Store)

    def families() -> list[Any]:
        return [
            ("streamd_s3_retries_total", "S3 requests retried after a transient failure.",
             "counter", [({}, store.retries)]),
        ]

    return families


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


def _sendfile_descriptor_budget() -> int:
    """A quarter of the open-file limit for descriptors held by unsent fetch responses (see
    streamd.kafka.zerocopy): a client that stops reading cannot exhaust the rest."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(256, soft // 4)


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
