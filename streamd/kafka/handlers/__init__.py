"""One module per Kafka API family; importing this package registers every handler."""

from streamd.kafka.handlers import (  # noqa: F401  # noqa: F401  (security)
    acls,
    admin,
    configs,
    fetch,
    groups,  # noqa: F401
    logdirs,
    meta,
    produce,
    producer,  # noqa: F401
    sasl,
    scram,
    txn,
)
