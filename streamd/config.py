"""Broker configuration: one table of keys, loaded from TOML, the environment and ``--set``.

Precedence, lowest first: built-in defaults, the config file, environment variables
(``STREAMD_`` + the key upper-cased with ``.`` -> ``_``, e.g. ``STREAMD_KAFKA_LISTEN``), then
``--set key=value``. Unknown keys and invalid values raise :class:`ConfigError` naming the key,
so a typo stops startup instead of being silently ignored.

Broker-wide topic defaults use Kafka's topic config names under ``defaults.`` (e.g.
``defaults.segment.bytes``); they are validated by the log layer's topic-config table.
Relative paths (``data_dir``, ``file://`` stores) are resolved against the working directory.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamd.errors import ConfigError


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    return int(v)


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
    if s.startswith("file://") or s.startswith("s3://"):
        return s
    raise ValueError("expected file:///abs/dir or s3://bucket[/prefix]")


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
    items = _csv(v)
    for p in items:
        kind, sep, name = p.partition(":")
        if not (sep and kind and name):
            raise ValueError(f"{p!r}: expected Type:name, e.g. User:admin")
    return ",".join(items)


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


KEYS: tuple[Key, ...] = (
    Key("data_dir", _str, "./data/broker", "Directory for partition logs and metadata."),
    Key("node_id", _int, 0, "This broker's node id (single-node: 0)."),
    Key("cluster_id", _str, "", "Cluster id reported to clients; generated once if empty."),
    Key("kafka.listen", _hostport, "127.0.0.1:9092", "Kafka listener HOST:PORT."),
    Key("kafka.advertised", _opt_hostport, "", "Address given to clients; default: listen."),
    Key("admin.listen", _opt_hostport, "127.0.0.1:9644", "Admin HTTP API + /metrics; '' = off."),
    Key("fsync", _fsync, "always", "always (group commit before ack), never, or interval ms."),
    Key("auto_create_topics", _bool, False, "Create unknown topics on Metadata/Produce."),
    Key("default_partitions", _int, 1, "Partitions for auto-created / unspecified topics."),
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
    Key("log.housekeeping_interval_ms", _int, 5000, "Segment roll and retention check period."),
    Key(
        "log.max_partitions",
        _int,
        10000,
        "Partitions one broker holds at most (CreateTopics beyond: POLICY_VIOLATION).",
    ),
    Key(
        "log.max_open_segment_files",
        _int,
        0,
        "Segment files kept open at once (LRU); 0 = a quarter of the open-file limit.",
    ),
    Key("group.initial.rebalance.delay.ms", _int, 3000, "Wait for more members of a new group."),
    Key("group.min.session.timeout.ms", _int, 6000, "Smallest session timeout a member may ask."),
    Key("group.max.session.timeout.ms", _int, 1800000, "Largest session timeout a member may ask."),
    Key("offsets.retention.minutes", _int, 10080, "Keep offsets of an empty group this long."),
    Key("offset.metadata.max.bytes", _int, 4096, "Largest metadata string of a commit."),
    Key("tiering.store", _store, "file://./data/bucket", "Object store URL."),
    Key("tiering.s3.endpoint_url", _str, "", "S3 endpoint (MinIO, moto); '' = AWS."),
    Key("tiering.s3.region", _str, "us-east-1", "S3 region."),
    Key("tiering.s3.access_key_id", _str, "", "S3 access key; '' = AWS_* environment."),
    Key("tiering.s3.secret_access_key", _str, "", "S3 secret; '' = AWS_* environment."),
    Key("tiering.s3.path_style", _bool, True, "Path-style addressing (MinIO, moto)."),
    Key("tiering.upload_interval_ms", _int, 10000, "How often sealed segments are uploaded."),
    Key(
        "tiering.offsets_archive_interval_ms",
        _int,
        10000,
        "How often changed committed group offsets are archived (restore).",
    ),
    Key("tiering.upload_concurrency", _int, 4, "Parallel segment uploads."),
    Key("tiering.cache_dir", _str, "", "Remote read cache directory; '' = data_dir/cache."),
    Key("tiering.cache_max_bytes", _int, 1073741824, "Bound of the remote read cache."),
    Key("tiering.delete_on_topic_delete", _bool, True, "DeleteTopics removes bucket objects."),
    Key("tiering.cache_chunk_bytes", _int, 16777216, "Size of one ranged GET / cached chunk."),
    Key("tiering.cache_memory_bytes", _int, 67108864, "Recently used chunks kept in memory."),
    Key("tiering.read_ahead_chunks", _int, 2, "Chunks prefetched ahead of a remote reader."),
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
    Key("sasl.failed_authentication_delay_ms", _int, 100, "Delay before a failed-login answer."),
    Key("security.authorization", _bool, False, "Enforce ACLs (off: everything allowed)."),
    Key("security.super_users", _principals, "", "Principals allowed everything, e.g. User:admin."),
    Key("security.bootstrap_users", _bootstrap_users, "", "user:password:MECHANISM created once."),
    Key("security.scram_iterations", _iterations, 4096, "Iterations of bootstrap credentials."),
    Key("allow.everyone.if.no.acl.found", _bool, False, "Allow when no ACL matches a resource."),
    # --- end security ---
)
SENSITIVE_KEYS = frozenset({"security.bootstrap_users"})
KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}
DEFAULTS_PREFIX = "defaults."


@dataclass(frozen=True)
class BrokerConfig:
    values: Mapping[str, Any]
    topic_defaults: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

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
    store = values["tiering.store"]
    if store.startswith("file://"):
        values["tiering.store"] = "file://" + str(Path(store[7:]).expanduser().resolve())
    if not values["tiering.cache_dir"]:
        values["tiering.cache_dir"] = str(Path(values["data_dir"]) / "cache")
    _check_security(values)
    return BrokerConfig(values=values, topic_defaults=topic_defaults)


def _topic_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
