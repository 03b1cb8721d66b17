"""The augmentation maths shared by the DALI and the torch loaders (numpy only, no I/O but stats).

Everything random is drawn here, in numpy, from ``(seed, epoch)`` alone, before any image is
read: the epoch's permutation of the records and, for each position of that permutation, the
crop offset (or, for random-resized crops, the window), the flip, the lighting alphas and the
colour-jitter factors.  The loaders only apply them.  That is what makes
an epoch reproducible, resumable at any step (``epoch(e, start_step=k)`` is the tail of
``epoch(e)``), independent of thread timing, and identical between the DALI and torch loaders.

Conventions (docs/pipeline.md):
  * offsets are ``(x, y)`` of the crop's top-left corner, each uniform over ``0..S-crop``;
  * windows are ``(x, y, w, h)`` in the stored image, resized to crop x crop (``resized_window``);
    the paper's crops are the windows ``(x, y, crop, crop)``;
  * lighting adds the same RGB vector to every pixel of an image, in 0..255 units:
      - "convnet2" (Krizhevsky's cuda-convnet2): ``eigvec @ (alpha * sqrt(eigval))``, eigval the
        variances of 0..255 pixel values;
      - "fbresnet" (fb.resnet.torch / MXNet): ``255 * eigvec_fb @ (alpha * eigval_fb)``, eigval_fb the
        variances of [0, 1] pixel values;
  * ten-crop order: top-left, top-right, bottom-left, bottom-right, centre, then the same five
    horizontally reflected.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import math

import numpy as np

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.stats.readers import MEAN, PCA, read_mean, read_pca
from alexnet_pipe.loaders.jitter import JitterSpec

LIGHTING_SCALES = ("convnet2", "fbresnet")
NORMALIZE = ("mean-image", "channel")
VIEWS = ("center", "ten-crop")
CROP_MODES = ("translate", "random-resized")  # the paper's translations | Inception-style windows
RRC_SCALE, RRC_RATIO, RRC_ATTEMPTS = (0.08, 1.0), (3 / 4, 4 / 3), 10
TEN_CROP_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right", "centre",
                  "top-left flipped", "top-right flipped", "bottom-left flipped",
                  "bottom-right flipped", "centre flipped")

# SeedSequence spawn keys: one independent stream per purpose, so adding a stream never
# changes the others.
# The paper's draws all come from _STREAM_PARAMS in a fixed order; the modern augmentations take
# streams of their own, so the paper recipe's plan is the same whatever they are set to.
_STREAM_ORDER, _STREAM_PARAMS, _STREAM_WINDOWS, _STREAM_JITTER = 0, 1, 2, 3


# --- offsets --------------------------------------------------------------------------

def centre_offset(size: int, crop: int) -> int:
    """Top-left of the centre crop (floor when size - crop is odd)."""
    return (size - crop) // 2


def ten_crop_offsets(size: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """((10, 2) int (x, y) offsets, (10,) bool flips) in TEN_CROP_NAMES order."""
    far, mid = size - crop, centre_offset(size, crop)
    five = np.array([[0, 0], [far, 0], [0, far], [far, far], [mid, mid]], np.int32)
    return np.concatenate([five, five]), np.repeat([False, True], 5)


# --- random-resized windows (Inception-style, torchvision's RandomResizedCrop.get_params) ---

def fallback_window(height: int, width: int, ratio=RRC_RATIO) -> tuple[int, int, int, int]:
    """(x, y, w, h) when no attempt fits: the image's own aspect ratio clamped to `ratio`, the
    largest such window, centred (the whole image when its ratio is within the bounds)."""
    lo, hi = min(ratio), max(ratio)
    w, h = width, height
    if width / height < lo:
        h = int(round(width / lo))
    elif width / height > hi:
        w = int(round(height * hi))
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_windows(rng: np.random.Generator, n: int, height: int, width: int, *,
                           scale=RRC_SCALE, ratio=RRC_RATIO, attempts: int = RRC_ATTEMPTS) -> np.ndarray:
    """(n, 4) int32 (x, y, w, h): per image, the first of `attempts` draws (area fraction uniform
    in `scale`, aspect ratio w/h log-uniform in `ratio`, sides rounded half to even like Python's
    round) whose window fits, at a uniform position; else ``fallback_window``.

    Every image consumes the same draws whether or not an attempt fits, so a window depends only
    on the generator's state, never on how many attempts the images before it needed.  Drawn in
    blocks of a fixed size (part of the stream's definition) to bound the memory of an epoch of
    ImageNet (~30 MB of temporaries instead of ~700 MB).
    """
    blocks = [_window_block(rng, min(_WINDOW_BLOCK, n - start), height, width, scale, ratio, attempts)
              for start in range(0, n, _WINDOW_BLOCK)]
    return np.concatenate(blocks) if blocks else np.zeros((0, 4), np.int32)


_WINDOW_BLOCK = 1 << 16


def _window_block(rng, n, height, width, scale, ratio, attempts) -> np.ndarray:
    area = height * width * rng.uniform(scale[0], scale[1], (n, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, attempts)))
    w = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = np.argmax(fits, axis=1)  # the first attempt that fits (0 when none does: replaced below)
    w, h = w[np.arange(n), first], h[np.arange(n), first]
    fell_back = ~fits.any(axis=1)
    fx, fy, fw, fh = fallback_window(height, width, ratio)
    w[fell_back], h[fell_back] = fw, fh
    x = rng.integers(0, width - w + 1)  # every span is >= 1: a fallback window fits too
    y = rng.integers(0, height - h + 1)
    x[fell_back], y[fell_back] = fx, fy
    return np.stack([x, y, w, h], axis=1).astype(np.int32)


def check_window(shape, window) -> tuple[int, int, int, int]:
    """The window (x, y, w, h) as ints, or ValueError where it is not inside an image of this (H, W, ...) shape."""
    x, y, w, h = (int(v) for v in window)
    if not (0 <= x and 0 <= y and 0 < w and 0 < h and x + w <= shape[1] and y + h <= shape[0]):
        raise ValueError(f"window {(x, y, w, h)} is outside the {shape[1]}x{shape[0]} image")
    return x, y, w, h


def cut_window(image: np.ndarray, window, crop: int, flip: bool) -> np.ndarray:
    """(crop, crop, 3) uint8: the window (x, y, w, h) as it is where it is the crop's size (unflipped, a view of
    the image: whoever reads it reads it once), else resized to it (resized_window); mirrored if `flip`."""
    x, y, w, h = check_window(image.shape, window)
    if w == h == crop:
        return flipped_window(image, x, y, crop, True) if flip else image[y:y + crop, x:x + crop]
    return resized_window(image, (x, y, w, h), crop, flip)


def resized_window(image: np.ndarray, window, crop: int, flip: bool = False) -> np.ndarray:
    """(crop, crop, C) of the image's `window` (x, y, w, h) resized bilinearly (cv2 INTER_LINEAR:
    pixel centres aligned, no antialiasing), mirrored if `flip`: the reference both loaders' resized
    crops are compared to.  uint8 in, uint8 out (float32 works too, e.g. for the mean image)."""
    import cv2
    x, y, w, h = check_window(image.shape, window)
    out = cv2.resize(image[y:y + h, x:x + w], (crop, crop), interpolation=cv2.INTER_LINEAR)
    if flip:
        out = cv2.flip(out, 1)  # numpy's reversed copy of 3-byte pixels costs ~40x more (~0.9 ms at 224 px)
    return out.reshape(crop, crop, -1)  # cv2 drops a single channel axis


# --- lighting -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Eigen:
    """RGB eigenpairs in one scale convention; columns of eigvec are the eigenvectors."""
    eigval: np.ndarray  # (3,)
    eigvec: np.ndarray  # (3, 3)
    scale: str


def lighting_noise(alpha: np.ndarray, eigen: Eigen) -> np.ndarray:
    """(n, 3) alphas -> (n, 3) float32 RGB offsets in 0..255 units."""
    alpha = np.asarray(alpha, np.float64).reshape(-1, 3)
    if eigen.scale == "convnet2":
        weights = alpha * np.sqrt(np.maximum(eigen.eigval, 0.0))
        return (weights @ eigen.eigvec.T).astype(np.float32)
    if eigen.scale == "fbresnet":
        return (255.0 * (alpha * eigen.eigval) @ eigen.eigvec.T).astype(np.float32)
    raise ValueError(f"lighting scale must be one of {LIGHTING_SCALES}, not {eigen.scale!r}")


# --- statistics files -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Normalizer:
    """What is subtracted and divided: the mean image (S,S,3) or per-channel mean/std (RGB, 0..255)."""
    mode: str
    mean_image: np.ndarray | None = None  # float32 (S, S, 3)
    mean_rgb: np.ndarray | None = None  # float32 (3,)
    std_rgb: np.ndarray | None = None  # float32 (3,)


def load_normalizer(stats_dir: Path, mode: str, size: int) -> Normalizer:
    stats_dir = Path(stats_dir)
    if mode == "mean-image":
        mean = read_mean(stats_dir / MEAN, size, hint="the mean image is needed for mean subtraction; "
                         "run `alexnet-pipe stats` first")
        return Normalizer(mode, mean_image=mean)
    if mode == "channel":
        doc = _pca_doc(stats_dir, "per-channel mean/std", "run `alexnet-pipe stats` first")
        try:
            mean, std = (np.asarray(doc[k], np.float32).reshape(3) for k in ("mean_rgb", "std_rgb"))
        except (KeyError, ValueError):
            raise UserError(f"{stats_dir / PCA} has no usable mean_rgb/std_rgb: "
                            "run `alexnet-pipe stats` again") from None
        if np.any(std <= 0):
            raise UserError(f"{stats_dir / PCA} has a zero channel std")
        return Normalizer(mode, mean_rgb=mean, std_rgb=std)
    raise ValueError(f"normalize must be one of {NORMALIZE}, not {mode!r}")


def load_eigen(stats_dir: Path, scale: str) -> Eigen:
    doc = _pca_doc(stats_dir, "PCA lighting", "run `alexnet-pipe stats --pca` first (or turn lighting off: --lighting 0)",
                   need_pca=True)
    src = doc.get("fbresnet") if scale == "fbresnet" else doc
    try:
        eigval = np.asarray(src["eigval"], np.float64).reshape(3)
        eigvec = np.asarray(src["eigvec"], np.float64).reshape(3, 3)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{Path(stats_dir) / PCA} holds no {scale} eigenpairs: "
                        "run `alexnet-pipe stats --pca` first (or turn lighting off: --lighting 0)") from None
    return Eigen(eigval, eigvec, scale)


def _pca_doc(stats_dir: Path, purpose: str, fix: str, need_pca: bool = False) -> dict:
    """pca.json, checked (stats.readers.read_pca: finite numbers, 3 and 3x3 shapes, eigenpairs where needed)."""
    return read_pca(Path(stats_dir) / PCA, need_pca=need_pca, hint=f"{purpose} needs it: {fix}")


# --- the epoch schedule ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepLayout:
    """How `n` records split into steps and ranks so that every record is used once per epoch.

    Steps take `batch_size * world_size` consecutive positions of the epoch's order, rank r the
    r-th contiguous chunk.  The remainder R = n mod (B*W) is spread explicitly:
      * R == 0: every batch is full;
      * R >= W: one more step whose global batch of R is split as evenly as possible (every rank
        gets at least one record);
      * 0 < R < W: the last full step absorbs it (some ranks get B + 1 records).
    So every rank has the same number of steps (DDP never waits on a missing one), and no record
    is dropped or repeated.
    """
    n: int
    batch_size: int
    world_size: int

    def __post_init__(self):
        if self.n < self.world_size:
            raise UserError(f"{self.n} records cannot be split over {self.world_size} processes")

    @property
    def _global(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps(self) -> int:
        full, rest = divmod(self.n, self._global)
        return full + (1 if rest >= self.world_size else 0)

    @property
    def max_batch(self) -> int:
        rest = self.n % self._global
        return self.batch_size + (1 if 0 < rest < self.world_size else 0)

    def step_span(self, step: int) -> tuple[int, int]:
        """(start, global size) of one step in epoch positions."""
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} outside 0..{self.steps - 1}")
        start = step * self._global
        size = self.n - start if step == self.steps - 1 else self._global
        return start, size

    def rank_span(self, step: int, rank: int) -> tuple[int, int]:
        """(start, size) of one rank's batch at one step, in epoch positions."""
        start, size = self.step_span(step)
        base, extra = divmod(size, self.world_size)
        return start + rank * base + min(rank, extra), base + (1 if rank < extra else 0)

    def rank_records(self, rank: int) -> int:
        return sum(self.rank_span(s, rank)[1] for s in range(self.steps))


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """For each position of one epoch: the record, its crop offset and window, flip, lighting alpha
    and (when asked for) its colour-jitter factors and their order."""
    order: np.ndarray  # (n,) int64 record indices
    crop_xy: np.ndarray  # (n, 2) int32 (x, y): the window's top-left
    flip: np.ndarray  # (n,) bool
    alpha: np.ndarray  # (n, 3) float32
    window: np.ndarray  # (n, 4) int32 (x, y, w, h); the paper's crops: (x, y, crop, crop)
    jitter: np.ndarray | None = None  # (n, 4) float32 (brightness, contrast, saturation, hue)
    jitter_order: np.ndarray | None = None  # (n, 4) int8: the ops' order, a permutation of 0..3

    def take(self, start: int, size: int) -> dict:
        sl = slice(start, start + size)
        out = {"index": self.order[sl], "crop_x": self.crop_xy[sl, 0], "crop_y": self.crop_xy[sl, 1],
               "flip": self.flip[sl], "alpha": self.alpha[sl], "window": self.window[sl]}
        if self.jitter is not None:
            out["jitter"], out["jitter_order"] = self.jitter[sl], self.jitter_order[sl]
        return out


