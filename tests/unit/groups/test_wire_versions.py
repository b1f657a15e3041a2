"""Every group API at every advertised version: the handler's answer encodes with kio."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import streamd.kafka.handlers  # noqa: F401  (registers the APIs)
from streamd.groups.service import GroupService, group_config
from streamd.kafka import codec
from streamd.kafka.apis import REGISTRY
from streamd.kafka.context import KafkaContext, Request

GROUP_APIS = (10, 11, 14, 12, 13, 8, 9, 16, 15, 42, 47)

BODIES: dict[int, dict[str, Any]] = {
    10: {"key": "g", "key_type": 0, "coordinator_keys": ["g", "h"]},
    11: {
        "group_id": "g",
        "session_timeout": 6000,
        "rebalance_timeout": 6000,
        "member_id": "",
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": b"\x00"}],
    },
    14: {"group_id": "g", "generation_id": 1, "member_id": "nobody", "assignments": []},
    12: {"group_id": "g", "generation_id": 1, "member_id": "nobody"},
    13: {"group_id": "g", "member_id": "nobody", "members": [{"member_id": "nobody"}]},
    8: {
        "group_id": "s",
        "generation_id_or_member_epoch": -1,
        "topics": [{"name": "t", "partitions": [{"partition_index": 0, "committed_offset": 5}]}],
    },
    9: {
        "group_id": "s",
        "topics": [{"name": "t", "partition_indexes": [0, 1]}],
        "groups": [{"group_id": "s", "topics": []}, {"group_id": "x", "topics": []}],
    },
    16: {"states_filter": ["Empty"]},
    15: {"groups": ["g", "s", "none"]},
    42: {"groups_names": ["none"]},
    47: {"group_id": "s", "topics": [{"name": "t", "partitions": [{"partition_index": 1}]}]},
}


def versions() -> list[tuple[int, int]]:
    return [
        (key, v)
        for key in GROUP_APIS
        for v in range(REGISTRY[key].min_version, REGISTRY[key].max_version + 1)
    ]


@pytest.mark.parametrize(("key", "version"), versions())
async def test_handler_answer_encodes(tmp_path: Path, key: int, version: int) -> None:
    svc = GroupService(tmp_path, group_config({"group.initial.rebalance.delay.ms": 0}))
    await svc.open()
    ctx = KafkaContext(
        logs=None,  # type: ignore[arg-type]
        config=None,  # type: ignore[arg-type]
        node_id=0,
        cluster_id="cluster",
        advertised_host="localhost",
        advertised_port=9092,
        groups=svc,
    )
    try:
        cls = codec.request_class(key, version)
        assert cls is not None
        body = codec.build(cls, BODIES[key])
        if key == 9 and version >= 8:
            body = replace(body, groups=(replace(body.groups[0], topics=None), body.groups[1]))
        elif key == 9 and version >= 2:
            body = replace(body, topics=None)
        header = codec.RequestHeader(key, version, 7, "client", 0)
        result = await REGISTRY[key].handler(Request(ctx, header, body, "127.0.0.1:5555"))
        frame = codec.encode_response(key, version, 7, codec.response(key, version, result))
        assert len(frame) > 8
    finally:
        await svc.close()


async def test_version_specific_shapes(tmp_path: Path) -> None:
    svc = GroupService(tmp_path, group_config({"group.initial.rebalance.delay.ms": 0}))
    await svc.open()
    ctx = KafkaContext(
        logs=None,  # type: ignore[arg-type]
        config=None,  # type: ignore[arg-type]
        node_id=0,
        cluster_id="cluster",
        advertised_host="localhost",
        advertised_port=9092,
        groups=svc,
    )

    async def call(key: int, version: int, data: dict[str, Any]) -> Any:
        cls = codec.request_class(key, version)
        assert cls is not None
        header = codec.RequestHeader(key, version, 1, "client", 0)
        result = await REGISTRY[key].handler(
            Request(ctx, header, codec.build(cls, data), "10.0.0.1:4000")
        )
        return codec.response(key, version, result)

    try:
        v0 = await call(11, 0, BODIES[11])
        assert int(v0.error_code) == 0 and v0.member_id.startswith("client-")
        v4 = await call(11, 4, BODIES[11])
        assert int(v4.error_code) == 79 and v4.member_id
        leave = await call(13, 0, {"group_id": "g", "member_id": "nobody"})
        assert int(leave.error_code) == 25
        txn = await call(10, 3, {"key": "t", "key_type": 1})
        assert int(txn.error_code) == 15
        described = await call(15, 5, {"groups": ["g"]})
        (member,) = described.groups[0].members
        assert member.client_host == "/10.0.0.1"
    finally:
        await svc.close()
