"""Deployments: validation with one-line reasons, and their files on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamd.transforms.spec import Deployment, SpecError, parse_from, parse_on_error
from streamd.transforms.store import DeploymentStore, Stored

CODE = "def transform(record):\n    return record\n"


def doc(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "t1",
        "input_topic": "in",
        "output_topics": ["out"],
        "code": CODE,
    }
    base.update(changes)
    return base


def test_from_and_on_error_spellings() -> None:
    assert parse_from("earliest") == ("earliest", 0)
    assert parse_from("latest") == ("latest", 0)
    assert parse_from("42") == ("offset", 42)
    assert parse_from("@1700000000000") == ("timestamp", 1_700_000_000_000)
    assert parse_from("@2023-11-14T22:13:20") == ("timestamp", 1_700_000_000_000)
    assert parse_from("@2023-11-14T23:13:20+01:00") == ("timestamp", 1_700_000_000_000)
    assert parse_on_error("skip") == ("skip", None)
    assert parse_on_error("dead-letter=dlq") == ("dead-letter", "dlq")
    for bad in ("-1", "@yesterday", "first"):
        with pytest.raises(SpecError, match="--from"):
            parse_from(bad)
    for bad in ("ignore", "dead-letter=", "dead-letter=a/b"):
        with pytest.raises(SpecError):
            parse_on_error(bad)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "a b"}, "invalid transform name"),
        ({"input_topic": ""}, "invalid input topic"),
        ({"output_topics": []}, "at least one output topic"),
        ({"output_topics": ["out", "out"]}, "named twice"),
        ({"output_topics": ["in"]}, "cannot also be an output"),
        ({"on_error": "dead-letter=out"}, "also an output topic"),
        ({"env": {"1X": "v"}}, "environment variable name"),
        ({"code": "def transform(:\n"}, "syntax error"),
        ({"code": "def other(r):\n    return r\n"}, "does not define transform"),
        ({"code": ""}, "no code"),
        ({"start": "soon"}, "--from"),
        ({"color": "blue"}, "unknown deployment field"),
    ],
)
def test_invalid_deployments_say_what_to_fix(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Deployment.from_json(doc(**changes))


def test_transform_may_be_assigned_or_imported() -> None:
    Deployment.from_json(doc(code="transform = lambda r: r\n"))
    Deployment.from_json(doc(code="from mylib import upper as transform\n"))


def test_store_round_trip_and_archive_documents(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path / "transforms")
    dep = Deployment.from_json(doc(env={"K": "v"}, on_error="dead-letter=dlq", start="@5"))
    stored = Stored(dep, paused=True, failed={"message": "x", "offset": 3},
                    counters={"records_in": 7})
    store.save(stored)
    assert store.code_path(stored).read_text() == CODE
    loaded = store.load()["t1"]
    assert loaded.deployment == dep and loaded.paused and loaded.failed == stored.failed
    assert loaded.counters == {"records_in": 7}

    archived = store.documents(store.load())
    assert "counters" not in archived[0]
    other = DeploymentStore(tmp_path / "restored")
    assert other.restore(archived) == ["t1"]
    assert other.load()["t1"].deployment == dep

    (tmp_path / "transforms" / "t1" / "deployment.json").write_text("{not json")
    assert store.load() == {}  # a damaged document is reported and skipped, never fatal


def test_log_tail_spans_the_rotated_file(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path)
    store.save(Stored(Deployment.from_json(doc())))
    (tmp_path / "t1" / "worker.log.1").write_text("a\nb\n")
    (tmp_path / "t1" / "worker.log").write_text("c\nd\n")
    assert store.log_tail("t1", 3) == ["b", "c", "d"]
