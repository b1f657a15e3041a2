#!/usr/bin/env python
"""Cost of a topic's produce-time rules per batch (streamd.log.conform), not a test.

    python bench/conform.py [--records N] [--value-bytes B]

Prints microseconds per produce call for: the default topic (producer codec, no timestamp
limits: the hot path every broker runs), a topic with timestamp limits, and topics that make
the broker recompress (lz4 batch -> zstd / gzip / snappy), next to the framing check
(validate_produce_batches) and the payload copy every append already pays.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamd.log.batch import validate_produce_batches  # noqa: E402
from streamd.log.conform import check_timestamps, conform_batches  # noqa: E402
from streamd.log.topic_config import TopicConfig  # noqa: E402
from tests.unit.log.batches import build_batch  # noqa: E402


def per_call_us(fn: object, seconds: float = 0.5) -> float:
    timer = timeit.Timer(fn)  # type: ignore[arg-type]
    n, _ = timer.autorange()
    runs = max(1, int(n * seconds / 0.2))
    return min(timer.repeat(3, runs)) / runs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=150)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    records = [(b"k%d" % i, b"v" * args.value_bytes, [], 1_000 + i) for i in range(args.records)]
    payload = build_batch(records, compression="lz4")
    headers = validate_produce_batches(payload, 1 << 30)
    print(f"one lz4 batch of {args.records} records, {len(payload)} bytes")
    print(f"  payload copy            {per_call_us(lambda: bytearray(payload)):8.2f} us")
    framing = per_call_us(lambda: validate_produce_batches(payload, 1 << 30))
    print(f"  framing + CRC check     {framing:8.2f} us")
    cases = {
        "default topic": {},
        "timestamp limits": {"message.timestamp.before.max.ms": "3600000"},
        "recompress to zstd": {"compression.type": "zstd"},
        "recompress to gzip": {"compression.type": "gzip"},
        "recompress to snappy": {"compression.type": "snappy"},
    }
    for name, overrides in cases.items():
        config = TopicConfig.from_overrides({}, overrides)

        def run(config: TopicConfig = config) -> None:
            check_timestamps(headers, config, 1_500)
            conform_batches(payload, headers, config)

        print(f"  {name:<22}  {per_call_us(run):8.2f} us (copy included)")


if __name__ == "__main__":
    main()
