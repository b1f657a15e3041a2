"""Partition logs on local disk: segments, indexes, batch headers, recovery, retention.

This layer knows nothing of Kafka requests: it sees record batches as bytes plus a parsed v2
header. Entry point: :class:`LogManager` (topics) and :class:`PartitionLog` (one partition).
"""

from streamd.log.batch import BatchHeader, parse_header, validate_produce_batches
from streamd.log.fsync import FsyncPolicy
from streamd.log.manager import LogManager, Topic
from streamd.log.names import validate_topic_name
from streamd.log.partition import AppendResult, PartitionLog
from streamd.log.segment import FileSlice, Segment
from streamd.log.topic_config import TOPIC_CONFIG_KEYS, ConfigKey, TopicConfig

__all__ = [
    "TOPIC_CONFIG_KEYS",
    "AppendResult",
    "BatchHeader",
    "ConfigKey",
    "FileSlice",
    "FsyncPolicy",
    "LogManager",
    "PartitionLog",
    "Segment",
    "Topic",
    "TopicConfig",
    "parse_header",
    "validate_produce_batches",
    "validate_topic_name",
]
