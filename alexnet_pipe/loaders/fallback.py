"""The torch fallback loader (``--loader torch``): DataLoader workers over the same shards.

For machines without DALI.  It takes the same per-epoch plan as the DALI loader
(``augment.train_plan``: permutation, offsets, flips, alphas from (seed, epoch) alone).  Each
worker decodes with OpenCV (one thread per worker: the workers are the parallelism) and cuts the
flipped uint8 crop window (``augment.flipped_window``; a random-resized window is resized to the crop
by ``augment.resized_window``, the reference itself).  Each task hands a worker self-contained
per-sample parameters, so a worker needs no epoch state.  A training view's record is decoded only in the
rows of its window where the record has a restart marker per MCU row (prepare's JPEGs: shards.strips; ~0.73 of a
random-resized crop's record, bit for bit the whole decode's pixels), else whole.

On the CPU the worker also does the float work (colour jitter, mean window, lighting, std) with numpy
and OpenCV (finish_cpu.ViewFinisher: without jitter, the same float32 operations as the DALI loader's
TorchNormalizer, so the two loaders give the same numbers) straight into a shared-memory batch
buffer (slots.py), and the main process hands the buffer on: it does no per-image work, which is what
lets the loader grow with the number of workers.  On the CPU one DataLoader serves every epoch and its
workers persist (forked once per loader: starting them at each epoch cost a stall of ~100 ms per epoch
here, and spawn or forkserver workers take 5-9 s to start, each importing torch): an epoch left early has
the batches already asked for drained before the next epoch lends their buffers again.  With device "cuda"
the workers send uint8 crops (a quarter of the float size), pinned and copied to the rank's GPU, and
TorchNormalizer does the float work there, batched (a DataLoader per epoch, as before).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.workers import forking
from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders.base import BaseLoader, LoaderSettings, cuda_device_id
from alexnet_pipe.loaders.finish_cpu import ViewFinisher
from alexnet_pipe.loaders.records import RecordIndex, decode_rgb, release_shards
from alexnet_pipe.loaders.slots import SharedBatches


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
        if self.ten_crop:
            return augment.ten_windows(decode_rgb(datum, self.index, spec[0]), self.crop), datum.label
        i, x, y, w, h, flip = spec
        rows, top = self.index.rows(datum, i, y, y + h)  # the window's rows decoded, not the whole image
        return augment.cut_window(rows, (x, y - top, w, h), self.crop, flip), datum.label


class FinishedBatches:
    """Map-style dataset whose items are whole batches, finished (CPU): a task is (slot, the step's parameters);
    the views are written as float32 into SharedBatches buffer `slot` (a fresh array when None), laid out as
    the batch ((B, 3, c, c); (B, c, c, 3) memory when channels_last; ten-crop (B * 10, 3, c, c)).
    Returns (slot or the array as a tensor, int64 labels)."""

    KEYS = ("index", "window", "flip", "crop_x", "crop_y", "light", "jitter", "jitter_order")

    def __init__(self, index: RecordIndex, finisher: ViewFinisher, crop: int, ten_crop: bool, slots: SharedBatches):
        self.index, self.finisher, self.crop, self.ten_crop, self.slots = index, finisher, crop, ten_crop, slots

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, task) -> tuple:
        slot, p = task
        n, c = len(p["index"]), self.crop
        views = 10 if self.ten_crop else 1
        shape = (n * views, c, c, 3) if self.finisher.channels_last else (n * views, 3, c, c)
        out = self.slots.array(slot, n * views * 3 * c * c).reshape(shape)
        labels = np.empty(n, np.int64)
        for k, i in enumerate(p["index"].tolist()):
            datum = self.index.read(i)
            labels[k] = datum.label
            if self.ten_crop:
                self._ten(decode_rgb(datum, self.index, i), out[k * 10:(k + 1) * 10])
            else:
                self._view(datum, i, out[k], p, k)
        if slot is None:
            import torch
            return torch.from_numpy(out), labels
        return slot, labels

    def _view(self, datum, i: int, out: np.ndarray, p: dict, k: int) -> None:
        """Sample k's training (or centre) view: its window's rows decoded (not the whole image), the window cut,
        or resized to the crop, mirrored, finished."""
        jitter = (p["jitter"][k], p["jitter_order"][k]) if "jitter" in p else None
        x, y, w, h = p["window"][k].tolist()
        rows, top = self.index.rows(datum, i, y, y + h)
        self.finisher.view(rows, (x, y - top, w, h), bool(p["flip"][k]), out, int(p["crop_x"][k]),
                           int(p["crop_y"][k]), p["light"][k], jitter)

    def _ten(self, image: np.ndarray, out: np.ndarray) -> None:
        c = self.crop
        offsets, flips = augment.ten_crop_offsets(image.shape[0], c)
        for v, ((x, y), flip) in enumerate(zip(offsets.tolist(), flips.tolist())):
            self.finisher.view(image, (x, y, c, c), flip, out[v], x, y, _NO_LIGHT)


_NO_LIGHT = np.zeros(3, np.float32)


class _Tasks:
    """The DataLoader's sampler (CPU): each step's task, made when the DataLoader asks for it, in the main
    process, so that the buffer lent to it is one that is free at that moment.  One sampler serves every epoch
    of a DataLoader whose workers persist: `start` gives it the epoch's steps, `stop` ends the tasks early (an
    abandoned epoch: the DataLoader then returns the batches already asked for, and stops)."""

    def __init__(self, slots: SharedBatches):
        self.steps, self.slots, self.stopped = [], slots, False

    def start(self, steps: list[dict]) -> None:
        self.steps, self.stopped = steps, False

    def stop(self) -> None:
        self.stopped = True

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        for p in self.steps:
            if self.stopped:
                return
            yield self.slots.lend(), {k: p[k] for k in FinishedBatches.KEYS if k in p}


def _as_is(item):
    return item


def _named_failures(batches, owner: "TorchLoader", steps: list[dict], current=lambda: True):
    """The DataLoader's batches; a worker's failure (re-raised by torch as a RuntimeError carrying a traceback)
    becomes the damaged record's own sentence, found again here in the main process.  `current()` false: a
    later epoch of the same workers began meanwhile, and the batches that come now are its own."""
    for k in range(len(steps)):
        if not current():
            raise UserError("a later epoch of this loader began while this one was still open; this one ended there")
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
    # batches in flight per worker: uint8 crops for the GPU; float32 batches (4x the bytes) on the CPU, where
    # torch's default of 2 keeps the shared buffers (workers x 2 + 3 batches) within reason
    PREFETCH_GPU, PREFETCH_CPU = 4, 2

    def __init__(self, settings: LoaderSettings):
        super().__init__(settings)
        device_id = cuda_device_id(settings)
        self.device = "cpu" if device_id is None else f"cuda:{device_id}"
        self.dataset = ViewDataset(self.index, settings.crop, self.ten_crop)
        self._slots: SharedBatches | None = None  # made before the first CPU epoch's workers start
        self._cpu: tuple | None = None  # (DataLoader, _Tasks) on the CPU, kept with its workers across epochs
        self._unfinished = None  # the open epoch's batch iterator: drained before the next epoch's
        self._serial = 0  # epochs begun on the CPU workers

    def _specs(self, params: dict) -> list[tuple]:
        if self.ten_crop:
            return [(int(i),) for i in params["index"]]
        return [(int(i), *map(int, window), bool(f)) for i, window, f in
                zip(params["index"], params["window"], params["flip"])]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple]:
        steps = self.step_params(epoch, start_step)
        if not steps:
            return
        yield from self._cpu_epoch(steps) if self.device == "cpu" else self._gpu_epoch(steps)

    def close(self) -> None:
        self._stop_workers()
        super().close()

    # --- the CPU: one DataLoader whose workers persist across epochs ---------------------------------------

    def _cpu_epoch(self, steps: list[dict]) -> Iterator[tuple]:
        batches = self._cpu_batches(steps)
        serial = self._serial
        current = lambda: serial == self._serial  # noqa: E731
        try:
            for item, params in zip(_named_failures(batches, self, steps, current), steps):
                yield self._cpu_batch(*item, params)
                del item
        except GeneratorExit:  # left mid-epoch: the tasks in flight are drained when the next epoch starts
            raise
        except BaseException:
            if current():
                self._stop_workers()
            raise
        else:
            if current():
                self._unfinished = None
        finally:
            release_shards()  # only workers read; nothing is open here unless num_threads == 0 or a record failed

    def _cpu_batches(self, steps: list[dict]):
        """The epoch's batch iterator: the same workers as the last epoch's, once the tasks that epoch left behind
        have come back (they write into lent buffers that this epoch must not lend again before)."""
        self._drain()
        if self._cpu is None:
            self._cpu = self._cpu_loader(self.settings.num_threads)
        loader, tasks = self._cpu
        tasks.start(steps)
        self._serial += 1
        with forking():  # the first epoch forks the persistent workers (forking() only freezes: no cost for the rest)
            self._unfinished = iter(loader)  # until the epoch ends
        return self._unfinished

    def _drain(self) -> None:
        batches, self._unfinished = self._unfinished, None
        if batches is None:
            return
        self._cpu[1].stop()  # no task asked for since the epoch was left: ask for none now
        try:
            for images, _labels in batches:  # the sampler is stopped: these are the batches in flight, then the end
                if isinstance(images, int):
                    self._slots.take_back(images)
        except RuntimeError:  # a damaged record in a batch nobody asked for: start afresh, the next epoch will say
            self._stop_workers()

    def _stop_workers(self) -> None:
        """Shut the workers down now (not at garbage collection).  Their buffers go with them: a task lent one may
        still be writing into it, and the next workers get new ones (a failure or close(): rare)."""
        cpu, self._cpu, self._unfinished, self._slots = self._cpu, None, None, None
        iterator = getattr(cpu[0], "_iterator", None) if cpu else None  # the persistent workers' iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def _cpu_loader(self, workers: int) -> tuple:
        from torch.utils.data import DataLoader
        s = self.settings
        if workers:
            _quiet_opencv_pool()
        if self._slots is None:
            views = 10 if self.ten_crop else 1
            self._slots = SharedBatches(workers * self.PREFETCH_CPU + 3, self.layout.max_batch * views * 3 * s.crop ** 2,
                                        shared=workers > 0)
        finisher = ViewFinisher(self.norm, self.index.size, s.crop, s.channels_last and not self.ten_crop,
                                compiled=True)
        dataset = FinishedBatches(self.index, finisher, s.crop, self.ten_crop, self._slots)
        tasks = _Tasks(self._slots)
        return DataLoader(dataset, batch_size=None, sampler=tasks, num_workers=workers,
                          collate_fn=_as_is, worker_init_fn=_init_worker if workers else None,
                          prefetch_factor=self.PREFETCH_CPU if workers else None,
                          persistent_workers=workers > 0), tasks

    def _cpu_batch(self, images, labels: np.ndarray, params: dict):
        import torch
        if isinstance(images, int):
            images = self._slots.take_back(images)
        n, c = len(labels), self.settings.crop
        flat = images.reshape(-1)
        if self.ten_crop:
            images = flat[:n * 10 * 3 * c * c].view(n, 10, 3, c, c)
        elif self.settings.channels_last:
            images = flat[:n * c * c * 3].view(n, c, c, 3).permute(0, 3, 1, 2)
        else:
            images = flat[:n * 3 * c * c].view(n, 3, c, c)
        return self.finish(images, torch.from_numpy(labels), params)

    # --- the GPU: a DataLoader per epoch, uint8 crops pinned for the copy ------------------------------------

    def _gpu_epoch(self, steps: list[dict]) -> Iterator[tuple]:
        loader = self._gpu_loader(steps, self.settings.num_threads)
        with forking():
            batches = iter(loader)
        try:
            for item, params in zip(_named_failures(batches, self, steps), steps):
                yield self._gpu_batch(*item, params)
                del item
        finally:
            del loader, batches  # shuts the workers down now, not at garbage collection
            release_shards()

    def _gpu_loader(self, steps: list[dict], workers: int):
        from torch.utils.data import DataLoader
        if workers:
            _quiet_opencv_pool()
        return DataLoader(self.dataset, batch_sampler=[self._specs(p) for p in steps],
                          num_workers=workers, collate_fn=_collate,
                          worker_init_fn=_init_worker if workers else None,
                          pin_memory=True, prefetch_factor=self.PREFETCH_GPU if workers else None)

    def _gpu_batch(self, images, labels, params: dict):
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        return self.finish(self.normalize(images, params), labels, params)
