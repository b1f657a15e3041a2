"""Table rendering, error messages from Kafka error codes, and the shape of the command tree."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError, KafkaException

from streamd.cli.common import (
    Settings,
    bootstrap_addresses,
    cell,
    describe_kafka_error,
    render_fields,
    render_table,
)
from streamd.cli.main import cli


def test_render_table_aligns_columns() -> None:
    out = render_table(
        ["name", "partitions", "log-start"],
        [["orders", 3, 0], ["a-much-longer-topic", 12, None]],
    )
    assert out.splitlines() == [
        "NAME                 PARTITIONS  LOG-START",
        "orders               3           0",
        "a-much-longer-topic  12          -",
    ]


def test_render_table_no_rows_is_just_the_header() -> None:
    assert render_table(["a", "bb"], []) == "A  BB"


def test_cells() -> None:
    assert cell(None) == "-"
    assert cell(True) == "true"
    assert cell([0, 1]) == "0,1"
    assert cell([]) == "-"


def test_render_fields() -> None:
    assert render_fields([("name", "x"), ("partitions", 3), ("id", None)]).splitlines() == [
        "name        x",
        "partitions  3",
        "id          -",
    ]


def _message(err: KafkaError, subject: str = "") -> str:
    with click.Context(cli, obj=Settings(brokers="h:9")):
        return describe_kafka_error(KafkaException(err), subject)


@pytest.mark.parametrize(
    ("err", "subject", "expected"),
    [
        (KafkaError(KafkaError._TRANSPORT), "", "cannot reach broker at h:9"),
        (KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), "t", "unknown topic t"),
        (
            KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "unknown topic 'x'"),
            "x",
            "unknown topic 'x'",
        ),
        (KafkaError(KafkaError.TOPIC_ALREADY_EXISTS), "t", "topic t already exists"),
        (KafkaError(KafkaError.INVALID_CONFIG, "bogus: unknown"), "t", "t: invalid config: bogus"),
        (KafkaError(KafkaError.GROUP_ID_NOT_FOUND), "g", "group g not found"),
        (KafkaError(KafkaError.NON_EMPTY_GROUP), "g", "group g still has active members"),
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "t", "t: not authorized"),
        (KafkaError(KafkaError._UNSUPPORTED_FEATURE), "", "does not support this request"),
    ],
)
def test_kafka_errors_become_sentences(err: KafkaError, subject: str, expected: str) -> None:
    assert expected in _message(err, subject)


def test_bootstrap_addresses() -> None:
    assert bootstrap_addresses("a:1, b:2,PLAINTEXT://c:3") == [("a", 1), ("b", 2), ("c", 3)]
    with pytest.raises(click.ClickException, match="expected HOST:PORT"):
        bootstrap_addresses("nohost")


def _leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _leaf_commands(command, (*path, name))
        else:
            out.append((*path, name))
    return out


EXPECTED = {
    ("serve",),
    *[
        ("topic", c)
        for c in (
            "create",
            "list",
            "describe",
            "delete",
            "alter-config",
            "add-partitions",
            "produce",
            "consume",
            "describe-storage",
        )
    ],
    *[("group", c) for c in ("list", "describe", "seek", "delete")],
    *[("acl", c) for c in ("create", "list", "delete")],
    *[("user", c) for c in ("create", "list", "delete")],
    ("cluster", "info"),
    ("cluster", "health"),
    ("cluster", "config", "get"),
    ("cluster", "config", "set"),
}


def test_command_tree() -> None:
    assert set(_leaf_commands(cli)) >= EXPECTED


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_every_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "streamd " in result.output.split("Example", 1)[1]


def test_bad_offset_is_one_line_before_any_connection() -> None:
    result = CliRunner().invoke(
        cli, ["--brokers", "127.0.0.1:1", "topic", "consume", "t", "-o", "soon"]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: invalid offset 'soon': expected start, end, N, +N, -N, @TIMESTAMP_MS, "
        "@ISO-8601 or @-DURATION"
    ]


def test_topic_ids_in_kafka_form() -> None:
    import uuid

    from confluent_kafka import Uuid

    from streamd.cli.common import kafka_topic_id

    u = uuid.UUID("9ec471c1-1592-434f-a8a1-7d110f178c5d")
    signed = [v - (1 << 64) if v >= 1 << 63 else v for v in (u.int >> 64, u.int & (2**64 - 1))]
    expected = "nsRxwRWSQ0-ooX0RDxeMXQ"  # URL-safe alphabet, as Kafka's Uuid.toString()
    assert kafka_topic_id(u) == kafka_topic_id(str(u)) == expected
    assert kafka_topic_id(Uuid(*signed)) == expected
    assert str(Uuid(*signed)) != expected, "confluent-kafka's own str differs (+ for -)"
    assert kafka_topic_id("not-a-uuid") == "not-a-uuid"