def train_plan(n: int, *, seed: int, epoch: int, size: int, crop: int, sigma: float,
               crops: str = "translate", scale=RRC_SCALE, ratio=RRC_RATIO,
               jitter: JitterSpec | None = None) -> EpochPlan:
    """A fresh permutation and fresh augmentation parameters, from (seed, epoch) alone.

    The paper's draws (offsets, flips, alphas) are made whatever `crops` and `jitter` say, so
    turning the modern augmentations on changes neither the order, the flips nor the alphas."""
    if crops not in CROP_MODES:
        raise ValueError(f"crops must be one of {CROP_MODES}, not {crops!r}")
    order_rng, param_rng, window_rng, jitter_rng = (
        np.random.default_rng(np.random.SeedSequence([seed, epoch, k]))
        for k in (_STREAM_ORDER, _STREAM_PARAMS, _STREAM_WINDOWS, _STREAM_JITTER))
    order = order_rng.permutation(n).astype(np.int64)
    crop_xy = param_rng.integers(0, size - crop + 1, (n, 2), dtype=np.int32)
    flip = param_rng.random(n) < 0.5
    alpha = (param_rng.normal(0.0, sigma, (n, 3)) if sigma > 0 else np.zeros((n, 3))).astype(np.float32)
    if crops == "translate":
        window = np.concatenate([crop_xy, np.full((n, 2), crop, np.int32)], axis=1)
    else:
        window = random_resized_windows(window_rng, n, size, size, scale=scale, ratio=ratio)
        crop_xy = np.ascontiguousarray(window[:, :2])
    factors, ops = jitter.draw(jitter_rng, n) if jitter is not None and jitter.active else (None, None)
    return EpochPlan(order, crop_xy, flip, alpha, window, factors, ops)


