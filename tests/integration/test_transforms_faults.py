"""Transforms that misbehave: they are cut off, killed, restarted or failed, and reported; the
broker keeps serving clients meanwhile. Also: deployments in ``streamd restore``, the CLI, and
authorization of the admin routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.support import ops
from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.moto import MotoS3, storage_report, wait_until
from tests.support.transforms import (
    ENABLED,
    UPPER,
    admin,
    caught_up,
    committed_total,
    deploy,
    describe,
    read_committed,
    wait_for,
    write_code,
)

pytestmark = [pytest.mark.streamd_only]

SLEEPY = """\
import time

def transform(record):
    if record.value == b"slow":
        time.sleep(3600)
    return record
"""

SWALLOWS = """\
import time

def transform(record):
    if record.value == b"slow":
        while True:
            try:
                time.sleep(3600)
            except Exception:
                pass  # swallows the time limit's interrupt
    return record
"""

STUCK = """\
import itertools

def transform(record):
    if record.value == b"slow":
        sum(itertools.repeat(1, 10**15))  # C code holding the GIL: no signal, no heartbeat
    return record
"""

HOG = """\
def transform(record):
    if record.value == b"slow":
        record.value = bytes(1 << 30)
    return record
"""

GROWER = """\
import time

def transform(record):
    if record.value == b"slow":
        keep = [b"x" * (1 << 20) for _ in range(250)]
        time.sleep(3600)
    return record
