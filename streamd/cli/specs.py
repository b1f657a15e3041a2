"""The small languages of the command line, parsed without any I/O.

- Offset specs (``consume -o``, ``group seek --to``), rpk's vocabulary: ``start``/``oldest``,
  ``end``/``newest``, ``N`` (exact offset), ``+N`` (N after the log start), ``-N`` (N before
  the high watermark), ``@T`` (first record with timestamp >= T). ``T`` is epoch milliseconds,
  an ISO-8601 time (``2024-01-01T00:00:00Z``; no zone means UTC, a bare date means midnight
  UTC) or ``-DURATION`` before now (``@-1h``, ``@-30m``, ``@-2d``).
- Offset ranges (``consume -o``): ``A:B`` reads from ``A`` up to, not including, ``B``,
  where ``A`` is any offset spec above (empty = start) and ``B`` an exact offset, ``end`` (the
  high watermark when consuming starts: read what is there, then exit) or, after ``@``, a time
  (``@T1:T2``: records from T1 until the first at or after T2; ``@:T2`` from the start).
- Output templates (``consume -f``), rpk's verbs: ``%t`` topic, ``%T`` topic length, ``%k``
  key, ``%K`` key length, ``%v`` value, ``%V`` value length, ``%h`` headers (``k=v`` joined by
  ``,``), ``%H`` header count, ``%p`` partition, ``%o`` offset, ``%e`` leader epoch, ``%d``
  timestamp (ms), ``%x`` / ``%y`` producer id / epoch; ``%k{hex}`` / ``%v{base64}`` /
  ``%h{hex}`` encode binary data; ``%%`` is a literal ``%`` and ``\\n \\t \\r \\\\`` are
  escapes. A record ends with a newline unless the template already ends with one.
- Input templates (``produce -f``): ``%k %v %t %p %h`` split input into key, value, topic,
  partition and headers, e.g. ``%k %v`` or ``%t:%k:%v``; each field but the last is the
  shortest match. A ``\\n`` inside the template makes one record span several lines.

Every parse error is a :class:`SpecError` whose message is fit for the user as is.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal


class SpecError(ValueError):
    pass


OffsetKind = Literal["start", "end", "exact", "after_start", "before_end", "timestamp"]
OFFSET_HELP = "start, end, N, +N, -N, @TIMESTAMP_MS, @ISO-8601 or @-DURATION"


@dataclass(frozen=True, kw_only=True)
class OffsetSpec:
    kind: OffsetKind
    value: int = 0

    def resolve(self, low: int, high: int) -> int | None:
        """The concrete offset for a partition whose log spans [low, high); None for a
        timestamp, which needs the broker (ListOffsets) to resolve."""
        if self.kind == "start":
            return low
        if self.kind == "end":
            return high
        if self.kind == "exact":
            return max(low, min(self.value, high))
        if self.kind == "after_start":
            return min(low + self.value, high)
        if self.kind == "before_end":
            return max(high - self.value, low)
        return None


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    match = _DURATION.match(text.strip())
    if match is None:
        raise SpecError(f"invalid duration {text!r}: expected e.g. 500ms, 30s, 10m, 1h, 2d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_timestamp_ms(text: str, *, now_ms: int | None = None) -> int:
    """Epoch milliseconds, ISO-8601 (UTC unless a zone is given) or ``-DURATION`` before now."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if text.startswith("-"):
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now - parse_duration_ms(text[1:])
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise SpecError(
            f"invalid timestamp {text!r}: expected epoch milliseconds, ISO-8601 "
            "(2024-01-01T00:00:00Z) or -DURATION (-1h)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def parse_offset(text: str, *, now_ms: int | None = None) -> OffsetSpec:
    spec = text.strip()
    lowered = spec.lower()
    if lowered in ("start", "oldest", "beginning", "earliest"):
        return OffsetSpec(kind="start")
    if lowered in ("end", "newest", "latest"):
        return OffsetSpec(kind="end")
    if spec.startswith("@"):
        try:
            return OffsetSpec(kind="timestamp", value=parse_timestamp_ms(spec[1:], now_ms=now_ms))
        except SpecError as exc:
            raise SpecError(f"invalid offset {text!r}: {exc}") from None
    match = re.fullmatch(r"([+-]?)(\d+)", spec)
    if match is None:
        raise SpecError(f"invalid offset {text!r}: expected {OFFSET_HELP}")
    sign, number = match.group(1), int(match.group(2))
    kind: OffsetKind = {"": "exact", "+": "after_start", "-": "before_end"}[sign]  # type: ignore[assignment]
    return OffsetSpec(kind=kind, value=number)


EndKind = Literal["none", "end", "exact", "timestamp"]


@dataclass(frozen=True, kw_only=True)
class OffsetRange:
    """Where consuming starts and, optionally, where it stops (exclusive)."""

    start: OffsetSpec
    end_kind: EndKind = "none"
    end_value: int = 0

    @property
    def bounded(self) -> bool:
        return self.end_kind != "none"


def parse_offset_range(text: str, *, now_ms: int | None = None) -> OffsetRange:
    """``start``, ``@T``... as :func:`parse_offset`, or a range ``A:B`` / ``@T1:T2``.

    ISO times contain ``:`` themselves: ``@...`` is a single time when the whole text parses
    as one, else the first split at a ``:`` where both sides parse is the range."""
    spec = text.strip()
    if spec.startswith("@"):
        body = spec[1:]
        try:
            return OffsetRange(start=parse_offset(spec, now_ms=now_ms))
        except SpecError:
            if ":" not in body:
                raise
        for at in [i for i, ch in enumerate(body) if ch == ":"]:
            try:
                return _range(body[:at], body[at + 1 :], timed=True, now_ms=now_ms)
            except SpecError:
                continue
        raise SpecError(
            f"invalid offset {text!r}: expected @T or @T1:T2 with times as epoch ms, ISO-8601 "
            "or -DURATION"
        )
    if ":" not in spec:
        return OffsetRange(start=parse_offset(spec, now_ms=now_ms))
    if spec.count(":") > 1:
        raise SpecError(f"invalid offset {text!r}: expected A:B")
    first, _, second = spec.partition(":")
    try:
        return _range(first, second, timed=False, now_ms=now_ms)
    except SpecError as exc:
        raise SpecError(f"invalid offset {text!r}: {exc}") from None


def _range(first: str, second: str, *, timed: bool, now_ms: int | None) -> OffsetRange:
    first, second = first.strip(), second.strip()
    if first:
        start = parse_offset(("@" if timed else "") + first, now_ms=now_ms)
    else:
        start = OffsetSpec(kind="start")
    if not second:
        return OffsetRange(start=start)
    if second.lower() in ("end", "newest", "latest"):
        return OffsetRange(start=start, end_kind="end")
    if timed:
        return OffsetRange(
            start=start, end_kind="timestamp", end_value=parse_timestamp_ms(second, now_ms=now_ms)
        )
    if not second.isdigit():
        raise SpecError("the end of a range is an offset, end, or after @ a time")
    return OffsetRange(start=start, end_kind="exact", end_value=int(second))


def parse_key_values(items: Iterable[str], what: str = "value") -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; the key must be non-empty."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"invalid {what} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def parse_partitions(items: Iterable[str]) -> list[int]:
    """``["0,1", "3"]`` -> ``[0, 1, 3]``."""
    out: list[int] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise SpecError(f"invalid partition {part!r}: expected a number >= 0")
            if int(part) not in out:
                out.append(int(part))
    return out


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
OUTPUT_FIELDS = {
    "t": "topic",
    "T": "topic_length",
    "k": "key",
    "K": "key_length",
    "v": "value",
    "V": "value_length",
    "h": "headers",
    "H": "header_count",
    "p": "partition",
    "o": "offset",
    "e": "leader_epoch",
    "d": "timestamp",
    "x": "producer_id",
    "y": "producer_epoch",
}
INPUT_FIELDS = {"t": "topic", "k": "key", "v": "value", "h": "headers", "p": "partition"}
ENCODINGS = ("text", "hex", "base64")
_ENCODABLE = {"key", "value", "headers"}


@dataclass(frozen=True, kw_only=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    leader_epoch: int = -1
    producer_id: int = -1
    producer_epoch: int = -1


def text_of(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", errors="replace")


def encode(data: bytes | None, encoding: str = "text") -> str:
    """Bytes as a template shows them: UTF-8 text (invalid bytes replaced), hex or base64."""
    if data is None:
        return ""
    if encoding == "hex":
        return data.hex()
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return text_of(data)


def headers_text(headers: Iterable[tuple[str, bytes | None]], encoding: str = "text") -> str:
    return ",".join(f"{k}={encode(v, encoding)}" for k, v in headers)


Token = tuple[str, str, str]
"""("lit", text, "") or ("field", name, encoding)."""


def _tokens(template: str, fields: Mapping[str, str], *, what: str = "template") -> list[Token]:
    """Split a template into literal and field tokens; ``%v{hex}`` picks an encoding."""
    tokens: list[Token] = []
    literal: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        nxt = template[i + 1] if i + 1 < len(template) else ""
        if ch == "\\" and nxt in _ESCAPES:
            literal.append(_ESCAPES[nxt])
            i += 2
        elif ch == "%" and nxt == "%":
            literal.append("%")
            i += 2
        elif ch == "%":
            if nxt not in fields:
                allowed = " ".join(f"%{c}" for c in fields)
                shown = f"%{nxt}" if nxt else "a trailing %"
                raise SpecError(f"invalid {what} {template!r}: unknown {shown} (use {allowed})")
            if literal:
                tokens.append(("lit", "".join(literal), ""))
                literal = []
            name = fields[nxt]
            i += 2
            encoding = "text"
            if template.startswith("{", i):
                end = template.find("}", i)
                encoding = template[i + 1 : end] if end > 0 else ""
                if end < 0 or encoding not in ENCODINGS or name not in _ENCODABLE:
                    raise SpecError(
                        f"invalid {what} {template!r}: %{nxt} takes no modifier "
                        f"{template[i:end + 1] if end > 0 else template[i:]!r} "
                        "(%k, %v and %h take {text}, {hex} or {base64})"
                    )
                i = end + 1
            tokens.append(("field", name, encoding))
        else:
            literal.append(ch)
            i += 1
    if literal:
        tokens.append(("lit", "".join(literal), ""))
    return tokens


class OutputTemplate:
    """rpk's (and kcat's) verbs: ``%t`` topic, ``%T`` its length, ``%k``/``%K`` key and its
    length, ``%v``/``%V`` value and its length, ``%h`` headers (``k=v`` joined by ``,``), ``%H``
    their count, ``%p`` partition, ``%o`` offset, ``%e`` leader epoch, ``%d`` timestamp (ms),
    ``%x``/``%y`` producer id and epoch; ``%k{hex}``, ``%v{base64}`` ... encode binary data."""

    def __init__(self, template: str) -> None:
        self._tokens = _tokens(template, OUTPUT_FIELDS)
        last = self._tokens[-1] if self._tokens else ("lit", "", "")
        if not (last[0] == "lit" and last[1].endswith("\n")):
            self._tokens.append(("lit", "\n", ""))
        self.fields = {t[1] for t in self._tokens if t[0] == "field"}

    def render(self, rec: Record) -> str:
        parts = []
        for kind, text, encoding in self._tokens:
            if kind == "lit":
                parts.append(text)
            elif text == "key":
                parts.append(encode(rec.key, encoding))
            elif text == "value":
                parts.append(encode(rec.value, encoding))
            elif text == "headers":
                parts.append(headers_text(rec.headers, encoding))
            elif text == "key_length":
                parts.append(str(-1 if rec.key is None else len(rec.key)))
            elif text == "value_length":
                parts.append(str(-1 if rec.value is None else len(rec.value)))
            elif text == "topic_length":
                parts.append(str(len(rec.topic)))
            elif text == "header_count":
                parts.append(str(len(rec.headers)))
            else:
                parts.append(str(getattr(rec, text)))
        return "".join(parts)


def _json_bytes(data: bytes | None, binary: str) -> tuple[str | None, str]:
    """(rendered, encoding): UTF-8 text when it decodes (``auto``), else base64."""
    if data is None:
        return None, "text"
    if binary == "base64":
        return base64.b64encode(data).decode("ascii"), "base64"
    if binary == "text":
        return text_of(data), "text"
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def record_json(rec: Record, binary: str = "auto") -> dict[str, object]:
    """One record for ``--format json``: key, value and header values as UTF-8 text, or
    base64 when they are not valid UTF-8 (``binary="auto"``, marked by ``key_encoding`` /
    ``value_encoding`` / the header's ``encoding``), always base64 (``"base64"``) or always
    text with invalid bytes replaced (``"text"``). Headers are an array, so a repeated key
    keeps every value in order."""
    key, key_enc = _json_bytes(rec.key, binary)
    value, value_enc = _json_bytes(rec.value, binary)
    headers = []
    for k, v in rec.headers:
        hv, h_enc = _json_bytes(v, binary)
        entry: dict[str, object] = {"key": k, "value": hv}
        if h_enc != "text":
            entry["encoding"] = h_enc
        headers.append(entry)
    out: dict[str, object] = {
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "timestamp": rec.timestamp,
        "key": key,
        "value": value,
        "headers": headers,
    }
    if key_enc != "text":
        out["key_encoding"] = key_enc
    if value_enc != "text":
        out["value_encoding"] = value_enc
    return out


@dataclass(frozen=True, kw_only=True)
class ParsedInput:
    key: str | None = None
    value: str = ""
    topic: str | None = None
    partition: int | None = None
    headers: tuple[tuple[str, str], ...] = ()


class InputTemplate:
    """Splits input into records by a template of literals and ``%k %v %t %p %h`` (the verbs
    consume prints). ``\\n`` inside a template makes one record span several lines: a
    template with N newlines (one of them trailing, or N+1 lines without) reads N lines per
    record. ``%h`` reads ``k=v`` pairs joined by ``,`` (repeated keys kept)."""

    def __init__(self, template: str) -> None:
        tokens = _tokens(template, INPUT_FIELDS, what="input template")
        names = [text for kind, text, _ in tokens if kind == "field"]
        if names.count("value") != 1 or any(names.count(n) > 1 for n in set(names)):
            raise SpecError(
                f"invalid input template {template!r}: needs exactly one %v and at most one "
                "of each of %k %t %p %h"
            )
        if any(enc != "text" for kind, _, enc in tokens if kind == "field"):
            raise SpecError(f"invalid input template {template!r}: modifiers are for output")
        if tokens and tokens[-1][0] == "lit" and tokens[-1][1].endswith("\n"):
            tokens[-1] = ("lit", tokens[-1][1][:-1], "")
        self.lines = 1 + sum(text.count("\n") for kind, text, _ in tokens if kind == "lit")
        pattern = []
        for index, (kind, text, _) in enumerate(tokens):
            if kind == "lit":
                pattern.append(re.escape(text))
            else:
                greedy = index == len(tokens) - 1 or all(
                    k == "lit" and t == "" for k, t, _ in tokens[index + 1 :]
                )
                pattern.append(f"(?P<{text}>.*)" if greedy else f"(?P<{text}>.*?)")
        self.template = template
        self.has_key = "key" in names
        self.names = set(names)
        self._regex = re.compile("".join(pattern), re.DOTALL)

    def parse(self, line: str) -> tuple[str | None, str]:
        parsed = self.parse_record(line)
        return parsed.key, parsed.value

    def parse_record(self, text: str) -> ParsedInput:
        match = self._regex.fullmatch(text)
        if match is None:
            raise SpecError(f"input does not match input template {self.template!r}: {text!r}")
        groups = match.groupdict()
        partition = None
        if "partition" in groups:
            raw = groups["partition"].strip()
            if not raw.isdigit():
                raise SpecError(f"invalid partition {raw!r} in input {text!r}")
            partition = int(raw)
        headers: tuple[tuple[str, str], ...] = ()
        if groups.get("headers"):
            headers = tuple(parse_header_pairs(groups["headers"].split(",")))
        return ParsedInput(
            key=groups.get("key") if self.has_key else None,
            value=groups["value"],
            topic=groups.get("topic") or None,
            partition=partition,
            headers=headers,
        )


def parse_header_pairs(items: Iterable[str]) -> list[tuple[str, str]]:
    """``["a=1", "a=2"]`` -> ``[("a", "1"), ("a", "2")]``: headers keep repeats and order."""
    out: list[tuple[str, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"invalid header {item!r}: expected KEY=VALUE")
        out.append((key.strip(), value))
    return out
