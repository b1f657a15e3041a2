"""CI runs the static checks, not only the tests: ``.ci/run`` runs ``make lint``, which runs
ruff, the import-layer contracts and mypy, strict on the log, groups and Kafka packages."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRICT_FLAGS = {
    "disallow_any_generics",
    "disallow_subclassing_any",
    "disallow_untyped_calls",
    "disallow_untyped_defs",
    "disallow_incomplete_defs",
    "disallow_untyped_decorators",
    "warn_return_any",
    "warn_unused_ignores",
    "no_implicit_reexport",
    "strict_equality",
    "extra_checks",
}


def make_target(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    body = re.search(rf"^{name}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert body is not None, f"no {name} target"
    return [line.strip() for line in body.group(1).splitlines()]


def test_ci_runs_lint_and_the_tests() -> None:
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "make lint" in commands and "make test" in commands


def test_lint_runs_ruff_import_contracts_and_mypy() -> None:
    lint = make_target("lint")
    assert any("ruff check" in c for c in lint)
    assert any("lint-imports" in c for c in lint)
    assert any(re.search(r"\bmypy\b", c) for c in lint)


def test_mypy_is_strict_on_log_groups_and_kafka() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["files"] == ["streamd"]
    strict = [
        o
        for o in config.get("overrides", [])
        if {"streamd.log.*", "streamd.groups.*", "streamd.kafka.*"} <= set(o["module"])
    ]
    assert strict, "no strict override for streamd.log, streamd.groups and streamd.kafka"
    assert all(strict[0].get(flag) is True for flag in STRICT_FLAGS), strict[0]
