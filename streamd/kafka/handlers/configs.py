"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics and the broker.

Described as Kafka describes them:

- Topic configs (every key of Kafka 3.9, see :mod:`streamd.log.topic_config`): the source is
  DYNAMIC_TOPIC_CONFIG for a topic override, DYNAMIC_BROKER_CONFIG / DYNAMIC_DEFAULT_BROKER_CONFIG
  for a broker-wide default set at runtime (on this broker / cluster-wide), STATIC_BROKER_CONFIG
  for one from the config file, DEFAULT_CONFIG otherwise; never read-only. With
  ``include_synonyms`` the synonyms list every layer that has a value, highest precedence first:
  the override under the topic key, then the broker's default under its streamd name
  (``defaults.retention.ms``) — Kafka would name its own property (``log.retention.ms``) there.
- Broker configs (resource name = this node id): every key of :mod:`streamd.config` plus the
  topic defaults (``defaults.*``); ``read_only`` unless the key can change at runtime; synonyms
  as above. The resource name "" (the cluster-wide default entity) lists only the dynamic
  cluster defaults that are set, as Kafka does. Sensitive settings are described with a null
  value.
- ``documentation`` and ``config_type`` are filled from the key tables (v3+).

Altering: AlterConfigs replaces a topic's whole override set (or the whole dynamic set of a
broker entity), as Kafka does; IncrementalAlterConfigs applies SET / DELETE per key, and APPEND /
SUBTRACT to list configs (from the current value, else the key's default, like Kafka); a key
given twice is INVALID_REQUEST. Broker entities accept only keys that can change at runtime; a
read-only or unknown key fails the resource with INVALID_CONFIG and a message naming the key.
Accepted broker values are persisted before they are acknowledged.
Authorization: describing needs DESCRIBE_CONFIGS, altering ALTER_CONFIGS, on the topic
(TOPIC_AUTHORIZATION_FAILED) or on the cluster for broker configs (CLUSTER_AUTHORIZATION_FAILED).
DescribeConfigs v0 has no config source, only ``is_default`` (true for DEFAULT_CONFIG values:
Kafka 3.9 always answers false there, but its clients read true as DEFAULT_CONFIG). Internal
topics' configs (``__consumer_offsets``) are the broker's: altering them is INVALID_REQUEST.
A read replica's configs follow its origin (INVALID_CONFIG saying so); removing its
``remote.readreplica`` (IncrementalAlterConfigs DELETE, or AlterConfigs without it) promotes it
(``streamd topic promote``, :mod:`streamd.tiering.readreplica`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from streamd.config import (
    BROKER_SCOPE,
    CLUSTER_SCOPE,
    DEFAULTS_PREFIX,
    KEYS,
    KEYS_BY_NAME,
    SENSITIVE_KEYS,
    BrokerConfig,
    Scope,
)
from streamd.errors import ErrorCode, StreamdError
from streamd.kafka.apis import api
from streamd.kafka.authz import ALTER_CONFIGS, DESCRIBE_CONFIGS, authorize, authorize_cluster
from streamd.kafka.authz import TOPIC as TOPIC_RESOURCE
from streamd.kafka.context import Request
from streamd.kafka.offsets_topic import is_internal
from streamd.log.files import atomic_write
from streamd.log.topic_config import TOPIC_CONFIG_KEYS, TopicConfig, config_key, format_value
from streamd.tiering.readreplica import CONFIG as READREPLICA

TOPIC, BROKER, BROKER_LOGGER = 2, 4, 8
DYNAMIC_TOPIC, DYNAMIC_BROKER, DYNAMIC_DEFAULT_BROKER, STATIC_BROKER, DEFAULT = 1, 2, 3, 4, 5
SOURCES = {
    "topic": DYNAMIC_TOPIC,
    BROKER_SCOPE: DYNAMIC_BROKER,
    CLUSTER_SCOPE: DYNAMIC_DEFAULT_BROKER,
    "static": STATIC_BROKER,
    "default": DEFAULT,
}
TYPE_CODES = {"boolean": 1, "string": 2, "int": 3, "long": 5, "double": 6, "list": 7}
PASSWORD = 9
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3


def _text(value: Any) -> str:
    return format_value(value)


def _sensitive(name: str) -> bool:
    return "secret" in name or name in SENSITIVE_KEYS


def _entry(
    name: str,
    value: str | None,
    origins: list[tuple[str, Any]],
    *,
    broker_name: str,
    read_only: bool,
    sensitive: bool,
    config_type: int,
    doc: str,
    synonyms: bool,
    docs: bool,
) -> dict[str, Any]:
    """One described config; ``origins`` lists its layers, highest precedence first, and
    ``broker_name`` is the name the broker-level layers are listed under as synonyms."""
    return {
        "name": name,
        "value": None if sensitive else value,
        "read_only": read_only,
        "config_source": SOURCES[origins[0][0]],
        "is_default": origins[0][0] == "default",
        "is_sensitive": sensitive,
        "config_type": PASSWORD if sensitive else config_type,
        "documentation": doc if docs else None,
        "synonyms": [
            {
                "name": name if origin == "topic" else broker_name,
                "value": None if sensitive else _text(raw),
                "source": SOURCES[origin],
            }
            for origin, raw in origins
        ]
        if synonyms
        else [],
    }


def describe_topic_configs(
    ctx: Any, topic: Any, keys: set[str] | None, *, synonyms: bool = False, docs: bool = False
) -> list[dict[str, Any]]:
    config: BrokerConfig = ctx.config
    replica = bool(topic.config.remote_readreplica)  # its configs follow the origin
    out = []
    for name, value, _ in topic.config.describe():
        if keys and name not in keys:
            continue
        kafka_key = name in TOPIC_CONFIG_KEYS  # streamd's own keys have no broker layer
        origins = config.origins(DEFAULTS_PREFIX + name) if kafka_key else []
        if name in topic.overrides:
            origins = [("topic", topic.overrides[name]), *origins]
        key = config_key(name)
        assert key is not None, name
        out.append(
            _entry(
                name,
                value,
                origins,
                broker_name=DEFAULTS_PREFIX + name,
                read_only=replica and name != READREPLICA,
                sensitive=False,
                config_type=TYPE_CODES[key.type],
                doc=key.doc,
                synonyms=synonyms,
                docs=docs,
            )
        )
    return out


def describe_broker_configs(
    ctx: Any, scope: Scope, keys: set[str] | None, *, synonyms: bool = False, docs: bool = False
) -> list[dict[str, Any]]:
    config: BrokerConfig = ctx.config
    if scope == CLUSTER_SCOPE:
        names: Iterable[str] = sorted(config.layer(CLUSTER_SCOPE))
    else:
        names = [k.name for k in KEYS] + [DEFAULTS_PREFIX + n for n in TOPIC_CONFIG_KEYS]
    out = []
    for name in names:
        if keys and name not in keys:
            continue
        origins = config.origins(name)
        if scope == CLUSTER_SCOPE:
            origins = [o for o in origins if o[0] == CLUSTER_SCOPE]
            value = str(origins[0][1])
        elif name.startswith(DEFAULTS_PREFIX):
            topic_name = name[len(DEFAULTS_PREFIX) :]
            value = config.topic_defaults.get(topic_name, TOPIC_CONFIG_KEYS[topic_name].default)
        else:
            value = _text(config.values[name])
        if name.startswith(DEFAULTS_PREFIX):
            topic_key = TOPIC_CONFIG_KEYS[name[len(DEFAULTS_PREFIX) :]]
            kind, doc, dynamic = TYPE_CODES[topic_key.type], topic_key.doc, True
            value = _text(topic_key.parse(name, value))
        else:
            key = KEYS_BY_NAME[name]
            kind, doc, dynamic = TYPE_CODES[key.kafka_type], key.doc, key.dynamic
        out.append(
            _entry(
                name,
                value,
                origins,
                broker_name=name,
                read_only=not dynamic,
                sensitive=_sensitive(name),
                config_type=kind,
                doc=doc,
                synonyms=synonyms,
                docs=docs,
            )
        )
    return out


def _broker_scope(ctx: Any, name: str) -> Scope | None:
    if name == "":
        return CLUSTER_SCOPE
    if name == str(ctx.node_id):
        return BROKER_SCOPE
    return None


@api(32, "DescribeConfigs", 0, 4)
async def describe_configs(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    synonyms = bool(getattr(req.body, "include_synonyms", False))
    docs = bool(getattr(req.body, "include_documentation", False))
    results = []
    for res in req.body.resources:
        entry: dict[str, Any] = {
            "resource_type": res.resource_type,
            "resource_name": res.resource_name,
            "error_code": ErrorCode.NONE,
            "configs": [],
        }
        results.append(entry)
        keys = set(res.configuration_keys) if res.configuration_keys else None
        refused = _refusal(req, DESCRIBE_CONFIGS, res)
        if refused is not None:
            entry.update(refused)
            continue
        if res.resource_type == TOPIC:
            topic = ctx.logs.get(res.resource_name)
            if topic is None:
                entry.update(
                    error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    error_message=f"unknown topic {res.resource_name!r}",
                )
                continue
            entry["configs"] = describe_topic_configs(
                ctx, topic, keys, synonyms=synonyms, docs=docs
            )
        elif res.resource_type == BROKER:
            scope = _broker_scope(ctx, res.resource_name)
            if scope is None:
                entry.update(
                    error_code=ErrorCode.INVALID_REQUEST,
                    error_message=f"unknown broker {res.resource_name!r}",
                )
                continue
            entry["configs"] = describe_broker_configs(
                ctx, scope, keys, synonyms=synonyms, docs=docs
            )
        else:
            entry.update(
                error_code=ErrorCode.INVALID_REQUEST,
                error_message=f"unsupported resource type {res.resource_type}",
            )
    return {"results": results}


def _refusal(req: Request, operation: Any, res: Any) -> dict[str, Any] | None:
    if res.resource_type == TOPIC:
        if not authorize(req, operation, TOPIC_RESOURCE, res.resource_name):
            return {
                "error_code": ErrorCode.TOPIC_AUTHORIZATION_FAILED,
                "error_message": "topic authorization failed",
            }
    elif res.resource_type in (BROKER, BROKER_LOGGER) and not authorize_cluster(req, operation):
        return {
            "error_code": ErrorCode.CLUSTER_AUTHORIZATION_FAILED,
            "error_message": "cluster authorization failed",
        }
    return None


Compute = Callable[[dict[str, str], Any, Callable[[str], str | None]], dict[str, str]]


def _invalid(message: str) -> StreamdError:
    return StreamdError(message, code=ErrorCode.INVALID_CONFIG)


async def _apply(req: Request, res: Any, compute: Compute) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource_type": res.resource_type,
        "resource_name": res.resource_name,
        "error_code": ErrorCode.NONE,
    }
    refused = _refusal(req, ALTER_CONFIGS, res)
    if refused is not None:
        entry.update(refused)
        return entry
    try:
        if res.resource_type == TOPIC:
            await _alter_topic(req, res, compute)
        elif res.resource_type == BROKER:
            await _alter_broker(req, res, compute)
        else:
            raise StreamdError(
                f"unsupported resource type {res.resource_type}", code=ErrorCode.INVALID_REQUEST
            )
    except StreamdError as exc:
        entry.update(error_code=exc.code, error_message=str(exc))
    return entry


def _list_default_of_topic_key(name: str) -> str | None:
    key = TOPIC_CONFIG_KEYS.get(name)
    return key.default if key is not None and key.type == "list" else None


async def _alter_topic(req: Request, res: Any, compute: Compute) -> None:
    ctx = req.ctx
    topic = ctx.logs.get(res.resource_name)
    if topic is None:
        raise StreamdError(
            f"unknown topic {res.resource_name!r}", code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        )
    if is_internal(topic.name):
        raise StreamdError("internal topic", code=ErrorCode.INVALID_REQUEST)
    overrides = compute(dict(topic.overrides), res.configs, _list_default_of_topic_key)
    if await _read_replica_change(req, topic, overrides):
        return
    TopicConfig.from_overrides(dict(ctx.config.topic_defaults), overrides)
    if req.body.validate_only:
        return
    ctx.logs.alter_config(topic.name, overrides)
    if ctx.tiering is not None:
        await ctx.tiering.on_topic_changed(ctx.logs.get(topic.name))


async def _read_replica_change(req: Request, topic: Any, overrides: dict[str, str]) -> bool:
    """``remote.readreplica`` is set only by CreateTopics and removed only by promotion: a
    change that removes it (and nothing else) promotes the replica; any other change to a
    replica's configs is refused (they follow the origin). True when handled here."""
    current = topic.config.remote_readreplica
    wanted = overrides.get(READREPLICA)
    if not current:
        if wanted is not None:
            raise _invalid(
                f"{READREPLICA}: set only when a topic is created (streamd topic create NAME "
                f"-c {READREPLICA}=STORE_URL); {topic.name!r} is an ordinary topic"
            )
        return False
    rest = {k: v for k, v in overrides.items() if k != READREPLICA}
    if rest != {k: v for k, v in topic.overrides.items() if k != READREPLICA}:
        raise _invalid(
            f"topic {topic.name!r} is a read replica of {current}: its configs follow the "
            f"origin's topic manifest and cannot be changed here (promote it first with "
            f"`streamd topic promote {topic.name}`)"
        )
    if wanted is not None and wanted.strip() != current:
        raise _invalid(
            f"{READREPLICA}: topic {topic.name!r} is a read replica of {current} and cannot be "
            "pointed at another store (delete it and create it again)"
        )
    if wanted is None and not req.body.validate_only:
        if req.ctx.replicas is None:
            raise _invalid("read replicas are not available")
        await req.ctx.replicas.promote(topic.name)
    return True


def _list_default_of_broker_key(name: str) -> str | None:
    if name.startswith(DEFAULTS_PREFIX):
        return _list_default_of_topic_key(name[len(DEFAULTS_PREFIX) :])
    return None


async def _alter_broker(req: Request, res: Any, compute: Compute) -> None:
    config: BrokerConfig = req.ctx.config
    scope = _broker_scope(req.ctx, res.resource_name)
    if scope is None:
        raise StreamdError(
            f"unknown broker {res.resource_name!r}", code=ErrorCode.INVALID_REQUEST
        )
    current = config.layer(scope)
    layer = compute(dict(current), res.configs, _list_default_of_broker_key)
    for name in sorted(set(layer) | set(current)):
        if layer.get(name) != current.get(name):
            config.check_dynamic(name, layer.get(name))
    if req.body.validate_only:
        config.check_layer(scope, layer)
        return
    config.replace_layer(scope, layer)
    try:
        await asyncio.to_thread(atomic_write, config.dynamic_path, config.dynamic_document())
    except OSError as exc:
        config.replace_layer(scope, current)
        raise StreamdError(
            f"cannot persist the broker configs in {config.dynamic_path}: {exc}",
            code=ErrorCode.KAFKA_STORAGE_ERROR,
        ) from exc


def _replace(
    _current: dict[str, str], configs: Any, _list_default: Callable[[str], str | None]
) -> dict[str, str]:
    out = {}
    for c in configs:
        if c.value is None:
            raise _invalid(f"config {c.name} has no value")
        out[c.name] = c.value
    return out


def _incremental(
    current: dict[str, str], configs: Any, list_default: Callable[[str], str | None]
) -> dict[str, str]:
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise StreamdError(
            "Error due to duplicate config keys", code=ErrorCode.INVALID_REQUEST
        )
    for c in configs:
        op = c.config_operation
        if op == SET:
            if c.value is None:
                raise _invalid(f"config {c.name} has no value")
            current[c.name] = c.value
        elif op == DELETE:
            current.pop(c.name, None)
        elif op in (APPEND, SUBTRACT):
            default = list_default(c.name)
            if default is None:
                verb = "append" if op == APPEND else "subtract"
                raise _invalid(f"Config value {verb} is not allowed for config key: {c.name}")
            old = [i for i in current.get(c.name, default).split(",") if i]
            given = (c.value or "").split(",")
            if op == APPEND:
                new = old + [i for i in given if i not in old]
            else:
                new = [i for i in old if i not in given]
            current[c.name] = ",".join(new)
        else:
            raise StreamdError(f"unknown operation {op}", code=ErrorCode.INVALID_REQUEST)
    return current


@api(33, "AlterConfigs", 0, 2)
async def alter_configs(req: Request) -> dict[str, Any]:
    return {"responses": [await _apply(req, r, _replace) for r in req.body.resources]}


@api(44, "IncrementalAlterConfigs", 0, 1)
async def incremental_alter_configs(req: Request) -> dict[str, Any]:
    return {"responses": [await _apply(req, r, _incremental) for r in req.body.resources]}
