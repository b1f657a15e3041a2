"""The small languages of the command line, parsed without any I/O.

- Offset specs (``consume -o``, ``group seek --to``), rpk's vocabulary: ``start``/``oldest``,
  ``end``/``newest``, ``N`` (exact offset), ``+N`` (N after the log start), ``-N`` (N before
  the high watermark), ``@T`` (first record with timestamp >= T). ``T`` is epoch milliseconds,
  an ISO-8601 time (``2024-01-01T00:00:00Z``; no zone means UTC, a bare date means midnight
  UTC) or ``-DURATION`` before now (``@-1h``, ``@-30m``, ``@-2d``).
- Output templates (``consume -f``): ``%k %v %o %p %t %h %T`` are key, value, offset,
  partition, timestamp (ms), headers (``k=v`` joined by ``,``) and topic; ``%%`` is a literal
  ``%`` and ``\\n \\t \\r \\\\`` are escapes. A record ends with a newline unless the template
  already ends with one.
- Input templates (``produce -f``): the same ``%k`` / ``%v`` placeholders split one input line
  into key and value, e.g. ``%k %v`` or ``%k:%v``; the key is the shortest match, the value
  takes the rest of the line.

Every parse error is a :class:`SpecError` whose message is fit for the user as is.
"""

from __future__ import annotations

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
    "k": "key",
    "v": "value",
    "o": "offset",
    "p": "partition",
    "t": "timestamp",
    "h": "headers",
    "T": "topic",
}


@dataclass(frozen=True, kw_only=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


def text_of(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", errors="replace")


def headers_text(headers: Iterable[tuple[str, bytes | None]]) -> str:
    return ",".join(f"{k}={text_of(v)}" for k, v in headers)


def _tokens(template: str, fields: Mapping[str, str]) -> list[tuple[str, str]]:
    """Split a template into ("lit", text) and ("field", name) tokens."""
    tokens: list[tuple[str, str]] = []
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
                raise SpecError(f"invalid template {template!r}: unknown {shown} (use {allowed})")
            if literal:
                tokens.append(("lit", "".join(literal)))
                literal = []
            tokens.append(("field", fields[nxt]))
            i += 2
        else:
            literal.append(ch)
            i += 1
    if literal:
        tokens.append(("lit", "".join(literal)))
    return tokens


class OutputTemplate:
    def __init__(self, template: str) -> None:
        self._tokens = _tokens(template, OUTPUT_FIELDS)
        last = self._tokens[-1] if self._tokens else ("lit", "")
        if not (last[0] == "lit" and last[1].endswith("\n")):
            self._tokens.append(("lit", "\n"))

    def render(self, rec: Record) -> str:
        parts = []
        for kind, text in self._tokens:
            if kind == "lit":
                parts.append(text)
            elif text == "key":
                parts.append(text_of(rec.key))
            elif text == "value":
                parts.append(text_of(rec.value))
            elif text == "headers":
                parts.append(headers_text(rec.headers))
            else:
                parts.append(str(getattr(rec, text)))
        return "".join(parts)


def record_json(rec: Record) -> dict[str, object]:
    return {
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "timestamp": rec.timestamp,
        "key": None if rec.key is None else text_of(rec.key),
        "value": None if rec.value is None else text_of(rec.value),
        "headers": {k: (None if v is None else text_of(v)) for k, v in rec.headers},
    }


class InputTemplate:
    """Splits a line into (key, value) by a template of literals, ``%k`` and ``%v``."""

    def __init__(self, template: str) -> None:
        tokens = _tokens(template, {"k": "key", "v": "value"})
        names = [text for kind, text in tokens if kind == "field"]
        if names.count("value") != 1 or names.count("key") > 1:
            raise SpecError(
                f"invalid input template {template!r}: needs exactly one %v and at most one %k"
            )
        pattern = []
        for index, (kind, text) in enumerate(tokens):
            if kind == "lit":
                pattern.append(re.escape(text))
            else:
                greedy = index == len(tokens) - 1
                pattern.append(f"(?P<{text}>.*)" if greedy else f"(?P<{text}>.*?)")
        self.template = template
        self.has_key = "key" in names
        self._regex = re.compile("".join(pattern), re.DOTALL)

    def parse(self, line: str) -> tuple[str | None, str]:
        match = self._regex.fullmatch(line)
        if match is None:
            raise SpecError(f"line does not match input template {self.template!r}: {line!r}")
        return (match.group("key") if self.has_key else None), match.group("value")
