"""The DALI backend, split as NVIDIA's DALI examples split a pipeline: the reader, the decode, the augmentation and
the normalisation, each a small function below, every one written once with the device as a parameter.

* the reader (`plan_source`): which records a rank reads at which step, and with which augmentation parameters,
  all from ``augment.train_plan(seed, epoch)`` split over ranks and steps by ``augment.StepLayout`` (base.py),
  fed to the graph through ``fn.external_source``. ``docs/pipeline.md`` says why this, and not
  ``fn.readers.caffe``'s shuffle buffer, is the reader (exact per-epoch coverage, resume at any step, equal step
  counts); report/dali_variants.py keeps the native reader, for the benchmark.
* the decode (`decoded_window`, `decoded_image`): an ROI decode of exactly the window (the nvJPEG "mixed" decoder
  on CUDA), or a slice of raw pixels.
* the augmentation (`resized`, `flipped`, put together by `train_view` and `ten_views`): a random-resized window
  resized to the crop, linear without antialiasing as cv2; the flip.  All in uint8.
* the normalisation: not in the graph. ``TorchNormalizer`` (base.py) does all the float work (colour jitter,
  mean, lighting, std) in torch on the output device, so the DALI and torch backends give the same numbers.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Iterator

import numpy as np

from alexnet_pipe.core.devices import dali_device
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders.base import BaseLoader, LoaderSettings, cuda_device_id
from alexnet_pipe.loaders.records import release_shards
from alexnet_pipe.shards.decode import dali_error_cause, decoder_options


# --- the reader -------------------------------------------------------------------------

def plan_source(feed):
    """Per sample: the record's bytes (or raw HWC pixels), the window's anchor (x, y) and shape (w, h), the flip
    and the label, one step of the plan at a time (`DaliLoader._feed` lays them out)."""
    from nvidia.dali import fn, types
    return fn.external_source(source=feed, num_outputs=5, batch=True, cycle="raise",
                              dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.INT64])


def host_constant(value):
    """A constant anchor or shape for fn.slice, made on the CPU: a bare numpy value becomes a Constant on the
    operator's device, and a GPU slice then copies it back to the host with a sync point every iteration
    (fn.slice docs: "CPU inputs are preferred")."""
    from nvidia.dali import types
    return types.Constant(np.asarray(value, np.int32), device="cpu")


# --- the decode ---------------------------------------------------------------------------

def on_device(pixels, device: str):
    """Raw pixels read on the host, where the graph's operators run."""
    return pixels if device == "cpu" else pixels.gpu()


def window_of(image, anchor, shape, device: str):
    """The (w, h) window of HWC pixels whose top-left is (x, y), in pixels."""
    from nvidia.dali import fn
    return fn.slice(image, anchor, shape, normalized_anchor=False, normalized_shape=False, axis_names="WH",
                    device=dali_device(device))


def decoded_window(data, anchor, shape, *, encoded: bool, device: str, fancy_upsampling: bool = True):
    """uint8 HWC pixels of the window alone: an ROI decode of an encoded record (nothing outside the window is
    decoded), or a slice of raw pixels."""
    if not encoded:
        return window_of(on_device(data, device), anchor, shape, device)
    from nvidia.dali import fn
    return fn.decoders.image_slice(data, anchor, shape, normalized_anchor=False, normalized_shape=False,
                                   axis_names="WH", **decoder_options(device, fancy_upsampling))


def decoded_image(data, *, encoded: bool, device: str, fancy_upsampling: bool = True):
    """The whole image, uint8 HWC on the device."""
    if not encoded:
        return on_device(data, device)
    from nvidia.dali import fn
    return fn.decoders.image(data, **decoder_options(device, fancy_upsampling))


# --- the augmentation ---------------------------------------------------------------------

def resized(window, crop: int, device: str):
    """The window resized to crop x crop as cv2's INTER_LINEAR does (augment.resized_window): linear,
    pixel centres aligned, and no antialiasing, which DALI applies by default when scaling down."""
    from nvidia.dali import fn, types
    return fn.resize(window, size=[crop, crop], interp_type=types.INTERP_LINEAR, antialias=False,
                     device=dali_device(device))


def flipped(window, flip, device: str):
    """The window mirrored left-right where `flip` (per sample, or a constant) is 1."""
    from nvidia.dali import fn
    return fn.flip(window, horizontal=flip, device=dali_device(device))


