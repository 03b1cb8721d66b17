"""Memory a command is about to take, checked against what the machine has before it is taken.

Linux grants a large allocation and kills the process (SIGKILL, no message at all) only when the pages are
touched: a model a thousand times too large for the machine ended as "Killed", or took the machine down with it.
Where the size is known in advance (a model's weights), it is compared with the memory available first.
"""
from __future__ import annotations

from alexnet_pipe.core.errors import UserError


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping); None where there is none."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(needed: int, what: str, hint: str) -> None:
    """One sentence where `needed` bytes (for `what`) exceed the memory available now."""
    available = available_bytes()
    if available is not None and needed > available:
        raise UserError(f"{what} needs {needed / 2**30:.3g} GiB of memory but {available / 2**30:.3g} GiB are "
                        f"available here: {hint}")


CACHE_LINE = 64


def aligned_empty(shape, dtype, align: int = CACHE_LINE):
    """np.empty whose data starts on an `align`-byte boundary.

    malloc (hence np.empty) promises 16 bytes.  A scratch buffer of the loader's hot path at 16 mod 32 made
    OpenCV's split into it ~10x slower and the compiled pass reading it up to ~2x (docs/performance.md), so
    whether a DataLoader worker was fast depended on where its allocator happened to put the buffer."""
    import numpy as np
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)
