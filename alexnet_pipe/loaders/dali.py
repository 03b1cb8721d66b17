"""The DALI backend: the reader (an external source fed from the epoch plan, or fn.readers.caffe) and the processing.

* the reader: which records a rank reads at which step, and with which augmentation parameters, all from
  ``augment.train_plan(seed, epoch)`` split over ranks and steps by ``augment.StepLayout`` (base.py).  The DALI
  graph is fed the record bytes and these parameters through ``fn.external_source``; ``docs/pipeline.md`` says
  why this, and not ``fn.readers.caffe``'s shuffle buffer, is the default (exact per-epoch coverage, resume at
  any step, equal step counts), and `CaffeReaderLoader` keeps the native reader for comparison.
* the processing (`process`), written once with the device as a parameter ("cpu": ``device_id=None``; "gpu":
  the mixed nvJPEG decoder): ROI decode of exactly the crop window (random-resized crops: of the plan's window,
  then ``fn.resize`` to the crop, linear without antialiasing as cv2) and the flip, in uint8; then
  ``TorchNormalizer`` (base.py) does all the float work on the output device.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Iterator

import numpy as np

from alexnet_pipe.loaders import augment
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders.base import BaseLoader, LoaderSettings, cuda_device_id
from alexnet_pipe.shards.decode import check_dali_can_open, dali_error_cause, dali_paths
from alexnet_pipe.loaders.records import release_shards


def process(data, anchor, flip, cmn_mean, *, encoded: bool, device: str, size: int, crop: int,
            norm: augment.Normalizer, ten_crop: bool, layout: str, dtype, roi_decode: bool = True,
            normalize_in: str = "torch", fancy_upsampling: bool = True, flip_in_graph: bool = True,
            window_shape=None):
    """The processing half of the graph, for one device.

    data: encoded bytes, or (S, S, 3) uint8 pixels; anchor: (x, y) int32; flip: int32;
    cmn_mean: float32 (3,) per sample (lighting and, for per-channel normalisation, the mean).
    window_shape: None (crop x crop windows), or (w, h) int32 per sample: random-resized windows, each
    decoded (or sliced) at its own size and resized to crop x crop (`_resized`).
    normalize_in "torch": uint8 crops, flipped and laid out, for `TorchNormalizer` (cmn_mean and
    dtype unused); "dali": the float work in DALI's operators too (slower on CPU, see docs).
    fancy_upsampling: the GPU decoder's chroma upsampling as libjpeg-turbo's (decode.decoder_options).
    flip_in_graph False (normalize_in "torch" only): the windows come out unmirrored, and the loader
    mirrors them on the host (`mirror_in_place`), much cheaper than DALI's CPU flip.
    """
    from nvidia.dali import fn, types
    from alexnet_pipe.shards.decode import decoder_options
    op_device = "cpu" if device == "cpu" else "gpu"
    # slice's anchor/shape inputs: a bare numpy value becomes a Constant on the operator's device, and a
    # GPU slice then copies it back to the host with a sync point every iteration (fn.slice docs: "CPU
    # inputs are preferred"), so the constants are made on the CPU explicitly (what CPU graphs got anyway)
    shape = types.Constant(np.array([crop, crop], np.int32), device="cpu")
    mean_const = (types.Constant(norm.mean_image, device=op_device)
                  if norm.mode == "mean-image" and normalize_in == "dali" else None)
    std = 1.0 if norm.mode == "mean-image" else norm.std_rgb.tolist()

    def finish(window, at, mirror):
        if normalize_in == "torch":  # HWC stays: the transposition is free in TorchNormalizer
            return fn.flip(window, horizontal=mirror, device=op_device) if flip_in_graph else window
        if mean_const is not None:
            window = window - fn.slice(mean_const, at, shape, normalized_anchor=False,
                                       normalized_shape=False, axis_names="WH")
        return fn.crop_mirror_normalize(window, mean=cmn_mean, std=std, mirror=mirror,
                                        output_layout=layout, dtype=dtype, device=op_device)

    def window_at(image, at, wh=shape):
        return fn.slice(image, at, wh, normalized_anchor=False, normalized_shape=False,
                        axis_names="WH", device=op_device)

    decoder = decoder_options(device, fancy_upsampling)
    if ten_crop:  # every view needs a different window: decode the whole image once
        image = (fn.decoders.image(data, **decoder) if encoded
                 else (data if device == "cpu" else data.gpu()))
        offsets, flips = augment.ten_crop_offsets(size, crop)
        anchors = [types.Constant(np.asarray(at, np.int32), device="cpu") for at in offsets]
        views = [finish(window_at(image, at), at, int(f)) for at, f in zip(anchors, flips)]
        return fn.stack(*views)
    if window_shape is not None:
        if encoded:  # ROI decode of the window alone, whatever its size
            window = fn.decoders.image_slice(data, anchor, window_shape, normalized_anchor=False,
                                             normalized_shape=False, axis_names="WH", **decoder)
        else:
            window = window_at(data if device == "cpu" else data.gpu(), anchor, window_shape)
        return finish(_resized(window, crop, op_device), anchor, flip)
    if encoded and not roi_decode:  # decode-then-crop: kept to measure what ROI decode saves
        window = window_at(fn.decoders.image(data, **decoder), anchor)
    elif encoded:  # ROI decode: only the crop window is decoded
        window = fn.decoders.image_slice(data, anchor, shape, normalized_anchor=False,
                                         normalized_shape=False, axis_names="WH", **decoder)
    else:
        window = window_at(data if device == "cpu" else data.gpu(), anchor)
    return finish(window, anchor, flip)


def _resized(window, crop: int, op_device: str):
    """The window resized to crop x crop as cv2's INTER_LINEAR does (augment.resized_window): linear,
    pixel centres aligned, and no antialiasing, which DALI applies by default when scaling down."""
    from nvidia.dali import fn, types
    return fn.resize(window, size=[crop, crop], interp_type=types.INTERP_LINEAR, antialias=False,
                     device=op_device)


# --- the loaders ---------------------------------------------------------------------

def mirror_in_place(crops: np.ndarray, flips: np.ndarray) -> None:
    """Mirror left-right the uint8 HWC windows whose flag is set: crops (..., c, c, 3), one flag per window."""
    import cv2
    flat = crops.reshape(-1, *crops.shape[-3:])
    if not np.shares_memory(flat, crops):
        raise ValueError("mirror_in_place needs contiguous windows")
    for i in np.flatnonzero(np.asarray(flips, bool).ravel()):
        cv2.flip(flat[i], 1, dst=flat[i])


def _dali_dtype(name: str):
    from nvidia.dali import types
    # DALI has no bfloat16: it produces float32 and torch casts (documented in docs/pipeline.md)
    return types.FLOAT16 if name == "float16" else types.FLOAT


def _to_torch(tensors, device_id, copy: bool = True):
    """A dense DALI batch as a torch tensor (CPU, or cuda:device_id).

    copy=False on the CPU: a view of DALI's output buffer, valid only until the next run().
    """
    import torch
    if device_id is None:
        array = tensors.as_tensor()
        return torch.from_numpy(np.array(array) if copy else np.asarray(array))
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
    # feed_ndarray asserts dali.shape() == list(out.size()): a TensorList's shape() is one tuple per
    # sample, so hand it the dense TensorGPU (as DALIGenericIterator does).  The copy is queued on
    # torch's current stream, and DALI orders it after the producing work and before the buffer is reused.
    dense = tensors.as_tensor()
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=f"cuda:{device_id}")
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device_id))
    return out


def _built(graph):
    """The built pipeline; DALI's warning about unused external-source outputs is expected: the
    torch normalisation leaves the per-sample mean unused, ten-crop the anchor and flip."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(outputs at the indices|output at the index).*not used")
        pipe = graph()
        pipe.build()
    return pipe


