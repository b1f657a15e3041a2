"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics and the broker.

Topic configs use Kafka's names and sources: a topic override is DYNAMIC_TOPIC_CONFIG, a
broker-wide default from the config file is STATIC_BROKER_CONFIG, a built-in default is
DEFAULT_CONFIG. Broker configs are described read-only (they change through the config file).
AlterConfigs replaces a topic's whole override set, as Kafka does; IncrementalAlterConfigs
applies SET / DELETE per key (APPEND / SUBTRACT are for list configs, which topics here lack).
Authorization: describing needs DESCRIBE_CONFIGS, altering ALTER_CONFIGS, on the topic
(TOPIC_AUTHORIZATION_FAILED) or on the cluster for broker configs (CLUSTER_AUTHORIZATION_FAILED).
Sensitive broker settings (secrets, bootstrap passwords) are described with a null value.
DescribeConfigs v0 has no config source: ``is_default`` is set for values from the built-in
defaults (Kafka 3.9 always answers false there, but its clients read true as DEFAULT_CONFIG).
Internal topics' configs are the broker's: altering them answers INVALID_REQUEST.
"""

from __future__ import annotations

from typing import Any

from streamd.config import SENSITIVE_KEYS
from streamd.errors import ErrorCode, StreamdError
from streamd.kafka.apis import api
from streamd.kafka.authz import ALTER_CONFIGS, DESCRIBE_CONFIGS, authorize, authorize_cluster
from streamd.kafka.authz import TOPIC as TOPIC_RESOURCE
from streamd.kafka.context import Request
from streamd.kafka.offsets_topic import is_internal
from streamd.log.topic_config import TOPIC_CONFIG_KEYS, TopicConfig

TOPIC, BROKER, BROKER_LOGGER = 2, 4, 8
DYNAMIC_TOPIC, STATIC_BROKER, DEFAULT = 1, 4, 5
_TYPE_CODES = {"boolean": 1, "string": 2, "int": 3, "long": 5, "double": 6, "list": 7}
_DOCS = TOPIC_CONFIG_KEYS


def _config_type(name: str) -> int:
    key = _DOCS.get(name)
    return _TYPE_CODES.get(key.type, 2) if key is not None else 2


def describe_topic_configs(ctx: Any, topic: Any, keys: Any) -> list[dict[str, Any]]:
    out = []
    broker_defaults = ctx.config.topic_defaults
    for name, value, _is_default in topic.config.describe():
        if keys and name not in keys:
            continue
        if name in topic.overrides:
            source = DYNAMIC_TOPIC
        elif name in broker_defaults:
            source = STATIC_BROKER
        else:
            source = DEFAULT
        key = _DOCS.get(name)
        out.append(
            {
                "name": name,
                "value": value,
                "read_only": False,
                "config_source": source,
                "is_sensitive": False,
                "config_type": _config_type(name),
                "documentation": getattr(key, "doc", None),
                "synonyms": [],
            }
        )
    return out


def describe_broker_configs(ctx: Any, keys: Any) -> list[dict[str, Any]]:
    out = []
    for name, value in sorted(ctx.config.values.items()):
        if keys and name not in keys:
            continue
        sensitive = "secret" in name or name in SENSITIVE_KEYS
        out.append(
            {
                "name": name,
                "value": None if sensitive else str(value),
                "read_only": True,
                "config_source": STATIC_BROKER,
                "is_sensitive": sensitive,
                "config_type": 2,
                "synonyms": [],
            }
        )
    return out


@api(32, "DescribeConfigs", 0, 4)
async def describe_configs(req: Request) -> dict[str, Any]:
    ctx = req.ctx
    results = []
    v0 = req.version == 0
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
            entry["configs"] = describe_topic_configs(ctx, topic, keys)
        elif res.resource_type == BROKER:
            if res.resource_name not in ("", str(ctx.node_id)):
                entry.update(
                    error_code=ErrorCode.INVALID_REQUEST,
                    error_message=f"unknown broker {res.resource_name!r}",
                )
                continue
            entry["configs"] = describe_broker_configs(ctx, keys)
        else:
            entry.update(
                error_code=ErrorCode.INVALID_REQUEST,
                error_message=f"unsupported resource type {res.resource_type}",
            )
            continue
        if v0:
            for c in entry["configs"]:
                c["is_default"] = c["config_source"] == DEFAULT
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


async def _apply(req: Request, res: Any, compute: Any) -> dict[str, Any]:
    ctx = req.ctx
    entry: dict[str, Any] = {
        "resource_type": res.resource_type,
        "resource_name": res.resource_name,
        "error_code": ErrorCode.NONE,
    }
    refused = _refusal(req, ALTER_CONFIGS, res)
    if refused is not None:
        entry.update(refused)
        return entry
    if res.resource_type != TOPIC:
        entry.update(
            error_code=ErrorCode.INVALID_REQUEST,
            error_message="only topic configs can be altered at runtime",
        )
        return entry
    if is_internal(res.resource_name):
        entry.update(error_code=ErrorCode.INVALID_REQUEST, error_message="internal topic")
        return entry
    topic = ctx.logs.get(res.resource_name)
    if topic is None:
        entry.update(
            error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
            error_message=f"unknown topic {res.resource_name!r}",
        )
        return entry
    try:
        overrides = compute(dict(topic.overrides), res.configs)
        TopicConfig.from_overrides(dict(ctx.config.topic_defaults), overrides)
        if not req.body.validate_only:
            ctx.logs.alter_config(topic.name, overrides)
            if ctx.tiering is not None:
                await ctx.tiering.on_topic_changed(ctx.logs.get(topic.name))
    except StreamdError as exc:
        entry.update(error_code=exc.code, error_message=str(exc))
    return entry


def _replace(_current: dict[str, str], configs: Any) -> dict[str, str]:
    out = {}
    for c in configs:
        if c.value is None:
            raise StreamdError(f"config {c.name} has no value", code=ErrorCode.INVALID_CONFIG)
        out[c.name] = c.value
    return out


SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3


def _incremental(current: dict[str, str], configs: Any) -> dict[str, str]:
    for c in configs:
        if c.config_operation == SET:
            if c.value is None:
                raise StreamdError(f"config {c.name} has no value", code=ErrorCode.INVALID_CONFIG)
            current[c.name] = c.value
        elif c.config_operation == DELETE:
            current.pop(c.name, None)
        else:
            raise StreamdError(
                f"{c.name} is not a list config; APPEND/SUBTRACT do not apply",
                code=ErrorCode.INVALID_CONFIG,
            )
    return current


@api(33, "AlterConfigs", 0, 2)
async def alter_configs(req: Request) -> dict[str, Any]:
    return {"responses": [await _apply(req, r, _replace) for r in req.body.resources]}


@api(44, "IncrementalAlterConfigs", 0, 1)
async def incremental_alter_configs(req: Request) -> dict[str, Any]:
    return {"responses": [await _apply(req, r, _incremental) for r in req.body.resources]}
