"""Kafka transactions (KIP-98, KIP-360, KIP-447, KIP-588) on one broker.

- :mod:`streamd.txn.model`: transaction metadata values and states.
- :mod:`streamd.txn.coordinator`: the coordinator as a sans-IO state machine (no sockets, no
  clock, no disk): requests in, transitions to make durable out.
- :mod:`streamd.txn.state_log`: the fsynced, CRC-framed log of transitions that survives kill -9.
- :mod:`streamd.txn.service`: the asyncio edge: persistence, markers, timeouts, expiration.

The partitions' side (markers, last stable offset, aborted-transaction index) lives in the log
layer; group offsets committed in a transaction are applied through the group service. Both are
reached through the protocols in :mod:`streamd.txn.service`, wired by the broker.
"""
