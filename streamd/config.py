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
    Key("kafka.max_inflight_bytes", _int, 67108864, "Request bytes in flight per connection."),
    Key("log.housekeeping_interval_ms", _int, 5000, "Segment roll and retention check period."),
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
    Key("tiering.upload_concurrency", _int, 4, "Parallel segment uploads."),
    Key("tiering.cache_dir", _str, "", "Remote read cache directory; '' = data_dir/cache."),
    Key("tiering.cache_max_bytes", _int, 1073741824, "Bound of the remote read cache."),
    Key("tiering.delete_on_topic_delete", _bool, True, "DeleteTopics removes bucket objects."),
)
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
    def advertised(self) -> tuple[str, int]:
        adv = self.values["kafka.advertised"]
        if adv:
            return split_hostport(adv)
        host, port = self.listen
        return ("localhost" if host in ("0.0.0.0", "::", "") else host), port


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
    return BrokerConfig(values=values, topic_defaults=topic_defaults)


def _topic_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
