"""A compacted topic on tiered storage (beyond KIP-405, as Redpanda does): the cleaned segments
are archived in place of what was archived before them, so once the local copy is gone (the
data directory wiped, the broker restored from the bucket) a consumer replaying from offset 0
reads the compacted view through the bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_compaction import (
    COMPACTED,
    FAST,
    history,
    produce_rows,
    read_all,
    state_of,
    wait_compacted,
)
from tests.support.broker import REPO_ROOT, BrokerProcess
from tests.support.moto import MotoS3, check_bucket_consistent, storage_report, wait_until
from tests.support.ops import create_topic

pytestmark = pytest.mark.streamd_only

TIERED = {**COMPACTED, "remote.storage.enable": "true"}


def archive_pending(broker: BrokerProcess) -> bool:
    url = f"http://127.0.0.1:{broker.admin_port}/v1/cluster/archive"
    with urllib.request.urlopen(url, timeout=5) as resp:
        status: dict[str, Any] = json.loads(resp.read())
    return bool(status["metadata"]["pending"])


def restore(settings: dict[str, str], data_dir: Path, workdir: Path) -> None:
    cmd = [sys.executable, "-m", "streamd", "restore", "--set", f"data_dir={data_dir}"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_bucket_serves_and_restores_the_compacted_view(
    moto_s3: MotoS3, tmp_path: Path, topic_name: str
) -> None:
    bucket = moto_s3.new_bucket()
    settings = (
        moto_s3.broker_settings(bucket)
        | FAST
        | {
            "tiering.upload_interval_ms": "250",
            "tiering.offsets_archive_interval_ms": "300",
        }
    )
    broker = BrokerProcess(tmp_path / "data", settings, log_path=tmp_path / "broker.log")
    try:
        broker.start()
        create_topic(broker.bootstrap, topic_name, config=TIERED)
        rows = history(100, 50) + [(b"key-%03d" % k, None) for k in range(0, 100, 10)]
        produce_rows(broker.bootstrap, topic_name, rows)
        expected = state_of([(0, k, v) for k, v in rows])

        records = wait_compacted(broker.bootstrap, topic_name, expected, timeout=30)

        def archive_compacted() -> dict[str, Any] | None:
            part: dict[str, Any] = storage_report(broker.admin_port, topic_name)["partitions"][0]
            end = part["high_watermark"]
            done = (
                part["last_uploaded_offset"] == end - 1
                and not part["compacted_reuploads_pending"]
                and not part["pending_deletes"]
            )
            return part if done else None

        wait_until("the archive to be the compacted log", archive_compacted, timeout=30)
        manifests = [m for m in check_bucket_consistent(moto_s3, bucket) if m.topic == topic_name]
        (manifest,) = manifests
        assert all("-c" in s.key.rsplit("/", 1)[-1] for s in manifest.segments), "re-uploads"
        archived = sum(s.size_bytes for s in manifest.segments)
        assert archived < 100 * 1024, "the archive holds the compacted bytes, not the history"
        objects = [
            k
            for k in moto_s3.objects(bucket)
            if f"/{topic_name}/" in k and k.endswith((".log", ".index"))
        ]
        assert len(objects) == 2 * len(manifest.segments), "replaced objects are deleted"
        wait_until("cluster metadata archived", lambda: not archive_pending(broker))
    finally:
        broker.close()

    shutil.rmtree(tmp_path / "data")
    restore(settings, tmp_path / "restored", tmp_path)
    restored = BrokerProcess(tmp_path / "restored", settings, log_path=tmp_path / "restored.log")
    try:
        restored.start()
        part = storage_report(restored.admin_port, topic_name)["partitions"][0]
        assert part["local_start_offset"] == part["high_watermark"] == len(rows)
        replay = read_all(restored.bootstrap, topic_name)
        assert replay == records, "the bucket serves the compacted view"
        assert not any(v is None for _, _, v in replay), "no tombstone left in the archive"
    finally:
        restored.close()
