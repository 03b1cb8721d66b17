"""What both loader backends share: their settings, the epoch plan and step layout, the float work.

`BaseLoader` turns (seed, epoch, rank) into the per-step parameters (records, windows, flips, lighting) from
``augment.train_plan``; `TorchNormalizer` does the mean window, lighting and std of uint8 crops in torch, so the
DALI and torch backends give the same numbers.  A backend subclasses `BaseLoader` and turns the parameters into
batches (dali.py, fallback.py); loaders/__init__.py picks one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import numpy as np

from alexnet_pipe.core.devices import DEVICES
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders.jitter import JitterSpec
from alexnet_pipe.loaders.records import RecordIndex, decode_rgb, release_shards

LOADERS = ("auto", "dali", "torch")  # auto: DALI where it is installed, else torch
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LoaderSettings:
    data: Path  # data dir
    split: str = "train"
    train: bool = True  # True: random crop + flip + lighting; False: eval views
    batch_size: int = 128  # per process
    crop: int = 224
    loader: str = "auto"  # "auto" | "dali" | "torch"
    device: str = "cpu"  # "cpu" | "cuda" (core.devices)
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
    fancy_upsampling: bool = True  # DALI GPU: libjpeg-turbo's chroma upsampling (decode.decoder_options)
    crops: str = "translate"  # training crops: the paper's | "random-resized" (Inception-style windows)
    crop_scale: tuple = augment.RRC_SCALE  # random-resized: area fraction (low, high) of the stored image
    crop_ratio: tuple = augment.RRC_RATIO  # random-resized: aspect ratio w/h (low, high)
    color_jitter: float = 0.0  # brightness, contrast and saturation strength (ColorJitter(j, j, j)); 0: off
    hue: float = 0.0  # hue jitter, a fraction of the colour circle in [-hue, hue] (<= 0.5); 0: off


def validate(s: LoaderSettings) -> None:
    choices = {"loader": LOADERS, "device": DEVICES, "lighting_scale": augment.LIGHTING_SCALES,
               "normalize": augment.NORMALIZE, "views": augment.VIEWS, "dtype": DTYPES,
               "crops": augment.CROP_MODES}
    for name, allowed in choices.items():
        if getattr(s, name) not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, not {getattr(s, name)!r}")
    if s.batch_size < 1 or s.crop < 1 or s.num_threads < 0 or s.lighting < 0:
        raise UserError("batch_size and crop must be positive, num_threads and lighting not negative")
    if not 0 <= s.rank < s.world_size:
        raise UserError(f"rank {s.rank} is outside 0..{s.world_size - 1}")
    _validate_modern(s)


def _validate_modern(s: LoaderSettings) -> None:
    """The random-resized windows and the colour jitter (docs/pipeline.md, "the modern augmentations")."""
    for name in ("crop_scale", "crop_ratio"):
        pair = getattr(s, name)
        if len(pair) != 2 or not 0 < pair[0] <= pair[1] or not all(np.isfinite(pair)):
            raise UserError(f"{name} must be two numbers low,high with 0 < low <= high, not {pair!r}")
    if not (s.color_jitter >= 0 and 0 <= s.hue <= 0.5):
        raise UserError(f"color_jitter must be >= 0 and hue within 0..0.5, not {s.color_jitter} and {s.hue}")
    if s.crops == "random-resized" and s.normalize == "mean-image":
        # resizing the mean window per sample would double the resize work (and, on CUDA, mean a host
        # resize and copy per batch) for a normalisation the modern recipe does not use
        raise UserError("random-resized crops need per-channel normalisation (`alexnet-pipe train --normalize "
                        "channel`, which the modern recipe sets): the mean image is defined per stored pixel, and a "
                        "resized window no longer lines up with it")


def cuda_device_id(settings: LoaderSettings) -> int | None:
    """None on the CPU; on the GPU this process's CUDA device (LOCAL_RANK, else rank mod the device count)."""
    if settings.device == "cpu":
        return None
    import torch
    if not torch.cuda.is_available():
        raise UserError("a loader on the GPU needs CUDA, and this machine has none: use --device cpu")
    local = os.environ.get("LOCAL_RANK")
    return int(local) if local is not None else settings.rank % torch.cuda.device_count()


