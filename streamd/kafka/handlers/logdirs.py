"""DescribeLogDirs: the one log directory of this broker and the size of each partition in it.

As Kafka answers it: one result for the directory holding the partition logs (``data_dir/topics``)
with, per partition, ``partition_size`` = the bytes of its segment files on local disk and
``offset_lag`` 0 (every partition is its own leader, nothing is being moved between
directories); from v4 the filesystem's ``total_bytes`` and ``usable_bytes``. ``topics`` null
asks for every partition; partitions that do not exist are left out. Needs DESCRIBE on the
cluster; otherwise the whole response is CLUSTER_AUTHORIZATION_FAILED with no results.

What the archive holds per partition has no field in Kafka's response; the admin API's
``GET /v1/logdirs`` adds it beside the local size (see :func:`log_dir_sizes`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from streamd.errors import ErrorCode
from streamd.kafka.apis import api
from streamd.kafka.authz import DESCRIBE, authorize_cluster
from streamd.kafka.context import Request


def disk_space(directory: Path) -> tuple[int, int]:
    """(total, usable) bytes of the filesystem holding ``directory``; (-1, -1) if unknown."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return -1, -1
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def log_dir_sizes(
    logs: Any, wanted: dict[str, list[int] | None] | None
) -> list[tuple[str, list[tuple[int, int]]]]:
    """(topic, [(partition, local bytes)]) for the wanted partitions (None: every one; a topic
    mapped to None: all its partitions), in name order."""
    topics = logs.topics()
    names = sorted(topics) if wanted is None else [n for n in wanted if n in topics]
    out = []
    for name in names:
        partitions = topics[name].partitions
        indexes = None if wanted is None else wanted[name]
        if indexes is None:
            indexes = list(range(len(partitions)))
        sizes = [(i, partitions[i].size_bytes) for i in indexes if 0 <= i < len(partitions)]
        if sizes:
            out.append((name, sizes))
    return out


@api(35, "DescribeLogDirs", 0, 4)
async def describe_log_dirs(req: Request) -> dict[str, Any]:
    if not authorize_cluster(req, DESCRIBE):
        return {"error_code": ErrorCode.CLUSTER_AUTHORIZATION_FAILED, "results": []}
    logs = req.ctx.logs
    wanted: dict[str, list[int] | None] | None = None
    if req.body.topics is not None:
        wanted = {t.topic: [] for t in req.body.topics}
        for t in req.body.topics:
            wanted[t.topic] = [*(wanted[t.topic] or []), *(int(p) for p in t.partitions)]
    directory = logs.topics_dir
    total, usable = await asyncio.to_thread(disk_space, directory)
    return {
        "error_code": ErrorCode.NONE,
        "results": [
            {
                "error_code": ErrorCode.NONE,
                "log_dir": str(directory),
                "total_bytes": total,
                "usable_bytes": usable,
                "topics": [
                    {
                        "name": name,
                        "partitions": [
                            {
                                "partition_index": index,
                                "partition_size": size,
                                "offset_lag": 0,
                                "is_future_key": False,
                            }
                            for index, size in sizes
                        ],
                    }
                    for name, sizes in log_dir_sizes(logs, wanted)
                ],
            }
        ],
    }