class _EpochFeed:
    """The external source of a pipeline that serves many epochs. DALI iterates it once per epoch:
    after the StopIteration that ends one (cycle="raise"), it calls iter() again at once, but the
    generator body (and so the read of `steps`) only runs when the next epoch asks for its first
    batch, after the loader has set that epoch's steps."""

    def __init__(self, feed):
        # weak: loader -> pipeline -> this feed -> loader would be a cycle, keeping the pipeline's
        # threads alive until a garbage collection; a fork() meanwhile (DataLoader workers) can hang
        self.feed, self.steps = weakref.WeakMethod(feed), []

    def __iter__(self):
        for params in self.steps:
            yield self.feed()(params)


def _at_epoch_end(pipe) -> bool:
    """After an epoch's last batch: DALI has met the source's StopIteration while prefetching; take
    it and reset, so the pipeline is ready for the next epoch. False if it has a batch too many."""
    try:
        pipe.run()
    except StopIteration:
        pipe.reset()
        return True
    return False


class DaliLoader(BaseLoader):
    """The DALI pipeline fed by an explicit per-epoch plan (exact, resumable)."""
    PREFETCH = 3  # batches DALI works ahead: 3 beat 2 by 8-23% in three A/B runs here (docs/pipeline.md)

    def __init__(self, settings: LoaderSettings, *, roi_decode: bool = True, normalize_in: str = "torch"):
        super().__init__(settings)
        if normalize_in not in ("torch", "dali"):
            raise ValueError(f"normalize_in must be torch or dali, not {normalize_in!r}")
        if normalize_in == "dali" and (settings.color_jitter or settings.hue):
            raise UserError("colour jitter runs in the torch normalisation: it needs "
                            "`alexnet-pipe bench loader --normalize-in torch`")
        self.roi_decode = roi_decode  # False: decode the whole image, then crop (for the benchmark)
        self.normalize_in = normalize_in  # "dali": the float work in DALI too (for the benchmark)
        self.device_id = cuda_device_id(settings)
        self._pipe = self._feeder = None  # idle, for the next epoch: kept after epochs that ran to their end

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple]:
        """The batches of one epoch from `start_step` on.

        One pipeline serves every epoch that runs to its end (a build costs ~2 s on a GPU: a new
        nvJPEG decoder and memory pools). An abandoned epoch leaves prefetched batches behind, so
        its pipeline is dropped and the next epoch builds a fresh one. A running epoch holds its
        pipeline alone: an epoch started meanwhile builds its own."""
        steps = self.step_params(epoch, start_step)
        if not steps:
            return
        pipe, feeder, self._pipe, self._feeder = self._pipe, self._feeder, None, None
        if pipe is None:
            feeder = _EpochFeed(self._feed)
            pipe = self._build(feeder)
        feeder.steps, finished = steps, False
        try:
            for k, params in enumerate(steps, 1):
                images, labels = self._run(pipe, steps[k - 1:k + self.PREFETCH])
                batch = self.finish(self._images(images, params),
                                    _to_torch(labels, None).view(-1).to(self._device, non_blocking=True),
                                    params)  # copies: DALI's buffers are free again
                if k == len(steps):  # before the last yield: the trainer takes `steps` batches, no more
                    finished = _at_epoch_end(pipe)
                yield batch
        finally:
            if finished and self._pipe is None:  # ready for the next epoch
                self._pipe, self._feeder = pipe, feeder
            release_shards()

    def close(self) -> None:
        self._pipe = self._feeder = None
        super().close()

    def _run(self, pipe, in_flight: list[dict]):
        """pipe.run(); a DALI error becomes one sentence: the damaged record among the batches in flight
        (DALI works ahead, so the failing one may be a later step's), else DALI's own reason."""
        try:
            return pipe.run()
        except RuntimeError as exc:
            self.raise_damaged(in_flight)
            raise UserError(f"the DALI pipeline failed ({dali_error_cause(exc)}); `alexnet-pipe verify` decodes "
                            "every record and names a damaged one") from None

    @property
    def _device(self) -> str:
        return "cpu" if self.device_id is None else f"cuda:{self.device_id}"

    @property
    def _flip_in_graph(self) -> bool:
        """DALI's CPU flip cost ~150 us of a decoder thread per image here (a whole decode is ~300): on
        the CPU the uint8 windows are mirrored on the host instead (cv2.flip, ~16 us)."""
        return self.device_id is not None or self.normalize_in == "dali"

    def _images(self, images, params: dict):
        """DALI's output batch -> the torch batch (normalised here unless DALI did it)."""
        # the view is read by normalize() before the next run(); the caffe reader pads its last batch
        if self.normalize_in == "torch":
            crops = _to_torch(images, self.device_id, copy=False)[:len(params["flip"])]
            if not self._flip_in_graph:
                mirror_in_place(crops.numpy(), self.window_params(params)[2])
            return self.normalize(crops, params)
        images = _to_torch(images, self.device_id)[:len(params["flip"])]
        if self.settings.channels_last and not self.ten_crop:
            images = images.permute(0, 3, 1, 2)  # HWC memory = channels_last NCHW
        return images

    def _feed(self, params: dict) -> tuple:
        datums = [self.index.read(i) for i in params["index"]]
        if self.index.encoded:
            data = [np.frombuffer(d.data, np.uint8) for d in datums]
        else:
            data = np.stack([self.index.pixels(d, i) for d, i in zip(datums, params["index"])])
        window = np.ascontiguousarray(params["window"], np.int32)  # (x, y, w, h): anchor and shape
        return (data, window[:, :2].copy(), window[:, 2:].copy(), params["flip"].astype(np.int32),
                self.cmn_mean(params["light"]), np.array([d.label for d in datums], np.int64))

    def _build(self, source):
        from nvidia.dali import fn, pipeline_def, types
        s, encoded = self.settings, self.index.encoded
        layout = "HWC" if s.channels_last and not self.ten_crop else "CHW"

        @pipeline_def(batch_size=self.layout.max_batch, num_threads=max(1, s.num_threads),
                      device_id=self.device_id, prefetch_queue_depth=self.PREFETCH)
        def graph():
            data, anchor, window_shape, flip, cmn_mean, labels = fn.external_source(
                source=source, num_outputs=6, batch=True, cycle="raise",
                dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.FLOAT, types.INT64])
            resized = s.train and s.crops == "random-resized"
            images = process(data, anchor, flip, cmn_mean, encoded=encoded, device=s.device,
                             size=self.index.size, crop=s.crop, norm=self.norm,
                             ten_crop=self.ten_crop, layout=layout, dtype=_dali_dtype(s.dtype),
                             roi_decode=self.roi_decode, normalize_in=self.normalize_in,
                             fancy_upsampling=s.fancy_upsampling, flip_in_graph=self._flip_in_graph,
                             window_shape=window_shape if resized else None)
            return images, labels

        return _built(graph)


class CaffeReaderLoader(DaliLoader):
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
                labels = _to_torch(labels, None).view(-1)[:take].long().to(self._device)
                yield self.finish(self._images(images, params), labels, params)
        finally:
            del pipe

    def _feed_params(self, p: dict) -> tuple:
        pad = self.settings.batch_size - len(p["alpha"])  # the reader always gives full batches
        anchor = np.stack([p["crop_x"], p["crop_y"]], axis=1).astype(np.int32)
        cols = (anchor, p["flip"].astype(np.int32), self.cmn_mean(p["light"]))
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
            anchor, flip, cmn_mean = fn.external_source(
                source=source, num_outputs=3, batch=True, dtype=[types.INT32, types.INT32, types.FLOAT])
            images = process(data, anchor, flip, cmn_mean, encoded=self.index.encoded,
                             device=s.device, size=size, crop=s.crop, norm=self.norm, ten_crop=False,
                             layout="HWC" if s.channels_last else "CHW",
                             dtype=_dali_dtype(s.dtype), roi_decode=self.roi_decode,
                             normalize_in=self.normalize_in, fancy_upsampling=s.fancy_upsampling,
                             flip_in_graph=self._flip_in_graph)
            return images, labels

        return _built(graph)
