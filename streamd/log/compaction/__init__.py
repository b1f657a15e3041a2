"""Log compaction (``cleanup.policy=compact``): keep the latest record per key.

One module per idea, in the order a pass uses them:

- :mod:`.plan` decides which partition is due and which offsets are cleanable (dirty ratio,
  compaction lags, delete horizons) and groups segments;
- :mod:`.worker` runs a pass in the cleaner process: :mod:`.keymap` (bounded key -> offset
  map) is built over the dirty section, then :mod:`.filter` (with :mod:`.txn` for transactions
  and :mod:`.records` for the record-level codec) rewrites each group into ``.cleaned`` files;
- :mod:`.swap` commits each cleaned group atomically and recovers swaps after a crash;
- :mod:`.cleaner` is the broker side: it schedules passes, talks to the process and swaps the
  cleaned segments into the live partition.

The produce-side rule (a compacted topic refuses records without a key) lives in
:func:`.records.first_keyless_record`, called by the partition for compacted topics only.
"""
