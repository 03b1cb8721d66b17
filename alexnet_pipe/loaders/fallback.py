"""The torch fallback loader (``--loader torch``): DataLoader workers over the same shards.

For machines without DALI.  It takes the same per-epoch plan as the DALI loader
(``augment.train_plan``: permutation, offsets, flips, alphas from (seed, epoch) alone).  Each
worker decodes with OpenCV (one thread per worker: the workers are the parallelism) and cuts the
flipped uint8 crop window (``augment.flipped_window``; a random-resized window is resized to the crop
by ``augment.resized_window``, the reference itself); the main process then does the float work
with the DALI loader's own ``TorchNormalizer`` (mean window, lighting, std, NCHW) on the batch's
device, so the two loaders give the same numbers.  uint8 crops also cross the worker pipe at a
quarter of the float size.  The batch sampler hands each worker self-contained per-sample specs,
so a worker needs no epoch state.  With device "cuda" the uint8 batch is pinned, copied to the
rank's GPU and normalised there (decoding stays on the CPU workers).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders.base import BaseLoader, LoaderSettings, cuda_device_id
from alexnet_pipe.loaders.records import RecordIndex, decode_rgb, release_shards


def _quiet_opencv_pool() -> None:
    """Stop OpenCV's thread pool in this process before DataLoader forks its workers: a pool that earlier work
    here started (sample-data's drawing in the demo, say) is inherited without its threads, and the worker's first
    OpenCV call then waits forever on it (seen: `demo` on a machine without DALI hung at evaluate)."""
    import cv2
    cv2.setNumThreads(1)


def _init_worker(_worker_id: int) -> None:
    import cv2
    cv2.setNumThreads(1)


class ViewDataset:
    """Map-style dataset whose 'indices' are specs: (record, x, y, w, h, flip) or (record,) for ten-crop;
    items are uint8 HWC flipped windows ((10, c, c, 3) for ten-crop) and the label.  A window of the
    crop's size is cut out; any other is resized to it (random-resized crops, `augment.resized_window`)."""

    def __init__(self, index: RecordIndex, crop: int, ten_crop: bool):
        self.index, self.crop, self.ten_crop = index, crop, ten_crop

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, spec) -> tuple[np.ndarray, int]:
        datum = self.index.read(spec[0])
        image = decode_rgb(datum, self.index, spec[0])
        if self.ten_crop:
            return augment.ten_windows(image, self.crop), datum.label
        _, x, y, w, h, flip = spec
        if w == h == self.crop:
            return augment.flipped_window(image, x, y, self.crop, flip), datum.label
        return augment.resized_window(image, (x, y, w, h), self.crop, flip), datum.label


def _named_failures(loader, owner: "TorchLoader", steps: list[dict]):
    """The DataLoader's batches; a worker's failure (re-raised by torch as a RuntimeError carrying a traceback)
    becomes the damaged record's own sentence, found again here in the main process."""
    batches = iter(loader)
    for k in range(len(steps)):
        try:
            yield next(batches)
        except RuntimeError:
            owner.raise_damaged(steps[k:k + 1])
            raise


def _collate(items):
    import torch
    images = torch.from_numpy(np.stack([im for im, _ in items]))
    return images, torch.tensor([label for _, label in items], dtype=torch.int64)


class TorchLoader(BaseLoader):
    def __init__(self, settings: LoaderSettings):
        super().__init__(settings)
        device_id = cuda_device_id(settings)
        self.device = "cpu" if device_id is None else f"cuda:{device_id}"
        self.dataset = ViewDataset(self.index, settings.crop, self.ten_crop)

    def _specs(self, params: dict) -> list[tuple]:
        if self.ten_crop:
            return [(int(i),) for i in params["index"]]
        return [(int(i), *map(int, window), bool(f)) for i, window, f in
                zip(params["index"], params["window"], params["flip"])]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple]:
        from torch.utils.data import DataLoader
        steps = self.step_params(epoch, start_step)
        if not steps:
            return
        workers = self.settings.num_threads
        if workers:
            _quiet_opencv_pool()
        loader = DataLoader(self.dataset, batch_sampler=[self._specs(p) for p in steps],
                            num_workers=workers, collate_fn=_collate,
                            worker_init_fn=_init_worker if workers else None,
                            pin_memory=self.device != "cpu", prefetch_factor=4 if workers else None)
        try:
            for (images, labels), params in zip(_named_failures(loader, self, steps), steps):
                if self.device != "cpu":
                    images = images.to(self.device, non_blocking=True)
                    labels = labels.to(self.device, non_blocking=True)
                yield self.finish(self.normalize(images, params), labels, params)
        finally:
            del loader  # shuts the workers down now, not at garbage collection
            release_shards()  # only workers read; nothing is open here unless num_threads == 0
