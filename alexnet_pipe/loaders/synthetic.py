"""`--loader synthetic`: the loader protocol on fixed tensors, no data dir (benchmarks, tests, `bench train`).

It lives with the loaders (not in bench_train.py) because the trainer builds it too, and bench_train sits above
the trainer.
"""
from __future__ import annotations


class SyntheticLoader:
    """The loader protocol on fixed tensors: for benchmarks and tests, no data dir.

    A pool of `pool` global batches is made once (class c = a fixed colour + noise, so a model can learn
    it); step s of epoch e serves pool[(e * steps + s) % pool], rank r taking rows [r*b, (r+1)*b).
    """

    def __init__(self, batch_size: int, crop: int, num_classes: int = 10, steps_per_epoch: int = 8,
                 rank: int = 0, world_size: int = 1, seed: int = 0, device="cpu", channels_last=False, pool=4):
        import torch
        protos = torch.randn(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(1234))
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(num_classes, (pool, batch_size * world_size), generator=g)
        images = protos[labels] + torch.randn(*labels.shape, 3, crop, crop, generator=g)
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.batches = [(images[k, rows].to(device, memory_format=fmt), labels[k, rows].to(device))
                        for k in range(pool)]
        self.steps_per_epoch, self.num_classes = steps_per_epoch, num_classes
        self.images_per_epoch = steps_per_epoch * batch_size * world_size

    def epoch(self, epoch: int, start_step: int = 0):
        for step in range(start_step, self.steps_per_epoch):
            yield self.batches[(epoch * self.steps_per_epoch + step) % len(self.batches)]

    def close(self) -> None:
        self.batches = []
