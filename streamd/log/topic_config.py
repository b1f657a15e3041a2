"""Topic-level configuration: every key Apache Kafka 3.9 defines, with its type, default and
validation (``LogConfig`` of Kafka 3.9, read from its source).

``TOPIC_CONFIG_KEYS`` is the single table; the broker config (broker-wide defaults, static or
dynamic) and DescribeConfigs reuse it. A topic's effective value is: topic override, else broker
default, else the table's default. Every value is validated as Kafka validates it (the same
ranges, case-sensitive choices, list syntax); errors name the key. Names Kafka does not define
are refused.

What a key does on one streamd broker (``ConfigKey.enforced``):

- Enforced: ``segment.bytes``, ``segment.ms``, ``retention.*``, ``local.retention.*``,
  ``remote.storage.enable``, ``max.message.bytes``, ``index.interval.bytes``,
  ``message.timestamp.type`` and ``message.timestamp.{before,after,difference}.max.ms``,
  ``min.insync.replicas`` (above 1, acks=all produce fails with NOT_ENOUGH_REPLICAS: there is
  one replica), ``compression.type`` and its ``compression.*.level`` (the broker recompresses,
  see :mod:`streamd.log.conform`), and ``cleanup.policy`` as far as deletion goes: without
  ``delete`` no time or size retention removes data (compaction itself is not implemented, so a
  ``compact`` topic keeps everything; Kafka's ``compact`` would drop superseded keys).
- Accepted, validated, stored and described, without effect on one broker: replication and
  leader-election keys (``unclean.leader.election.enable``, ``*.replication.throttled.replicas``),
  compaction tuning (``delete.retention.ms``, ``min/max.compaction.lag.ms``,
  ``min.cleanable.dirty.ratio``), per-topic flushing (``flush.*``; streamd's ``fsync`` broker
  policy governs durability), file handling (``file.delete.delay.ms``, ``preallocate``,
  ``segment.index.bytes``, ``segment.jitter.ms``), the message format (``message.format.version``:
  streamd stores v2 batches only; ``message.downconversion.enable`` does apply, to Fetch v0-v3),
  and ``remote.log.copy.disable`` / ``remote.log.delete.on.disable`` (streamd keeps an archive
  readable after ``remote.storage.enable`` is turned off, so it does not apply Kafka's rule that
  turning it off requires ``remote.log.delete.on.disable``).

streamd's own topic configs (``EXTENSION_KEYS``; Redpanda keeps its own under ``redpanda.*``) are
not Kafka's: a topic lists one in DescribeConfigs only when it sets it, and none can be a
broker-wide default. ``remote.readreplica=STORE_URL`` marks a read replica
(:mod:`streamd.tiering.readreplica`); only its shape is checked here.

Cross-key rules are Kafka's: ``min.compaction.lag.ms <= max.compaction.lag.ms`` always; for a
topic with ``remote.storage.enable`` no ``compact`` policy, ``local.retention.*`` within
``retention.*`` and, with ``remote.log.copy.disable``, equal to it. The broker-wide defaults get
the local-retention rule whatever their ``remote.storage.enable`` (tiering is always configured).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

from streamd.errors import InvalidConfig

DAY_MS = 24 * 60 * 60 * 1000
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

ConfigType = Literal["string", "list", "int", "long", "boolean", "double"]
Parser = Callable[[str, str], object]


@dataclass(frozen=True, slots=True)
class ConfigKey:
    name: str
    type: ConfigType
    default: str
    doc: str
    parse: Parser = field(repr=False)
    server_default: str = ""
    """Kafka's broker property that supplies this key's default (its first synonym)."""
    enforced: bool = True
    """False: accepted, stored and described, but without effect on a single broker."""

    @property
    def attr(self) -> str:
        return self.name.replace(".", "_")


_NUMBER = re.compile(r"[+-]?\d+")


def _integer(name: str, raw: str, kind: str, low: int, high: int) -> int:
    text = raw.strip()
    if not _NUMBER.fullmatch(text):
        raise InvalidConfig(f"{name}: {raw!r} is not a number of type {kind}")
    value = int(text)
    if not low <= value <= high:
        raise InvalidConfig(f"{name}: {raw!r} is not a number of type {kind}")
    return value


def _int(low: int = INT32_MIN, high: int = INT32_MAX) -> Parser:
    def parse(name: str, raw: str) -> int:
        value = _integer(name, raw, "INT", INT32_MIN, INT32_MAX)
        _range(name, value, low, high)
        return value

    return parse


def _long(low: int = INT64_MIN, high: int = INT64_MAX) -> Parser:
    def parse(name: str, raw: str) -> int:
        value = _integer(name, raw, "LONG", INT64_MIN, INT64_MAX)
        _range(name, value, low, high)
        return value

    return parse


def _range(name: str, value: int, low: int, high: int) -> None:
    if value < low:
        raise InvalidConfig(f"{name}: {value} must be at least {low}")
    if value > high:
        raise InvalidConfig(f"{name}: {value} must be no more than {high}")


def _double(low: float, high: float) -> Parser:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise InvalidConfig(f"{name}: {raw!r} is not a number of type DOUBLE") from None
        if value != value or not low <= value <= high:
            raise InvalidConfig(f"{name}: {raw.strip()} must be between {low} and {high}")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("true", "false"):
        raise InvalidConfig(f"{name}: {raw!r} is not a boolean (true|false)")
    return lowered == "true"


def _choice(*choices: str) -> Parser:
    """Kafka's ``ValidString.in``: exact, case-sensitive."""

    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        if value not in choices:
            raise InvalidConfig(f"{name}: {raw!r} must be one of: {', '.join(choices)}")
        return value

    return parse


