"""kio-shaped schemas for what kio 0.6 lacks: retired request versions and coordinator records.

kio is generated from Kafka 4's message specs, which dropped the versions KIP-896 retired
(Produce v0-v2, Fetch v0-v3, ListOffsets v0, OffsetCommit v0-v1, ...). Kafka 3.9 still serves
them and so does streamd, because clients packaged by distributions (sarama 1.22, kafka-go 0.2,
Burrow 1.2) send them. The group coordinator's record schemas (the key/value formats of
``__consumer_offsets``) are not part of kio at all.

``specs.json`` holds those messages' specs as Kafka 3.9 ships them (extracted by
``tools/extract_kafka_specs.py``). From it this module builds, on first use, frozen keyword-only
dataclasses of exactly the shape kio generates, so kio's own readers and writers serialize them
and handlers see the same attribute names and types for every version:

- a field that also exists in kio's lowest version of the message takes kio's name, type and
  default (kio renames ``TimeoutMs`` to ``timeout`` as a timedelta, for instance); kio's fields
  follow the spec's order, so the two are matched by position at that version;
- a field only old versions have (``MaxNumOffsets``, ``OldStyleOffsets``, ``IsDefault``,
  ``CommitTimestamp``) gets the snake-case of its spec name and a plain type.

Only non-flexible versions are built: every retired version predates flexible versions.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import MISSING, Field, field, fields, make_dataclass
from functools import cache
from importlib import resources
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader
from kio.schema.response_header.v0.header import ResponseHeader
from kio.serial import entity_writer
from kio.static.constants import EntityType

_PRIMITIVES: dict[str, type] = {
    "int8": int,
    "int16": int,
    "int32": int,
    "int64": int,
    "uint16": int,
    "float64": float,
    "bool": bool,
    "string": str,
    "bytes": bytes,
    "records": bytes,
    "uuid": uuid.UUID,
}


@cache
def _specs() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("specs.json").read_text()
    return json.loads(text)["specs"]  # type: ignore[no-any-return]


def _in(versions: str | None, version: int) -> bool:
    if versions is None or versions == "none":
        return False
    if versions.endswith("+"):
        return version >= int(versions[:-1])
    low, _, high = versions.partition("-")
    return int(low) <= version <= int(high or low)


def _snake(name: str) -> str:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name).lower()


def _default(spec: dict[str, Any], kafka_type: str) -> Any:
    raw = spec.get("default")
    if raw is None or raw == "null":
        return None if raw == "null" else MISSING
    if kafka_type == "bool":
        return str(raw).lower() == "true"
    if kafka_type.startswith("int"):
        return int(raw)
    return raw


class _Builder:
    def __init__(self, spec: dict[str, Any], version: int, kind: EntityType) -> None:
        self.spec = spec
        self.version = version
        self.kind = kind
        self.common = {s["name"]: s for s in spec.get("commonStructs", ())}
        header = {EntityType.request: RequestHeader, EntityType.response: ResponseHeader}
        self.namespace = {
            "__version__": version,
            "__flexible__": False,
            "__api_key__": spec.get("apiKey", -1),
            "__header_schema__": header.get(kind),
        }

    def entity(self, name: str, specs: list[dict[str, Any]], base: type | None, top: bool) -> type:
        v = self.version
        present = [f for f in specs if _in(f["versions"], v)]
        by_name = self._match(specs, base)
        out: list[tuple[str, Any, Field[Any]]] = []
        for f in present:
            out.append(self._field(f, by_name.get(f["name"])))
        namespace = dict(self.namespace, __type__=self.kind if top else EntityType.nested)
        return make_dataclass(
            name, out, frozen=True, slots=True, kw_only=True, namespace=namespace
        )

    def _match(self, specs: list[dict[str, Any]], base: type | None) -> dict[str, Field[Any]]:
        """Spec field name -> kio field, matched by position at kio's version of ``base``."""
        if base is None:
            return {}
        at_base = [f for f in specs if _in(f["versions"], base.__version__)]  # type: ignore[attr-defined]
        kio_fields = fields(base)
        if len(at_base) != len(kio_fields):
            return {}
        return {s["name"]: k for s, k in zip(at_base, kio_fields, strict=True)}

    def _field(self, spec: dict[str, Any], kio: Field[Any] | None) -> tuple[str, Any, Field[Any]]:
        ftype: str = spec["type"]
        nullable = _in(spec.get("nullableVersions"), self.version)
        is_array = ftype.startswith("[]")
        inner = ftype[2:] if is_array else ftype
        if inner not in _PRIMITIVES:
            sub_specs = spec.get("fields") or self.common[inner]["fields"]
            base = _inner_entity(kio.type) if kio is not None else None
            cls = self.entity(inner, sub_specs, base, top=False)
            annotation: Any = tuple[cls, ...] if is_array else cls  # type: ignore[valid-type]
            if nullable:
                annotation = annotation | None
            name = kio.name if kio is not None else _snake(spec["name"])
            return name, annotation, _field_of({}, None if nullable else MISSING)
        if kio is not None and kio.metadata.get("kafka_type") is not None:
            return kio.name, kio.type, _field_of(dict(kio.metadata), kio.default)
        kafka_type = inner
        py: Any = _PRIMITIVES[inner]
        if inner == "int16" and spec["name"] == "ErrorCode":
            kafka_type, py = "error_code", ErrorCode
        annotation = tuple[py, ...] if is_array else py
        if nullable:
            annotation = annotation | None
        default = _default(spec, kafka_type) if not is_array else MISSING
        if default is None and not nullable:
            default = MISSING
        return _snake(spec["name"]), annotation, _field_of({"kafka_type": kafka_type}, default)


