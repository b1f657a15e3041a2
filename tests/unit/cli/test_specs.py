"""The offset-spec parser, output and input templates, and KEY=VALUE / partition lists."""

from __future__ import annotations

import pytest

from streamd.cli.specs import (
    InputTemplate,
    OffsetSpec,
    OutputTemplate,
    Record,
    SpecError,
    parse_key_values,
    parse_offset,
    parse_partitions,
    parse_timestamp_ms,
    record_json,
)

NOW = 1_700_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("start", OffsetSpec(kind="start")),
        ("oldest", OffsetSpec(kind="start")),
        ("end", OffsetSpec(kind="end")),
        ("newest", OffsetSpec(kind="end")),
        ("42", OffsetSpec(kind="exact", value=42)),
        ("+3", OffsetSpec(kind="after_start", value=3)),
        ("-3", OffsetSpec(kind="before_end", value=3)),
        ("@1700000000000", OffsetSpec(kind="timestamp", value=1_700_000_000_000)),
        ("@2024-01-01T00:00:00Z", OffsetSpec(kind="timestamp", value=1_704_067_200_000)),
        ("@2024-01-01T01:00:00+01:00", OffsetSpec(kind="timestamp", value=1_704_067_200_000)),
        ("@2024-01-01", OffsetSpec(kind="timestamp", value=1_704_067_200_000)),
        ("@-1h", OffsetSpec(kind="timestamp", value=NOW - 3_600_000)),
        ("@-90s", OffsetSpec(kind="timestamp", value=NOW - 90_000)),
    ],
)
def test_parse_offset(text: str, expected: OffsetSpec) -> None:
    assert parse_offset(text, now_ms=NOW) == expected


@pytest.mark.parametrize("text", ["", "begin", "1.5", "+", "--3", "@", "@yesterday", "@-1y", "3x"])
def test_parse_offset_rejects(text: str) -> None:
    with pytest.raises(SpecError, match="invalid offset"):
        parse_offset(text)


@pytest.mark.parametrize(
    ("text", "low", "high", "expected"),
    [
        ("start", 5, 10, 5),
        ("end", 5, 10, 10),
        ("7", 5, 10, 7),
        ("2", 5, 10, 5),
        ("99", 5, 10, 10),
        ("+2", 5, 10, 7),
        ("+20", 5, 10, 10),
        ("-2", 5, 10, 8),
        ("-20", 5, 10, 5),
    ],
)
def test_resolve_clamps_to_the_log(text: str, low: int, high: int, expected: int) -> None:
    assert parse_offset(text).resolve(low, high) == expected


def test_timestamp_needs_the_broker() -> None:
    assert parse_offset("@0").resolve(0, 10) is None


def test_parse_timestamp_ms_bad() -> None:
    with pytest.raises(SpecError, match="invalid timestamp"):
        parse_timestamp_ms("tomorrow")


REC = Record(
    topic="orders",
    partition=2,
    offset=41,
    timestamp=1_704_067_200_000,
    key=b"k1",
    value=b"v\xff1",
    headers=(("a", b"1"), ("b", None)),
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%v", "v\ufffd1\n"),
        ("%k=%v\\n", "k1=v\ufffd1\n"),
        ("%T/%p@%o %t", "orders/2@41 1704067200000\n"),
        ("[%h]", "[a=1,b=]\n"),
        ("100%% %k\\t%o", "100% k1\t41\n"),
        ("\\\\%k", "\\k1\n"),
        ("", "\n"),
    ],
)
def test_output_template(template: str, expected: str) -> None:
    assert OutputTemplate(template).render(REC) == expected


def test_output_template_null_key() -> None:
    rec = Record(topic="t", partition=0, offset=0, timestamp=0, key=None, value=None)
    assert OutputTemplate("<%k><%v>").render(rec) == "<><>\n"


@pytest.mark.parametrize("template", ["%x", "%", "%k %q"])
def test_output_template_rejects_unknown_directives(template: str) -> None:
    with pytest.raises(SpecError, match="invalid template"):
        OutputTemplate(template)


def test_record_json() -> None:
    assert record_json(REC) == {
        "topic": "orders",
        "partition": 2,
        "offset": 41,
        "timestamp": 1_704_067_200_000,
        "key": "k1",
        "value": "v\ufffd1",
        "headers": {"a": "1", "b": None},
    }


@pytest.mark.parametrize(
    ("template", "line", "expected"),
    [
        ("%v", "a b c", (None, "a b c")),
        ("%k %v", "key the value", ("key", "the value")),
        ("%k:%v", "k:v:w", ("k", "v:w")),
        ("%k\\t%v", "k\tv", ("k", "v")),
        ("<%k> %v", "<a> b", ("a", "b")),
        ("%k %v", " v", ("", "v")),
    ],
)
def test_input_template(template: str, line: str, expected: tuple[str | None, str]) -> None:
    assert InputTemplate(template).parse(line) == expected


def test_input_template_mismatch() -> None:
    with pytest.raises(SpecError, match="does not match"):
        InputTemplate("%k:%v").parse("no colon here")


@pytest.mark.parametrize("template", ["%k", "%v %v", "%k %k %v", "%o %v"])
def test_input_template_rejects(template: str) -> None:
    with pytest.raises(SpecError):
        InputTemplate(template)


def test_parse_key_values() -> None:
    assert parse_key_values(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        parse_key_values(["novalue"], "config")
    with pytest.raises(SpecError):
        parse_key_values(["=1"])


def test_parse_partitions() -> None:
    assert parse_partitions(["0,2", "1", "2"]) == [0, 2, 1]
    with pytest.raises(SpecError, match="invalid partition"):
        parse_partitions(["-1"])