def _items(raw: str) -> list[str]:
    """Kafka's LIST parsing: comma-separated, trimmed; the empty string is the empty list."""
    text = raw.strip()
    return [] if not text else [item.strip() for item in text.split(",")]


def _list_of(*choices: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        items = _items(raw)
        for item in items:
            if item not in choices:
                raise InvalidConfig(f"{name}: {item!r} must be one of: {', '.join(choices)}")
        return ",".join(items)

    return parse


_REPLICA = re.compile(r"(\d+:\d+)?")


def _throttled_replicas(name: str, raw: str) -> str:
    items = _items(raw)
    if "".join(items) != "*" and not all(_REPLICA.fullmatch(i) for i in items):
        raise InvalidConfig(
            f"{name}: must be the literal '*' or a list of replicas in the following format: "
            "[partitionId]:[brokerId],[partitionId]:[brokerId],..."
        )
    return ",".join(items)


def _gzip_level(name: str, raw: str) -> int:
    level = _integer(name, raw, "INT", INT32_MIN, INT32_MAX)
    if level != -1 and not 1 <= level <= 9:
        raise InvalidConfig(f"{name}: {level} must be between 1 and 9, or -1 (the default)")
    return level


def _metadata_versions() -> frozenset[str]:
    """What Kafka 3.9's ``MetadataVersion.fromVersionString`` knows: every release and every
    release-IVn of the inter-broker protocol up to 4.0-IV1."""
    old = ["0.8.0", "0.8.1", "0.8.2", "0.9.0"]
    ivs = {
        "0.10.0": 2, "0.10.1": 3, "0.10.2": 1, "0.11.0": 3, "1.0": 1, "1.1": 1, "2.0": 2,
        "2.1": 3, "2.2": 2, "2.3": 2, "2.4": 2, "2.5": 1, "2.6": 1, "2.7": 3, "2.8": 2,
        "3.0": 2, "3.1": 1, "3.2": 1, "3.3": 4, "3.4": 1, "3.5": 3, "3.6": 3, "3.7": 5,
        "3.8": 1, "3.9": 1, "4.0": 2,
    }  # fmt: skip
    names = set(old)
    for release, count in ivs.items():
        if release != "4.0":
            names.add(release)
        names.update(f"{release}-IV{i}" for i in range(count))
    return frozenset(names)


_METADATA_VERSIONS = _metadata_versions()


def _message_format_version(name: str, raw: str) -> str:
    value = raw.strip()
    parts = value.split(".")
    keep = 3 if value.startswith("0.") else 2
    key = value if keep >= len(parts) else ".".join(parts[:keep])
    if key not in _METADATA_VERSIONS:
        raise InvalidConfig(f"{name}: version {value} is not a valid version")
    return value


CODECS = ("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer")
CODEC_IDS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
"""Record-batch attribute codec ids (bits 0-2) of the ``compression.type`` values."""

_STORED = "Accepted and described; no effect on a single streamd broker"

TOPIC_CONFIG_KEYS: dict[str, ConfigKey] = {
    k.name: k
    for k in (
        ConfigKey(
            "segment.bytes",
            "int",
            str(1 << 30),
            "Largest segment file; a segment rolls before it would grow past this.",
            _int(14),
            "log.segment.bytes",
        ),
        ConfigKey(
            "segment.ms",
            "long",
            str(7 * DAY_MS),
            "Roll the active segment after this long even if it is not full.",
            _long(1),
            "log.roll.ms",
        ),
        ConfigKey(
            "segment.jitter.ms",
            "long",
            "0",
            f"{_STORED} (segments roll at segment.ms without jitter).",
            _long(0),
            "log.roll.jitter.ms",
            enforced=False,
        ),
        ConfigKey(
            "segment.index.bytes",
            "int",
            str(10 * 1024 * 1024),
            f"{_STORED} (offset indexes grow with their segment).",
            _int(4),
            "log.index.size.max.bytes",
            enforced=False,
        ),
        ConfigKey(
            "flush.messages",
            "long",
            str(INT64_MAX),
            f"{_STORED} (the broker's fsync policy governs durability).",
            _long(1),
            "log.flush.interval.messages",
            enforced=False,
        ),
        ConfigKey(
            "flush.ms",
            "long",
            str(INT64_MAX),
            f"{_STORED} (the broker's fsync policy governs durability).",
            _long(0),
            "log.flush.interval.ms",
            enforced=False,
        ),
        ConfigKey(
            "retention.bytes",
            "long",
            "-1",
            "Delete the oldest segments while a partition is larger (-1: no limit; needs "
            "cleanup.policy delete).",
            _long(),
            "log.retention.bytes",
        ),
        ConfigKey(
            "retention.ms",
            "long",
            str(7 * DAY_MS),
            "Delete segments whose newest record is older than this (-1: keep forever; needs "
            "cleanup.policy delete).",
            _long(-1),
            "log.retention.ms",
        ),
        ConfigKey(
            "max.message.bytes",
            "int",
            "1048588",
            "Largest record batch accepted (after recompression), in bytes.",
            _int(0),
            "message.max.bytes",
        ),
        ConfigKey(
            "index.interval.bytes",
            "int",
            "4096",
            "Log bytes between two offset-index entries.",
            _int(0),
            "log.index.interval.bytes",
        ),
        ConfigKey(
            "delete.retention.ms",
            "long",
            str(DAY_MS),
            f"{_STORED} (compaction is not implemented).",
            _long(0),
            "log.cleaner.delete.retention.ms",
            enforced=False,
        ),
        ConfigKey(
            "min.compaction.lag.ms",
            "long",
            "0",
            f"{_STORED} (compaction is not implemented).",
            _long(0),
            "log.cleaner.min.compaction.lag.ms",
            enforced=False,
        ),
        ConfigKey(
            "max.compaction.lag.ms",
            "long",
            str(INT64_MAX),
            f"{_STORED} (compaction is not implemented).",
            _long(1),
            "log.cleaner.max.compaction.lag.ms",
            enforced=False,
        ),
        ConfigKey(
            "file.delete.delay.ms",
            "long",
            "60000",
            f"{_STORED} (deleted segments are unlinked at once; open readers keep them).",
            _long(0),
            "log.segment.delete.delay.ms",
            enforced=False,
        ),
        ConfigKey(
            "min.cleanable.dirty.ratio",
            "double",
            "0.5",
            f"{_STORED} (compaction is not implemented).",
            _double(0, 1),
            "log.cleaner.min.cleanable.ratio",
            enforced=False,
        ),
        ConfigKey(
            "cleanup.policy",
            "list",
            "delete",
            "delete: time and size retention remove old segments. compact is accepted but not "
            "implemented: without delete, nothing is removed.",
            _list_of("compact", "delete"),
            "log.cleanup.policy",
        ),
        ConfigKey(
            "unclean.leader.election.enable",
            "boolean",
            "false",
            f"{_STORED} (one replica: there is no election).",
            _bool,
            "unclean.leader.election.enable",
            enforced=False,
        ),
        ConfigKey(
            "min.insync.replicas",
            "int",
            "1",
            "Replicas that must have a write for acks=all; each partition has one, so above 1 "
            "acks=all produce fails with NOT_ENOUGH_REPLICAS.",
            _int(1),
            "min.insync.replicas",
        ),
        ConfigKey(
            "compression.type",
            "string",
            "producer",
            "Codec batches are stored with: producer keeps the producer's, uncompressed, gzip, "
            "snappy, lz4 or zstd make the broker recompress batches that differ.",
            _choice(*CODECS),
            "compression.type",
        ),
        ConfigKey(
            "compression.gzip.level",
            "int",
            "-1",
            "gzip level used when the broker recompresses to gzip (-1: the codec's default).",
            _gzip_level,
            "compression.gzip.level",
        ),
        ConfigKey(
            "compression.lz4.level",
            "int",
            "9",
            "lz4 level used when the broker recompresses to lz4.",
            _int(1, 17),
            "compression.lz4.level",
        ),
        ConfigKey(
            "compression.zstd.level",
            "int",
            "3",
            "zstd level used when the broker recompresses to zstd.",
            _int(-131072, 22),
            "compression.zstd.level",
        ),
        ConfigKey(
            "preallocate",
            "boolean",
            "false",
            f"{_STORED} (segment files grow as written).",
            _bool,
            "log.preallocate",
            enforced=False,
        ),
        ConfigKey(
            "message.format.version",
            "string",
            "3.0-IV1",
            f"{_STORED} (deprecated in Kafka 3; batches are always v2).",
            _message_format_version,
            "log.message.format.version",
            enforced=False,
        ),
        ConfigKey(
            "message.timestamp.type",
            "string",
            "CreateTime",
            "CreateTime keeps the producer's timestamps; LogAppendTime stamps batches with the "
            "broker's clock.",
            _choice("CreateTime", "LogAppendTime"),
            "log.message.timestamp.type",
        ),
        ConfigKey(
            "message.timestamp.difference.max.ms",
            "long",
            str(INT64_MAX),
            "Deprecated: the before/after limit when message.timestamp.before/after.max.ms "
            "are left at their default (CreateTime only).",
            _long(0),
            "log.message.timestamp.difference.max.ms",
        ),
        ConfigKey(
            "message.timestamp.before.max.ms",
            "long",
            str(INT64_MAX),
            "Refuse (INVALID_TIMESTAMP) a CreateTime batch whose first timestamp is further "
            "than this behind the broker's clock.",
            _long(0),
            "log.message.timestamp.before.max.ms",
        ),
        ConfigKey(
            "message.timestamp.after.max.ms",
            "long",
            str(INT64_MAX),
            "Refuse (INVALID_TIMESTAMP) a CreateTime batch whose newest timestamp is further "
            "than this ahead of the broker's clock.",
            _long(0),
            "log.message.timestamp.after.max.ms",
        ),
        ConfigKey(
            "leader.replication.throttled.replicas",
            "list",
            "",
            f"{_STORED} (there is no replication).",
            _throttled_replicas,
            enforced=False,
        ),
        ConfigKey(
            "follower.replication.throttled.replicas",
            "list",
            "",
            f"{_STORED} (there is no replication).",
            _throttled_replicas,
            enforced=False,
        ),
        ConfigKey(
            "message.downconversion.enable",
            "boolean",
            "true",
            f"{_STORED} (Fetch below v4 is not served, so nothing is down-converted).",
            _bool,
            "log.message.downconversion.enable",
            enforced=False,
        ),
        ConfigKey(
            "remote.storage.enable",
            "boolean",
            "false",
            "Archive sealed segments to the object store and serve old offsets from it.",
            _bool,
        ),
        ConfigKey(
            "local.retention.ms",
            "long",
            "-2",
            "Local-disk retention of a tiered topic (-2: same as retention.ms).",
            _long(-2),
            "log.local.retention.ms",
        ),
        ConfigKey(
            "local.retention.bytes",
            "long",
            "-2",
            "Local-disk size limit of a tiered topic (-2: same as retention.bytes).",
            _long(-2),
            "log.local.retention.bytes",
        ),
        ConfigKey(
            "remote.log.copy.disable",
            "boolean",
            "false",
            f"{_STORED} (uploads continue while remote.storage.enable is true).",
            _bool,
            enforced=False,
        ),
        ConfigKey(
            "remote.log.delete.on.disable",
            "boolean",
            "false",
            f"{_STORED} (the archive stays readable after remote.storage.enable is turned off).",
            _bool,
            enforced=False,
        ),
    )
}


def _store_url(name: str, raw: str) -> str:
    """``""`` or ``s3://bucket[/prefix]`` or ``file:///absolute/dir`` (opened by tiering)."""
    value = raw.strip()
    if not value:
        return ""
    if value.startswith("s3://"):
        bucket = value[5:].split("/", 1)[0]
        if bucket and "?" not in value and "#" not in value:
            return value
    elif value.startswith("file:///") and "\x00" not in value:
        return value
    raise InvalidConfig(
        f"{name}: {raw!r} is not an object store URL (s3://bucket[/prefix] or file:///dir)"
    )


EXTENSION_KEYS: dict[str, ConfigKey] = {
    k.name: k
    for k in (
        ConfigKey(
            "remote.readreplica",
            "string",
            "",
            "Serve this topic read-only from the archive another broker writes to this object "
            "store (its tiering.store); set only at creation, removed by promotion.",
            _store_url,
        ),
    )
}
"""streamd's own topic configs: described only where a topic sets them, never broker-wide."""


def config_key(name: str) -> ConfigKey | None:
    """The key called ``name``: Kafka's, or one of streamd's own (``EXTENSION_KEYS``)."""
    return TOPIC_CONFIG_KEYS.get(name) or EXTENSION_KEYS.get(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicConfig:
    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * DAY_MS
    segment_jitter_ms: int = 0
    segment_index_bytes: int = 10 * 1024 * 1024
    flush_messages: int = INT64_MAX
    flush_ms: int = INT64_MAX
    retention_bytes: int = -1
    retention_ms: int = 7 * DAY_MS
    max_message_bytes: int = 1048588
    index_interval_bytes: int = 4096
    delete_retention_ms: int = DAY_MS
    min_compaction_lag_ms: int = 0
    max_compaction_lag_ms: int = INT64_MAX
    file_delete_delay_ms: int = 60000
    min_cleanable_dirty_ratio: float = 0.5
    cleanup_policy: str = "delete"
    unclean_leader_election_enable: bool = False
    min_insync_replicas: int = 1
    compression_type: str = "producer"
    compression_gzip_level: int = -1
    compression_lz4_level: int = 9
    compression_zstd_level: int = 3
    preallocate: bool = False
    message_format_version: str = "3.0-IV1"
    message_timestamp_type: str = "CreateTime"
    message_timestamp_difference_max_ms: int = INT64_MAX
    message_timestamp_before_max_ms: int = INT64_MAX
    message_timestamp_after_max_ms: int = INT64_MAX
    leader_replication_throttled_replicas: str = ""
    follower_replication_throttled_replicas: str = ""
    message_downconversion_enable: bool = True
    remote_storage_enable: bool = False
    local_retention_ms: int = -2
    local_retention_bytes: int = -2
    remote_log_copy_disable: bool = False
    remote_log_delete_on_disable: bool = False
    remote_readreplica: str = ""
    """The origin's store URL of a read replica ("" for every other topic)."""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Config name -> "topic" or "broker" for values not taken from the table's default."""

    @classmethod
    def from_overrides(
        cls, defaults: Mapping[str, str], overrides: Mapping[str, str]
    ) -> TopicConfig:
        """The effective config of a topic; raises InvalidConfig naming the offending key.
        Broker defaults alone (``overrides`` empty) get the broker-level rules."""
        values: dict[str, object] = {}
        sources: dict[str, str] = {}
        for origin, mapping in (("broker", defaults), ("topic", overrides)):
            for name, raw in mapping.items():
                key = TOPIC_CONFIG_KEYS.get(name)
                if key is None and origin == "topic":
                    key = EXTENSION_KEYS.get(name)
                if key is None:
                    raise InvalidConfig(f"{name}: unknown topic config")
                if raw is None:
                    raise InvalidConfig(f"{name}: a value is required")
                values[key.attr] = key.parse(name, str(raw))
                sources[name] = origin
        config = cls(**values, sources=sources)  # type: ignore[arg-type]
        config._check_consistency(broker_level=not overrides)
        return config

    def _check_consistency(self, *, broker_level: bool) -> None:
        if self.min_compaction_lag_ms > self.max_compaction_lag_ms:
            raise InvalidConfig(
                f"conflict topic config setting min.compaction.lag.ms "
                f"({self.min_compaction_lag_ms}) > max.compaction.lag.ms "
                f"({self.max_compaction_lag_ms})"
            )
        if not (self.remote_storage_enable or broker_level):
            return
        if self.remote_storage_enable and "compact" in self.cleanup_policy.split(","):
            raise InvalidConfig(
                "remote.storage.enable: remote log storage is unsupported for compacted topics"
            )
        for local, total in (
            ("local.retention.bytes", "retention.bytes"),
            ("local.retention.ms", "retention.ms"),
        ):
            lv, tv = self.get(local), self.get(total)
            assert isinstance(lv, int) and isinstance(tv, int)
            if tv < 0 or lv == -2:
                continue
            if lv == -1:
                raise InvalidConfig(f"{local}: -1 (unlimited) conflicts with {total}={tv}")
            if lv > tv:
                raise InvalidConfig(f"{local}: {lv} must not exceed {total}={tv}")
        if self.remote_storage_enable and self.remote_log_copy_disable:
            for local, total in (
                ("local.retention.bytes", "retention.bytes"),
                ("local.retention.ms", "retention.ms"),
            ):
                lv, tv = self.get(local), self.get(total)
                if lv != -2 and lv != tv:
                    raise InvalidConfig(
                        f"{local}: with remote.log.copy.disable=true it must equal {total} "
                        "(no more data is copied to the remote storage)"
                    )

    def get(self, name: str) -> object:
        key = config_key(name)
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
    def deletes(self) -> bool:
        """``cleanup.policy`` includes ``delete``: time and size retention apply."""
        return "delete" in self.cleanup_policy.split(",")

    @property
    def retention_limits(self) -> tuple[int, int]:
        """(retention.ms, retention.bytes) as retention applies them: (-1, -1) without the
        ``delete`` policy, so nothing is ever removed by time or size."""
        if not self.deletes:
            return -1, -1
        return self.retention_ms, self.retention_bytes

    @property
    def local_retention_limits(self) -> tuple[int, int]:
        """The local-disk limits of a tiered topic (``local.retention.*`` resolved)."""
        if not self.deletes:
            return -1, -1
        return self.effective_local_retention_ms, self.effective_local_retention_bytes

    @property
    def log_append_time(self) -> bool:
        return self.message_timestamp_type == "LogAppendTime"

    @property
    def timestamp_before_max_ms(self) -> int:
        """Kafka 3.9: the deprecated difference limit stands in while this is at its default."""
        if self.message_timestamp_before_max_ms != INT64_MAX:
            return self.message_timestamp_before_max_ms
        return self.message_timestamp_difference_max_ms

    @property
    def timestamp_after_max_ms(self) -> int:
        if self.message_timestamp_after_max_ms != INT64_MAX:
            return self.message_timestamp_after_max_ms
        return self.message_timestamp_difference_max_ms

    @property
    def target_codec(self) -> int | None:
        """The codec id batches are stored with, None to keep the producer's."""
        return CODEC_IDS.get(self.compression_type)

    @property
    def target_level(self) -> int | None:
        """The configured level of the target codec (None: the codec has no level setting)."""
        return {
            "gzip": self.compression_gzip_level,
            "lz4": self.compression_lz4_level,
            "zstd": self.compression_zstd_level,
        }.get(self.compression_type)

    def source(self, name: str) -> Literal["topic", "broker", "default"]:
        return self.sources.get(name, "default")  # type: ignore[return-value]

    def describe(self) -> list[tuple[str, str, bool]]:
        """(name, value as Kafka prints it, True unless the topic overrides it), table order."""
        names = [*TOPIC_CONFIG_KEYS, *(n for n in EXTENSION_KEYS if self.source(n) == "topic")]
        return [
            (name, format_value(self.get(name)), self.source(name) != "topic") for name in names
        ]

    def as_dict(self) -> dict[str, str]:
        return {name: format_value(self.get(name)) for name in TOPIC_CONFIG_KEYS}


def upgrade_stored(overrides: Mapping[str, str]) -> dict[str, str]:
    """Topic overrides written before streamd validated exactly as Kafka does, in Kafka's form.

    Older streamd versions accepted choices in any case (``logappendtime``) and Python integer
    spellings (``1_000``), and kept the raw text in ``topic.json``. A topic stored that way
    must still open: such values are rewritten to the form Kafka accepts. Anything else that
    does not validate is left as it is (and fails, naming the key)."""
    out = dict(overrides)
    for name, raw in overrides.items():
        key = TOPIC_CONFIG_KEYS.get(name)
        if key is None:
            continue
        try:
            key.parse(name, raw)
            continue
        except InvalidConfig:
            pass
        lowered = raw.strip().lower()
        for candidate in (
            *(c for c in (*CODECS, "CreateTime", "LogAppendTime") if c.lower() == lowered),
            ",".join(sorted({p.strip().lower() for p in raw.split(",") if p.strip()})),
            lowered.replace("_", ""),
        ):
            try:
                key.parse(name, candidate)
            except InvalidConfig:
                continue
            out[name] = candidate
            break
    return out


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_table() -> None:
    attrs = {f.name for f in fields(TopicConfig)} - {"sources"}
    table = [*TOPIC_CONFIG_KEYS.values(), *EXTENSION_KEYS.values()]
    assert attrs == {k.attr for k in table}, "table and dataclass differ"
    for key in table:
        assert key.parse(key.name, key.default) == getattr(TopicConfig(), key.attr), key.name


_check_table()
