"""The offset-spec parser, output and input templates, and KEY=VALUE / partition lists."""

from __future__ import annotations

import pytest

from streamd.cli.specs import (
    InputTemplate,
    OffsetRange,
    OffsetSpec,
    OutputTemplate,
    ParsedInput,
    Record,
    SpecError,
    parse_header_pairs,
    parse_key_values,
    parse_offset,
    parse_offset_range,
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
    leader_epoch=3,
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%v", "v\ufffd1\n"),
        ("%k=%v\\n", "k1=v\ufffd1\n"),
        ("%t/%p@%o %d", "orders/2@41 1704067200000\n"),
        ("%T %K %V %H %e", "6 2 3 2 3\n"),
        ("%k{hex} %v{base64}", "6b31 dv8x\n"),
        ("%v{hex}|%v{text}", "76ff31|v\ufffd1\n"),
        ("[%h]", "[a=1,b=]\n"),
        ("[%h{hex}]", "[a=31,b=]\n"),
        ("100%% %k\\t%o", "100% k1\t41\n"),
        ("\\\\%k", "\\k1\n"),
        ("", "\n"),
    ],
)
def test_output_template(template: str, expected: str) -> None:
    assert OutputTemplate(template).render(REC) == expected


def test_output_template_null_key() -> None:
    rec = Record(topic="t", partition=0, offset=0, timestamp=0, key=None, value=None)
    assert OutputTemplate("<%k><%v> %K %V").render(rec) == "<><> -1 -1\n"


def test_output_template_producer_fields() -> None:
    rec = Record(topic="t", partition=0, offset=0, timestamp=0, key=None, value=None,
                 producer_id=7, producer_epoch=2)
    assert OutputTemplate("%x/%y").render(rec) == "7/2\n"


@pytest.mark.parametrize("template", ["%q", "%", "%k %q", "%p{hex}", "%v{rot13}", "%v{hex"])
def test_output_template_rejects_unknown_directives(template: str) -> None:
    with pytest.raises(SpecError, match="invalid template"):
        OutputTemplate(template)


def test_record_json_binary_as_base64_and_headers_as_array() -> None:
    rec = Record(topic="orders", partition=2, offset=41, timestamp=1, key=b"k1",
                 value=b"v\xff1", headers=(("a", b"1"), ("a", b"2"), ("b", None)))
    assert record_json(rec) == {
        "topic": "orders",
        "partition": 2,
        "offset": 41,
        "timestamp": 1,
        "key": "k1",
        "value": "dv8x",
        "value_encoding": "base64",
        "headers": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"},
                    {"key": "b", "value": None}],
    }


def test_record_json_binary_options() -> None:
    assert record_json(REC, "base64")["key"] == "azE="
    assert record_json(REC, "base64")["key_encoding"] == "base64"
    assert record_json(REC, "text")["value"] == "v\ufffd1"
    assert "value_encoding" not in record_json(REC, "text")
    assert "leader_epoch" not in record_json(REC), "the JSON document keeps rpk's fields"


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


def test_input_template_verbs_consume_prints() -> None:
    parser = InputTemplate("%t %p %h %k %v\\n")
    assert parser.lines == 1
    assert parser.parse_record("orders 2 a=1,a=2 key the value") == ParsedInput(
        key="key", value="the value", topic="orders", partition=2,
        headers=(("a", "1"), ("a", "2")),
    )


def test_input_template_multi_line_records() -> None:
    parser = InputTemplate("%k\\n%v\\n")
    assert parser.lines == 2
    assert parser.parse("key\nvalue") == ("key", "value")
    assert InputTemplate("%k\\n%v").lines == 2


@pytest.mark.parametrize("template", ["%k", "%v %v", "%k %k %v", "%o %v", "%v{hex}"])
def test_input_template_rejects(template: str) -> None:
    with pytest.raises(SpecError):
        InputTemplate(template)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10:20", OffsetRange(start=OffsetSpec(kind="exact", value=10), end_kind="exact",
                              end_value=20)),
        (":end", OffsetRange(start=OffsetSpec(kind="start"), end_kind="end")),
        ("start:end", OffsetRange(start=OffsetSpec(kind="start"), end_kind="end")),
        ("+5:end", OffsetRange(start=OffsetSpec(kind="after_start", value=5), end_kind="end")),
        ("5:", OffsetRange(start=OffsetSpec(kind="exact", value=5))),
        (":7", OffsetRange(start=OffsetSpec(kind="start"), end_kind="exact", end_value=7)),
        ("@1000:2000", OffsetRange(start=OffsetSpec(kind="timestamp", value=1000),
                                   end_kind="timestamp", end_value=2000)),
        ("@:2000", OffsetRange(start=OffsetSpec(kind="start"), end_kind="timestamp",
                               end_value=2000)),
        ("@-1h:end", OffsetRange(start=OffsetSpec(kind="timestamp", value=NOW - 3_600_000),
                                 end_kind="end")),
        ("end", OffsetRange(start=OffsetSpec(kind="end"))),
        ("@2024-01-01T00:00:00Z", OffsetRange(start=OffsetSpec(kind="timestamp",
                                                               value=1_704_067_200_000))),
        ("@2024-01-01T00:00:00Z:2024-01-02T00:00:00Z",
         OffsetRange(start=OffsetSpec(kind="timestamp", value=1_704_067_200_000),
                     end_kind="timestamp", end_value=1_704_153_600_000)),
        ("@2024-01-01T00:00:00Z:end",
         OffsetRange(start=OffsetSpec(kind="timestamp", value=1_704_067_200_000),
                     end_kind="end")),
    ],
)
def test_parse_offset_range(text: str, expected: OffsetRange) -> None:
    assert parse_offset_range(text, now_ms=NOW) == expected


@pytest.mark.parametrize("text", ["10:x", "a:b", "@x:y", "1:2:3", "@:nope"])
def test_parse_offset_range_rejects(text: str) -> None:
    with pytest.raises(SpecError, match="invalid offset"):
        parse_offset_range(text)


def test_parse_header_pairs_keeps_repeats() -> None:
    assert parse_header_pairs(["a=1", "a=2", "b="]) == [("a", "1"), ("a", "2"), ("b", "")]
    with pytest.raises(SpecError, match="invalid header"):
        parse_header_pairs(["novalue"])


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