"""


def produce_values(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for v in values:
        producer.produce(topic, value=v, partition=0)
    assert producer.flush(30) == 0


def roundtrip(broker: BrokerProcess, topic: str, value: bytes) -> None:
    """A produce and a consume of it: the broker still serves clients."""
    [offset] = ops.produce(broker.bootstrap, topic, [value])
    assert ops.consume(broker.bootstrap, topic, 0, offset)[0].value == value


def test_hanging_and_stuck_transforms(broker_factory, topic_name: str) -> None:  # noqa: ANN001
    broker = broker_factory(
        ENABLED | {"transforms.record_timeout_ms": "1000", "transforms.max_restarts": "0"}
    )
    src, out1, out2, out3, other = (
        f"{topic_name}-{s}" for s in ("in", "o1", "o2", "o3", "other")
    )
    for t in (src, out1, out2, out3, other):
        ops.create_topic(broker.bootstrap, t, 1)
    produce_values(broker.bootstrap, src, [b"a", b"slow", b"b"])

    deploy(broker, "sleepy", SLEEPY, src, [out1], on_error="skip")
    deploy(broker, "stuck", STUCK, src, [out2], on_error="skip")
    deploy(broker, "swallows", SWALLOWS, src, [out3], on_error="skip")

    doc = wait_for(broker, "sleepy", "skip the slow record", lambda d: caught_up(d, 3))
    assert doc["records_skipped"] == 1 and doc["status"] == "running", doc
    assert doc["last_error"]["offset"] == 1
    assert "TransformTimeout: the record took longer than 1000 ms" in doc["last_error"]["message"]
    assert [r.value for r in read_committed(broker.bootstrap, out1, 1)[0]] == [b"a", b"b"]

    roundtrip(broker, other, b"while stuck")  # the worker spins in C; the broker does not care
    doc = wait_for(broker, "stuck", "be killed and failed", lambda d: d["status"] == "failed")
    assert "no heartbeat" in doc["last_error"]["message"], doc
    assert doc["worker"]["pid"] is None
    doc = wait_for(broker, "swallows", "be killed and failed", lambda d: d["status"] == "failed")
    assert "no heartbeat" in doc["last_error"]["message"], doc
    roundtrip(broker, other, b"after")


def test_memory_limits(broker_factory, topic_name: str) -> None:  # noqa: ANN001
    broker = broker_factory(
        ENABLED | {"transforms.memory_limit_bytes": str(200 << 20), "transforms.max_restarts": "0"}
    )
    src, out1, out2 = (f"{topic_name}-{s}" for s in ("in", "o1", "o2"))
    for t in (src, out1, out2):
        ops.create_topic(broker.bootstrap, t, 1)
    produce_values(broker.bootstrap, src, [b"a", b"slow"])
    deploy(broker, "hog", HOG, src, [out1], on_error="skip")
    deploy(broker, "grower", GROWER, src, [out2], on_error="skip")

    hog = wait_for(broker, "hog", "fail", lambda d: d["status"] == "failed")
    assert "ran out of memory" in hog["last_error"]["message"], hog
    grower = wait_for(broker, "grower", "fail", lambda d: d["status"] == "failed")
    assert "above transforms.memory_limit_bytes" in grower["last_error"]["message"], grower
    assert hog["partitions"][0]["committed_offset"] in (None, 1)  # never past the big one


def cli(broker: BrokerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "streamd", "--brokers", broker.bootstrap,
         "--admin-url", f"http://127.0.0.1:{broker.admin_port}", "transform", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_cli(broker_factory, topic_name: str, tmp_path: Path) -> None:  # noqa: ANN001
    broker = broker_factory(ENABLED)
    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    ops.create_topic(broker.bootstrap, src, 2)
    ops.create_topic(broker.bootstrap, dst, 2)
    produce_values(broker.bootstrap, src, [b"x", b"y"])
    code = UPPER.replace("def transform(record):", "print('hello from', os.environ['WHO'])\n\n"
                         "def transform(record):")
    path = write_code(tmp_path, "upper", code)

    # A consumer of the (still empty) output started first sees what the transform writes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    tail = subprocess.Popen(
        [sys.executable, "-m", "streamd", "--brokers", broker.bootstrap, "topic", "consume", dst,
         "-n", "2", "-f", "%v\n"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        done = cli(broker, "deploy", str(path), "--name", "up", "-i", src, "-o", dst,
                   "--from", "earliest", "--env", "WHO=cli")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("deployed transform up")
        wait_for(broker, "up", "catch up", lambda d: caught_up(d, 2) and d["records_out"] == 2)
        out, _ = tail.communicate(timeout=60)
        assert sorted(out.split()) == ["X", "Y"]
    finally:
        tail.kill()
        tail.wait()

    listing = json.loads(cli(broker, "list", "--format", "json").stdout)
    [entry] = listing
    for key in ("name", "input_topic", "output_topics", "status", "partitions", "lag",
                "records_in", "records_out", "last_error"):
        assert key in entry, key
    assert entry["input_topic"] == src and entry["output_topics"] == [dst]
    assert entry["records_in"] == entry["records_out"] == 2

    text = cli(broker, "describe", "up").stdout
    assert "status" in text and "PARTITION" in text
    logs = cli(broker, "logs", "up").stdout
    assert "hello from cli" in logs

    assert cli(broker, "pause", "up").stdout.strip() == "transform up paused (paused)"
    broker.restart()
    assert describe(broker, "up")["status"] == "paused"  # survives a restart
    assert cli(broker, "resume", "up").returncode == 0
    wait_for(broker, "up", "run", lambda d: d["worker"]["state"] == "running")
    assert cli(broker, "delete", "up").returncode == 0
    gone = cli(broker, "describe", "up")
    assert gone.returncode == 1 and gone.stderr.strip() == "Error: no transform named 'up'"

    bad = cli(broker, "deploy", str(path), "--name", "up", "-i", src, "-o", "missing-topic")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "Error: output topic 'missing-topic' does not exist (create it first: "
        "streamd topic create missing-topic)"
    )
    bad = cli(broker, "deploy", str(path), "--name", "up", "-i", src, "-o", dst,
              "--on-error", "retry")
    assert bad.returncode == 1 and "invalid --on-error 'retry'" in bad.stderr
    for command in ("deploy", "list", "describe", "pause", "resume", "delete", "logs"):
        helped = cli(broker, command, "--help")
        assert helped.returncode == 0 and "streamd transform" in helped.stdout, command


def test_authorization(broker_factory, topic_name: str) -> None:  # noqa: ANN001
    """ALTER on the CLUSTER to deploy/pause/resume/delete, DESCRIBE to read; the worker itself
    is not subject to ACLs (its principal is internal)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    broker = broker_factory(
        ENABLED
        | {"security.authorization": "true", "allow.everyone.if.no.acl.found": "true"}
    )
    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    ops.create_topic(broker.bootstrap, src, 1)
    ops.create_topic(broker.bootstrap, dst, 1)
    client = ops.admin(broker.bootstrap)

    def acl(rtype: ResourceType, name: str, principal: str, op: AclOperation) -> None:
        binding = AclBinding(rtype, name, ResourcePatternType.LITERAL, principal, "*", op,
                             AclPermissionType.ALLOW)
        client.create_acls([binding])[binding].result(15)

    deploy(broker, "up", UPPER, src, [dst])
    # Only alice may read the input now; the transform's worker still does.
    acl(ResourceType.TOPIC, src, "User:alice", AclOperation.READ)
    acl(ResourceType.TOPIC, src, "User:ANONYMOUS", AclOperation.WRITE)
    produce_values(broker.bootstrap, src, [b"q"])
    wait_for(broker, "up", "transform", lambda d: committed_total(d) == 1)
    # ALTER on the cluster for alice only: the (anonymous) admin caller is refused now.
    acl(ResourceType.BROKER, "kafka-cluster", "User:alice", AclOperation.ALTER)
    status, doc = admin(broker, "POST", "/v1/transforms/up/pause")
    assert status == 403 and "ALTER on the CLUSTER" in doc["error"], doc
    assert admin(broker, "DELETE", "/v1/transforms/up")[0] == 403
    status, doc = admin(broker, "GET", "/v1/transforms")
    assert status == 403 and "DESCRIBE on the CLUSTER" in doc["error"], doc
    assert describe_direct(broker) == "running"