# --- the float work and the plan -----------------------------------------------------

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

    def __call__(self, crops, xs, ys, flips, light, channels_last: bool = False, jitter=None):
        """crops: uint8 (N, c, c, 3), flipped; xs, ys, flips: (N,) numpy; light: (N, 3) float32;
        jitter: None, or ((N, 4) factors, (N, 4) op order) of jitter.py, applied to the float crop first.

        Returns float32 (N, 3, c, c), in channels_last memory format if asked."""
        # one call for every device, so the CPU tests check the arguments a GPU run gets too
        with _one_torch_thread() if crops.device.type == "cpu" else contextlib.nullcontext():
            return self._apply(crops, xs, ys, flips, light, channels_last, jitter=jitter)

    def _apply(self, crops, xs, ys, flips, light, channels_last, batched: bool | None = None, jitter=None):
        """batched (default on CUDA): one gather and two kernels for the whole batch; a GPU would
        otherwise spend more on 2 launches per sample than on the work. Per sample (the CPU
        default) measured ~4x faster on the CPU. Same operations in the same order: equal results.

        With jitter, the uint8 crops are first copied into the float output and jittered there (as
        torchvision's ColorJitter works on the image, before Lighting and Normalize); the
        normalisation then reads the output in place instead of the uint8 crops."""
        import torch
        n, c, dev = len(crops), self.crop, crops.device
        if batched is None:
            batched = dev.type == "cuda"
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = self._pool.get((n, 3, c, c), dev, fmt)
        # elementwise ops are fastest with every operand in the output's memory order
        dst, src = (out.permute(0, 2, 3, 1), crops) if channels_last else (out, crops.permute(0, 3, 1, 2))
        if jitter is not None:
            src = self._jittered(out, dst, src, jitter, batched)
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

    @staticmethod
    def _jittered(out, dst, src, jitter, batched: bool):
        """Copy the uint8 crops into the float output and jitter them there; -> the new source (`dst`
        itself: every later op reads one element and writes the same one, so in place is safe)."""
        from alexnet_pipe.loaders.jitter import jitter_one_, jitter_batch_
        factors, order = np.asarray(jitter[0], np.float32), np.asarray(jitter[1])
        if batched:
            dst.copy_(src)
            jitter_batch_(out, factors, order, per_image=False)
            return dst
        for i, (f, ops) in enumerate(zip(factors.tolist(), order.tolist())):
            dst[i].copy_(src[i])  # one image at a time, so it is still in cache for its ops
            jitter_one_(out[i:i + 1], f, ops)
        return dst


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
            return augment.train_plan(len(self.index), seed=s.seed, epoch=epoch, size=size, crop=s.crop,
                                      sigma=self.sigma, crops=s.crops, scale=tuple(s.crop_scale),
                                      ratio=tuple(s.crop_ratio), jitter=JitterSpec.strength(s.color_jitter, s.hue))
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

    def normalize(self, crops, params: dict):
        """uint8 HWC crops, already flipped ((B, c, c, 3), ten-crop (B, 10, c, c, 3)) -> the
        float32 NCHW batch ((B, 3, c, c), ten-crop (B, 10, 3, c, c))."""
        xs, ys, flips = self.window_params(params)
        if self.ten_crop:  # every view at its fixed offset, no lighting; 5-D stays NCHW
            b, c = len(crops), self.settings.crop
            flat = self.normalizer(crops.reshape(b * 10, c, c, 3), xs, ys, flips, np.zeros((b * 10, 3), np.float32))
            return flat.view(b, 10, 3, c, c)
        jitter = (params["jitter"], params["jitter_order"]) if "jitter" in params else None
        return self.normalizer(crops, xs, ys, flips, params["light"], channels_last=self.settings.channels_last,
                               jitter=jitter)

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
            public = {k: params[k] for k in ("crop_x", "crop_y", "flip", "alpha", "index", "window",
                                             "jitter", "jitter_order") if k in params}
            # derived only here: decoding every record's key each epoch would be wasted without with_params
            public["key"] = params["key"] if "key" in params else np.array(
                [os.fsdecode(self.index.keys[i]) for i in params["index"]])  # keys of non-UTF-8 names: raw bytes
            return images, labels, public
        return images, labels

    def raise_damaged(self, in_flight: list[dict]) -> None:
        """Raise shards.DamagedRecord for the first record of these batches that does not decode: a backend
        that decodes out of sight (DALI, DataLoader workers) only learns that something in a batch failed."""
        for i in (int(i) for params in in_flight for i in params["index"] if i >= 0):
            decode_rgb(self.index.read(i), self.index, i)

    def close(self) -> None:
        release_shards()