def train_view(data, anchor, shape, flip, *, encoded: bool, device: str, crop: int, resize: bool,
               flip_in_graph: bool, fancy_upsampling: bool = True):
    """One view of each sample (a training view, or the centre crop): its window decoded, resized to the crop
    where windows differ in size (`resize`: random-resized crops), and mirrored unless the loader mirrors on the
    host (`flip_in_graph` False)."""
    window = decoded_window(data, anchor, shape, encoded=encoded, device=device, fancy_upsampling=fancy_upsampling)
    if resize:
        window = resized(window, crop, device)
    return flipped(window, flip, device) if flip_in_graph else window


def ten_views(data, *, encoded: bool, device: str, size: int, crop: int, flip_in_graph: bool,
              fancy_upsampling: bool = True):
    """The paper's ten views of each sample, stacked (10, crop, crop, 3) in augment.TEN_CROP_NAMES order. Every
    view needs another window, so the whole image is decoded once."""
    from nvidia.dali import fn
    image = decoded_image(data, encoded=encoded, device=device, fancy_upsampling=fancy_upsampling)
    offsets, flips = augment.ten_crop_offsets(size, crop)
    shape = host_constant([crop, crop])
    views = [window_of(image, host_constant(at), shape, device) for at in offsets]
    views = [flipped(v, 1, device) if f and flip_in_graph else v for v, f in zip(views, flips)]
    return fn.stack(*views)


# --- the loader ---------------------------------------------------------------------------

def mirror_in_place(crops: np.ndarray, flips: np.ndarray) -> None:
    """Mirror left-right the uint8 HWC windows whose flag is set: crops (..., c, c, 3), one flag per window."""
    import cv2
    flat = crops.reshape(-1, *crops.shape[-3:])
    if not np.shares_memory(flat, crops):
        raise ValueError("mirror_in_place needs contiguous windows")
    for i in np.flatnonzero(np.asarray(flips, bool).ravel()):
        cv2.flip(flat[i], 1, dst=flat[i])


def to_torch(tensors, device_id, copy: bool = True):
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


def built_pipeline(graph):
    """The built pipeline; DALI's warning about unused external-source outputs is expected: ten-crop leaves
    the anchor, shape and flip unused."""
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

    def __init__(self, settings: LoaderSettings):
        super().__init__(settings)
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
                                    to_torch(labels, None).view(-1).to(self._device, non_blocking=True),
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
        return self.device_id is not None

    def _images(self, images, params: dict):
        """DALI's uint8 views -> the normalised torch batch. The view of DALI's buffer is read by normalize()
        before the next run()."""
        crops = to_torch(images, self.device_id, copy=False)
        if not self._flip_in_graph:
            mirror_in_place(crops.numpy(), self.window_params(params)[2])
        return self.normalize(crops, params)

    def _feed(self, params: dict) -> tuple:
        """One step of the plan as `plan_source`'s outputs."""
        datums = [self.index.read(i) for i in params["index"]]
        if self.index.encoded:
            data = [np.frombuffer(d.data, np.uint8) for d in datums]
        else:
            data = np.stack([self.index.pixels(d, i) for d, i in zip(datums, params["index"])])
        window = np.ascontiguousarray(params["window"], np.int32)  # (x, y, w, h): anchor and shape
        return (data, window[:, :2].copy(), window[:, 2:].copy(), params["flip"].astype(np.int32),
                np.array([d.label for d in datums], np.int64))

    def _views(self, data, anchor, shape, flip):
        """The uint8 HWC views of the graph, for the settings' mode."""
        s, index = self.settings, self.index
        common = dict(encoded=index.encoded, device=s.device, crop=s.crop, flip_in_graph=self._flip_in_graph,
                      fancy_upsampling=s.fancy_upsampling)
        if self.ten_crop:
            return ten_views(data, size=index.size, **common)
        return train_view(data, anchor, shape, flip, resize=s.train and s.crops == "random-resized", **common)

    def _build(self, source):
        from nvidia.dali import pipeline_def
        s = self.settings

        @pipeline_def(batch_size=self.layout.max_batch, num_threads=max(1, s.num_threads),
                      device_id=self.device_id, prefetch_queue_depth=self.PREFETCH)
        def graph():
            data, anchor, shape, flip, labels = plan_source(source)
            return self._views(data, anchor, shape, flip), labels

        return built_pipeline(graph)
