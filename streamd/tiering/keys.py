"""Object keys: the one place that names what streamd stores in the bucket.

Layout (all keys relative to the store root, i.e. under the ``s3://bucket/prefix``)::

    <h>/<topic>/<topic_id>/<partition>/<base:020d>-<last:020d>-<inc>.log     segment bytes
    <h>/<topic>/<topic_id>/<partition>/<base:020d>-<last:020d>-<inc>.index   its index object
    <h>/<topic>/<topic_id>/<partition>/<base:020d>-<last:020d>-<inc>.txnindex  its aborted
                                                                     transactions (if any)
    <h>/<topic>/<topic_id>/<partition>/manifest.json                  partition manifest
    <t>/<topic>/<topic_id>/topic.json                                 topic manifest
    cluster/metadata.json                                             topics, configs, ACLs, users
    cluster/offsets.json                                              committed group offsets
    cluster/<name>                                                    other cluster-wide documents

``<h>`` is the first 8 hex digits of SHA-256 over ``"<topic>/<topic_id>/<partition>"`` and ``<t>``
the same over ``"<topic>/<topic_id>"``: partitions of one topic land under different prefixes so
a real S3 bucket does not hot-spot one prefix, yet every key is computable from
(topic, topic id, partition, offsets, incarnation) alone, without listing. Keys are deterministic:
a retried upload of the same segment writes the same key (invariant 3). The topic id is part of
the path so that a topic deleted and re-created under the same name never mixes objects.

``<inc>`` is the *incarnation* of the partition's archived history (invariant 9): a short random
token kept in the partition manifest, drawn anew whenever a history starts that may diverge from
what the bucket holds (a partition archived for the first time, a restore, a partition whose
manifest was lost). Two incarnations that assign the same offsets to different records therefore
never name the same object, and uploads are conditional (``If-None-Match: *``) besides, so an
object in the bucket is never replaced by different bytes. Archives written before incarnations
existed have keys without ``-<inc>``; their manifests name them, so they stay readable.
Manifests and cluster documents are the mutable roots of the archive: they are replaced whole
(an atomic PUT) and never named by another object.

Topic names are validated with Kafka's rules (invariant 8) and topic ids must be a UUID or a
base64url/hex token, so no key component can be ``..``, empty, or contain ``/``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid

from streamd.errors import InvalidTopic

CLUSTER_PREFIX = "cluster/"
CLUSTER_METADATA_KEY = "cluster/metadata.json"
CLUSTER_OFFSETS_KEY = "cluster/offsets.json"
PARTITION_MANIFEST_NAME = "manifest.json"
TOPIC_MANIFEST_NAME = "topic.json"
SEGMENT_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TXN_INDEX_SUFFIX = ".txnindex"

_TOPIC_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_TOPIC_ID_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_CLUSTER_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,128}")
_SEGMENT_NAME_RE = re.compile(r"(\d{20})-(\d{20})(?:-([0-9a-f]{1,16}))?\.log")
_INCARNATION_RE = re.compile(r"[0-9a-f]{1,16}")


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it satisfies Kafka's naming rules, else raise :class:`InvalidTopic`."""
    if not isinstance(topic, str) or not _TOPIC_RE.fullmatch(topic) or topic in (".", ".."):
        raise InvalidTopic(
            f"invalid topic name {topic!r}: use 1-249 characters of [a-zA-Z0-9._-], not '.' or '..'"
        )
    return topic


def topic_id_text(topic_id: str | uuid.UUID) -> str:
    """Key form of a topic id: a UUID in canonical form, or a base64url/hex token as given."""
    if isinstance(topic_id, uuid.UUID):
        return str(topic_id)
    if not isinstance(topic_id, str) or not _TOPIC_ID_RE.fullmatch(topic_id):
        raise ValueError(f"invalid topic id {topic_id!r}")
    return topic_id


def _check_partition(partition: int) -> int:
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError(f"invalid partition {partition!r}")
    return partition


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def topic_prefix(topic: str, topic_id: str | uuid.UUID) -> str:
    """``<t>/<topic>/<topic_id>/``: the topic manifest lives here (partitions live elsewhere)."""
    tid = topic_id_text(topic_id)
    validate_topic(topic)
    return f"{_hash8(f'{topic}/{tid}')}/{topic}/{tid}/"


def partition_prefix(topic: str, topic_id: str | uuid.UUID, partition: int) -> str:
    """``<h>/<topic>/<topic_id>/<partition>/``: every object of one partition."""
    tid = topic_id_text(topic_id)
    validate_topic(topic)
    _check_partition(partition)
    return f"{_hash8(f'{topic}/{tid}/{partition}')}/{topic}/{tid}/{partition}/"


def topic_manifest_key(topic: str, topic_id: str | uuid.UUID) -> str:
    return topic_prefix(topic, topic_id) + TOPIC_MANIFEST_NAME


def partition_manifest_key(topic: str, topic_id: str | uuid.UUID, partition: int) -> str:
    return partition_prefix(topic, topic_id, partition) + PARTITION_MANIFEST_NAME


def new_incarnation() -> str:
    """A fresh incarnation token (8 hex digits)."""
    return secrets.token_hex(4)


def segment_key(
    topic: str,
    topic_id: str | uuid.UUID,
    partition: int,
    base_offset: int,
    last_offset: int,
    *,
    incarnation: str,
) -> str:
    """The segment object of offsets ``base_offset..last_offset`` written by ``incarnation``
    (``""``: the layout of archives written before incarnations existed)."""
    return (
        partition_prefix(topic, topic_id, partition)
        + _segment_stem(base_offset, last_offset, incarnation)
        + SEGMENT_SUFFIX
    )


def segment_index_key(
    topic: str,
    topic_id: str | uuid.UUID,
    partition: int,
    base_offset: int,
    last_offset: int,
    *,
    incarnation: str,
) -> str:
    return (
        partition_prefix(topic, topic_id, partition)
        + _segment_stem(base_offset, last_offset, incarnation)
        + INDEX_SUFFIX
    )


def txn_index_key(segment_key: str) -> str:
    """The aborted-transaction index object of the segment object ``segment_key``."""
    if not segment_key.endswith(SEGMENT_SUFFIX):
        raise ValueError(f"not a segment object key: {segment_key!r}")
    return segment_key[: -len(SEGMENT_SUFFIX)] + TXN_INDEX_SUFFIX


def parse_segment_name(key: str) -> tuple[int, int] | None:
    """``(base_offset, last_offset)`` of a segment object key, or ``None`` for other keys."""
    match = _SEGMENT_NAME_RE.fullmatch(key.rsplit("/", 1)[-1])
    return (int(match[1]), int(match[2])) if match else None


def validate_incarnation(incarnation: str) -> str:
    if incarnation and not (
        isinstance(incarnation, str) and _INCARNATION_RE.fullmatch(incarnation)
    ):
        raise ValueError(f"invalid incarnation {incarnation!r}: 1-16 lower-case hex digits")
    return incarnation


def cluster_key(name: str) -> str:
    """``cluster/<name>`` for a cluster-wide document (metadata, offsets, ...)."""
    if not _CLUSTER_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"invalid cluster document name {name!r}")
    return CLUSTER_PREFIX + name


def _segment_stem(base_offset: int, last_offset: int, incarnation: str) -> str:
    if base_offset < 0 or last_offset < base_offset:
        raise ValueError(f"invalid segment offsets {base_offset}-{last_offset}")
    validate_incarnation(incarnation)
    suffix = f"-{incarnation}" if incarnation else ""
    return f"{base_offset:020d}-{last_offset:020d}{suffix}"
