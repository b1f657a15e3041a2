"""Broker configuration: one table of keys, loaded from TOML, the environment and ``--set``.

Precedence, lowest first: built-in defaults, the config file, environment variables
(``STREAMD_`` + the key upper-cased with ``.`` -> ``_``, e.g. ``STREAMD_KAFKA_LISTEN``), then
``--set key=value``. Unknown keys and invalid values raise :class:`ConfigError` naming the key,
so a typo stops startup instead of being silently ignored.

Broker-wide topic defaults use Kafka's topic config names under ``defaults.`` (e.g.
``defaults.segment.bytes``); they are validated by the log layer's topic-config table.
Relative paths (``data_dir``, ``file://`` stores) are resolved against the working directory.
Without ``tiering.store`` the bucket is the directory ``<data_dir>-bucket`` next to data_dir
(not inside it: wiping data_dir and restoring from the bucket must leave the bucket alone),
so two brokers with different data_dirs never share a bucket by accident.

Keys marked ``dynamic`` (and every ``defaults.*``) can also be changed while the broker runs,
through Kafka's AlterConfigs / IncrementalAlterConfigs on the BROKER resource (``streamd cluster
config set``); those values are persisted and take precedence over the file (see
:class:`Dynamic`). The others are read-only at runtime: they are read once at start-up.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from streamd.errors import ConfigError, StreamdError


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    return int(v)


def _positive(v: Any) -> int:
    n = _int(v)
    if n <= 0:
        raise ValueError("expected a positive integer")
    return n


def _non_negative(v: Any) -> int:
    n = _int(v)
    if n < 0:
        raise ValueError("expected an integer >= 0")
    return n


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(v: Any) -> str:
    s = str(v).strip().upper()
    if s and s not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)} (or empty: --log-level)")
    return s


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _hostport(v: Any) -> str:
    s = str(v)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT")
    return s


def _opt_hostport(v: Any) -> str:
    return "" if str(v) == "" else _hostport(v)


def _fsync(v: Any) -> str:
    s = str(v).strip().lower()
    if s in ("always", "never") or (s.isdigit() and int(s) > 0):
        return s
    raise ValueError("expected always, never, or an interval in milliseconds")


def _store(v: Any) -> str:
    s = str(v)
    if s == "" or s.startswith("file://") or s.startswith("s3://"):
        return s
    raise ValueError("expected file:///abs/dir or s3://bucket[/prefix]")


def _cleaner_crash_point(v: Any) -> str:
    s = str(v).strip().lower()
    if s not in ("", "commit", "install"):
        raise ValueError("expected commit, install or empty")
    return s


def _nice(v: Any) -> int:
    n = _int(v)
    if not 0 <= n <= 19:
        raise ValueError("expected a nice value from 0 to 19")
    return n


def _str(v: Any) -> str:
    return str(v)


def _csv(v: Any) -> list[str]:
    items = v if isinstance(v, list) else str(v).replace(";", ",").split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def _listeners(v: Any) -> str:
    out = []
    for item in _csv(v):
        name, sep, addr = item.partition("://")
        if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{item!r}: expected NAME://HOST:PORT")
        _hostport(addr)
        out.append(f"{name.upper()}://{addr}")
    names = [i.partition("://")[0] for i in out]
    if len(set(names)) != len(names):
        raise ValueError("listener names must be unique")
    return ",".join(out)


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _protocol_map(v: Any) -> str:
    out = []
    for item in _csv(v):
        name, sep, proto = item.partition(":")
        if not sep or not name or proto.upper() not in SECURITY_PROTOCOLS:
            raise ValueError(f"{item!r}: expected NAME:{'|'.join(SECURITY_PROTOCOLS)}")
        out.append(f"{name.upper()}:{proto.upper()}")
    return ",".join(out)


def _mechanisms(v: Any) -> str:
    items = [m.upper() for m in _csv(v)]
    for m in items:
        if m not in SASL_MECHANISMS:
            raise ValueError(f"unknown SASL mechanism {m!r} (have {', '.join(SASL_MECHANISMS)})")
    return ",".join(items)


def _client_auth(v: Any) -> str:
    s = str(v).strip().lower()
    if s not in ("none", "requested", "required"):
        raise ValueError("expected none, requested or required")
    return s


def _iterations(v: Any) -> int:
    n = _int(v)
    if not 4096 <= n <= 16384:
        raise ValueError("SCRAM iterations must be between 4096 and 16384")
    return n


def _principals(v: Any) -> str:
    from streamd.security.service import parse_principals

    items = parse_principals(";".join(v) if isinstance(v, list) else str(v))
    return ";".join(items)


def _bootstrap_users(v: Any) -> str:
    items = _csv(v)
    for item in items:
        user, _, rest = item.partition(":")
        password, _, mechanism = rest.rpartition(":")
        if not (user and password) or mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ValueError("expected user:password:SCRAM-SHA-256|SCRAM-SHA-512 entries")
    return ",".join(items)


@dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    dynamic: bool = False
    """Can be changed at runtime (AlterConfigs on the BROKER resource); see :class:`Dynamic`."""

    @property
    def kafka_type(self) -> str:
        """The ConfigType DescribeConfigs reports: boolean, int, long or string."""
        if isinstance(self.default, bool):
            return "boolean"
        if isinstance(self.default, int):
            return "int" if -(2**31) <= self.default < 2**31 else "long"
        return "string"


KEYS: tuple[Key, ...] = (
    Key("data_dir", _str, "./data/broker", "Directory for partition logs and metadata."),
    Key("node_id", _int, 0, "This broker's node id (single-node: 0)."),
    Key("cluster_id", _str, "", "Cluster id reported to clients; generated once if empty."),
    Key("kafka.listen", _hostport, "127.0.0.1:9092", "Kafka listener HOST:PORT."),
    Key("kafka.advertised", _opt_hostport, "", "Address given to clients; default: listen."),
    Key("admin.listen", _opt_hostport, "127.0.0.1:9644", "Admin HTTP API + /metrics; '' = off."),
    Key(
        "admin.require_auth",
        _bool,
        False,
        "Admin API needs HTTP basic auth with a SCRAM user (Redpanda's admin_api_require_auth).",
    ),
    Key("fsync", _fsync, "always", "always (group commit before ack), never, or interval ms."),
    Key(
        "auto_create_topics",
        _bool,
        False,
        "Create unknown topics on Metadata/Produce.",
        dynamic=True,
    ),
    Key(
        "default_partitions",
        _positive,
        1,
        "Partitions for auto-created / unspecified topics.",
        dynamic=True,
    ),
    Key("socket.request.max.bytes", _int, 104857600, "Largest request frame accepted."),
    Key("kafka.sendfile", _bool, True, "Send large fetched record sets with sendfile (no TLS)."),
    Key("kafka.max_inflight_bytes", _int, 67108864, "Request bytes in flight per connection."),
    Key(
        "log.page_cache_window_bytes",
        _int,
        33554432,
        "Newest synced bytes per segment kept in the OS page cache; -1 = OS decides.",
    ),
    Key(
        "log.syncfs",
        _bool,
        True,
        "Group commit ends with one syncfs(2) of the data filesystem, not fsync per file.",
    ),
    Key(
        "log.housekeeping_interval_ms",
        _positive,
        5000,
        "Segment roll and retention check period.",
        dynamic=True,
    ),
    Key("log.cleaner.enable", _bool, True, "Compact topics with cleanup.policy=compact."),
    Key(
        "log.cleaner.dedupe_buffer_bytes",
        _positive,
        134217728,
        "Memory bound of the cleaner's key -> offset map (one pass maps what fits).",
        dynamic=True,
    ),
    Key(
        "log.cleaner.io_max_bytes_per_second",
        _non_negative,
        20971520,
        "Cleaner reads plus writes per second (keeps live latency low); 0 = no limit.",
        dynamic=True,
    ),
    Key(
        "log.cleaner.backoff_ms",
        _positive,
        15000,
        "How often the cleaner looks for dirty logs.",
        dynamic=True,
    ),
    Key(
        "log.cleaner.debug.crash_at",
        _cleaner_crash_point,
        "",
        "Test hook: exit right after the first swap's commit or install step (crash simulation).",
    ),
    Key(
        "log.max_partitions",
        _positive,
        10000,
        "Partitions one broker holds at most (CreateTopics beyond: POLICY_VIOLATION).",
    ),
    Key(
        "log.max_open_segment_files",
        _non_negative,
        0,
        "Segment files kept open at once (LRU); 0 = a quarter of the open-file limit.",
    ),
    Key(
        "log.level",
        _log_level,
        "",
        "Level of streamd's log (DEBUG, INFO, WARNING, ERROR); '' = serve --log-level.",
        dynamic=True,
    ),
    Key(
        "group.initial.rebalance.delay.ms",
        _non_negative,
        3000,
        "Wait for more members of a new group.",
        dynamic=True,
    ),
    Key(
        "group.min.session.timeout.ms",
        _positive,
        6000,
        "Smallest session timeout a member may ask.",
        dynamic=True,
    ),
    Key(
        "group.max.session.timeout.ms",
        _positive,
        1800000,
        "Largest session timeout a member may ask.",
        dynamic=True,
    ),
    Key(
        "offsets.retention.minutes",
        _positive,
        10080,
        "Keep offsets of an empty group this long.",
        dynamic=True,
    ),
    Key(
        "offset.metadata.max.bytes",
        _non_negative,
        4096,
        "Largest metadata string of a commit.",
        dynamic=True,
    ),
    # --- transactions (streamd/txn) ---
    Key("transaction.max.timeout.ms", _positive, 900000, "Largest transaction.timeout.ms allowed."),
    Key(
        "transactional.id.expiration.ms",
        _positive,
        604800000,
        "Forget a transactional id idle this long.",
    ),
    Key(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        _positive,
        10000,
        "How often transactions past their timeout are aborted.",
    ),
    Key(
        "transaction.remove.expired.transaction.cleanup.interval.ms",
        _positive,
        3600000,
        "How often expired transactional ids are removed.",
    ),
    Key(
        "transaction.debug.exit_after_markers",
        _int,
        -1,
        "Test hook: exit after this many markers of a commit are written (crash simulation).",
    ),
    # --- end transactions ---
    Key(
        "tiering.store",
        _store,
        "",
        "Object store URL; '' = file:// directory '<data_dir>-bucket' next to data_dir.",
    ),
    Key("tiering.s3.endpoint_url", _str, "", "S3 endpoint (MinIO, moto); '' = AWS."),
    Key("tiering.s3.region", _str, "us-east-1", "S3 region."),
    Key("tiering.s3.access_key_id", _str, "", "S3 access key; '' = AWS_* environment."),
    Key("tiering.s3.secret_access_key", _str, "", "S3 secret; '' = AWS_* environment."),
    Key("tiering.s3.path_style", _bool, True, "Path-style addressing (MinIO, moto)."),
    Key(
        "tiering.upload_interval_ms",
        _positive,
        10000,
        "How often sealed segments are uploaded.",
        dynamic=True,
    ),
    Key(
        "tiering.offsets_archive_interval_ms",
        _positive,
        10000,
        "How often changed committed group offsets are archived (restore).",
        dynamic=True,
    ),
    Key("tiering.upload_concurrency", _int, 4, "Parallel segment uploads."),
    Key("tiering.cache_dir", _str, "", "Remote read cache directory; '' = data_dir/cache."),
    Key(
        "tiering.cache_max_bytes",
        _non_negative,
        1073741824,
        "Bound of the remote read cache (a smaller bound applies from the next chunk cached).",
        dynamic=True,
    ),
    Key("tiering.delete_on_topic_delete", _bool, True, "DeleteTopics removes bucket objects."),
    Key("tiering.cache_chunk_bytes", _int, 16777216, "Size of one ranged GET / cached chunk."),
    Key("tiering.cache_memory_bytes", _int, 268435456, "Recently used chunks kept in memory."),
    Key("tiering.read_ahead_chunks", _int, 2, "Chunks prefetched ahead of a remote reader."),
    Key(
        "tiering.segment_max_upload_interval_ms",
        _int,
        3600000,
        "Roll and archive active-segment data older than this (bounds loss on restore; -1 off).",
    ),
    Key(
        "tiering.shutdown_upload_timeout_ms",
        _int,
        30000,
        "On SIGTERM, archive every tiered partition's tail for at most this long.",
    ),
    Key(
        "tiering.merge_target_bytes",
        _int,
        16777216,
        "Adjacent small sealed segments are uploaded as one object up to this size (0 = off).",
    ),
    Key(
        "tiering.readreplica_sync_interval_ms",
        _positive,
        10000,
        "How often a read replica re-reads its origin's manifests (new archived data shows "
        "within one interval).",
        dynamic=True,
    ),
    Key(
        "tiering.debug.fail_after_segment_upload",
        _bool,
        False,
        "Test hook: exit right after the first segment object is stored (crash simulation).",
    ),
    # --- security (streamd/security) ---
    Key("kafka.listeners", _listeners, "", "NAME://HOST:PORT,...; '' = kafka.listen (PLAINTEXT)."),
    Key("kafka.advertised_listeners", _listeners, "", "NAME://HOST:PORT per listener."),
    Key("kafka.listener_security_protocols", _protocol_map, "", "NAME:PROTOCOL,... map."),
    Key("tls.cert_file", _str, "", "PEM certificate (chain) for SSL / SASL_SSL listeners."),
    Key("tls.key_file", _str, "", "PEM private key of tls.cert_file."),
    Key("tls.ca_file", _str, "", "PEM CA bundle that verifies client certificates."),
    Key("tls.client_auth", _client_auth, "none", "Client certificates: none|requested|required."),
    Key("sasl.mechanisms", _mechanisms, "SCRAM-SHA-256,SCRAM-SHA-512", "Enabled mechanisms."),
    Key(
        "sasl.failed_authentication_delay_ms",
        _non_negative,
        100,
        "Delay before a failed-login answer.",
        dynamic=True,
    ),
    Key("security.authorization", _bool, False, "Enforce ACLs (off: everything allowed)."),
    Key("security.super_users", _principals, "", "Principals allowed everything, e.g. User:admin."),
    Key("security.bootstrap_users", _bootstrap_users, "", "user:password:MECHANISM created once."),
    Key("security.scram_iterations", _iterations, 4096, "Iterations of bootstrap credentials."),
    Key("allow.everyone.if.no.acl.found", _bool, False, "Allow when no ACL matches a resource."),
    Key(
        "kafka.connections_max_idle_ms",
        _positive,
        600000,
        "Close a connection that sent no request and had no answer pending this long.",
    ),
    Key(
        "kafka.max_connections",
        _non_negative,
        0,
        "Open Kafka connections; 0 = no limit.",
        dynamic=True,
    ),
    Key(
        "kafka.max_connections_per_ip",
        _non_negative,
        0,
        "Connections per address; 0 = no limit.",
        dynamic=True,
    ),
    Key(
        "kafka.connections_max_reauth_ms",
        _non_negative,
        0,
        "KIP-368: SASL sessions last this long, then must re-authenticate; 0 = forever.",
    ),
    Key("sasl.max_receive_bytes", _positive, 16384, "Largest request frame before authentication."),
    Key(
        "sasl.authentication_timeout_ms",
        _non_negative,
        30000,
        "Close a SASL connection not authenticated within this time; 0 = no limit.",
    ),
    Key("sasl.auth_threads", _positive, 1, "Threads that verify passwords (PBKDF2), apart."),
    Key("fetch.max.bytes", _positive, 57671680, "Largest Fetch response (Kafka's 55 MiB default)."),
    # --- end security ---
    # --- data transforms (streamd/transforms) ---
    Key("transforms.enabled", _bool, False, "Run data transforms (user Python code) here."),
    Key(
        "transforms.memory_limit_bytes",
        _positive,
        536870912,
        "Resident memory of a transform's worker above which it is restarted.",
    ),
    Key("transforms.record_timeout_ms", _positive, 10000, "Longest a transform takes per record."),
    Key(
        "transforms.commit_interval_ms",
        _positive,
        100,
        "How often a transform commits output and progress (one transaction).",
    ),
    Key(
        "transforms.max_restarts",
        _non_negative,
        5,
        "Worker restarts in a row without progress before the transform is marked failed.",
    ),
    Key(
        "transforms.restart_backoff_max_ms",
        _positive,
        60000,
        "Longest wait before a crashed worker is restarted (backoff from 1 s).",
    ),
    Key("transforms.worker_nice", _nice, 10, "CPU priority (nice 0-19) of worker processes."),
    # --- end data transforms ---
)
SENSITIVE_KEYS = frozenset({"security.bootstrap_users"})
KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}
DEFAULTS_PREFIX = "defaults."


Scope = Literal["broker", "cluster"]
BROKER_SCOPE: Final[Scope] = "broker"
CLUSTER_SCOPE: Final[Scope] = "cluster"
DYNAMIC_FILE = "broker-configs.json"
Check = Callable[[Mapping[str, Any], Mapping[str, str]], None]
Apply = Callable[[frozenset[str]], None]


@dataclass(eq=False)
class Dynamic:
    """Kafka's dynamic broker configs: values set at runtime through AlterConfigs /
    IncrementalAlterConfigs on a BROKER resource, for this broker (resource name = node id) or
    as the cluster-wide default (resource name ""), persisted in ``data_dir/broker-configs.json``.

    Precedence, highest first: this broker's dynamic value, the cluster default, the static value
    (file, environment, ``--set``), the built-in default; so, as in Kafka, a dynamic value
    outlives a restart with a different config file until it is deleted. Only keys marked
    ``dynamic`` (they take effect without a restart) and the topic defaults (``defaults.*``) can
    be set. ``checks`` run before a change is accepted (they raise to refuse it);
    ``appliers`` run after it, with the names of the keys whose effective value changed.
    """

    static_values: dict[str, Any] = field(default_factory=dict)
    static_topic_defaults: dict[str, str] = field(default_factory=dict)
    layers: dict[str, dict[str, str]] = field(
        default_factory=lambda: {BROKER_SCOPE: {}, CLUSTER_SCOPE: {}}
    )
    checks: list[Check] = field(default_factory=list)
    appliers: list[Apply] = field(default_factory=list)


@dataclass(frozen=True)
class BrokerConfig:
    values: dict[str, Any]
    """Effective values; dynamic changes update this dict in place."""
    topic_defaults: dict[str, str] = field(default_factory=dict)
    """Effective broker-wide topic defaults (``defaults.*`` without the prefix), in place too."""
    explicit: frozenset[str] = frozenset()
    """Keys the file, the environment or ``--set`` gave a value (STATIC_BROKER_CONFIG)."""
    dynamic: Dynamic = field(default_factory=Dynamic)
    defaulted: frozenset[str] = frozenset()
    """Keys whose value was derived from another (``tiering.store`` from ``data_dir``)."""

    def __post_init__(self) -> None:
        if not self.dynamic.static_values:
            self.dynamic.static_values.update(self.values)
            self.dynamic.static_topic_defaults.update(self.topic_defaults)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    # ---- dynamic configs -------------------------------------------------------------------

    @property
    def dynamic_path(self) -> Path:
        return self.data_dir / DYNAMIC_FILE

    def is_dynamic(self, name: str) -> bool:
        if name.startswith(DEFAULTS_PREFIX):
            from streamd.log.topic_config import TOPIC_CONFIG_KEYS

            return name[len(DEFAULTS_PREFIX) :] in TOPIC_CONFIG_KEYS
        key = KEYS_BY_NAME.get(name)
        return key is not None and key.dynamic

    def check_dynamic(self, name: str, raw: str | None) -> None:
        """Refuse a key that cannot be set at runtime, or a value it does not accept; the
        message names the key (ConfigError, answered INVALID_CONFIG)."""
        if name.startswith(DEFAULTS_PREFIX):
            from streamd.log.topic_config import TOPIC_CONFIG_KEYS

            topic_key = TOPIC_CONFIG_KEYS.get(name[len(DEFAULTS_PREFIX) :])
            if topic_key is None:
                raise ConfigError(f"{name}: unknown broker config (not a topic config)")
            if raw is not None:
                try:
                    topic_key.parse(name, raw)
                except StreamdError as exc:
                    raise ConfigError(str(exc)) from None
            return
        key = KEYS_BY_NAME.get(name)
        if key is None:
            hint = _kafka_hint(name)
            raise ConfigError(f"{name}: unknown broker config{hint}")
        if not key.dynamic:
            raise ConfigError(
                f"{name}: read-only, it cannot be changed at runtime (set it in the config "
                "file and restart)"
            )
        if raw is not None:
            try:
                key.parse(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"invalid value {raw!r} for {name!r}: {exc}") from None

    def layer(self, scope: Scope) -> dict[str, str]:
        return dict(self.dynamic.layers[scope])

    def origins(self, name: str) -> list[tuple[str, Any]]:
        """Where ``name``'s value comes from, highest precedence first: (``broker`` |
        ``cluster`` | ``static`` | ``default``, value) for every layer that has one."""
        out: list[tuple[str, Any]] = []
        for scope in (BROKER_SCOPE, CLUSTER_SCOPE):
            if name in self.dynamic.layers[scope]:
                out.append((scope, self.dynamic.layers[scope][name]))
        if name.startswith(DEFAULTS_PREFIX):
            from streamd.log.topic_config import TOPIC_CONFIG_KEYS

            topic_name = name[len(DEFAULTS_PREFIX) :]
            if topic_name in self.dynamic.static_topic_defaults:
                out.append(("static", self.dynamic.static_topic_defaults[topic_name]))
            out.append(("default", TOPIC_CONFIG_KEYS[topic_name].default))
            return out
        if name in self.explicit:
            out.append(("static", self.dynamic.static_values[name]))
        out.append(("default", KEYS_BY_NAME[name].default))
        return out

    def replace_layer(self, scope: Scope, layer: Mapping[str, str]) -> frozenset[str]:
        """Make ``layer`` the dynamic values of ``scope`` (after every key passed
        :meth:`check_dynamic`): run the checks on the result, then apply it in place. Returns
        the keys whose effective value changed. Does not persist (see :meth:`save_dynamic`)."""
        layers, values, topic_defaults = self.check_layer(scope, layer)
        changed = {k for k, v in values.items() if self.values.get(k) != v}
        changed |= {
            DEFAULTS_PREFIX + k
            for k in set(topic_defaults) | set(self.topic_defaults)
            if topic_defaults.get(k) != self.topic_defaults.get(k)
        }
        self.dynamic.layers[scope] = layers[scope]
        self.values.clear()
        self.values.update(values)
        self.topic_defaults.clear()
        self.topic_defaults.update(topic_defaults)
        frozen = frozenset(changed)
        if frozen:
            for apply in self.dynamic.appliers:
                apply(frozen)
        return frozen

    def check_layer(
        self, scope: Scope, layer: Mapping[str, str]
    ) -> tuple[dict[str, dict[str, str]], dict[str, Any], dict[str, str]]:
        """What :meth:`replace_layer` would make of the config, checked but not applied:
        (the dynamic layers, effective values, effective topic defaults)."""
        layers = {scope_: dict(values) for scope_, values in self.dynamic.layers.items()}
        layers[scope] = {str(k): str(v) for k, v in layer.items()}
        values, topic_defaults = self._effective(layers)
        for check in self.dynamic.checks:
            check(values, topic_defaults)
        return layers, values, topic_defaults

    def _effective(
        self, layers: Mapping[str, Mapping[str, str]]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        from streamd.log.topic_config import TopicConfig

        values = dict(self.dynamic.static_values)
        topic_defaults = dict(self.dynamic.static_topic_defaults)
        for scope in (CLUSTER_SCOPE, BROKER_SCOPE):
            for name, raw in layers[scope].items():
                if name.startswith(DEFAULTS_PREFIX):
                    topic_defaults[name[len(DEFAULTS_PREFIX) :]] = raw
                else:
                    values[name] = KEYS_BY_NAME[name].parse(raw)
        try:
            TopicConfig.from_overrides(topic_defaults, {})
        except StreamdError as exc:
            raise ConfigError(f"invalid topic default: {exc}") from None
        for low, high in (("group.min.session.timeout.ms", "group.max.session.timeout.ms"),):
            if values[low] > values[high]:
                raise ConfigError(f"{low}={values[low]} must not exceed {high}={values[high]}")
        return values, topic_defaults

    def load_dynamic(self) -> list[str]:
        """Read the persisted dynamic values at start-up (before anything uses the config).
        Keys that are no longer dynamic or no longer valid are skipped with a warning (an
        upgrade must not stop the broker); returns the warnings."""
        try:
            doc = json.loads(self.dynamic_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable {self.dynamic_path}: {exc}") from None
        warnings = []
        scopes: tuple[Scope, ...] = (CLUSTER_SCOPE, BROKER_SCOPE)
        layers: dict[Scope, dict[str, str]] = {scope: {} for scope in scopes}
        for scope in scopes:
            for name, raw in dict(doc.get(scope) or {}).items():
                try:
                    self.check_dynamic(str(name), str(raw))
                except StreamdError as exc:
                    warnings.append(f"ignoring dynamic config {name}={raw!r} ({exc})")
                    continue
                layers[scope][str(name)] = str(raw)
        for scope, layer in layers.items():
            try:
                self.replace_layer(scope, layer)
            except StreamdError as exc:
                warnings.append(f"ignoring the dynamic {scope} configs ({exc})")
        return warnings

    def dynamic_document(self) -> bytes:
        doc = {"format": 1, **{s: dict(sorted(v.items())) for s, v in self.dynamic.layers.items()}}
        return (json.dumps(doc, indent=1) + "\n").encode()

    @property
    def data_dir(self) -> Path:
        return Path(self.values["data_dir"])

    @property
    def listen(self) -> tuple[str, int]:
        return split_hostport(self.values["kafka.listen"])

    @property
    def listeners(self) -> list[ListenerSpec]:
        return listener_specs(self.values)

    @property
    def advertised(self) -> tuple[str, int]:
        adv = self.values["kafka.advertised"]
        if adv:
            return split_hostport(adv)
        host, port = self.listen
        return ("localhost" if host in ("0.0.0.0", "::", "") else host), port


@dataclass(frozen=True)
class ListenerSpec:
    """One Kafka listener: where it binds, what it advertises, which security protocol."""

    name: str
    protocol: str
    host: str
    port: int
    advertised_host: str
    advertised_port: int


def listener_specs(values: Mapping[str, Any]) -> list[ListenerSpec]:
    """The listeners to open; without ``kafka.listeners`` the one PLAINTEXT ``kafka.listen``."""
    if not values["kafka.listeners"]:
        host, port = split_hostport(values["kafka.listen"])
        adv = values["kafka.advertised"]
        ahost, aport = split_hostport(adv) if adv else (_public(host), port)
        return [ListenerSpec("PLAINTEXT", "PLAINTEXT", host, port, ahost, aport)]
    protocols = dict(
        i.split(":", 1) for i in _csv(values["kafka.listener_security_protocols"])
    )
    advertised = dict(i.split("://", 1) for i in _csv(values["kafka.advertised_listeners"]))
    specs = []
    for item in _csv(values["kafka.listeners"]):
        name, _, addr = item.partition("://")
        protocol = protocols.get(name, name if name in SECURITY_PROTOCOLS else "")
        if not protocol:
            raise ConfigError(
                f"listener {name} has no entry in 'kafka.listener_security_protocols'"
            )
        host, port = split_hostport(addr)
        if name in advertised:
            ahost, aport = split_hostport(advertised.pop(name))
        else:
            ahost, aport = _public(host), port
        specs.append(ListenerSpec(name, protocol, host, port, ahost, aport))
    if advertised:
        raise ConfigError(
            f"'kafka.advertised_listeners' names unknown listener(s) {', '.join(advertised)}"
        )
    return specs


def _public(host: str) -> str:
    return "localhost" if host in ("0.0.0.0", "::", "") else host


def _check_security(values: Mapping[str, Any]) -> None:
    specs = listener_specs(values)
    if any(s.protocol in ("SSL", "SASL_SSL") for s in specs):
        for key in ("tls.cert_file", "tls.key_file"):
            if not values[key]:
                raise ConfigError(f"{key!r} is required by an SSL or SASL_SSL listener")
    if any(s.protocol.startswith("SASL_") for s in specs) and not values["sasl.mechanisms"]:
        raise ConfigError("'sasl.mechanisms' is empty but a SASL listener is configured")


def split_hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, name + ".")
        else:
            yield name, v


def _env_items(environ: Mapping[str, str], topic_keys: Iterable[str]) -> Iterable[tuple[str, str]]:
    for key in list(KEYS_BY_NAME) + [DEFAULTS_PREFIX + k for k in topic_keys]:
        env = "STREAMD_" + key.upper().replace(".", "_")
        if env in environ:
            yield key, environ[env]


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> BrokerConfig:
    """Build the broker config; raises ConfigError naming the offending key."""
    from streamd.log.topic_config import TOPIC_CONFIG_KEYS, TopicConfig

    topic_keys = list(TOPIC_CONFIG_KEYS)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw.update(_flatten(tomllib.load(fh)))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    raw.update(_env_items(os.environ if environ is None else environ, topic_keys))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        raw[key.strip()] = value

    values = {k.name: k.default for k in KEYS}
    topic_defaults: dict[str, str] = {}
    for key, value in raw.items():
        if key.startswith(DEFAULTS_PREFIX):
            name = key[len(DEFAULTS_PREFIX) :]
            if name not in topic_keys:
                raise ConfigError(f"unknown config key {key!r} (not a topic config)")
            topic_defaults[name] = _topic_value(value)
            continue
        spec = KEYS_BY_NAME.get(key)
        if spec is None:
            raise ConfigError(f"unknown config key {key!r}")
        try:
            values[key] = spec.parse(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid value {value!r} for {key!r}: {exc}") from None
    try:
        TopicConfig.from_overrides(topic_defaults, {})
    except Exception as exc:
        raise ConfigError(f"invalid topic default (defaults.*): {exc}") from None
    values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
    defaulted = set()
    store = values["tiering.store"]
    if not store:
        data_dir = Path(values["data_dir"])
        store = values["tiering.store"] = f"file://{data_dir.parent / (data_dir.name + '-bucket')}"
        defaulted.add("tiering.store")
    if store.startswith("file://"):
        values["tiering.store"] = "file://" + str(Path(store[7:]).expanduser().resolve())
    if not values["tiering.cache_dir"]:
        values["tiering.cache_dir"] = str(Path(values["data_dir"]) / "cache")
    _check_security(values)
    explicit = frozenset(k for k in raw if k in KEYS_BY_NAME)
    return BrokerConfig(
        values=values,
        topic_defaults=topic_defaults,
        explicit=explicit,
        defaulted=frozenset(defaulted),
    )


_KAFKA_BROKER_NAMES = {
    "auto.create.topics.enable": "auto_create_topics",
    "num.partitions": "default_partitions",
    "log.retention.check.interval.ms": "log.housekeeping_interval_ms",
}


def _kafka_hint(name: str) -> str:
    """For a Kafka broker property streamd spells differently: which key to use instead."""
    from streamd.log.topic_config import TOPIC_CONFIG_KEYS

    for key in TOPIC_CONFIG_KEYS.values():
        if key.server_default == name:
            return f"; streamd's broker-wide default of {key.name} is {DEFAULTS_PREFIX}{key.name}"
    if name in _KAFKA_BROKER_NAMES:
        return f"; streamd's key is {_KAFKA_BROKER_NAMES[name]}"
    return ""


def _topic_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
