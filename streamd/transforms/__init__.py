"""Data transforms: user Python code applied to a topic's records, live and over its history.

A deployment (``streamd transform deploy``) names a Python file defining ``transform(record)``
(see :mod:`streamd.transform`, the only module transform code imports), an input topic and
output topics. The broker runs it in a worker process it supervises; the worker is a Kafka
client of the broker, so a deployment ``--from earliest`` on a tiered topic replays the
archive through the same remote reader and cache as any consumer, then follows live data.
Output and input progress are committed in one Kafka transaction: exactly once.

Modules, broker side first:

- :mod:`~streamd.transforms.api`: the admin API routes (``/v1/transforms``), HTTP-agnostic;
- :mod:`~streamd.transforms.supervisor`: deployments, worker processes, restarts, status;
- :mod:`~streamd.transforms.store`: deployments on disk and in the cluster metadata archive;
- :mod:`~streamd.transforms.spec`: a deployment and its validation;

and inside the worker process:

- :mod:`~streamd.transforms.worker`: the process: the fetch loop, positions, reporting;
- :mod:`~streamd.transforms.session`: its produce connection, transactions, commit thread;
- :mod:`~streamd.transforms.process`: its status pipe, watchdog, log and limits;
- :mod:`~streamd.transforms.runtime`: records in, ``transform()``, output batches out;
- :mod:`~streamd.transforms.partitioner`: Kafka's murmur2 partitioner;
- :mod:`~streamd.transforms.wire`: a blocking Kafka connection (kio).

This package talks to the rest of the broker only through the Kafka protocol and the small
:class:`~streamd.transforms.supervisor.BrokerSide` protocol the broker implements; it imports
none of the log, tiering, group, security or Kafka-front packages (import-linter checks it).
"""
