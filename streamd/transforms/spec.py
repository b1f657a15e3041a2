"""A deployment: what ``streamd transform deploy`` asks for, validated once, stored as JSON.

``from`` and ``on_error`` keep the spelling of the command line (``earliest``, ``latest``, an
offset, ``@TIMESTAMP``; ``stop``, ``skip``, ``dead-letter=TOPIC``), so what ``describe`` shows
is what was typed. ``@TIMESTAMP`` takes milliseconds since the epoch or an ISO 8601 time
(UTC unless it names a zone). ``from`` applies only to a partition the transform has no
committed position for: a redeploy of the same name (new code) continues where it was.

Names follow Kafka's topic-name rules (``[a-zA-Z0-9._-]``, at most 128 characters here), since
a transform's name becomes part of its consumer group and transactional id
(``streamd-transform-NAME``). Environment variable names are POSIX names; the worker gets only
them (never the broker's own environment, which may hold bucket credentials).
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

NAME_RE = re.compile(r"^[a-zA-Z0-9._-]{1,128}$")
TOPIC_RE = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_CODE_BYTES = 256 << 10
"""A transform's source, at most (the admin API takes request bodies up to 1 MiB)."""
PREFIX = "streamd-transform-"


class SpecError(ValueError):
    """An invalid deployment; the message names the field and what to fix."""


def group_id(name: str) -> str:
    """The consumer group holding the transform's committed input positions."""
    return PREFIX + name


def transactional_id(name: str) -> str:
    return PREFIX + name


def check_name(name: str) -> str:
    if not NAME_RE.match(name or "") or name in (".", ".."):
        raise SpecError(
            f"invalid transform name {name!r}: use 1-128 of the characters a-z A-Z 0-9 . _ -"
        )
    return name


def check_topic(topic: str, what: str) -> str:
    if not TOPIC_RE.match(topic or "") or topic in (".", ".."):
        raise SpecError(f"invalid {what} {topic!r}: not a valid Kafka topic name")
    return topic


def parse_from(text: str) -> tuple[str, int]:
    """``earliest|latest|OFFSET|@TIMESTAMP`` -> (kind, value): ("earliest", 0), ("latest", 0),
    ("offset", N) or ("timestamp", ms)."""
    s = str(text).strip()
    if s in ("earliest", "latest"):
        return s, 0
    if s.isdigit():
        return "offset", int(s)
    if s.startswith("@"):
        rest = s[1:]
        if rest.isdigit():
            return "timestamp", int(rest)
        try:
            when = datetime.datetime.fromisoformat(rest)
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            return "timestamp", int(when.timestamp() * 1000)
    raise SpecError(
        f"invalid --from {text!r}: use earliest, latest, an offset, or @TIMESTAMP "
        "(milliseconds since the epoch or an ISO 8601 time)"
    )


def parse_on_error(text: str) -> tuple[str, str | None]:
    """``stop|skip|dead-letter=TOPIC`` -> (policy, dead-letter topic or None)."""
    s = str(text).strip()
    if s in ("stop", "skip"):
        return s, None
    if s.startswith("dead-letter="):
        return "dead-letter", check_topic(s.split("=", 1)[1], "dead-letter topic")
    raise SpecError(f"invalid --on-error {text!r}: use stop, skip or dead-letter=TOPIC")


def check_code(code: str, file_name: str) -> None:
    """The file must parse and define ``transform`` at module level (a function, a lambda or
    any other assignment). Nothing is executed here: the code runs only in a worker."""
    if len(code.encode()) > MAX_CODE_BYTES:
        raise SpecError(f"{file_name} is larger than {MAX_CODE_BYTES} bytes")
    try:
        tree = ast.parse(code, filename=file_name)
    except SyntaxError as exc:
        raise SpecError(f"{file_name}:{exc.lineno}: syntax error: {exc.msg}") from None
    defined = False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "transform":
            defined = True
        elif isinstance(node, ast.Assign):
            defined |= any(isinstance(t, ast.Name) and t.id == "transform" for t in node.targets)
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            defined |= any((a.asname or a.name) == "transform" for a in node.names)
    if not defined:
        raise SpecError(f"{file_name} does not define transform(record) at module level")


