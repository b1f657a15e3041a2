"""rpk parity of the command line (issue 18 items 6 and 7), run as subprocesses against a real
broker: template verbs, repeated headers, binary JSON, offset ranges, trim-prefix, regex
listing and deletion, multi-topic describe, watch modes, group states / offset-delete / seek
sources, YAML output, profiles, shell completion and one topic id format everywhere."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from tests.integration.test_cli import Cli, json_lines
from tests.support import admin_http, ops
from tests.support.broker import REPO_ROOT, BrokerProcess, default_sigint

pytestmark = [pytest.mark.streamd_only]


@pytest.fixture
def cli(broker: BrokerProcess, tmp_path: Path) -> Cli:
    c = Cli(broker)
    c.env["STREAMD_CONFIG_DIR"] = str(tmp_path / "cli-config")
    return c


def test_consume_template_follows_rpk_verbs(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    cli.ok("topic", "produce", topic_name, "-k", "kk", "-H", "a=1", "-H", "a=2", "-H", "b=x",
           stdin="hello\n")
    out = cli.ok("topic", "consume", topic_name, "-n", "1", "-f",
                 "%t|%T|%p|%o|%k|%K|%v|%V|%H|%h|%v{hex}|%k{base64}|%e\\n")
    assert out == (
        f"{topic_name}|{len(topic_name)}|0|0|kk|2|hello|5|3|a=1,a=2,b=x|68656c6c6f|a2s=|0\n"
    )
    stamp = cli.ok("topic", "consume", topic_name, "-n", "1", "-f", "%d").strip()
    assert abs(int(stamp) - time.time() * 1000) < 600_000
    assert "producer id" in cli.fails("topic", "consume", topic_name, "-n", "1", "-f", "%x")


def test_json_output_base64_for_binary_and_header_arrays(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    producer = ops.producer(cli.broker.bootstrap)
    producer.produce(topic_name, key=b"\xff\x00k", value=b"plain",
                     headers=[("h", b"1"), ("h", b"\xfe")])
    assert producer.flush(30) == 0
    [rec] = json_lines(cli.ok("topic", "consume", topic_name, "-n", "1", "--format", "json"))
    assert rec["key"] == "/wBr" and rec["key_encoding"] == "base64"
    assert rec["value"] == "plain" and "value_encoding" not in rec
    assert rec["headers"] == [
        {"key": "h", "value": "1"},
        {"key": "h", "value": "/g==", "encoding": "base64"},
    ]
    [raw] = json_lines(cli.ok("topic", "consume", topic_name, "-n", "1", "--format", "json",
                              "--json-binary", "base64"))
    assert raw["value"] == "cGxhaW4=" and raw["value_encoding"] == "base64"
    doc = yaml.safe_load(cli.ok("topic", "consume", topic_name, "-n", "1", "--format", "yaml"))
    assert doc["value"] == "plain"


def test_produce_templates_route_records_and_span_lines(cli: Cli, topic_name: str) -> None:
    other = topic_name + "-b"
    cli.ok("topic", "create", topic_name, other, "-p", "2")
    cli.ok("topic", "produce", topic_name, "-f", "%t %p %h %k %v\\n", "-q",
           stdin=f"{other} 1 x=1,x=2 k1 first value\n{topic_name} 0 y=3 k2 second\n")
    out = cli.ok("topic", "consume", other, "-p", "1", "-e", "-f", "%k=%v [%h]")
    assert out == "k1=first value [x=1,x=2]\n"
    out = cli.ok("topic", "consume", topic_name, "-p", "0", "-e", "-f", "%k=%v [%h]")
    assert out == "k2=second [y=3]\n"
    cli.ok("topic", "produce", other, "-p", "0", "-f", "%k\\n%v\\n", "-q",
           stdin="key-a\nvalue-a\nkey-b\nvalue-b\n")
    out = cli.ok("topic", "consume", other, "-p", "0", "-e", "-f", "%k:%v")
    assert out.splitlines() == ["key-a:value-a", "key-b:value-b"]
    assert "ends inside a record" in cli.fails(
        "topic", "produce", other, "-f", "%k\\n%v\\n", stdin="lonely\n"
    )


def test_consume_offset_ranges(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    cli.ok("topic", "produce", topic_name, "-q", stdin="".join(f"v{i}\n" for i in range(20)))
    assert cli.ok("topic", "consume", topic_name, "-o", "5:8", "-f", "%o").split() == [
        "5", "6", "7"]
    assert len(cli.ok("topic", "consume", topic_name, "-o", ":end").split()) == 20
    assert cli.ok("topic", "consume", topic_name, "-o", "-2:end", "-f", "%o").split() == [
        "18", "19"]
    assert cli.ok("topic", "consume", topic_name, "-o", "19:19") == ""
    stamps = [int(x) for x in cli.ok(
        "topic", "consume", topic_name, "-o", ":end", "-f", "%d").split()]
    first, last = stamps[0], stamps[-1]
    got = cli.ok("topic", "consume", topic_name, "-o", f"@{first}:{last + 1}", "-f", "%o").split()
    assert got == [str(i) for i in range(20)]
    assert "with -g" in cli.fails("topic", "consume", topic_name, "-g", "g", "-o", "1:2")
    out = cli.ok("topic", "consume", topic_name, "-o", ":end", "--read-committed", "-f", "%o")
    assert len(out.split()) == 20


def test_trim_prefix_list_regex_delete_regex(cli: Cli, topic_name: str) -> None:
    a, b, c = f"{topic_name}-a1", f"{topic_name}-a2", f"{topic_name}-b1"
    cli.ok("topic", "create", a, b, c, "-p", "2")
    cli.ok("topic", "produce", a, "-p", "0", "-q", stdin="".join(f"v{i}\n" for i in range(10)))
    rows = cli.json("topic", "trim-prefix", a, "-o", "4", "-p", "0", "--no-confirm")
    assert rows == [{"topic": a, "partition": 0, "new_start_offset": 4}]
    parts = {p["partition"]: p for p in cli.json("topic", "describe", a, "-p")["partitions"]}
    assert parts[0]["log_start"] == 4
    refused = cli.run("topic", "trim-prefix", a, "-o", "5", stdin="n\n")
    assert refused.returncode == 1 and "Error: aborted: nothing deleted" in refused.stderr

    listed = [t["name"] for t in cli.json("topic", "list", "-r", f"^{topic_name}-a")]
    assert listed == [a, b]
    assert [t["name"] for t in cli.json("topic", "list", c)] == [c]
    both = cli.json("topic", "describe", a, c, "-p")
    assert [d["name"] for d in both] == [a, c]
    assert all("partitions" in d and "configs" not in d for d in both)
    assert "CONFIGS" not in cli.ok("topic", "describe", a, "-s")

    deleted = cli.json("topic", "delete", "-r", f"^{topic_name}-a")
    assert sorted(d["topic"] for d in deleted) == [a, b]
    remaining = {t["name"] for t in cli.json("topic", "list")}
    assert c in remaining and a not in remaining and b not in remaining
    parsed = yaml.safe_load(cli.ok("topic", "list", c, "--format", "yaml"))
    assert parsed == [{"name": c, "partitions": 2, "replicas": 1}]


def test_topic_id_is_the_same_in_cli_admin_api_and_console(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    cli_id = cli.json("topic", "describe", topic_name)["topic_id"]
    api_id = admin_http.get(cli.broker.admin_port, f"/v1/topics/{topic_name}/storage").json()[
        "topic_id"]
    assert cli_id == api_id
    assert len(cli_id) == 22 and "+" not in cli_id and "/" not in cli_id
    page = admin_http.get(cli.broker.admin_port, f"/console/topics/{topic_name}").text
    assert f'<dd id="topic-id">{cli_id}</dd>' in page



def _watch(cli: Cli, *args: str, renders: int = 2) -> tuple[int, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamd", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=cli.env,
        preexec_fn=default_sigint,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if sum("Ctrl-C to stop" in x for x in lines) > renders:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err, err
    return proc.returncode, lines + rest.splitlines()


def test_watch_modes_refresh_until_ctrl_c(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    cli.ok("topic", "produce", topic_name, "-q", stdin="x" * 3000 + "\n")
    code, lines = _watch(cli, "topic", "describe-storage", topic_name, "--watch",
                         "--interval", "0.2")
    assert code == 0
    assert sum("Ctrl-C to stop" in line for line in lines) >= 3
    single = cli.ok("topic", "describe-storage", topic_name)
    assert "KiB" in single, "sizes are human-readable"
    code, lines = _watch(cli, "cluster", "health", "--watch", "--interval", "0.2")
    assert code == 0
    assert any("cluster is healthy" in line for line in lines)


def test_group_states_offset_delete_and_seek_sources(
    cli: Cli, topic_name: str, tmp_path: Path
) -> None:
    cli.ok("topic", "create", topic_name, "-p", "2")
    cli.ok("topic", "produce", topic_name, "-p", "0", "-q",
           stdin="".join(f"v{i}\n" for i in range(10)))
    g1, g2 = f"g1-{topic_name}", f"g2-{topic_name}"
    consumer = Consumer({"bootstrap.servers": cli.broker.bootstrap, "group.id": g1})
    consumer.commit(offsets=[TopicPartition(topic_name, 0, 7), TopicPartition(topic_name, 1, 0)],
                    asynchronous=False)
    consumer.close()

    empty = {g["group"] for g in cli.json("group", "list", "--states", "empty")}
    assert g1 in empty
    assert g1 not in {g["group"] for g in cli.json("group", "list", "--states", "Stable")}
    assert "unknown group state" in cli.fails("group", "list", "--states", "sleepy")

    cli.json("group", "seek", g2, "--to-group", g1)
    offsets = {(p["partition"], p["current_offset"])
               for p in cli.json("group", "describe", g2)["partitions"]}
    assert offsets == {(0, 7), (1, 0)}
    plan = tmp_path / "offsets.txt"
    plan.write_text(f"# topic partition offset\n{topic_name} 0 3\n")
    moved = cli.json("group", "seek", g2, "--to-file", str(plan))
    assert [(m["partition"], m["prior_offset"], m["new_offset"]) for m in moved] == [(0, 7, 3)]
    assert "exactly one" in cli.fails("group", "seek", g2, "--to", "start", "--to-group", g1)

    rows = cli.json("group", "offset-delete", g2, "--topic", f"{topic_name}:1")
    assert rows == [{"topic": topic_name, "partition": 1, "status": "OK"}]
    left = {p["partition"]: p["current_offset"]
            for p in cli.json("group", "describe", g2)["partitions"]}
    assert left[0] == 3 and left.get(1) is None


def test_profiles_supply_connection_settings(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name)
    env = dict(cli.env)
    broker = cli.broker
    out = cli.ok("profile", "create", "local", "--brokers", broker.bootstrap,
                 "--admin-url", f"http://127.0.0.1:{broker.admin_port}")
    assert "now current" in out
    cli.ok("profile", "create", "nowhere", "--brokers", "127.0.0.1:1", "--no-use")
    assert cli.ok("profile", "current").strip() == "local"
    path = Path(env["STREAMD_CONFIG_DIR"]) / "profiles.yaml"
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    bare = Cli(broker)
    bare.env = {k: v for k, v in env.items() if k not in ("STREAMD_BROKERS", "STREAMD_ADMIN_URL")}
    assert topic_name in {t["name"] for t in bare.json("topic", "list")}
    assert "cannot reach broker at 127.0.0.1:1" in bare.fails("--profile", "nowhere", "topic",
                                                              "list")
    bare.env["STREAMD_PROFILE"] = "nowhere"
    assert "cannot reach broker at 127.0.0.1:1" in bare.fails("topic", "list")
    del bare.env["STREAMD_PROFILE"]
    listed = {p["name"]: p for p in bare.json("profile", "list")}
    assert listed["local"]["current"] is True and listed["nowhere"]["current"] is False
    bare.ok("profile", "use", "nowhere")
    # a flag beats the profile
    assert topic_name in bare.ok("--brokers", broker.bootstrap, "topic", "list")
    bare.ok("profile", "delete", "nowhere")
    assert "no current profile" in bare.fails("profile", "current")


def test_shell_completion_script(cli: Cli) -> None:
    env = dict(cli.env, _STREAMD_COMPLETE="bash_source")
    proc = subprocess.run([sys.executable, "-m", "streamd"], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 0
    assert "complete -o nosort -F _streamd_completion streamd" in proc.stdout


def test_admin_api_credentials_from_the_cli(
    broker_factory: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    secure = broker_factory(start=False)
    secure.settings.update(
        {
            "kafka.listeners": f"SASL://{secure.bootstrap}",
            "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT",
            "admin.require_auth": "true",
            "security.bootstrap_users": "ops:ops-secret:SCRAM-SHA-256",
        }
    )
    secure.start()
    cli = Cli(secure)
    cli.env["STREAMD_CONFIG_DIR"] = str(tmp_path)
    assert "HTTP 401" in cli.fails("topic", "describe-storage", "x")
    health = cli.json("--user", "ops", "--password", "ops-secret", "cluster", "health")
    assert {c["check"]: c["healthy"] for c in health["checks"]}["admin-api"] is True


def test_help_documents_completion_and_every_rpk_row_is_yes() -> None:
    doc = (REPO_ROOT / "docs" / "cli.md").read_text()
    assert "_STREAMD_COMPLETE=bash_source" in doc
    rows = [line for line in doc.splitlines() if line.startswith("| `rpk")]
    assert len(rows) >= 41
    assert all(line.rstrip().endswith("| yes |") for line in rows), [
        r for r in rows if not r.rstrip().endswith("| yes |")]


def test_cluster_logdirs_describe(cli: Cli, topic_name: str) -> None:
    cli.ok("topic", "create", topic_name, "-p", "2")
    cli.ok("topic", "produce", topic_name, "-p", "1", "-q", stdin="x" * 5000 + "\n")
    rows = cli.json("cluster", "logdirs", "describe", "--topics", topic_name)
    sizes = {r["partition"]: r["size"] for r in rows if r["topic"] == topic_name}
    assert sizes[0] == 0 and sizes[1] > 5000
    assert all(r["archive_size"] == 0 for r in rows), "nothing is archived for this topic"
    text = cli.ok("cluster", "logdirs", "describe", "--topics", topic_name, "-H")
    assert "KiB" in text and "ARCHIVE-SIZE" in text