def eval_plan(n: int, *, size: int, crop: int) -> EpochPlan:
    """Records in key order, centre offsets, no flip, no lighting (ten-crop ignores the offsets)."""
    mid = centre_offset(size, crop)
    return EpochPlan(np.arange(n, dtype=np.int64), np.full((n, 2), mid, np.int32),
                     np.zeros(n, bool), np.zeros((n, 3), np.float32),
                     np.tile(np.array([[mid, mid, crop, crop]], np.int32), (n, 1)))


# --- the pixels of a view (the torch loader's; TorchNormalizer does the float work) --------

def flipped_window(image: np.ndarray, x: int, y: int, crop: int, flip: bool) -> np.ndarray:
    """(crop, crop, 3) uint8 HWC: the crop window of an (S, S, 3) image, mirrored if `flip`
    (what the DALI graph hands to the normalisation)."""
    window = image[y:y + crop, x:x + crop]
    if not flip:
        return np.ascontiguousarray(window)
    import cv2
    # numpy's reversed copy walks 3-byte pixels one element at a time: ~0.9 ms at 224 px, against ~25 us here
    return cv2.flip(window, 1)


def ten_windows(image: np.ndarray, crop: int) -> np.ndarray:
    """(10, crop, crop, 3) uint8 in TEN_CROP_NAMES order."""
    offsets, flips = ten_crop_offsets(image.shape[0], crop)
    return np.stack([flipped_window(image, int(x), int(y), crop, bool(f))
                     for (x, y), f in zip(offsets, flips)])
