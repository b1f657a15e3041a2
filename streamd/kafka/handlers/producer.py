"""InitProducerId: producer ids and epochs for idempotent and transactional producers.

Without a transactional id: a producer that sends its current id and epoch (KIP-360) gets the
epoch bumped, a fresh id when the epoch would overflow, else a new id. Authorization follows
KIP-679: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic.

With a transactional id the transaction coordinator (``ctx.txn``) answers: WRITE on the
TRANSACTIONAL_ID is needed, and PRODUCER_FENCED reaches clients older than v4 as
INVALID_PRODUCER_EPOCH (KIP-588), as Kafka does.
"""

from __future__ import annotations

from typing import Any

from streamd.errors import ErrorCode, StreamdError
from streamd.kafka import codec
from streamd.kafka.apis import api
from streamd.kafka.authz import (
    IDEMPOTENT_WRITE,
    TOPIC,
    TRANSACTIONAL_ID,
    WRITE,
    authorize,
    authorize_cluster,
)
from streamd.kafka.context import KafkaContext, Request
from streamd.kafka.services import ProducerIds

MAX_EPOCH = 32767


def _allocator(ctx: KafkaContext) -> ProducerIds:
    if ctx.producer_ids is None:
        raise StreamdError("no producer id allocator", code=ErrorCode.UNKNOWN_SERVER_ERROR)
    return ctx.producer_ids


def _failed(code: ErrorCode) -> dict[str, Any]:
    return {"error_code": code, "producer_id": -1, "producer_epoch": -1}


@api(22, "InitProducerId", 0, 5)
async def init_producer_id(req: Request) -> dict[str, Any]:
    body = req.body
    pid = getattr(body, "producer_id", -1)
    epoch = getattr(body, "producer_epoch", -1)
    if body.transactional_id is not None:
        return await _transactional(req, pid, epoch)
    if not (
        authorize_cluster(req, IDEMPOTENT_WRITE)
        or any(authorize(req, WRITE, TOPIC, name, audit=False) for name in req.ctx.logs.topics())
    ):
        return _failed(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)
    if pid >= 0 and 0 <= epoch < MAX_EPOCH:
        return {"error_code": ErrorCode.NONE, "producer_id": pid, "producer_epoch": epoch + 1}
    return {"error_code": ErrorCode.NONE, "producer_id": _allocator(req.ctx).allocate(),
            "producer_epoch": 0}


async def _transactional(req: Request, pid: int, epoch: int) -> dict[str, Any]:
    body = req.body
    if not authorize(req, WRITE, TRANSACTIONAL_ID, body.transactional_id):
        return _failed(ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    txn = req.ctx.txn
    if txn is None:
        return _failed(ErrorCode.COORDINATOR_NOT_AVAILABLE)
    if (pid == -1) != (epoch == -1):
        return _failed(ErrorCode.INVALID_REQUEST)
    expected = None if pid == -1 else (pid, epoch)
    error, new_pid, new_epoch = await txn.init_producer_id(
        body.transactional_id, codec.ms(body.transaction_timeout), expected
    )
    if error == ErrorCode.PRODUCER_FENCED and req.version < 4:
        error = ErrorCode.INVALID_PRODUCER_EPOCH
    return {"error_code": error, "producer_id": new_pid, "producer_epoch": new_epoch}
