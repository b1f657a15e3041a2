"""Cost of message format conversion (Produce v0-v2 up-conversion, Fetch v0-v3 down-conversion).

Only old clients pay it: the v2 paths never call :mod:`streamd.kafka.legacy.records`. This
measures the broker-side CPU per record and per MiB in-process (no socket, no disk), for the
shapes old clients send: batches of ``--batch`` records of ``--record-size`` bytes, plain and
gzip-compressed.

    .venv/bin/python bench/conversion.py                    # 100 x 1000-record batches
    .venv/bin/python bench/conversion.py --record-size 100 --batch 500
"""

from __future__ import annotations

import argparse
import time

from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from streamd.kafka.legacy.records import down_convert, up_convert

CODECS = {"none": 0, "gzip": 1, "lz4": 3}


def old_set(magic: int, codec: int, n: int, size: int) -> bytes:
    builder = LegacyRecordBatchBuilder(magic=magic, compression_type=codec, batch_size=1 << 30)
    for i in range(n):
        builder.append(i, timestamp=1_700_000_000_000 + i if magic else None, key=b"key-%d" % i,
                       value=b"x" * size)
    return bytes(builder.build())


def v2_batch(codec: int, n: int, size: int) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 30)
    for i in range(n):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"key-%d" % i, value=b"x" * size,
                       headers=[])
    return bytes(builder.build())


def measure(label: str, fn, payloads: list[bytes], records: int, size: int) -> None:  # noqa: ANN001
    start = time.perf_counter()
    for p in payloads:
        fn(p)
    elapsed = time.perf_counter() - start
    total = records * len(payloads)
    mib = total * size / (1 << 20)
    print(f"{label:<34} {total / elapsed / 1e3:9.0f} k records/s {mib / elapsed:8.1f} MiB/s "
          f"{elapsed / total * 1e6:6.2f} us/record")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000, help="records per batch")
    ap.add_argument("--record-size", type=int, default=1024, help="value bytes")
    args = ap.parse_args()
    n, size = args.batch, args.record_size
    print(f"{args.batches} batches x {n} records x {size} B values")
    for codec_name, codec in CODECS.items():
        for magic in (0, 1):
            if magic == 0 and codec == 3:
                continue  # magic 0 lz4 needs the KAFKA-3160 framing: not produced by clients now
            sets = [old_set(magic, codec, n, size)] * args.batches
            measure(f"up-convert magic {magic} {codec_name}", up_convert, sets, n, size)
    for codec_name, codec in CODECS.items():
        batches = [v2_batch(codec, n, size)] * args.batches
        for magic in (0, 1):
            measure(f"down-convert to magic {magic} from {codec_name}",
                    lambda b, m=magic: down_convert(b, m, 0, 1 << 30), batches, n, size)


if __name__ == "__main__":
    main()
