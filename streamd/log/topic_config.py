"""Topic-level configuration with Kafka's names, types, defaults and semantics.

``TOPIC_CONFIG_KEYS`` is the single table of supported keys; the broker config (broker-wide
defaults) and DescribeConfigs reuse it. A topic's effective value is: topic override, else
broker default, else the table's default. Every value is validated; errors name the key.

Semantics worth knowing:

- ``cleanup.policy`` accepts ``delete``, ``compact`` and ``compact,delete`` and is stored, but
  streamd enforces only deletion (time/size retention); compaction is not implemented.
- ``retention.ms`` / ``retention.bytes``: -1 means unlimited. ``local.retention.*`` = -2 means
  "same as the total retention"; otherwise they must not exceed it (Kafka's rule).
- ``segment.bytes`` is bounded by the u32 file positions of the offset index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

from streamd.errors import InvalidConfig

DAY_MS = 24 * 60 * 60 * 1000
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ConfigKey:
    name: str
    type: Literal["string", "list", "int", "long", "boolean"]
    default: str
    doc: str
    parse: Callable[[str, str], object] = field(repr=False)

    @property
    def attr(self) -> str:
        return self.name.replace(".", "_")


def _int(low: int, high: int) -> Callable[[str, str], object]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise InvalidConfig(f"{name}: {raw!r} is not an integer") from None
        if not low <= value <= high:
            raise InvalidConfig(f"{name}: {value} is out of range [{low}, {high}]")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("true", "false"):
        raise InvalidConfig(f"{name}: {raw!r} is not a boolean (true|false)")
    return lowered == "true"


def _choice(*choices: str) -> Callable[[str, str], object]:
    def parse(name: str, raw: str) -> str:
        for choice in choices:
            if raw.strip().lower() == choice.lower():
                return choice
        raise InvalidConfig(f"{name}: {raw!r} is not one of {', '.join(choices)}")

    return parse


def _cleanup_policy(name: str, raw: str) -> str:
    parts = sorted({p.strip().lower() for p in raw.split(",") if p.strip()})
    if not parts or any(p not in ("delete", "compact") for p in parts):
        raise InvalidConfig(f"{name}: {raw!r} must be delete, compact or compact,delete")
    return ",".join(parts)


TOPIC_CONFIG_KEYS: dict[str, ConfigKey] = {
    k.name: k
    for k in (
        ConfigKey(
            "cleanup.policy",
            "list",
            "delete",
            "delete or compact (compact is stored, only delete is enforced)",
            _cleanup_policy,
        ),
        ConfigKey(
            "segment.bytes",
            "int",
            str(1 << 30),
            "maximum size of one log segment file",
            _int(14, INT32_MAX),
        ),
        ConfigKey(
            "segment.ms",
            "long",
            str(7 * DAY_MS),
            "roll the active segment after this long even if it is not full",
            _int(1, INT64_MAX),
        ),
        ConfigKey(
            "retention.ms",
            "long",
            str(7 * DAY_MS),
            "delete data older than this (-1: keep forever)",
            _int(-1, INT64_MAX),
        ),
        ConfigKey(
            "retention.bytes",
            "long",
            "-1",
            "delete the oldest segments while a partition is larger (-1: no limit)",
            _int(-1, INT64_MAX),
        ),
        ConfigKey(
            "local.retention.ms",
            "long",
            "-2",
            "local-disk retention for tiered topics (-2: same as retention.ms)",
            _int(-2, INT64_MAX),
        ),
        ConfigKey(
            "local.retention.bytes",
            "long",
            "-2",
            "local-disk size limit for tiered topics (-2: same as retention.bytes)",
            _int(-2, INT64_MAX),
        ),
        ConfigKey(
            "remote.storage.enable",
            "boolean",
            "false",
            "archive sealed segments to the object store",
            _bool,
        ),
        ConfigKey(
            "max.message.bytes",
            "int",
            "1048588",
            "largest record batch accepted, in bytes",
            _int(0, INT32_MAX),
        ),
        ConfigKey(
            "message.timestamp.type",
            "string",
            "CreateTime",
            "CreateTime keeps the producer timestamp; LogAppendTime uses the broker's",
            _choice("CreateTime", "LogAppendTime"),
        ),
        ConfigKey(
            "message.downconversion.enable",
            "boolean",
            "true",
            "serve Fetch v0-v3 (message format v0/v1) by converting the stored v2 batches",
            _bool,
        ),
        ConfigKey(
            "min.insync.replicas",
            "int",
            "1",
            "minimum in-sync replicas for acks=all (single-node: informational)",
            _int(1, INT32_MAX),
        ),
        ConfigKey(
            "index.interval.bytes",
            "int",
            "4096",
            "log bytes between two offset-index entries",
            _int(0, INT32_MAX),
        ),
    )
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicConfig:
    cleanup_policy: str = "delete"
    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * DAY_MS
    retention_ms: int = 7 * DAY_MS
    retention_bytes: int = -1
    local_retention_ms: int = -2
    local_retention_bytes: int = -2
    remote_storage_enable: bool = False
    max_message_bytes: int = 1048588
    message_timestamp_type: str = "CreateTime"
    message_downconversion_enable: bool = True
    min_insync_replicas: int = 1
    index_interval_bytes: int = 4096
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Config name -> "topic" or "broker" for values not taken from the table's default."""

    @classmethod
    def from_overrides(
        cls, defaults: Mapping[str, str], overrides: Mapping[str, str]
    ) -> TopicConfig:
        values: dict[str, object] = {}
        sources: dict[str, str] = {}
        for origin, mapping in (("broker", defaults), ("topic", overrides)):
            for name, raw in mapping.items():
                key = TOPIC_CONFIG_KEYS.get(name)
                if key is None:
                    raise InvalidConfig(f"{name}: unknown topic config")
                if raw is None:
                    raise InvalidConfig(f"{name}: a value is required")
                values[key.attr] = key.parse(name, str(raw))
                sources[name] = origin
        config = cls(**values, sources=sources)  # type: ignore[arg-type]
        config._check_consistency()
        return config

    def _check_consistency(self) -> None:
        for local, total in (
            ("local.retention.ms", "retention.ms"),
            ("local.retention.bytes", "retention.bytes"),
        ):
            lv, tv = self.get(local), self.get(total)
            assert isinstance(lv, int) and isinstance(tv, int)
            if lv >= 0 and tv >= 0 and lv > tv:
                raise InvalidConfig(f"{local}: {lv} must not exceed {total}={tv}")
            if lv == -1 and tv >= 0:
                raise InvalidConfig(f"{local}: -1 (unlimited) conflicts with {total}={tv}")

    def get(self, name: str) -> object:
        key = TOPIC_CONFIG_KEYS.get(name)
        if key is None:
            raise InvalidConfig(f"{name}: unknown topic config")
        return getattr(self, key.attr)

    @property
    def effective_local_retention_ms(self) -> int:
        return self.retention_ms if self.local_retention_ms == -2 else self.local_retention_ms

    @property
    def effective_local_retention_bytes(self) -> int:
        if self.local_retention_bytes == -2:
            return self.retention_bytes
        return self.local_retention_bytes

    @property
    def log_append_time(self) -> bool:
        return self.message_timestamp_type == "LogAppendTime"

    def source(self, name: str) -> Literal["topic", "broker", "default"]:
        return self.sources.get(name, "default")  # type: ignore[return-value]

    def describe(self) -> list[tuple[str, str, bool]]:
        """(name, value as Kafka prints it, True unless the topic overrides it), table order."""
        return [
            (name, format_value(self.get(name)), self.source(name) != "topic")
            for name in TOPIC_CONFIG_KEYS
        ]

    def as_dict(self) -> dict[str, str]:
        return {name: format_value(self.get(name)) for name in TOPIC_CONFIG_KEYS}


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_table() -> None:
    attrs = {f.name for f in fields(TopicConfig)} - {"sources"}
    assert attrs == {k.attr for k in TOPIC_CONFIG_KEYS.values()}, "table and dataclass differ"
    for key in TOPIC_CONFIG_KEYS.values():
        assert key.parse(key.name, key.default) == getattr(TopicConfig(), key.attr), key.name


_check_table()
