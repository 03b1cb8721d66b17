"""Output batches in shared memory that DataLoader workers write in place and the main process hands on as they are.

A tensor a worker returns travels through a fresh shared-memory segment: the worker copies the batch into it
and the kernel zeroes every page on first touch, ~550 us of CPU per 224 px float32 image measured here, more
than the float work itself.  So the loader makes a few batch buffers in shared memory before the workers
start (inherited through fork, passed by handle under spawn) and lends one to each batch when the DataLoader
asks for the batch's task, in the main process: a worker writes the finished views into it and returns only
its number.  A buffer is lent again only once the main process has received its batch and nothing but this
pool references it (no tensor or view of it alive: torch's storage use count, as OutputPool does), so a
trainer that keeps a batch sees it unchanged; when none is free the worker allocates as before.
"""
from __future__ import annotations

import numpy as np

from alexnet_pipe.core.memory import aligned_empty


class SharedBatches:
    """`count` float32 buffers of `numel` elements; lend() in the main process, array() in a worker."""

    def __init__(self, count: int, numel: int, shared: bool):
        import torch
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)
        self.numel = numel
        count = count if self._use_count else 0
        self._buffers = [_shared_empty(numel) if shared else torch.empty(numel, dtype=torch.float32)
                         for _ in range(count)]
        self._storages = [b.untyped_storage() for b in self._buffers]
        self._lent: set[int] = set()

    def lend(self) -> int | None:
        """A free buffer's number, marked lent until `take_back`; None when all are in use."""
        for slot, storage in enumerate(self._storages):
            # referenced by our tensor and storage object, and nothing else
            if slot not in self._lent and self._use_count(storage._cdata) == 2:
                self._lent.add(slot)
                return slot
        return None

    def take_back(self, slot: int):
        """The main process received the batch written into `slot`: its buffer, a new tensor on the same storage."""
        self._lent.discard(slot)
        return self._buffers[slot].detach()

    def array(self, slot: int | None, numel: int) -> np.ndarray:
        """The first `numel` elements of buffer `slot` as numpy (in a worker), or a fresh array for None."""
        if slot is None:  # on a cache line, as the shared buffers are (core.memory.aligned_empty)
            return aligned_empty(numel, np.float32)
        return self._buffers[slot].numpy()[:numel]


def _shared_empty(numel: int):
    """A float32 tensor in a fresh shared-memory segment, its pages left for the kernel to supply on first touch
    (in the workers, as they write).  `share_memory_()` of a tensor copies it into a new segment: for the 7 x 38
    MB of a 2-worker loader at batch 64 that was 0.5-0.75 s in the main process before the first batch, against
    ~0.1 s here."""
    import torch
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # what torch.multiprocessing itself uses
    if new_shared is None:
        return torch.empty(numel, dtype=torch.float32).share_memory_()
    return torch.empty(0, dtype=torch.float32).set_(new_shared(numel * 4))