@dataclass(frozen=True, kw_only=True)
class Deployment:
    name: str
    input_topic: str
    output_topics: tuple[str, ...]
    start: str = "earliest"
    on_error: str = "stop"
    env: dict[str, str] = field(default_factory=dict)
    file_name: str = "transform.py"
    code: str = ""
    deployed_at_ms: int = 0
    deployed_by: str = ""

    @property
    def dead_letter_topic(self) -> str | None:
        return parse_on_error(self.on_error)[1]

    @property
    def code_sha256(self) -> str:
        return hashlib.sha256(self.code.encode()).hexdigest()

    @property
    def group_id(self) -> str:
        return group_id(self.name)

    @property
    def transactional_id(self) -> str:
        return transactional_id(self.name)

    def topics(self) -> list[str]:
        """Every topic the transform touches: input, outputs, dead-letter."""
        out = [self.input_topic, *self.output_topics]
        dlq = self.dead_letter_topic
        if dlq is not None:
            out.append(dlq)
        return out

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["output_topics"] = list(self.output_topics)
        return doc

    def summary(self) -> dict[str, Any]:
        """The deployment without its code (listings)."""
        doc = self.to_json()
        del doc["code"]
        doc["code_sha256"] = self.code_sha256
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Deployment:
        """Validate a deploy request or a stored deployment; SpecError names the bad field."""
        if not isinstance(doc, dict):
            raise SpecError("a deployment is a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise SpecError(f"unknown deployment field(s): {', '.join(unknown)}")
        name = check_name(str(doc.get("name", "")))
        input_topic = check_topic(str(doc.get("input_topic", "")), "input topic")
        outputs = doc.get("output_topics") or []
        if isinstance(outputs, str) or not isinstance(outputs, (list, tuple)) or not outputs:
            raise SpecError("at least one output topic is needed (--output-topic)")
        output_topics = tuple(check_topic(str(t), "output topic") for t in outputs)
        if len(set(output_topics)) != len(output_topics):
            raise SpecError("an output topic is named twice")
        start = str(doc.get("start", "earliest"))
        parse_from(start)
        on_error = str(doc.get("on_error", "stop"))
        _, dlq = parse_on_error(on_error)
        if input_topic in output_topics or input_topic == dlq:
            raise SpecError(
                f"the input topic {input_topic!r} cannot also be an output or dead-letter topic "
                "(the transform would read its own output forever)"
            )
        if dlq is not None and dlq in output_topics:
            raise SpecError(f"the dead-letter topic {dlq!r} is also an output topic")
        env = doc.get("env") or {}
        if not isinstance(env, dict):
            raise SpecError("env must map names to values")
        for k, v in env.items():
            if not ENV_RE.match(str(k)):
                raise SpecError(f"invalid environment variable name {k!r} (--env NAME=VALUE)")
            if not isinstance(v, str) or "\0" in v:
                raise SpecError(f"environment variable {k} must be a string without NUL")
        code = doc.get("code", "")
        if not isinstance(code, str) or not code.strip():
            raise SpecError("the deployment has no code (the transform's Python file)")
        file_name = str(doc.get("file_name") or "transform.py").rsplit("/", 1)[-1]
        check_code(code, file_name)
        return cls(
            name=name,
            input_topic=input_topic,
            output_topics=output_topics,
            start=start,
            on_error=on_error,
            env={str(k): v for k, v in env.items()},
            file_name=file_name,
            code=code,
            deployed_at_ms=int(doc.get("deployed_at_ms") or 0),
            deployed_by=str(doc.get("deployed_by") or ""),
        )
