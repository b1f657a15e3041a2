"""Operator basics (issue 18 items 2, 3, 5, 9): one broker per data_dir, a default bucket next
to data_dir, startup and retention lines in the log, ``--log-format json``, and the periodic
jobs (housekeeping, interval fsync) running on the scheduler."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import ops
from tests.support.broker import REPO_ROOT, BrokerProcess, free_port
from tests.support.moto import storage_report, wait_until

pytestmark = [pytest.mark.streamd_only]


def serve(data_dir: Path, cwd: Path, *extra: str, timeout: float = 60) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    cmd = [
        sys.executable, "-m", "streamd", "serve",
        "--set", f"data_dir={data_dir}",
        "--set", f"kafka.listen=127.0.0.1:{free_port()}",
        "--set", f"admin.listen=127.0.0.1:{free_port()}",
        *extra,
    ]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_second_broker_on_the_same_data_dir_exits(
    broker_factory: Callable[..., BrokerProcess]
) -> None:
    first = broker_factory()
    second = serve(first.data_dir, first.workdir)
    try:
        out, err = second.communicate(timeout=60)
    finally:
        if second.poll() is None:  # a broker that did not refuse: stop it, then fail
            second.kill()
            second.communicate()
    assert second.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("Error: cannot start: data_dir"), err
    assert str(first.data_dir) in lines[-1]
    assert first.proc is not None and f"process {first.proc.pid}" in lines[-1]
    assert "Traceback" not in err
    assert first.running, "the first broker is untouched"
    # after the holder stops (even by kill -9), the data_dir is free again
    first.kill9()
    first.start()


def test_default_bucket_follows_data_dir(tmp_path: Path) -> None:
    """Two brokers with different data_dirs started in one folder get different buckets,
    and the log says where each one is."""
    procs = []
    try:
        for name in ("a", "b"):
            procs.append(serve(tmp_path / name / "data", tmp_path, "--log-format", "json"))
        for name, proc in zip(("a", "b"), procs, strict=True):
            bucket = f"file://{tmp_path / name / 'data-bucket'}"
            line = _wait_log(proc, "object store")
            assert line["level"] == "INFO"
            assert bucket in line["message"], line
            assert "next to data_dir" in line["message"]
        assert not (tmp_path / "data" / "bucket").exists(), "nothing follows the working dir"
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=30)


def _wait_log(proc: subprocess.Popen[str], needle: str) -> dict[str, object]:
    assert proc.stderr is not None
    seen = []
    for raw in proc.stderr:
        doc = json.loads(raw)
        seen.append(doc)
        if needle in str(doc["message"]):
            return doc  # type: ignore[no-any-return]
    raise AssertionError(f"no log line with {needle!r}: {seen}")


def test_startup_lines_name_version_config_and_cluster_id(
    broker_factory: Callable[..., BrokerProcess]
) -> None:
    broker = broker_factory()
    log = broker.log_text()
    assert re.search(r"INFO streamd: streamd \d+\.\d+\.\d+\S* starting: config \(none", log)
    cluster = re.search(r"INFO streamd: cluster id (\S+), node id 0", log)
    assert cluster is not None
    stored = json.loads((broker.data_dir / "cluster.json").read_text())["cluster_id"]
    assert cluster.group(1) == stored


def test_json_log_format(tmp_path: Path) -> None:
    proc = serve(tmp_path / "data", tmp_path, "--log-format", "json")
    try:
        ready = _wait_log(proc, "streamd ready")
        assert set(ready) >= {"ts", "level", "logger", "message"}
        assert ready["logger"] == "streamd"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_housekeeping_runs_on_the_scheduler_and_logs_retention(
    broker_factory: Callable[..., BrokerProcess], topic_name: str
) -> None:
    """segment.ms rolls and retention.ms removes segments without any client activity: the
    housekeeping job runs by itself; what it removes is logged at INFO."""
    broker = broker_factory({"log.housekeeping_interval_ms": "200", "fsync": "500"})
    ops.create_topic(
        broker.bootstrap, topic_name, 1, {"segment.ms": "300", "retention.ms": "1500"}
    )
    producer = ops.producer(broker.bootstrap)
    for i in range(3):
        producer.produce(topic_name, value=b"v%d" % i)
    assert producer.flush(30) == 0
    wait_until(
        "local retention to remove the rolled segment",
        lambda: storage_report(broker.admin_port, topic_name)["partitions"][0][
            "local_start_offset"
        ] == 3,
        timeout=30,
    )
    wait_until(
        "the retention line in the log",
        lambda: re.search(
            rf"INFO streamd: {re.escape(topic_name)}-0: local retention removed 1 segment\(s\), "
            r"offsets 0-2",
            broker.log_text(),
        ),
    )
    assert "periodic fsync failed" not in broker.log_text()


def test_restore_refuses_the_data_dir_of_a_running_broker(
    broker_factory: Callable[..., BrokerProcess]
) -> None:
    broker = broker_factory()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "streamd", "restore", "--force", "--no-progress",
         "--set", f"data_dir={broker.data_dir}",
         "--set", f"tiering.store=file://{broker.workdir / 'bucket'}"],
        capture_output=True, text=True, timeout=120, env=env, cwd=broker.workdir,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert broker.proc is not None
    assert f"is in use by process {broker.proc.pid}" in proc.stderr
    assert broker.running


def test_restore_logs_each_step_at_info(
    broker_factory: Callable[..., BrokerProcess], topic_name: str
) -> None:
    broker = broker_factory({"tiering.upload_interval_ms": "200"})
    ops.create_topic(broker.bootstrap, topic_name, 2, {"remote.storage.enable": "true"})
    bucket = broker.workdir / "bucket"
    wait_until(
        "the topic in the archived cluster metadata",
        lambda: (bucket / "cluster" / "metadata.json").exists()
        and topic_name in (bucket / "cluster" / "metadata.json").read_text(errors="replace"),
    )
    broker.stop()
    target = broker.workdir / "restored"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "streamd", "restore", "--no-progress", "--log-level", "INFO",
         "--log-format", "json", "--set", f"data_dir={target}",
         "--set", f"tiering.store=file://{bucket}"],
        capture_output=True, text=True, timeout=120, env=env, cwd=broker.workdir,
    )
    assert proc.returncode == 0, proc.stderr
    messages = [json.loads(line)["message"] for line in proc.stderr.splitlines()]
    assert any(m.startswith(f"restore from file://{bucket} into {target}") for m in messages)
    assert f"restored topic {topic_name} (2 partition(s), 0 archived segment(s))" in messages
    assert any(m.startswith("restored 0 committed offset(s)") for m in messages)
    assert "restored ACLs and SCRAM users" in messages
