"""glibc malloc settings for a broker that moves megabyte-sized buffers.

Every fetch reads its record bytes into a new buffer of up to ``max.partition.fetch.bytes``
(8 MiB for many clients), and every produce request arrives in one. glibc serves allocations
above its mmap threshold (128 KiB, rising on its own to at most 32 MiB) with fresh ``mmap``
regions and trims freed memory at the top of the heap back to the kernel, so a busy broker
returns and re-faults the same megabytes over and over: each 4 KiB page costs a fault and
zeroing, and on a VM whose host backs guest memory lazily, far more (perf showed two thirds of
a consume's broker CPU in the kernel copy that takes those faults).

Raising both thresholds keeps freed buffers in the process for the next request. The process
keeps its peak working set instead of shrinking after each burst, which is what a server wants;
RSS stays bounded by the peak, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum; fixing it also stops the dynamic adjustment
TRIM_THRESHOLD = 64 << 20


def tune_allocator() -> bool:
    """Apply the thresholds when running on glibc; returns whether they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not ok:
        log.debug("mallopt refused the buffer thresholds")
    return ok
