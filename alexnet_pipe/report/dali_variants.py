"""The DALI loader's variants that only `bench loader` times, kept beside the benchmarks so that the production
loader (loaders/dali.py) holds one pipeline:

* decode then crop (``roi_decode=False``): the whole image decoded, then the window sliced: what the ROI decode
  saves;
* the float work in DALI (``normalize_in="dali"``): the mean window sliced from a float constant and subtracted,
  then ``crop_mirror_normalize`` with the lighting as its per-sample mean; the former default, slower on the CPU;
* `CaffeReaderLoader`: ``fn.readers.caffe`` with a shuffle buffer, the issue's reader (docs/pipeline.md, "Why not
  fn.readers.caffe by default").
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from alexnet_pipe.core.devices import dali_device
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders.base import LoaderSettings
from alexnet_pipe.loaders.dali import (DaliLoader, built_pipeline, decoded_image, decoded_window, flipped,
                                       host_constant, mirror_in_place, resized, to_torch, window_of)
from alexnet_pipe.shards.decode import dali_paths, check_dali_can_open

READERS = ("external", "caffe")
NORMALIZE_IN = ("torch", "dali")


def dali_dtype(name: str):
    from nvidia.dali import types
    # DALI has no bfloat16: it produces float32 and torch casts (documented in docs/pipeline.md)
    return types.FLOAT16 if name == "float16" else types.FLOAT


def cmn_mean(norm: augment.Normalizer, light: np.ndarray) -> np.ndarray:
    """The per-sample 'mean' of crop_mirror_normalize: it carries the lighting offset."""
    if norm.mode == "mean-image":
        return (-light).astype(np.float32)
    return (norm.mean_rgb[None, :] - light).astype(np.float32)


def dali_normalized(window, anchor, flip, mean, *, norm: augment.Normalizer, device: str, crop: int, layout: str,
                    dtype):
    """The float work in DALI's operators: the mean image's window subtracted (mean-image mode), then
    crop_mirror_normalize with `mean` (per sample: the lighting, and the channel means) and the channel std."""
    from nvidia.dali import fn, types
    if norm.mode == "mean-image":
        image = types.Constant(norm.mean_image, device=dali_device(device))
        window = window - window_of(image, anchor, host_constant([crop, crop]), device)
    std = 1.0 if norm.mode == "mean-image" else norm.std_rgb.tolist()
    return fn.crop_mirror_normalize(window, mean=mean, std=std, mirror=flip, output_layout=layout, dtype=dtype,
                                    device=dali_device(device))


def check_reader(settings: LoaderSettings, reader: str) -> None:
    """The caffe reader runs the paper's training augmentation, in DALI only."""
    if reader not in READERS:
        raise UserError(f"reader must be one of {', '.join(READERS)}, not {reader!r}")
    if reader == "caffe" and (settings.loader == "torch" or not settings.train):
        raise UserError("reader 'caffe' is for the DALI training pipeline only")
    if reader == "caffe" and (settings.crops != "translate" or settings.color_jitter or settings.hue):
        raise UserError("reader 'caffe' applies the paper's augmentation only: use the default reader "
                        "for random-resized crops and colour jitter")


class BenchDaliLoader(DaliLoader):
    """`DaliLoader` with the benchmark's two switches (training or centre views; no ten-crop)."""

    def __init__(self, settings: LoaderSettings, *, roi_decode: bool = True, normalize_in: str = "torch"):
        if normalize_in not in NORMALIZE_IN:
            raise ValueError(f"normalize_in must be torch or dali, not {normalize_in!r}")
        if normalize_in == "dali" and (settings.color_jitter or settings.hue):
            raise UserError("colour jitter runs in the torch normalisation: it needs "
                            "`alexnet-pipe bench loader --normalize-in torch`")
        super().__init__(settings)
        if self.ten_crop:
            raise UserError("the benchmark's loader variants time training or centre views, not ten-crop")
        self.roi_decode, self.normalize_in = roi_decode, normalize_in

    @property
    def _flip_in_graph(self) -> bool:
        return self.device_id is not None or self.normalize_in == "dali"  # crop_mirror_normalize mirrors

    def _feed(self, params: dict) -> tuple:
        *inputs, labels = super()._feed(params)
        return (*inputs, cmn_mean(self.norm, params["light"]), labels)

    def _build(self, source):
        from nvidia.dali import fn, pipeline_def, types
        s = self.settings

        @pipeline_def(batch_size=self.layout.max_batch, num_threads=max(1, s.num_threads),
                      device_id=self.device_id, prefetch_queue_depth=self.PREFETCH)
        def graph():
            data, anchor, shape, flip, mean, labels = fn.external_source(
                source=source, num_outputs=6, batch=True, cycle="raise",
                dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.FLOAT, types.INT64])
            return self.bench_views(data, anchor, shape, flip, mean), labels

        return built_pipeline(graph)

    def bench_views(self, data, anchor, shape, flip, mean):
        """The views as the switches ask: uint8 for the torch normalisation, or normalised floats."""
        s = self.settings
        resize = s.train and s.crops == "random-resized"
        if self.roi_decode or resize:  # a random-resized window is always ROI-decoded
            window = decoded_window(data, anchor, shape, encoded=self.index.encoded, device=s.device,
                                    fancy_upsampling=s.fancy_upsampling)
        else:
            image = decoded_image(data, encoded=self.index.encoded, device=s.device,
                                  fancy_upsampling=s.fancy_upsampling)
            window = window_of(image, anchor, shape, s.device)
        if resize:
            window = resized(window, s.crop, s.device)
        if self.normalize_in == "torch":
            return flipped(window, flip, s.device) if self._flip_in_graph else window
        return dali_normalized(window, anchor, flip, mean, norm=self.norm, device=s.device, crop=s.crop,
                               layout="HWC" if s.channels_last else "CHW", dtype=dali_dtype(s.dtype))

    def _images(self, images, params: dict):
        take = len(params["flip"])  # the caffe reader pads its last batch
        if self.normalize_in == "torch":
            crops = to_torch(images, self.device_id, copy=False)[:take]
            if not self._flip_in_graph:
                mirror_in_place(crops.numpy(), params["flip"])
            return self.normalize(crops, params)
        images = to_torch(images, self.device_id)[:take]
        return images.permute(0, 3, 1, 2) if self.settings.channels_last else images  # HWC = channels_last NCHW


