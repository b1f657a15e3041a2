"""The one place that knows kio, the generated Kafka wire schemas.

Handlers work with plain attribute access on request entities and describe responses as nested
dicts holding the fields of the newest version they support. ``build`` turns such a dict into
the kio entity of the negotiated version: fields the version lacks are dropped, fields the dict
lacks get Kafka's zero value. A kio version bump therefore touches this module only. Versions
kio no longer ships (KIP-896's retired ones, which Kafka 3.9 still serves) come from
:mod:`streamd.kafka.legacy`, built in kio's shape from Kafka 3.9's specs.

Request header v1/v2 and response header v0/v1 are parsed and written here by hand: they are
framing, not per-API schema, and the Fetch path wants to splice record bytes after a header.
"""

from __future__ import annotations

import datetime
import struct
import uuid
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from functools import cache
from types import UnionType
from typing import Any, Union, get_args, get_origin

import kio.schema.errors as kio_errors
from kio.index import load_request_schema, load_response_schema
from kio.schema.index import api_key_map
from kio.serial import entity_reader, entity_writer

from streamd.errors import InvalidRequest
from streamd.kafka import legacy

_I16_I16_I32 = struct.Struct(">hhi")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")

KioError = kio_errors.ErrorCode
_UTC = datetime.UTC


def api_name(api_key: int) -> str | None:
    return api_key_map.get(api_key)


@cache
def request_class(api_key: int, version: int) -> type | None:
    try:
        return load_request_schema(api_key, version)
    except Exception:
        return legacy.request(api_key, version)


@cache
def response_class(api_key: int, version: int) -> type:
    try:
        return load_response_schema(api_key, version)
    except Exception:
        cls = legacy.response(api_key, version)
        if cls is None:
            raise
        return cls


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body_offset: int


