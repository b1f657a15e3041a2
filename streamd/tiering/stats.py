"""Counters of the tiering layer, read by the Prometheus collector and the admin API.

Plain integers: every writer runs on the event loop thread.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TieringStats:
    uploaded_bytes: int = 0
    uploaded_segments: int = 0
    reuploaded_segments: int = 0
    """Compacted segments archived again in place of what the cleaner had outdated."""
    upload_errors: int = 0
    manifest_writes: int = 0
    manifest_errors: int = 0
    downloaded_bytes: int = 0
    download_errors: int = 0
    remote_reads: int = 0
    read_ahead_chunks: int = 0
    deleted_objects: int = 0
    delete_errors: int = 0
