"""InitProducerId: producer ids and epochs for idempotent producers.

Transactions are not implemented: a request with a transactional id is refused with
TRANSACTIONAL_ID_AUTHORIZATION_FAILED so that clients fail fast instead of retrying forever.
A producer that sends its current id and epoch (KIP-360) gets the epoch bumped; when the epoch
would overflow it gets a fresh id. Authorization follows KIP-679: IDEMPOTENT_WRITE on the
cluster, or WRITE on any topic.
"""

from __future__ import annotations

from typing import Any

from streamd.errors import ErrorCode, StreamdError
from streamd.kafka.apis import api
from streamd.kafka.authz import IDEMPOTENT_WRITE, TOPIC, WRITE, authorize, authorize_cluster
from streamd.kafka.context import KafkaContext, Request
from streamd.kafka.services import ProducerIds

MAX_EPOCH = 32767


def _allocator(ctx: KafkaContext) -> ProducerIds:
    if ctx.producer_ids is None:
        raise StreamdError("no producer id allocator", code=ErrorCode.UNKNOWN_SERVER_ERROR)
    return ctx.producer_ids


@api(22, "InitProducerId", 0, 4)
async def init_producer_id(req: Request) -> dict[str, Any]:
    body = req.body
    if body.transactional_id is not None:
        return {"error_code": ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                "producer_id": -1, "producer_epoch": -1}
    if not (
        authorize_cluster(req, IDEMPOTENT_WRITE)
        or any(authorize(req, WRITE, TOPIC, name, audit=False) for name in req.ctx.logs.topics())
    ):
        return {"error_code": ErrorCode.CLUSTER_AUTHORIZATION_FAILED,
                "producer_id": -1, "producer_epoch": -1}
    pid = getattr(body, "producer_id", -1)
    epoch = getattr(body, "producer_epoch", -1)
    if pid >= 0 and 0 <= epoch < MAX_EPOCH:
        return {"error_code": ErrorCode.NONE, "producer_id": pid, "producer_epoch": epoch + 1}
    return {"error_code": ErrorCode.NONE, "producer_id": _allocator(req.ctx).allocate(),
            "producer_epoch": 0}