def _field_of(metadata: dict[str, Any], default: Any) -> Field[Any]:
    if metadata:
        return field(metadata=metadata, default=default)  # type: ignore[no-any-return]
    return field(default=default)  # type: ignore[no-any-return]


def _inner_entity(annotation: Any) -> type | None:
    args = getattr(annotation, "__args__", None)
    if args:
        for arg in args:
            if isinstance(arg, type) and hasattr(arg, "__dataclass_fields__"):
                return arg
    return annotation if hasattr(annotation, "__dataclass_fields__") else None


def _lowest_kio(api_key: int, kind: EntityType) -> type | None:
    load = load_request_schema if kind is EntityType.request else load_response_schema
    for version in range(0, 20):
        try:
            return load(api_key, version)
        except Exception:
            continue
    return None


def _spec_named(suffix: str, api_key: int) -> dict[str, Any] | None:
    for spec in _specs().values():
        if spec.get("apiKey") == api_key and spec["type"] == suffix:
            return spec  # type: ignore[no-any-return]
    return None


def _valid(spec: dict[str, Any], version: int) -> bool:
    return _in(spec["validVersions"], version) and not _in(spec["flexibleVersions"], version)


@cache
def schema(api_key: int, version: int, kind: EntityType) -> type | None:
    """The request or response class of a retired version, or None when there is none."""
    spec = _spec_named(kind.name, api_key)
    if spec is None or not _valid(spec, version):
        return None
    base = _lowest_kio(api_key, kind)
    return _Builder(spec, version, kind).entity(spec["name"], spec["fields"], base, top=True)


def request(api_key: int, version: int) -> type | None:
    return schema(api_key, version, EntityType.request)


def response(api_key: int, version: int) -> type | None:
    return schema(api_key, version, EntityType.response)


@cache
def record(name: str, version: int) -> type:
    """A group coordinator record schema (``OffsetCommitKey``, ``GroupMetadataValue``, ...)."""
    spec = _specs()[name]
    if not _valid(spec, version):
        raise ValueError(f"{name} has no non-flexible version {version}")
    return _Builder(spec, version, EntityType.data).entity(name, spec["fields"], None, top=True)


def encode_record(name: str, version: int, **values: Any) -> bytes:
    """A coordinator record key or value: its int16 version, then the schema's fields."""
    cls = record(name, version)
    out = io.BytesIO()
    out.write(version.to_bytes(2, "big", signed=True))
    entity_writer(cls)(out, cls(**values))
    return out.getvalue()
