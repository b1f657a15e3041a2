"""A broker whose topic has archived segments below its local start (moto S3), shared by the
metrics and console tests."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support import ops
from tests.support.broker import BrokerProcess
from tests.support.clients import Rec
from tests.support.moto import MotoS3, make_records, produce, wait_partition

TIERED = {
    "remote.storage.enable": "true",
    "segment.bytes": "65536",
    "local.retention.bytes": "131072",
}


def tiered_settings(moto: MotoS3, bucket: str) -> dict[str, str]:
    """One object per segment (no merged uploads), so the archive has several objects."""
    return moto.broker_settings(bucket) | {
        "tiering.upload_interval_ms": "250",
        "log.housekeeping_interval_ms": "250",
        "tiering.merge_target_bytes": "0",
    }


@dataclass
class TieredTopic:
    broker: BrokerProcess
    bucket: str
    topic: str
    records: list[Rec]
    local_start: int


def fill_tiered_topic(broker: BrokerProcess, bucket: str, topic: str, n: int = 1500) -> TieredTopic:
    """``n`` records in partition 0 of a 2-partition tiered topic, archived until the local
    log starts past offset 200."""
    ops.create_topic(broker.bootstrap, topic, 2, TIERED)
    records = make_records(n)
    produce(broker.bootstrap, topic, records)
    report = wait_partition(
        broker, topic, "archived segments below the local start",
        lambda r: r["local_start_offset"] > 200 and r["remote_segments"] >= 2,
        timeout=60,
    )
    return TieredTopic(broker, bucket, topic, records, report["local_start_offset"])
