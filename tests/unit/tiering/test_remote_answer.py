"""How much one remote read answers (issue 14 item 7: replay speed).

A Fetch whose answer is short of its ``min_bytes`` waits out ``max_wait`` before it returns. A
remote read that stopped at the end of its archived object answered a few KiB for a 1 MiB
``fetch.min.bytes`` whenever objects are small, so a replay of small segments paid one
``fetch.wait.max.ms`` per object. A read must continue into the following objects until it
holds what the Fetch needs for its ``min_bytes`` (or the archive ends, or the local log begins:
the Fetch reads on from local disk). A Fetch that is already satisfied gets one object, as Kafka
answers one segment: a transform worker commits between Fetch responses, and one response of
the whole archive would hold its first commit back until all of it is transformed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamd.log.batch import validate_produce_batches
from tests.unit.tiering.test_service import TIERED, Env, fill


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    if e.service is not None:
        e.logs.tiering_veto = None
        await e.service.close()
    await e.logs.close()


async def test_one_read_continues_through_small_objects(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    sent = await fill(env.logs, "t", 120)
    plog = env.logs.partition("t", 0)
    service = await env.open_service(chunk=1024)
    await env.tick_and_housekeep()
    manifest = service._states[("t", 0)].manifest
    assert len(manifest.segments) >= 3, "the archive must hold several objects"
    assert plog.log_start_offset > manifest.segments[1].last_offset
    end = min(manifest.last_uploaded_offset + 1, plog.log_start_offset)
    archived = sum(seg.size_bytes for seg in manifest.segments)
    assert archived < 1 << 20  # less than the 1 MiB a read waits for at least

    data = await service.read("t", 0, 0, 1 << 20, True, ready_bytes=1 << 20)

    batches = validate_produce_batches(data, 1 << 30)
    assert batches[-1].next_offset == end, (
        f"one read for a 1 MiB min_bytes from offset 0 answered up to offset "
        f"{batches[-1].next_offset}; "
        f"the archive holds {archived} bytes, read from it up to offset {end}, in "
        f"{len(manifest.segments)} objects"
    )
    assert bytes(data) == b"".join(sent)[: len(data)]


async def test_a_satisfied_fetch_is_answered_from_one_object(env: Env) -> None:
    env.logs.create_topic("t", 1, TIERED)
    await fill(env.logs, "t", 120)
    service = await env.open_service(chunk=1024)
    await env.tick_and_housekeep()
    first = service._states[("t", 0)].manifest.segments[0]

    data = await service.read("t", 0, 0, 1 << 20, True, ready_bytes=1)

    assert validate_produce_batches(data, 1 << 30)[-1].next_offset == first.last_offset + 1
