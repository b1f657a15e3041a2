"""Extract the Kafka 3.9 message specs streamd needs beyond kio into streamd/kafka/legacy/.

kio is generated from Kafka 4's specs, which dropped the request versions KIP-896 retired
(Produce v0-v2, Fetch v0-v3, ...) but that Kafka 3.9 still serves; the group coordinator's
record schemas (``__consumer_offsets``) are not in kio at all. Usage, from a Kafka checkout:

    python tools/extract_kafka_specs.py /path/to/kafka 3.9 > streamd/kafka/legacy/specs.json

The output keeps each spec's structure (names, types, version ranges, defaults) and drops the
prose, so the file stays small and reviewable.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

CLIENT = "clients/src/main/resources/common/message/"
COORDINATOR = "group-coordinator/src/main/resources/common/message/"
MESSAGES = [
    CLIENT + api + kind
    for api in (
        "Produce", "Fetch", "ListOffsets", "OffsetCommit", "OffsetFetch", "CreateTopics",
        "DeleteTopics", "DescribeConfigs", "DescribeAcls", "CreateAcls", "DeleteAcls",
        "OffsetForLeaderEpoch", "DescribeLogDirs",
    )
    for kind in ("Request", "Response")
] + [COORDINATOR + name for name in (
    "OffsetCommitKey", "OffsetCommitValue", "GroupMetadataKey", "GroupMetadataValue",
)]
KEEP = ("name", "type", "versions", "nullableVersions", "default", "fields", "mapKey")
TOP = ("apiKey", "type", "name", "validVersions", "flexibleVersions")


def _field(f: dict) -> dict:
    out = {k: f[k] for k in KEEP if k in f}
    if "fields" in f:
        out["fields"] = [_field(x) for x in f["fields"]]
    return out


def main(checkout: str, ref: str) -> None:
    specs = {}
    for path in MESSAGES:
        text = subprocess.run(
            ["git", "-C", checkout, "show", f"{ref}:{path}.json"],
            check=True, capture_output=True, text=True,
        ).stdout
        raw = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))
        spec = {k: raw[k] for k in TOP if k in raw}
        spec["fields"] = [_field(f) for f in raw["fields"]]
        if "commonStructs" in raw:
            spec["commonStructs"] = [_field(s) for s in raw["commonStructs"]]
        specs[raw["name"]] = spec
    json.dump({"source": f"apache/kafka {ref}", "specs": specs}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
