"""One module per Kafka API family; importing this package registers every handler."""

from streamd.kafka.handlers import admin, configs, fetch, meta, produce  # noqa: F401
from streamd.kafka.handlers import producer  # noqa: F401
from streamd.kafka.handlers import groups  # noqa: F401
