"""The one exception tree of streamd.

Every error streamd raises derives from :class:`StreamdError`. Errors that a Kafka client must
see carry the Kafka error code to answer with (``code``); the Kafka front maps them onto the
response field without knowing which layer raised them. The codes are plain integers so that the
log, tiering and group layers can raise them without importing the wire codec.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """The Kafka error codes streamd answers with (a subset of Kafka's table)."""

    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    INVALID_FETCH_SIZE = 4
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    MESSAGE_TOO_LARGE = 10
    OFFSET_METADATA_TOO_LARGE = 12
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    RECORD_LIST_TOO_LARGE = 18
    NOT_ENOUGH_REPLICAS = 19
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    INVALID_COMMIT_OFFSET_SIZE = 28
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    INVALID_TIMESTAMP = 32
    UNSUPPORTED_SASL_MECHANISM = 33
    ILLEGAL_SASL_STATE = 34
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_REPLICA_ASSIGNMENT = 39
    INVALID_CONFIG = 40
    NOT_CONTROLLER = 41
    INVALID_REQUEST = 42
    UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    INVALID_TXN_STATE = 48
    INVALID_PRODUCER_ID_MAPPING = 49
    INVALID_TRANSACTION_TIMEOUT = 50
    CONCURRENT_TRANSACTIONS = 51
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
    SECURITY_DISABLED = 54
    OPERATION_NOT_ATTEMPTED = 55
    KAFKA_STORAGE_ERROR = 56
    LOG_DIR_NOT_FOUND = 57
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    REASSIGNMENT_IN_PROGRESS = 60
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    FETCH_SESSION_ID_NOT_FOUND = 70
    INVALID_FETCH_SESSION_EPOCH = 71
    LISTENER_NOT_FOUND = 72
    TOPIC_DELETION_DISABLED = 73
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    UNSUPPORTED_COMPRESSION_TYPE = 76
    STALE_BROKER_EPOCH = 77
    OFFSET_NOT_AVAILABLE = 78
    MEMBER_ID_REQUIRED = 79
    PREFERRED_LEADER_NOT_AVAILABLE = 80
    GROUP_MAX_SIZE_REACHED = 81
    FENCED_INSTANCE_ID = 82
    GROUP_SUBSCRIBED_TO_TOPIC = 86
    INVALID_RECORD = 87
    UNSTABLE_OFFSET_COMMIT = 88
    PRODUCER_FENCED = 90
    UNKNOWN_TOPIC_ID = 100
    RESOURCE_NOT_FOUND = 91
    DUPLICATE_RESOURCE = 92
    UNACCEPTABLE_CREDENTIAL = 93
    INCONSISTENT_TOPIC_ID = 103
    TRANSACTIONAL_ID_NOT_FOUND = 105


class StreamdError(Exception):
    """Root of every streamd error. ``code`` is the Kafka error code a client should see."""

    code: ErrorCode = ErrorCode.UNKNOWN_SERVER_ERROR

    def __init__(self, message: str = "", *, code: ErrorCode | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if code is not None:
            self.code = code


class ConfigError(StreamdError):
    """Invalid or unknown configuration; the message names the key."""

    code = ErrorCode.INVALID_CONFIG


class CorruptMessage(StreamdError):
    code = ErrorCode.CORRUPT_MESSAGE


class MessageTooLarge(StreamdError):
    code = ErrorCode.MESSAGE_TOO_LARGE


class InvalidRecord(StreamdError):
    code = ErrorCode.INVALID_RECORD


class InvalidTimestamp(StreamdError):
    code = ErrorCode.INVALID_TIMESTAMP


class OffsetOutOfRange(StreamdError):
    code = ErrorCode.OFFSET_OUT_OF_RANGE


class UnknownTopicOrPartition(StreamdError):
    code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


class InvalidTopic(StreamdError):
    code = ErrorCode.INVALID_TOPIC_EXCEPTION


class TopicAlreadyExists(StreamdError):
    code = ErrorCode.TOPIC_ALREADY_EXISTS


class InvalidPartitions(StreamdError):
    code = ErrorCode.INVALID_PARTITIONS


class PolicyViolation(StreamdError):
    """A request the broker refuses by policy (a limit), not because it is malformed."""

    code = ErrorCode.POLICY_VIOLATION


class InvalidConfig(StreamdError):
    code = ErrorCode.INVALID_CONFIG


class InvalidRequest(StreamdError):
    code = ErrorCode.INVALID_REQUEST


class StorageError(StreamdError):
    """Local disk failure (I/O error, unreadable file)."""

    code = ErrorCode.KAFKA_STORAGE_ERROR


class RemoteStorageError(StreamdError):
    """The object store failed or returned data that does not verify."""

    code = ErrorCode.KAFKA_STORAGE_ERROR