def parse_header(frame: bytes) -> RequestHeader:
    """Parse the request header; the body starts at ``body_offset``.

    Whether the header has tagged fields (v2) depends on whether the request's schema version
    is flexible, so an unknown API or version is parsed as v1 (enough to answer it).
    """
    if len(frame) < 10:
        raise InvalidRequest("request shorter than its header")
    api_key, api_version, correlation_id = _I16_I16_I32.unpack_from(frame, 0)
    (client_len,) = _I16.unpack_from(frame, 8)
    pos = 10
    client_id = None
    if client_len >= 0:
        client_id = frame[pos : pos + client_len].decode("utf-8", "replace")
        pos += client_len
    cls = request_class(api_key, api_version)
    if cls is not None and getattr(cls, "__flexible__", False):
        count, pos = _read_uvarint(frame, pos)
        for _ in range(count):
            _tag, pos = _read_uvarint(frame, pos)
            size, pos = _read_uvarint(frame, pos)
            pos += size
    if pos > len(frame):
        raise InvalidRequest("truncated request header")
    return RequestHeader(api_key, api_version, correlation_id, client_id, pos)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise InvalidRequest("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise InvalidRequest("varint too long")


def decode_request(header: RequestHeader, frame: bytes) -> Any:
    cls = request_class(header.api_key, header.api_version)
    if cls is None:
        raise InvalidRequest(f"unsupported api {header.api_key} v{header.api_version}")
    try:
        entity, _ = _reader(cls)(frame, header.body_offset)
    except Exception as exc:
        raise InvalidRequest(f"malformed {cls.__name__} v{header.api_version}: {exc}") from exc
    return entity


@cache
def _reader(cls: type) -> Callable[[bytes, int], tuple[Any, int]]:
    return entity_reader(cls)


SCATTER_MIN = 64 * 1024
"""Values at least this large (record sets) are not copied into the frame but sent as parts."""


class _FrameWriter:
    """The ``write`` target of kio's serializers: small fields accumulate in a bytearray, large
    values (fetched record batches) are kept by reference, so a response is handed to the
    transport as a list of parts (one ``writev``) without copying its records."""

    __slots__ = ("parts", "buf", "size")

    def __init__(self) -> None:
        self.buf = bytearray(8)  # size + correlation id, filled in by the caller
        self.parts: list[bytes | bytearray | memoryview] = [self.buf]
        self.size = 8

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.size += n
        if n >= SCATTER_MIN:
            self.parts.append(data)
            self.buf = bytearray()
            self.parts.append(self.buf)
        else:
            self.buf += data
        return n


def encode_response_parts(
    api_key: int, version: int, correlation_id: int, body: Any
) -> list[bytes | bytearray | memoryview]:
    """Length-prefixed response frame (size, header v0 or v1 for flexible, body) as parts
    whose concatenation is the frame; record sets are referenced, not copied."""
    cls: Any = type(body)
    out = _FrameWriter()
    _I32.pack_into(out.parts[0], 4, correlation_id)
    if cls.__flexible__ and api_key != 18:  # ApiVersions always answers with header v0
        out.write(b"\0")
    _writer(cls)(out, body)
    _I32.pack_into(out.parts[0], 0, out.size - 4)
    return [p for p in out.parts if p]


def encode_response(api_key: int, version: int, correlation_id: int, body: Any) -> bytes:
    """Length-prefixed response frame: size, header (v0, or v1 for flexible), body."""
    return b"".join(encode_response_parts(api_key, version, correlation_id, body))


@cache
def _writer(cls: type) -> Callable[[Any, Any], None]:
    return entity_writer(cls)


def build(cls: type, data: dict[str, Any]) -> Any:
    """Instantiate kio entity ``cls`` from a dict, filling what the dict omits with zeros."""
    kwargs = {}
    for name, kind, sub, default, zero in _plan(cls):
        value = data.get(name, MISSING)
        if value is MISSING:
            if default is not MISSING:
                continue
            value = zero
        elif kind == "entities":
            value = tuple(build(sub, item) for item in value)
        elif kind == "entity":
            value = None if value is None else build(sub, value)
        elif kind == "error_code":
            value = KioError(int(value))
        elif kind == "timedelta":
            if not isinstance(value, datetime.timedelta):
                value = datetime.timedelta(milliseconds=int(value))
        elif kind == "array" and value is not None:
            value = tuple(value)
        elif sub == "datetime_i64" and isinstance(value, int):
            value = None if value < 0 else datetime.datetime.fromtimestamp(value / 1000, _UTC)
        kwargs[name] = value
    return cls(**kwargs)


@cache
def _plan(cls: type) -> tuple[tuple[str, str, Any, Any, Any], ...]:
    plan = []
    for f in fields(cls):
        default = f.default
        if default is MISSING and f.default_factory is not MISSING:
            default = f.default_factory()
        ktype = f.metadata.get("kafka_type")
        ftype = f.type
        nullable = False
        if get_origin(ftype) in (UnionType, Union):
            inner_types = [a for a in get_args(ftype) if a is not type(None)]
            nullable = len(inner_types) < len(get_args(ftype))
            ftype = inner_types[0]
        origin = get_origin(ftype)
        args = get_args(ftype)
        if origin is tuple and ktype is None:
            kind, sub = "entities", args[0]
        elif origin is tuple:
            kind, sub = "array", ktype
        elif ktype is None:
            kind, sub = "entity", ftype
        elif ktype == "error_code":
            kind, sub = "error_code", None
        elif ktype in ("timedelta_i32", "timedelta_i64"):
            kind, sub = "timedelta", None
        else:
            kind, sub = "primitive", ktype
        keep_empty = kind in ("entities", "array") or sub == "records"
        zero = None if nullable and not keep_empty else _zero(kind, sub)
        plan.append((f.name, kind, sub, default, zero))
    return tuple(plan)


def _zero(kind: str, sub: Any) -> Any:
    if kind in ("entities", "array"):
        return ()
    if kind == "error_code":
        return KioError.none
    if kind == "timedelta":
        return datetime.timedelta(0)
    if kind == "entity":
        return None
    if sub == "string":
        return ""
    if sub in ("bytes", "records"):
        return b""
    if sub == "bool":
        return False
    if sub == "uuid":
        return uuid.UUID(int=0)
    if sub == "float64":
        return 0.0
    if sub in ("datetime_i64",):
        return datetime.datetime.fromtimestamp(0, datetime.UTC)
    return 0


def response(api_key: int, version: int, data: dict[str, Any]) -> Any:
    return build(response_class(api_key, version), data)


def error_response(api_key: int, version: int, code: int) -> Any:
    """A response of the right shape carrying ``code`` at top level (where it has one)."""
    return response(api_key, version, {"error_code": code})


def ms(value: datetime.timedelta | int | None) -> int:
    """Milliseconds from a kio timedelta field (kio decodes durations as timedelta)."""
    if value is None:
        return 0
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds() * 1000)
    return int(value)
