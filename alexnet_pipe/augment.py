"""The augmentation maths shared by the DALI and the torch loaders (numpy only, no I/O but stats).

Everything random is drawn here, in numpy, from ``(seed, epoch)`` alone, before any image is
read: the epoch's permutation of the records and, for each position of that permutation, the
crop offset, the flip and the lighting alphas.  The loaders only apply them.  That is what makes
an epoch reproducible, resumable at any step (``epoch(e, start_step=k)`` is the tail of
``epoch(e)``), independent of thread timing, and identical between the DALI and torch loaders.

Conventions (docs/pipeline.md):
  * offsets are ``(x, y)`` of the crop's top-left corner, each uniform over ``0..S-crop``;
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
import json
from pathlib import Path

import numpy as np

from .errors import UserError

LIGHTING_SCALES = ("convnet2", "fbresnet")
NORMALIZE = ("mean-image", "channel")
VIEWS = ("center", "ten-crop")
TEN_CROP_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right", "centre",
                  "top-left flipped", "top-right flipped", "bottom-left flipped",
                  "bottom-right flipped", "centre flipped")

# SeedSequence spawn keys: one independent stream per purpose, so adding a stream never
# changes the others.
_STREAM_ORDER, _STREAM_PARAMS = 0, 1


# --- offsets --------------------------------------------------------------------------

def centre_offset(size: int, crop: int) -> int:
    """Top-left of the centre crop (floor when size - crop is odd)."""
    return (size - crop) // 2


def ten_crop_offsets(size: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """((10, 2) int (x, y) offsets, (10,) bool flips) in TEN_CROP_NAMES order."""
    far, mid = size - crop, centre_offset(size, crop)
    five = np.array([[0, 0], [far, 0], [0, far], [far, far], [mid, mid]], np.int32)
    return np.concatenate([five, five]), np.repeat([False, True], 5)


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
        path = stats_dir / "mean.npy"
        if not path.is_file():
            raise UserError(f"{path} is missing: the mean image is needed for mean subtraction; "
                            "run `alexnet-pipe stats` first (or use --normalize channel)")
        mean = np.load(path).astype(np.float32)
        if mean.shape != (size, size, 3):
            raise UserError(f"{path} has shape {mean.shape}, the shards hold {size}x{size} images: "
                            "run `alexnet-pipe stats` again")
        return Normalizer(mode, mean_image=mean)
    if mode == "channel":
        doc = _pca_doc(stats_dir, "per-channel mean/std", "run `alexnet-pipe stats` first")
        try:
            mean, std = (np.asarray(doc[k], np.float32).reshape(3) for k in ("mean_rgb", "std_rgb"))
        except (KeyError, ValueError):
            raise UserError(f"{stats_dir / 'pca.json'} has no usable mean_rgb/std_rgb: "
                            "run `alexnet-pipe stats` again") from None
        if np.any(std <= 0):
            raise UserError(f"{stats_dir / 'pca.json'} has a zero channel std")
        return Normalizer(mode, mean_rgb=mean, std_rgb=std)
    raise ValueError(f"normalize must be one of {NORMALIZE}, not {mode!r}")


def load_eigen(stats_dir: Path, scale: str) -> Eigen:
    doc = _pca_doc(stats_dir, "PCA lighting", "run `alexnet-pipe stats --pca` first (or turn lighting off: --lighting 0)")
    src = doc.get("fbresnet") if scale == "fbresnet" else doc
    try:
        eigval = np.asarray(src["eigval"], np.float64).reshape(3)
        eigvec = np.asarray(src["eigvec"], np.float64).reshape(3, 3)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{Path(stats_dir) / 'pca.json'} holds no {scale} eigenpairs: "
                        "run `alexnet-pipe stats --pca` first (or turn lighting off: --lighting 0)") from None
    return Eigen(eigval, eigvec, scale)


def _pca_doc(stats_dir: Path, purpose: str, fix: str) -> dict:
    path = Path(stats_dir) / "pca.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing and {purpose} needs it: {fix}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc}): {fix}") from None


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
    """For each position of one epoch: the record, its crop offset, flip and lighting alpha."""
    order: np.ndarray  # (n,) int64 record indices
    crop_xy: np.ndarray  # (n, 2) int32 (x, y)
    flip: np.ndarray  # (n,) bool
    alpha: np.ndarray  # (n, 3) float32

    def take(self, start: int, size: int) -> dict:
        sl = slice(start, start + size)
        return {"index": self.order[sl], "crop_x": self.crop_xy[sl, 0], "crop_y": self.crop_xy[sl, 1],
                "flip": self.flip[sl], "alpha": self.alpha[sl]}


def train_plan(n: int, *, seed: int, epoch: int, size: int, crop: int, sigma: float) -> EpochPlan:
    """A fresh permutation and fresh augmentation parameters, from (seed, epoch) alone."""
    order_rng, param_rng = (np.random.default_rng(np.random.SeedSequence([seed, epoch, k]))
                            for k in (_STREAM_ORDER, _STREAM_PARAMS))
    order = order_rng.permutation(n).astype(np.int64)
    crop_xy = param_rng.integers(0, size - crop + 1, (n, 2), dtype=np.int32)
    flip = param_rng.random(n) < 0.5
    alpha = (param_rng.normal(0.0, sigma, (n, 3)) if sigma > 0 else np.zeros((n, 3))).astype(np.float32)
    return EpochPlan(order, crop_xy, flip, alpha)


def eval_plan(n: int, *, size: int, crop: int) -> EpochPlan:
    """Records in key order, centre offsets, no flip, no lighting (ten-crop ignores the offsets)."""
    mid = centre_offset(size, crop)
    return EpochPlan(np.arange(n, dtype=np.int64), np.full((n, 2), mid, np.int32),
                     np.zeros(n, bool), np.zeros((n, 3), np.float32))


# --- the pixels of a view (the torch loader's; TorchNormalizer does the float work) --------

def flipped_window(image: np.ndarray, x: int, y: int, crop: int, flip: bool) -> np.ndarray:
    """(crop, crop, 3) uint8 HWC: the crop window of an (S, S, 3) image, mirrored if `flip`
    (what the DALI graph hands to the normalisation)."""
    window = image[y:y + crop, x:x + crop]
    return np.ascontiguousarray(window[:, ::-1] if flip else window)


def ten_windows(image: np.ndarray, crop: int) -> np.ndarray:
    """(10, crop, crop, 3) uint8 in TEN_CROP_NAMES order."""
    offsets, flips = ten_crop_offsets(image.shape[0], crop)
    return np.stack([flipped_window(image, int(x), int(y), crop, bool(f))
                     for (x, y), f in zip(offsets, flips)])
