"""Every transaction API at every advertised version: the handler answers, and the answer
encodes with kio. Real log manager, group and transaction services, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import streamd.kafka.handlers  # noqa: F401  (registers the APIs)
from streamd.broker.transactions import transaction_service
from streamd.config import KEYS, BrokerConfig
from streamd.groups.service import GroupService, group_config
from streamd.kafka import codec
from streamd.kafka.apis import REGISTRY
from streamd.kafka.context import AppendWaiters, KafkaContext, Request
from streamd.log.manager import LogManager
from streamd.log.producer_ids import ProducerIdAllocator

TXN_APIS = {22: (0, 5), 24: (0, 3), 25: (0, 4), 26: (0, 4), 28: (0, 4), 61: (0, 0),
            65: (0, 0), 66: (0, 2)}


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[KafkaContext]:
    values: dict[str, Any] = {k.name: k.default for k in KEYS}
    values["data_dir"] = str(tmp_path)
    logs = LogManager(tmp_path)
    logs.load()
    logs.create_topic("t", 2, {})
    groups = GroupService(tmp_path, group_config({}))
    await groups.open()
    waiters = AppendWaiters()
    producer_ids = ProducerIdAllocator(tmp_path)
    txn = transaction_service(tmp_path, values, producer_ids, logs, waiters, groups)
    await txn.open()
    yield KafkaContext(
        logs=logs,
        config=BrokerConfig(values),
        node_id=0,
        cluster_id="c",
        advertised_host="localhost",
        advertised_port=9092,
        waiters=waiters,
        groups=groups,
        producer_ids=producer_ids,
        txn=txn,
    )
    await txn.close()
    await groups.close()
    await logs.close()


async def call(ctx: KafkaContext, key: int, version: int, data: dict[str, Any]) -> Any:
    cls = codec.request_class(key, version)
    assert cls is not None
    header = codec.RequestHeader(key, version, 3, "client", 0)
    result = await REGISTRY[key].handler(Request(ctx, header, codec.build(cls, data), "h:1"))
    response = codec.response(key, version, result)
    assert len(codec.encode_response(key, version, 3, response)) > 8
    return response


def test_advertised_versions() -> None:
    assert {k: (REGISTRY[k].min_version, REGISTRY[k].max_version) for k in TXN_APIS} == TXN_APIS


@pytest.mark.parametrize(
    ("key", "version"),
    [(k, v) for k, (lo, hi) in TXN_APIS.items() for v in range(lo, hi + 1)],
)
async def test_answers_encode(ctx: KafkaContext, key: int, version: int) -> None:
    init = await call(ctx, 22, 1, {"transactional_id": "tx", "transaction_timeout": 60000})
    pid, epoch = init.producer_id, init.producer_epoch
    ids = {"transactional_id": "tx", "producer_id": pid, "producer_epoch": epoch}
    add = {
        "v3_and_below_transactional_id": "tx",
        "v3_and_below_producer_id": pid,
        "v3_and_below_producer_epoch": epoch,
        "v3_and_below_topics": [{"name": "t", "partitions": [0, 1]}],
    }
    bodies: dict[int, dict[str, Any]] = {
        22: {"transactional_id": "tx", "transaction_timeout": 60000, "producer_id": pid,
             "producer_epoch": epoch},
        24: add,
        25: {**ids, "group_id": "g"},
        26: {**ids, "committed": True},
        28: {**ids, "group_id": "g", "topics": [
            {"name": "t", "partitions": [{"partition_index": 0, "committed_offset": 5,
                                          "committed_metadata": ""}]}]},
        61: {"topics": [{"name": "t", "partition_indexes": [0, 9]}]},
        65: {"transactional_ids": ["tx", "none"]},
        66: {"state_filters": ["Ongoing"], "producer_id_filters": []},
    }
    if key in (26, 28, 61, 65, 66):
        await call(ctx, 24, 3, add)
        await call(ctx, 25, 3, {**ids, "group_id": "g"})
    answer = await call(ctx, key, version, bodies[key])
    if key == 61:
        (topic,) = answer.topics
        assert [int(p.error_code) for p in topic.partitions] == [0, 3]
    elif key == 65:
        assert [s.transaction_state for s in answer.transaction_states][0] == "Ongoing"
        assert int(answer.transaction_states[1].error_code) == 105
    elif key == 66:
        assert [s.transactional_id for s in answer.transaction_states] == ["tx"]
    elif key == 28:
        assert int(answer.topics[0].partitions[0].error_code) == 0


async def test_errors_and_fencing_by_version(ctx: KafkaContext) -> None:
    first = await call(ctx, 22, 4, {"transactional_id": "tx", "transaction_timeout": 60000,
                                     "producer_id": -1, "producer_epoch": -1})
    second = await call(ctx, 22, 4, {"transactional_id": "tx", "transaction_timeout": 60000,
                                      "producer_id": -1, "producer_epoch": -1})
    stale = {"transactional_id": "tx", "producer_id": first.producer_id,
             "producer_epoch": first.producer_epoch, "committed": True}
    assert int((await call(ctx, 26, 1, stale)).error_code) == 47  # INVALID_PRODUCER_EPOCH
    assert int((await call(ctx, 26, 3, stale)).error_code) == 90  # PRODUCER_FENCED
    assert second.producer_epoch == first.producer_epoch + 1
    too_long = await call(ctx, 22, 4, {"transactional_id": "tx", "transaction_timeout": 900001,
                                        "producer_id": -1, "producer_epoch": -1})
    assert int(too_long.error_code) == 50  # INVALID_TRANSACTION_TIMEOUT
    half = await call(ctx, 22, 4, {"transactional_id": "tx", "transaction_timeout": 1000,
                                    "producer_id": 5, "producer_epoch": -1})
    assert int(half.error_code) == 42  # INVALID_REQUEST
    unknown = await call(ctx, 24, 3, {
        "v3_and_below_transactional_id": "tx",
        "v3_and_below_producer_id": second.producer_id,
        "v3_and_below_producer_epoch": second.producer_epoch,
        "v3_and_below_topics": [{"name": "t", "partitions": [0, 7]}],
    })
    codes = {r.partition_index: int(r.partition_error_code)
             for r in unknown.results_by_topic_v3_and_below[0].results_by_partition}
    assert codes == {0: 55, 7: 3}  # OPERATION_NOT_ATTEMPTED, UNKNOWN_TOPIC_OR_PARTITION
    coordinator = await call(ctx, 10, 3, {"key": "tx", "key_type": 1})
    assert int(coordinator.error_code) == 0 and coordinator.port == 9092
