"""glibc's allocator tuned for PyTorch on the CPU: freed memory is kept for the next step, not handed back.

By default glibc returns freed memory above 128 KB to the operating system and maps it again on the next
allocation, so every training step page-faults its activations back in: on this 2-core machine that made
EfficientNet-Lite0 training five times slower (bench/bench_networks.py: 1,004 against 205 s per epoch).
`tune_malloc` raises the trim and mmap thresholds and keeps a 1 GiB top pad. Linux with glibc only; elsewhere
it does nothing. It changes how the whole process allocates, so it is called where emodetect owns the
process's work (training, the command line), never on import.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc); True if the settings took effect."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(opt, ctypes.c_int(value)) == 1 for opt, value in (
            (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 1 << 30), (_M_MMAP_THRESHOLD, 1 << 30)))  # fmt: skip
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    _done = ok
    return ok