class CaffeReaderLoader(BenchDaliLoader):
    """``fn.readers.caffe`` with a shuffle buffer, the issue's reader, kept for comparison.

    Per epoch e, rank r reads DALI shard (r + e) mod W (a contiguous slice of the key order,
    which prepare already shuffled globally), shuffled within a buffer of `SHUFFLE_BUFFER`
    records by a reader seeded from (seed, epoch, rank); the padded tail of the last batch is
    trimmed.  What it cannot give (docs/pipeline.md): a uniform permutation of the whole split,
    record identities for `with_params`, and a cheap resume (start_step runs and discards the
    earlier batches).  Step counts must agree across ranks, else it refuses to start.
    """
    SHUFFLE_BUFFER = 1024

    def __init__(self, settings: LoaderSettings, **kwargs):
        check_reader(settings, "caffe")
        super().__init__(settings, **kwargs)
        check_dali_can_open(self.index.dirs)  # fn.readers.caffe maps every shard at once
        n, world, b = len(self.index), settings.world_size, settings.batch_size
        self.shard_sizes = [(r + 1) * n // world - r * n // world for r in range(world)]
        steps = {-(-size // b) for size in self.shard_sizes}
        if len(steps) > 1:
            raise UserError(f"with reader 'caffe', {n} records over {world} ranks give different step "
                            "counts per rank: use the default reader")
        self.steps_per_epoch = steps.pop()
        self.images_per_epoch = self.shard_sizes[settings.rank]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple]:
        s = self.settings
        shard = (s.rank + epoch) % s.world_size
        size = self.shard_sizes[shard]
        seq = np.random.SeedSequence([s.seed, epoch, 2, s.rank])
        plan = augment.train_plan(size, seed=int(seq.generate_state(1)[0]), epoch=epoch,
                                  size=self.index.size, crop=s.crop, sigma=self.sigma)
        batches = [plan.take(i, min(s.batch_size, size - i)) for i in range(0, size, s.batch_size)]
        for p in batches:
            p["light"], p["index"] = self.light(p["alpha"]), np.full(len(p["alpha"]), -1)
            p["key"] = np.full(len(p["alpha"]), "", dtype=object)
        pipe = self._build_caffe((self._feed_params(p) for p in batches), shard,
                                 int(seq.generate_state(2)[1] % (1 << 31)))
        try:
            for step, params in enumerate(batches):
                images, labels = self._run(pipe, [])
                if step < start_step:
                    continue
                take = len(params["alpha"])
                labels = to_torch(labels, None).view(-1)[:take].long().to(self._device)
                yield self.finish(self._images(images, params), labels, params)
        finally:
            del pipe

    def _feed_params(self, p: dict) -> tuple:
        pad = self.settings.batch_size - len(p["alpha"])  # the reader always gives full batches
        anchor = np.stack([p["crop_x"], p["crop_y"]], axis=1).astype(np.int32)
        cols = (anchor, p["flip"].astype(np.int32), cmn_mean(self.norm, p["light"]))
        return tuple(np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in cols)

    def _build_caffe(self, source, shard: int, reader_seed: int):
        from nvidia.dali import fn, pipeline_def, types
        s, size = self.settings, self.index.size

        @pipeline_def(batch_size=s.batch_size, num_threads=max(1, s.num_threads),
                      device_id=self.device_id, prefetch_queue_depth=self.PREFETCH)
        def graph():
            data, labels = fn.readers.caffe(
                path=dali_paths(self.index.dirs), shard_id=shard, num_shards=s.world_size,
                random_shuffle=True, initial_fill=self.SHUFFLE_BUFFER, seed=reader_seed,
                pad_last_batch=True, stick_to_shard=True, name="Reader")
            if not self.index.encoded:
                data = fn.reshape(data, shape=[size, size, 3], layout="HWC")
            anchor, flip, mean = fn.external_source(
                source=source, num_outputs=3, batch=True, dtype=[types.INT32, types.INT32, types.FLOAT])
            shape = host_constant([s.crop, s.crop])
            return self.bench_views(data, anchor, shape, flip, mean), labels

        return built_pipeline(graph)
