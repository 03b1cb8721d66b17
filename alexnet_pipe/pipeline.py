"""The training/eval data pipeline: shards -> augmented (images, labels) batches for the trainer.

Two halves, as the trainer never sees shards:

* the reader: which records a rank reads at which step, and with which augmentation
  parameters.  All of it comes from ``augment.train_plan(seed, epoch)`` (an explicit permutation
  of the split plus per-position crop/flip/alpha), split over ranks and steps by
  ``augment.StepLayout``.  The DALI graph is fed the record bytes and these parameters through
  ``fn.external_source``; ``docs/pipeline.md`` says why this, and not ``fn.readers.caffe``'s
  shuffle buffer, is the default (exact per-epoch coverage, resume at any step, equal step
  counts), and ``reader="caffe"`` keeps the native reader for comparison.
* the processing, written once with the device as a parameter ("cpu": ``device_id=None``;
  "gpu": the mixed nvJPEG decoder): ROI decode of exactly the crop window and the flip, in
  uint8; then ``TorchNormalizer`` does all the float work (mean window, lighting, std, NCHW) in
  one torch expression per sample on the output device (docs/pipeline.md has the measurements).

``make_loader(LoaderSettings(...))`` picks this or the torch fallback (``torch_loader.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np

from . import augment
from .errors import UserError
from .shards import Datum, open_reader, read_manifest, shard_dirs

LOADERS = ("dali", "torch")
DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "bfloat16", "float16")
READERS = ("external", "caffe")


@dataclasses.dataclass(frozen=True)
class LoaderSettings:
    data: Path  # data dir
    split: str = "train"
    train: bool = True  # True: random crop + flip + lighting; False: eval views
    batch_size: int = 128  # per process
    crop: int = 224
    loader: str = "dali"  # "dali" | "torch"
    device: str = "cpu"  # "cpu" | "gpu"
    lighting: float = 0.1  # sigma of alpha; 0 switches it off
    lighting_scale: str = "convnet2"  # | "fbresnet"
    normalize: str = "mean-image"  # | "channel" (per-channel mean/std)
    views: str = "center"  # eval only: "center" | "ten-crop"
    dtype: str = "float32"  # | "bfloat16" | "float16"
    channels_last: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_threads: int = 2  # DALI threads / torch DataLoader workers
    with_params: bool = False  # also yield the augmentation parameters used
    reader: str = "external"  # DALI only: "external" (exact, default) | "caffe" (fn.readers.caffe)
    fancy_upsampling: bool = True  # DALI GPU: libjpeg-turbo's chroma upsampling (decode.decoder_options)


def validate(s: LoaderSettings) -> None:
    choices = {"loader": LOADERS, "device": DEVICES, "lighting_scale": augment.LIGHTING_SCALES,
               "normalize": augment.NORMALIZE, "views": augment.VIEWS, "dtype": DTYPES,
               "reader": READERS}
    for name, allowed in choices.items():
        if getattr(s, name) not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, not {getattr(s, name)!r}")
    if s.batch_size < 1 or s.crop < 1 or s.num_threads < 0 or s.lighting < 0:
        raise UserError("batch_size and crop must be positive, num_threads and lighting not negative")
    if not 0 <= s.rank < s.world_size:
        raise UserError(f"rank {s.rank} is outside 0..{s.world_size - 1}")
    if s.reader == "caffe" and (s.loader != "dali" or not s.train):
        raise UserError("reader 'caffe' is for the DALI training pipeline only")


# --- the records ----------------------------------------------------------------------

_TXNS: dict[tuple[int, str], tuple] = {}


def _txn(path: Path):
    """One read-only LMDB env and read transaction per (process, shard).

    LMDB refuses a second open of one env in a process, and its handles must not cross fork(),
    so they are cached by pid; DataLoader workers open their own on first use.
    """
    key = (os.getpid(), str(path))
    if key not in _TXNS:
        for stale in [k for k in _TXNS if k[1] == key[1]]:  # inherited through fork: let go
            env, txn = _TXNS.pop(stale)
            txn.abort()
            env.close()
        env = open_reader(path)
        _TXNS[key] = (env, env.begin(buffers=False))
    return _TXNS[key][1]


def release_shards() -> None:
    """Close this process's cached LMDB handles (reads reopen them on demand).

    The loaders call it when an epoch ends and on close(), so that other code in the process
    (decode.iter_decoded, shards.iter_records) can open the same shards between epochs.
    """
    for key in [k for k in _TXNS if k[0] == os.getpid()]:
        env, txn = _TXNS.pop(key)
        txn.abort()
        env.close()


class RecordIndex:
    """Every record of a split as (shard, key), in shard then key order; reads them by index."""

    def __init__(self, data: Path, split: str):
        manifest = read_manifest(Path(data))
        self.dirs = shard_dirs(Path(data), split, manifest)
        settings = manifest.get("settings", {})
        self.size = int(settings.get("size", 256))
        self.encoded = settings.get("encoding", "jpeg") != "raw"
        self.num_classes = len(manifest.get("classes", []))
        self.keys: list[bytes] = []
        shard_of = []
        for i, path in enumerate(self.dirs):
            keys = list(_txn(path).cursor().iternext(keys=True, values=False))
            self.keys += keys
            shard_of += [i] * len(keys)
        self.shard_of = np.asarray(shard_of, np.int32)
        release_shards()
        if not self.keys:
            raise UserError(f"the {split} split of {data} holds no records")

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int) -> Datum:
        value = _txn(self.dirs[self.shard_of[i]]).get(self.keys[i])
        if value is None:
            raise UserError(f"record {self.keys[i]!r} vanished from {self.dirs[self.shard_of[i]]}")
        return Datum.from_bytes(value)

    def pixels(self, datum: Datum) -> np.ndarray:
        """The (S, S, 3) uint8 array of a raw record."""
        flat = np.frombuffer(datum.data, np.uint8)
        if flat.size != self.size * self.size * 3:
            raise UserError(f"a raw record holds {flat.size} bytes, not {self.size}x{self.size}x3")
        return flat.reshape(self.size, self.size, 3)


# --- what both loaders share ----------------------------------------------------------

@contextlib.contextmanager
def _one_torch_thread():
    """Torch's intra-op threads off for a moment: on a few cores they fight the loader's own
    threads (a mixed-dtype op ran 300x slower with 2 OpenMP threads on 2 busy cores)."""
    import torch
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


class OutputPool:
    """Recycled CPU output batches: a fresh 40 MB tensor costs more in page faults (the kernel
    zeroes every page on first touch, ~250 us per 224x224 float image here) than the
    normalisation itself, and glibc maps blocks that large anew on every allocation.

    A buffer is handed out again only once nothing but the pool references its storage (no
    tensor, view or numpy array of it is alive: torch's storage use count), so a trainer that
    keeps a batch sees it unchanged.  GPU batches come from torch's caching allocator instead.
    """
    SIZE = 3  # the batch being filled, the one still in the trainer's loop variable, one spare

    def __init__(self):
        import torch
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)
        self._buffers: list[tuple] = []  # (tensor, its storage object held here)

    def _free(self, entry) -> bool:
        tensor, storage = entry  # referenced by our tensor and storage object, and nothing else
        return self._use_count(storage._cdata) == 2

    def get(self, shape, device, fmt):
        import torch
        if device.type != "cpu" or self._use_count is None:
            return torch.empty(shape, dtype=torch.float32, device=device, memory_format=fmt)
        for entry in self._buffers:
            if entry[0].shape == shape and entry[0].is_contiguous(memory_format=fmt) and self._free(entry):
                return entry[0].detach()  # a new tensor object on the same storage: it counts as a user
        out = torch.empty(shape, dtype=torch.float32, memory_format=fmt)
        if len(self._buffers) == self.SIZE:  # all in use, or a new shape: drop the oldest slot
            self._buffers.pop(0)
        self._buffers.append((out, out.untyped_storage()))
        return out.detach()


class TorchNormalizer:
    """Mean subtraction, lighting and std of uint8 crops, in torch on the batch's device.

    The loaders hand over the crops already flipped, as HWC uint8 (what the decoder gives, 4x
    less memory than float), so all the float work is one expression per sample, written
    straight into the NCHW (or channels_last) output: `crop - mean_window`, then `+ light`
    while the sample is still in cache (per-channel: `(crop - (mean_rgb - light)) * (1 / std)`,
    DALI's crop_mirror_normalize formula).  The mean window of a flipped sample at offset x is
    the plain slice of the pre-flipped mean at `S - crop - x`, so no mean is flipped or copied
    per sample.  Both loaders use it, so DALI and torch outputs agree exactly.
    """

    def __init__(self, norm: augment.Normalizer, size: int, crop: int):
        self.norm, self.size, self.crop = norm, size, crop
        self._means: dict = {}  # (device, channels_last) -> (mean, flipped mean), laid out as the output
        self._pool = OutputPool()

    def means(self, device, channels_last: bool) -> tuple:
        import torch
        key = (str(device), channels_last)
        if key not in self._means:
            hwc = torch.from_numpy(self.norm.mean_image)
            pair = (hwc, hwc.flip(1))
            order = (0, 1, 2) if channels_last else (2, 0, 1)
            self._means[key] = tuple(m.permute(*order).contiguous().to(device) for m in pair)
        return self._means[key]

    def windows(self, device, channels_last: bool, xs, ys, flips):
        """The mean windows of a batch, gathered at once: (N, 3, c, c), or (N, c, c, 3) for channels_last."""
        import torch
        plain, flipped = self.means(device, channels_last)
        both = torch.stack([plain, flipped])  # (2, ...) so one index picks the (pre-)flipped mean
        xs = np.where(flips, self.size - self.crop - xs, xs)
        span = torch.arange(self.crop, device=device)
        pick = torch.as_tensor(np.asarray(flips, bool), device=device).long()
        rows = torch.as_tensor(ys, device=device)[:, None] + span  # (N, c)
        cols = torch.as_tensor(xs, device=device)[:, None] + span
        if channels_last:  # means laid out (S, S, 3)
            return both[pick[:, None, None], rows[:, :, None], cols[:, None, :]]
        chan = torch.arange(3, device=device)
        return both[pick[:, None, None, None], chan[None, :, None, None], rows[:, None, :, None],
                    cols[:, None, None, :]]

    def __call__(self, crops, xs, ys, flips, light, channels_last: bool = False):
        """crops: uint8 (N, c, c, 3), flipped; xs, ys, flips: (N,) numpy; light: (N, 3) float32.

        Returns float32 (N, 3, c, c), in channels_last memory format if asked."""
        if crops.device.type != "cpu":
            return self._apply(crops, xs, ys, flips, light, channels_last)
        with _one_torch_thread():
            return self._apply(crops, xs, ys, flips, light, channels_last)

    def _apply(self, crops, xs, ys, flips, light, channels_last, batched: bool | None = None):
        """batched (default on CUDA): one gather and two kernels for the whole batch; a GPU would
        otherwise spend more on 2 launches per sample than on the work. Per sample (the CPU
        default) measured ~4x faster on the CPU. Same operations in the same order: equal results."""
        import torch
        n, c, dev = len(crops), self.crop, crops.device
        if batched is None:
            batched = dev.type == "cuda"
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = self._pool.get((n, 3, c, c), dev, fmt)
        # elementwise ops are fastest with every operand in the output's memory order
        dst, src = (out.permute(0, 2, 3, 1), crops) if channels_last else (out, crops.permute(0, 3, 1, 2))
        vec = (lambda v: v.to(dev).view(len(v), 3)) if channels_last else (
            lambda v: v.to(dev).view(len(v), 3, 1, 1))
        light = np.asarray(light, np.float32).reshape(n, 3)
        if self.norm.mode == "channel":
            mean = vec(torch.from_numpy(self.norm.mean_rgb[None, :] - light))
            inv_std = vec(torch.from_numpy(np.float32(1.0) / self.norm.std_rgb[None, :]))[0]
            if batched:
                torch.sub(src, mean.view(n, 1, 1, 3) if channels_last else mean, out=dst).mul_(inv_std)
                return out
            for i in range(n):
                torch.sub(src[i], mean[i], out=dst[i]).mul_(inv_std)
            return out
        plain, flipped = self.means(dev, channels_last)
        light_t = vec(torch.from_numpy(light))
        far = self.size - c
        if batched:
            torch.sub(src, self.windows(dev, channels_last, xs, ys, flips), out=dst)
            dst.add_(light_t.view(n, 1, 1, 3) if channels_last else light_t)
            return out
        for i, (x, y, f) in enumerate(zip(xs.tolist(), ys.tolist(), flips.tolist())):
            mean, x = (flipped, far - x) if f else (plain, x)
            window = mean[y:y + c, x:x + c] if channels_last else mean[:, y:y + c, x:x + c]
            torch.sub(src[i], window, out=dst[i]).add_(light_t[i])
        return out


class BaseLoader:
    """Plan, layout and statistics; subclasses turn a list of per-step parameter dicts into batches."""

    def __init__(self, settings: LoaderSettings):
        validate(settings)
        self.settings = s = settings
        self.index = RecordIndex(s.data, s.split)
        if s.crop > self.index.size:
            raise UserError(f"crop {s.crop} is larger than the stored images ({self.index.size}): pass --crop "
                            f"{self.index.size * 7 // 8} (7/8 of the stored size, as 224 is of 256) or smaller")
        stats = Path(s.data) / "stats"
        self.norm = augment.load_normalizer(stats, s.normalize, self.index.size)
        self.sigma = s.lighting if s.train else 0.0
        self.eigen = augment.load_eigen(stats, s.lighting_scale) if self.sigma > 0 else None
        self.layout = augment.StepLayout(len(self.index), s.batch_size, s.world_size)
        self.num_classes = self.index.num_classes
        self.steps_per_epoch = self.layout.steps
        self.images_per_epoch = self.layout.rank_records(s.rank)
        self.ten_crop = not s.train and s.views == "ten-crop"
        self.normalizer = TorchNormalizer(self.norm, self.index.size, s.crop)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def plan(self, epoch: int) -> augment.EpochPlan:
        s, size = self.settings, self.index.size
        if s.train:
            return augment.train_plan(len(self.index), seed=s.seed, epoch=epoch, size=size,
                                      crop=s.crop, sigma=self.sigma)
        return augment.eval_plan(len(self.index), size=size, crop=s.crop)

    def step_params(self, epoch: int, start_step: int) -> list[dict]:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise UserError(f"start_step {start_step} is outside 0..{self.steps_per_epoch}")
        plan = self.plan(epoch)
        out = []
        for step in range(start_step, self.steps_per_epoch):
            params = plan.take(*self.layout.rank_span(step, self.settings.rank))
            params["light"] = self.light(params["alpha"])
            out.append(params)
        return out

    def light(self, alpha: np.ndarray) -> np.ndarray:
        if self.eigen is None:
            return np.zeros((len(alpha), 3), np.float32)
        return augment.lighting_noise(alpha, self.eigen)

    def cmn_mean(self, light: np.ndarray) -> np.ndarray:
        """The per-sample 'mean' of crop_mirror_normalize: it carries the lighting offset."""
        if self.norm.mode == "mean-image":
            return (-light).astype(np.float32)
        return (self.norm.mean_rgb[None, :] - light).astype(np.float32)

    def normalize(self, crops, params: dict):
        """uint8 HWC crops, already flipped ((B, c, c, 3), ten-crop (B, 10, c, c, 3)) -> the
        float32 NCHW batch ((B, 3, c, c), ten-crop (B, 10, 3, c, c))."""
        xs, ys, flips = self.window_params(params)
        if self.ten_crop:  # every view at its fixed offset, no lighting; 5-D stays NCHW
            b, c = len(crops), self.settings.crop
            flat = self.normalizer(crops.reshape(b * 10, c, c, 3), xs, ys, flips, np.zeros((b * 10, 3), np.float32))
            return flat.view(b, 10, 3, c, c)
        return self.normalizer(crops, xs, ys, flips, params["light"], channels_last=self.settings.channels_last)

    def window_params(self, params: dict) -> tuple:
        """(x, y, flip) of every window of a batch, (B,) each; ten-crop: (B * 10,), views in order."""
        if not self.ten_crop:
            return params["crop_x"], params["crop_y"], params["flip"]
        b = len(params["flip"])
        offsets, flips = augment.ten_crop_offsets(self.index.size, self.settings.crop)
        return np.tile(offsets[:, 0], b), np.tile(offsets[:, 1], b), np.tile(flips, b)

    def finish(self, images, labels, params: dict):
        """dtype, memory format and the optional params of a torch batch."""
        import torch
        s = self.settings
        dtype = getattr(torch, s.dtype)
        if images.dtype != dtype:
            images = images.to(dtype)
        if s.channels_last and images.dim() == 4 and not images.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
        if s.with_params:
            public = {k: params[k] for k in ("crop_x", "crop_y", "flip", "alpha", "index")}
            # derived only here: decoding every record's key each epoch would be wasted without with_params
            public["key"] = params["key"] if "key" in params else np.array(
                [self.index.keys[i].decode() for i in params["index"]])
            return images, labels, public
        return images, labels

    def close(self) -> None:
        release_shards()


def make_loader(settings: LoaderSettings):
    """The loader the settings ask for (DALI or torch), ready for `.epoch(e)`."""
    validate(settings)
    if settings.loader == "torch":
        from .torch_loader import TorchLoader
        return TorchLoader(settings)
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise UserError("DALI is not installed here: use --loader torch") from None
    if settings.reader == "caffe":
        return CaffeReaderLoader(settings)
    return DaliLoader(settings)


# --- DALI: processing -----------------------------------------------------------------

def process(data, anchor, flip, cmn_mean, *, encoded: bool, device: str, size: int, crop: int,
            norm: augment.Normalizer, ten_crop: bool, layout: str, dtype, roi_decode: bool = True,
            normalize_in: str = "torch", fancy_upsampling: bool = True, flip_in_graph: bool = True):
    """The processing half of the graph, for one device.

    data: encoded bytes, or (S, S, 3) uint8 pixels; anchor: (x, y) int32; flip: int32;
    cmn_mean: float32 (3,) per sample (lighting and, for per-channel normalisation, the mean).
    normalize_in "torch": uint8 crops, flipped and laid out, for `TorchNormalizer` (cmn_mean and
    dtype unused); "dali": the float work in DALI's operators too (slower on CPU, see docs).
    fancy_upsampling: the GPU decoder's chroma upsampling as libjpeg-turbo's (decode.decoder_options).
    flip_in_graph False (normalize_in "torch" only): the windows come out unmirrored, and the loader
    mirrors them on the host (`mirror_in_place`), much cheaper than DALI's CPU flip.
    """
    from nvidia.dali import fn, types
    from .decode import decoder_options
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

    def window_at(image, at):
        return fn.slice(image, at, shape, normalized_anchor=False, normalized_shape=False,
                        axis_names="WH", device=op_device)

    decoder = decoder_options(device, fancy_upsampling)
    if ten_crop:  # every view needs a different window: decode the whole image once
        image = (fn.decoders.image(data, **decoder) if encoded
                 else (data if device == "cpu" else data.gpu()))
        offsets, flips = augment.ten_crop_offsets(size, crop)
        anchors = [types.Constant(np.asarray(at, np.int32), device="cpu") for at in offsets]
        views = [finish(window_at(image, at), at, int(f)) for at, f in zip(anchors, flips)]
        return fn.stack(*views)
    if encoded and not roi_decode:  # decode-then-crop: kept to measure what ROI decode saves
        window = window_at(fn.decoders.image(data, **decoder), anchor)
    elif encoded:  # ROI decode: only the crop window is decoded
        window = fn.decoders.image_slice(data, anchor, shape, normalized_anchor=False,
                                         normalized_shape=False, axis_names="WH", **decoder)
    else:
        window = window_at(data if device == "cpu" else data.gpu(), anchor)
    return finish(window, anchor, flip)


# --- DALI: the loaders ----------------------------------------------------------------

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


def cuda_device_id(settings: LoaderSettings) -> int | None:
    """None on the CPU; on the GPU this process's CUDA device (LOCAL_RANK, else rank mod the device count)."""
    if settings.device == "cpu":
        return None
    import torch
    if not torch.cuda.is_available():
        raise UserError("device 'gpu' needs CUDA, and this machine has none: use --device cpu")
    local = os.environ.get("LOCAL_RANK")
    return int(local) if local is not None else settings.rank % torch.cuda.device_count()


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
                images, labels = pipe.run()
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
            data = np.stack([self.index.pixels(d) for d in datums])
        anchor = np.stack([params["crop_x"], params["crop_y"]], axis=1).astype(np.int32)
        return (data, anchor, params["flip"].astype(np.int32), self.cmn_mean(params["light"]),
                np.array([d.label for d in datums], np.int64))

    def _build(self, source):
        from nvidia.dali import fn, pipeline_def, types
        s, encoded = self.settings, self.index.encoded
        layout = "HWC" if s.channels_last and not self.ten_crop else "CHW"

        @pipeline_def(batch_size=self.layout.max_batch, num_threads=max(1, s.num_threads),
                      device_id=self.device_id, prefetch_queue_depth=self.PREFETCH)
        def graph():
            data, anchor, flip, cmn_mean, labels = fn.external_source(
                source=source, num_outputs=5, batch=True, cycle="raise",
                dtype=[types.UINT8, types.INT32, types.INT32, types.FLOAT, types.INT64])
            images = process(data, anchor, flip, cmn_mean, encoded=encoded, device=s.device,
                             size=self.index.size, crop=s.crop, norm=self.norm,
                             ten_crop=self.ten_crop, layout=layout, dtype=_dali_dtype(s.dtype),
                             roi_decode=self.roi_decode, normalize_in=self.normalize_in,
                             fancy_upsampling=s.fancy_upsampling, flip_in_graph=self._flip_in_graph)
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
                images, labels = pipe.run()
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
                path=[str(d) for d in self.index.dirs], shard_id=shard, num_shards=s.world_size,
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
