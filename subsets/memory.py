"""Keep freed memory in the process, for the CLI's big one-shot builds.

Building 14M-row manifests allocates and frees many arrays of 100+ MB. glibc returns
each such block to the kernel on free (mmap'd blocks, heap trimming) and the next one
page-faults in afresh; on a VM every fault is expensive (a third of the wall time of an
IN-22K build went to them). Raising the mmap and trim thresholds keeps freed blocks in
the heap for reuse. It is a process-wide setting, so only the CLI calls it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>


def keep_freed_memory() -> bool:
    """Tell glibc malloc to reuse freed memory rather than return it; False if not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    logger.debug("mallopt thresholds raised: %s", ok)
    return ok
