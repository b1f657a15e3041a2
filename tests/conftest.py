"""Shared fixtures: brokers run as real subprocesses on loopback.

- `broker`: one broker for the whole session (tests isolate themselves by topic name).
- `broker_factory`: fresh brokers with their own data_dir and settings, for tests that
  restart, kill or configure the broker; all are stopped when the test ends.

A failing test shows the tail of the log of every broker it used.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.broker import BrokerProcess, target

BrokerFactory = Callable[..., BrokerProcess]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "streamd_only: needs streamd settings, its data_dir or a restart (skipped for tansu)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if target() != "tansu":
        return
    skip = pytest.mark.skip(reason="tansu target: no streamd settings, memory storage")
    for item in items:
        if "streamd_only" in item.keywords:
            item.add_marker(skip)


def _attach(node: pytest.Item | pytest.Collector, broker: BrokerProcess) -> None:
    brokers: list[BrokerProcess] = node.stash.setdefault(_BROKERS, [])
    brokers.append(broker)


_BROKERS = pytest.StashKey[list[BrokerProcess]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for broker in item.stash.get(_BROKERS, []):
            report.sections.append((f"broker log ({broker.bootstrap})", broker.log_tail(60)))


@pytest.fixture(scope="session")
def session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    base = tmp_path_factory.mktemp("session-broker")
    broker = BrokerProcess(base / "data")
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def broker(session_broker: BrokerProcess, request: pytest.FixtureRequest) -> BrokerProcess:
    if not session_broker.running:
        pytest.fail("the session broker died earlier\n" + session_broker.log_tail())
    _attach(request.node, session_broker)
    return session_broker


@pytest.fixture
def broker_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerFactory]:
    created: list[BrokerProcess] = []

    def make(settings: Mapping[str, str] | None = None, *, start: bool = True) -> BrokerProcess:
        n = len(created)
        broker = BrokerProcess(
            tmp_path / f"broker{n}" / "data",
            settings,
            log_path=tmp_path / f"broker{n}.log",
        )
        created.append(broker)
        _attach(request.node, broker)
        return broker.start() if start else broker

    yield make
    for broker in created:
        broker.close()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test, readable in broker logs."""
    stem = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name).strip("-")[:60]
    return f"{stem}-{uuid.uuid4().hex[:8]}"