def describe_direct(broker: BrokerProcess) -> str:
    """The transform's status from its stored deployment: still running (not paused)."""
    path = broker.data_dir / "transforms" / "up" / "deployment.json"
    doc = json.loads(path.read_text())
    return "paused" if doc["paused"] else "running"


def test_restore_brings_deployments_back(
    moto_s3: MotoS3, broker_factory, topic_name: str, tmp_path: Path  # noqa: ANN001
) -> None:
    bucket = moto_s3.new_bucket()
    conf = moto_s3.broker_settings(bucket) | ENABLED | {
        "tiering.upload_interval_ms": "250",
        "tiering.offsets_archive_interval_ms": "250",
    }
    conf["log.housekeeping_interval_ms"] = "250"
    broker = broker_factory(conf)
    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    tiered = {"remote.storage.enable": "true", "segment.ms": "500"}
    ops.create_topic(broker.bootstrap, src, 1, tiered)
    ops.create_topic(broker.bootstrap, dst, 1, tiered)
    produce_values(broker.bootstrap, src, [b"a", b"b"])
    deploy(broker, "up", UPPER, src, [dst], env={"K": "v"})
    deploy(broker, "held", UPPER, src, [dst])
    admin(broker, "POST", "/v1/transforms/held/pause")
    wait_for(broker, "up", "catch up", lambda d: caught_up(d, 2))

    def archived() -> bool:
        for topic in (src, dst):
            [part] = storage_report(broker.admin_port, topic)["partitions"]
            if part["last_uploaded_offset"] != part["high_watermark"] - 1:
                return False
        status, doc = admin(broker, "GET", "/v1/cluster/archive")
        return status == 200 and not doc["metadata"]["pending"] and not doc["offsets"]["pending"]

    wait_until("the deployments to be archived", archived, timeout=30)
    broker.stop()

    data_dir = tmp_path / "restored" / "data"
    cmd = [sys.executable, "-m", "streamd", "restore", "--set", f"data_dir={data_dir}"]
    for key, value in conf.items():
        cmd += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (data_dir / "transforms" / "up" / "deployment.json").is_file()

    restored = BrokerProcess(data_dir, conf, log_path=tmp_path / "restored.log")
    try:
        restored.start()
        up = describe(restored, "up")
        assert up["env"] == {"K": "v"} and up["partitions"][0]["committed_offset"] == 2, up
        assert describe(restored, "held")["status"] == "paused"
        produce_values(restored.bootstrap, src, [b"c"])
        wait_for(restored, "up", "continue after the restore", lambda d: caught_up(d, 3))
    finally:
        restored.close()


def test_stored_deployments_answer_from_the_first_moment_after_a_restart(
    broker_factory, topic_name: str  # noqa: ANN001
) -> None:
    """The admin API opens before the Kafka listeners; a stored deployment must already be
    there when it does (it was loaded only after the listeners, so a describe right after a
    restart could answer 404)."""
    import threading
    import urllib.error
    import urllib.request

    broker = broker_factory(ENABLED)
    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    for t in (src, dst):
        ops.create_topic(broker.bootstrap, t, 1)
    deploy(broker, "early", UPPER, src, [dst])
    broker.stop()

    url = f"http://127.0.0.1:{broker.admin_port}/v1/transforms/early"
    answers: list[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set() and len(answers) < 50:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    answers.append(resp.status)
            except urllib.error.HTTPError as exc:
                answers.append(exc.code)
            except OSError:
                continue  # not listening yet

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        broker.start()
        wait_until("answers from the admin API", lambda: len(answers) >= 50, timeout=30)
    finally:
        done.set()
        poller.join(10)
    assert answers and set(answers) == {200}, answers
