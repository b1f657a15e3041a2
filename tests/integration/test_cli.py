"""The ``streamd`` command line, run as a subprocess against a real broker.

Every command goes through ``python -m streamd`` with ``STREAMD_BROKERS`` / ``STREAMD_ADMIN_URL``
pointing at the broker under test, and every run is checked for a clean stderr: failures are one
``Error: ...`` line and a non-zero exit, never a traceback.

Every feature a command needs is required: a broker that lacks it (an API missing from
ApiVersions, an admin endpoint renamed) fails the test instead of skipping it. Tests that need
streamd's settings or admin API are marked ``streamd_only`` (a visible skip only when the suite
targets Tansu, see tests/support/broker.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import REPO_ROOT, BrokerProcess, default_sigint, free_port


class Cli:
    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
        self.env.update(
            STREAMD_BROKERS=broker.bootstrap,
            STREAMD_ADMIN_URL=f"http://{broker.host}:{broker.admin_port}",
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
        )

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "streamd", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            env=self.env,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def ok(self, *args: str, stdin: str | None = None) -> str:
        proc = self.run(*args, stdin=stdin)
        assert proc.returncode == 0, f"streamd {' '.join(args)} failed: {proc.stderr}"
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--format", "json"))

    def fails(self, *args: str, stdin: str | None = None) -> str:
        """Runs a command that must fail; returns its one-line reason."""
        proc = self.run(*args, stdin=stdin)
        assert proc.returncode != 0, f"streamd {' '.join(args)} succeeded: {proc.stdout}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("Error: "), lines[0]
        return lines[0]


@pytest.fixture
def cli(broker: BrokerProcess) -> Cli:
    return Cli(broker)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


# --- topics ------------------------------------------------------------------------------------


def test_topic_create_describe_alter_delete(cli: Cli, topic_name: str) -> None:
    out = cli.ok("topic", "create", topic_name, "-p", "2", "-c", "retention.ms=3600000")
    assert topic_name in out and "OK" in out
    assert topic_name in cli.ok("topic", "list")
    listed = {t["name"]: t for t in cli.json("topic", "list")}
    assert listed[topic_name]["partitions"] == 2

    text = cli.ok("topic", "describe", topic_name)
    assert "HIGH-WATERMARK" in text and "DYNAMIC_TOPIC_CONFIG" in text
    desc = cli.json("topic", "describe", topic_name)
    configs = {c["name"]: c for c in desc["configs"]}
    assert configs["retention.ms"] == {
        **configs["retention.ms"],
        "value": "3600000",
        "source": "DYNAMIC_TOPIC_CONFIG",
    }
    assert [(p["partition"], p["log_start"], p["high_watermark"]) for p in desc["partitions"]] == [
        (0, 0, 0),
        (1, 0, 0),
    ]

    out = cli.ok(
        "topic", "alter-config", topic_name, "--set", "segment.ms=60000", "--delete", "retention.ms"
    )
    assert "segment.ms=60000" in out
    configs = {c["name"]: c for c in cli.json("topic", "describe", topic_name)["configs"]}
    assert configs["segment.ms"]["value"] == "60000"
    assert configs["segment.ms"]["source"] == "DYNAMIC_TOPIC_CONFIG"
    assert configs["retention.ms"]["source"] != "DYNAMIC_TOPIC_CONFIG"

    assert "now has 3 partitions" in cli.ok("topic", "add-partitions", topic_name, "--num", "3")
    assert len(cli.json("topic", "describe", topic_name)["partitions"]) == 3
    assert "already has 3 partitions" in cli.fails(
        "topic", "add-partitions", topic_name, "--num", "2"
    )

    cli.ok("topic", "delete", topic_name)
    assert topic_name not in {t["name"] for t in cli.json("topic", "list")}
    assert f"unknown topic {topic_name}" in cli.fails("topic", "describe", topic_name)


def test_produce_1000_lines_and_consume_them_back(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name, "-p", "3")
    lines = [f"key-{i} value {i}" for i in range(1000)]
    out = cli.ok("topic", "produce", topic_name, "-f", "%k %v", stdin="\n".join(lines) + "\n")
    acks = out.splitlines()
    assert len(acks) == 1000
    assert all(a.startswith("Produced to partition ") and " at offset " in a for a in acks)
    per_partition = {
        p["partition"]: p["high_watermark"]
        for p in cli.json("topic", "describe", topic_name)["partitions"]
    }
    assert sum(per_partition.values()) == 1000

    out = cli.ok("topic", "consume", topic_name, "-n", "1000", "-f", "%k|%v|%p|%o")
    got = [line.split("|") for line in out.splitlines()]
    assert len(got) == 1000
    assert sorted((k, v) for k, v, _, _ in got) == sorted(
        (f"key-{i}", f"value {i}") for i in range(1000)
    )
    for partition, high in per_partition.items():
        offsets = [int(o) for _, _, p, o in got if int(p) == partition]
        assert offsets == list(range(high))
    by_key = {k: int(p) for k, _, p, _ in got}
    assert len(set(by_key.values())) > 1, "keys should spread over partitions"

    records = json_lines(cli.ok("topic", "consume", topic_name, "-n", "1000", "--format", "json"))
    assert len(records) == 1000
    assert set(records[0]) == {
        "topic",
        "partition",
        "offset",
        "timestamp",
        "key",
        "value",
        "headers",
    }
    assert {(r["key"], r["value"]) for r in records} == {
        (f"key-{i}", f"value {i}") for i in range(1000)
    }
    assert all(r["topic"] == topic_name and r["partition"] == by_key[r["key"]] for r in records)

    assert len(cli.ok("topic", "consume", topic_name, "-e").splitlines()) == 1000
    high0 = per_partition[0]
    out = cli.ok("topic", "consume", topic_name, "-p", "0", "-o", "-3", "-f", "%o", "-e")
    assert out.split() == [str(o) for o in range(high0 - 3, high0)]
    out = cli.ok("topic", "consume", topic_name, "-p", "0", "-o", "+2", "-n", "2", "-f", "%o")
    assert out.split() == ["2", "3"]
    assert cli.ok("topic", "consume", topic_name, "-o", "end", "-e") == ""


def test_produce_options_and_json_reports(cli: Cli, topic_name: str, tmp_path: Path) -> None:
    cli.ok("topic", "create", topic_name, "-p", "2")
    out = cli.ok(
        "topic",
        "produce",
        topic_name,
        "-k",
        "fixed",
        "-H",
        "src=cli",
        "-H",
        "n=1",
        "-p",
        "1",
        "-z",
        "gzip",
        "--acks",
        "1",
        "--format",
        "json",
        stdin="a\nb\n",
    )
    assert json_lines(out) == [
        {"topic": topic_name, "partition": 1, "offset": 0},
        {"topic": topic_name, "partition": 1, "offset": 1},
    ]
    out = cli.ok("topic", "consume", topic_name, "-p", "1", "-n", "2", "-f", "%k:%v:%h")
    assert out.splitlines() == ["fixed:a:src=cli,n=1", "fixed:b:src=cli,n=1"]

    bulk = tmp_path / "bulk.txt"
    bulk.write_text("".join(f"{i}:row {i}\n" for i in range(500)))
    proc = cli.run(
        "topic",
        "produce",
        topic_name,
        "--file",
        str(bulk),
        "-f",
        "%k:%v",
        "-q",
        "-z",
        "zstd",
        "-p",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "Produced 500 records" in proc.stderr
    out = cli.ok("topic", "consume", topic_name, "-p", "0", "-e", "-f", "%k=%v")
    assert out.splitlines() == [f"{i}=row {i}" for i in range(500)]


def test_consume_from_an_old_timestamp(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    cli.ok("topic", "produce", topic_name, stdin="old-1\nold-2\n")
    time.sleep(0.05)
    boundary = int(time.time() * 1000)
    time.sleep(0.05)
    cli.ok("topic", "produce", topic_name, stdin="new-1\nnew-2\n")

    out = cli.ok("topic", "consume", topic_name, "-o", "@2000-01-01T00:00:00Z", "-e")
    assert out.split() == ["old-1", "old-2", "new-1", "new-2"]
    out = cli.ok("topic", "consume", topic_name, "-o", f"@{boundary}", "-e", "-f", "%o %v")
    assert out.splitlines() == ["2 new-1", "3 new-2"]
    assert cli.ok("topic", "consume", topic_name, "-o", "@-1h", "-n", "1") == "old-1\n"
    assert cli.ok("topic", "consume", topic_name, "-o", f"@{boundary + 3_600_000}", "-e") == ""



def test_ctrl_c_stops_consume_cleanly(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    cli.ok("topic", "produce", topic_name, stdin="one\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamd", "topic", "consume", topic_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=cli.env,
        preexec_fn=default_sigint,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "one\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err


# --- storage -----------------------------------------------------------------------------------


@pytest.mark.streamd_only
def test_describe_storage_shows_archived_offsets(
    broker: BrokerProcess,
    broker_factory: Callable[..., BrokerProcess],
    tmp_path: Path,
    topic_name: str,
) -> None:
    tiered = broker_factory(
        {
            "tiering.store": f"file://{tmp_path / 'bucket'}",
            "tiering.upload_interval_ms": "200",
            "log.housekeeping_interval_ms": "200",
        }
    )
    cli = Cli(tiered)
    cli.ok(
        "topic",
        "create",
        topic_name,
        "-c",
        "remote.storage.enable=true",
        "-c",
        "segment.bytes=2048",
        "-c",
        "local.retention.bytes=4096",
    )
    for batch in range(4):
        lines = "".join(f"record {batch}-{i} {'x' * 20}\n" for i in range(100))
        cli.ok("topic", "produce", topic_name, "-q", stdin=lines)

    def archived() -> dict[str, Any] | None:
        part = cli.json("topic", "describe-storage", topic_name)["partitions"][0]
        return part if part["remote_segments"] > 0 and part["local_start_offset"] > 0 else None

    part = wait_for(archived, what="segments archived and removed locally")
    assert part["remote_start_offset"] == 0
    assert part["last_uploaded_offset"] >= part["local_start_offset"] - 1
    text = cli.ok("topic", "describe-storage", topic_name)
    assert "REMOTE-START-OFFSET" in text and "LAST-UPLOADED-OFFSET" in text
    out = cli.ok("topic", "consume", topic_name, "-n", "3", "-f", "%o %v")
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["0", "record"],
        ["1", "record"],
        ["2", "record"],
    ]
    assert "unknown topic" in cli.fails("topic", "describe-storage", "no-such-topic")


# --- groups ------------------------------------------------------------------------------------


def test_group_lag_drops_to_zero_and_seek_replays(
    cli: Cli, broker: BrokerProcess, topic_name: str
) -> None:
    group = f"g-{topic_name}"
    cli.ok("topic", "create", topic_name, "-p", "2")
    values = [f"v{i}" for i in range(50)]
    cli.ok("topic", "produce", topic_name, "-q", stdin="\n".join(values) + "\n")

    def consume(*args: str) -> list[str]:
        """The printed records; a commit that failed (a warning, exit 0) fails here, by name."""
        proc = cli.run("topic", "consume", topic_name, "-g", group, *args)
        assert proc.returncode == 0 and "commit failed" not in proc.stderr, proc.stderr
        return proc.stdout.splitlines()

    first = consume("-n", "20")
    assert len(first) == 20
    desc = cli.json("group", "describe", group)
    assert desc["state"] == "Empty"
    assert [p["partition"] for p in desc["partitions"]] == [0, 1]
    unread = sum(p["log_end_offset"] - (p["current_offset"] or 0) for p in desc["partitions"])
    assert unread == 30
    assert group in cli.ok("group", "list")

    rest = consume("-e")
    assert sorted(first + rest) == sorted(values)
    desc = cli.json("group", "describe", group)
    assert desc["total_lag"] == 0, desc
    assert all(p["lag"] == 0 for p in desc["partitions"]), desc
    text = cli.ok("group", "describe", group)
    assert "LOG-END-OFFSET" in text and "total-lag    0" in text

    moved = cli.json("group", "seek", group, "--to", "start")
    assert {(m["partition"], m["new_offset"]) for m in moved} == {(0, 0), (1, 0)}
    assert cli.json("group", "describe", group)["total_lag"] == 50
    replay = consume("-e")
    assert sorted(replay) == sorted(values)

    cli.ok("group", "seek", group, "--to", "end", "--topics", topic_name)
    assert cli.json("group", "describe", group)["total_lag"] == 0
    assert "invalid offset" in cli.fails("group", "seek", group, "--to", "yesterday")

    assert "OK" in cli.ok("group", "delete", group)
    assert group not in {g["group"] for g in cli.json("group", "list")}
    assert f"group {group} not found" in cli.fails("group", "describe", group)


# --- acl / user --------------------------------------------------------------------------------

ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-secret"


@pytest.fixture
def secure_cli(broker: BrokerProcess, broker_factory: Callable[..., BrokerProcess]) -> Cli:
    """A broker with a SASL listener and ACLs enforced, and a CLI logged in as its super user."""
    secure = broker_factory(start=False)
    secure.settings.update(
        {
            "kafka.listeners": f"SASL://{secure.bootstrap}",
            "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT",
            "security.authorization": "true",
            "security.super_users": f"User:{ADMIN_USER}",
            "security.bootstrap_users": f"{ADMIN_USER}:{ADMIN_PASSWORD}:SCRAM-SHA-256",
        }
    )
    secure.start()
    cli = Cli(secure)
    cli.env.update(
        STREAMD_USER=ADMIN_USER, STREAMD_PASSWORD=ADMIN_PASSWORD, STREAMD_MECHANISM="SCRAM-SHA-256"
    )
    return cli


@pytest.mark.streamd_only
def test_acl_and_user_commands_over_sasl(secure_cli: Cli, topic_name: str) -> None:
    cli = secure_cli
    assert "authentication failed" in cli.fails("--password", "wrong", "topic", "list")

    principal = f"User:{topic_name}"
    created = cli.json(
        "acl",
        "create",
        "--principal",
        principal,
        "--operation",
        "read",
        "--operation",
        "describe",
        "--resource-type",
        "topic",
        "--resource-name",
        topic_name,
    )
    assert {c["operation"] for c in created} == {"read", "describe"}
    cli.ok(
        "acl",
        "create",
        "--principal",
        principal,
        "--operation",
        "write",
        "--resource-type",
        "topic",
        "--resource-name",
        "logs.",
        "--pattern",
        "prefixed",
        "--permission",
        "deny",
    )
    listed = cli.json("acl", "list", "--principal", principal)
    assert {
        (a["resource_name"], a["pattern"], a["operation"], a["permission"]) for a in listed
    } == {
        (topic_name, "literal", "read", "allow"),
        (topic_name, "literal", "describe", "allow"),
        ("logs.", "prefixed", "write", "deny"),
    }
    assert principal in cli.ok("acl", "list", "--principal", principal)
    assert "refusing" in cli.fails("acl", "delete")
    assert len(cli.json("acl", "delete", "--principal", principal)) == 3
    assert cli.json("acl", "list", "--principal", principal) == []

    name = f"u-{topic_name}"[:60]
    cli.ok("user", "create", name, "--password", "s3cret", "--mechanism", "SCRAM-SHA-512")
    assert (name, "SCRAM-SHA-512") in {
        (u["user"], u["mechanism"]) for u in cli.json("user", "list")
    }
    login = ["--user", name, "--password", "s3cret", "--mechanism", "SCRAM-SHA-512"]
    assert "not authorized" in cli.fails(*login, "topic", "create", topic_name)
    cli.ok(
        "acl", "create", "--principal", name, "--operation", "create", "--resource-type", "cluster"
    )
    cli.ok(*login, "topic", "create", topic_name)
    assert f"Deleted user {name}" in cli.ok("user", "delete", name)
    assert name not in {u["user"] for u in cli.json("user", "list")}
    assert "not found" in cli.fails("user", "delete", name)


# --- cluster -----------------------------------------------------------------------------------


def test_cluster_info_health_and_config(cli: Cli, broker: BrokerProcess) -> None:
    info = cli.json("cluster", "info")
    assert info["cluster_id"] and info["controller"] is not None
    assert [(b["host"], b["port"]) for b in info["brokers"]] == [broker.address]
    assert "cluster-id" in cli.ok("cluster", "info")

    health = cli.json("cluster", "health")
    assert health["healthy"] is True
    assert {c["check"] for c in health["checks"]} >= {"kafka", "admin-api"}
    assert "cluster is healthy" in cli.ok("cluster", "health")

    configs = cli.json("cluster", "config", "get")
    assert configs, "the broker describes no configs"
    first = configs[0]
    assert cli.ok("cluster", "config", "get", first["name"]).strip() == (first["value"] or "")
    assert "unknown broker config 'no.such.key'" in cli.fails(
        "cluster", "config", "get", "no.such.key"
    )
    assert "unknown broker config" in cli.fails("cluster", "config", "set", "no.such.key", "1")
    read_only = [c for c in configs if c["read_only"]]
    assert read_only, "every broker has read-only configs (its listeners, its data directory)"
    message = cli.fails("cluster", "config", "set", read_only[0]["name"], "1")
    assert "read-only" in message


# --- error paths -------------------------------------------------------------------------------


def test_unreachable_broker_is_one_clear_line(cli: Cli) -> None:
    port = free_port()
    for args in (
        ["topic", "list"],
        ["topic", "consume", "t", "-n", "1"],
        ["cluster", "info"],
        ["group", "list"],
    ):
        started = time.monotonic()
        message = cli.fails("--brokers", f"127.0.0.1:{port}", *args)
        assert f"cannot reach broker at 127.0.0.1:{port}" in message
        assert time.monotonic() - started < 15
    message = cli.fails("topic", "list", "--brokers", f"127.0.0.1:{port}")
    assert "cannot reach broker" in message
    proc = cli.run(
        "--brokers",
        f"127.0.0.1:{port}",
        "--admin-url",
        f"http://127.0.0.1:{port}",
        "cluster",
        "health",
    )
    assert proc.returncode == 1 and "UNHEALTHY" in proc.stdout


def test_unknown_topic(cli: Cli) -> None:
    for args in (
        ["topic", "describe", "no-such-topic"],
        ["topic", "consume", "no-such-topic", "-n", "1"],
        ["topic", "alter-config", "no-such-topic", "--set", "retention.ms=1"],
        ["topic", "delete", "no-such-topic"],
    ):
        assert "unknown topic" in cli.fails(*args)
    assert "unknown topic" in cli.fails("topic", "produce", "no-such-topic", stdin="x\n")


def test_invalid_config_key(cli: Cli, topic_name: str) -> None:
    message = cli.fails("topic", "create", topic_name, "-c", "no.such.config=1")
    assert "invalid config" in message and "no.such.config" in message
    cli.ok("topic", "create", topic_name)
    message = cli.fails("topic", "alter-config", topic_name, "--set", "no.such.config=1")
    assert "invalid config" in message and "no.such.config" in message
    assert "already exists" in cli.fails("topic", "create", topic_name)
    assert "KEY=VALUE" in cli.fails("topic", "create", topic_name + "x", "-c", "novalue")


def test_bad_offset_spec(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    for spec in ("soon", "@yesterday", "1.5", "+-1"):
        assert "invalid offset" in cli.fails("topic", "consume", topic_name, "-o", spec)
    assert "invalid template" in cli.fails("topic", "consume", topic_name, "-f", "%z")
    assert "has no partition 7" in cli.fails("topic", "consume", topic_name, "-p", "7")
