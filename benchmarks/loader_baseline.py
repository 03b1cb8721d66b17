"""The baseline `alexnet-pipe bench loader` compares against: a plain torch DataLoader.

Two workers (the issue's baseline), each opening the shards itself, decoding with PIL and doing the
same work as the pipeline with numpy: a random crop, a flip with p = 0.5, the mean image cropped at
the same offset and subtracted, the cuda-convnet2 PCA lighting, HWC -> CHW float32; the default
collate stacks the batch.  Written the obvious way on purpose: it is what the pipeline must beat.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np


class BaselineDataset:
    def __init__(self, data: Path, split: str = "train", crop: int = 224, sigma: float = 0.1):
        import lmdb
        from alexnet_pipe.shards import Datum, shard_dirs
        self.Datum = Datum
        self.dirs = [str(d) for d in shard_dirs(Path(data), split)]
        self.items = []
        for shard, path in enumerate(self.dirs):
            env = lmdb.open(path, readonly=True, lock=False, readahead=False)
            with env.begin() as txn:
                self.items += [(shard, key) for key in txn.cursor().iternext(values=False)]
            env.close()  # each worker opens its own (LMDB handles must not cross fork)
        self.mean = np.load(Path(data) / "stats" / "mean.npy").astype(np.float32)
        pca = json.loads((Path(data) / "stats" / "pca.json").read_text())
        self.eigval, self.eigvec = np.array(pca["eigval"]), np.array(pca["eigvec"])
        self.crop, self.sigma, self.envs = crop, sigma, None

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import lmdb
        from PIL import Image
        if self.envs is None:
            self.envs = [lmdb.open(p, readonly=True, lock=False, readahead=False) for p in self.dirs]
        shard, key = self.items[i]
        with self.envs[shard].begin() as txn:
            datum = self.Datum.from_bytes(txn.get(key))
        if datum.encoded:
            image = np.asarray(Image.open(io.BytesIO(datum.data)).convert("RGB"))
        else:
            image = np.frombuffer(datum.data, np.uint8).reshape(datum.height, datum.width, 3)
        size, c = image.shape[0], self.crop
        x, y = np.random.randint(0, size - c + 1, 2)
        out = image[y:y + c, x:x + c].astype(np.float32) - self.mean[y:y + c, x:x + c]
        out += self.eigvec @ (np.random.normal(0, self.sigma, 3) * np.sqrt(self.eigval))
        if np.random.rand() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out.transpose(2, 0, 1)), datum.label


def baseline_rate(data: Path, *, batch_size: int, batches: int, warmup: int, crop: int = 224,
                  workers: int = 2) -> float:
    """Images/s of the baseline over `batches` batches after `warmup` (epochs repeat as needed)."""
    import torch
    from torch.utils.data import DataLoader
    dataset = BaselineDataset(data, crop=crop)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        drop_last=False, persistent_workers=workers > 0)
    seen, start, done = 0, None, 0
    while done < warmup + batches:
        for images, _labels in loader:
            done += 1
            if done == warmup:
                start = time.perf_counter()
            elif done > warmup:
                seen += len(images)
            if done == warmup + batches:
                break
    if start is None:  # warmup == 0
        raise ValueError("warmup must be at least 1")
    return seen / (time.perf_counter() - start)
