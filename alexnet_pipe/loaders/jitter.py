"""Colour jitter as torchvision's ColorJitter defines it, on float pixels in 0..255.

Each op is torchvision's float-tensor definition scaled by 255 (its float images live in [0, 1]):
  * brightness b: ``clip(b * x)``;
  * contrast c: ``clip(c * x + (1 - c) * m)``, m the mean of the image's grayscale;
  * saturation s: ``clip(s * x + (1 - s) * gray(x))``;
  * hue h (a fraction of the colour circle, |h| <= 0.5): rotate the HSV hue by h;
where gray is torchvision's luma (0.2989 R + 0.587 G + 0.114 B, its rgb_to_grayscale; not truncated:
the float path) and clip is to [0, 255] after every op.  b, c, s are drawn uniform in [max(0, 1 - j), 1 + j], h in
[-hue, hue], and the four ops run in an order drawn per image, as ColorJitter does.

Why the random order is kept: without the clipping, brightness, contrast and saturation are
linear maps that commute (the grey level is linear and each blend keeps the mean grey), which is
why DALI's ``color_twist`` can fold them into one matrix.  The order only shows where a pixel is
clipped between two ops, and around the hue rotation, which does not commute with saturation.
Keeping torchvision's semantics exactly costs nothing here: each image still gets each op once.
DALI's own colour ops are not used: ``fn.hsv`` approximates the hue rotation by a linear RGB
transform and ``fn.contrast`` centres on a fixed value (128), not the image's mean grey.

The numpy functions are the references (HWC); ``jitter_batch_`` is the batched torch version
the loaders apply to the float NCHW batch before the normalisation.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from alexnet_pipe.core.colour import hsv_to_rgb  # the inverse of rgb_to_hsv below

OPS = ("brightness", "contrast", "saturation", "hue")
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
IDENTITY = np.array([1.0, 1.0, 1.0, 0.0], np.float32)  # the factors that leave an image unchanged
LUMA = np.array([0.2989, 0.587, 0.114])  # torchvision's rgb_to_grayscale weights (ITU-R 601-2 as it rounds them)


@dataclasses.dataclass(frozen=True)
class JitterSpec:
    """The jitter strengths: b, c, s factors in [max(0, 1 - j), 1 + j], hue in [-hue, hue]."""
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self):
        if min(self.brightness, self.contrast, self.saturation, self.hue) < 0:
            raise ValueError(f"jitter strengths must be >= 0, not {self}")
        if self.hue > 0.5:
            raise ValueError(f"hue jitter must be at most 0.5 (half the colour circle), not {self.hue}")

    @classmethod
    def strength(cls, j: float, hue: float = 0.0) -> JitterSpec:
        """ColorJitter(j, j, j, hue), the usual "colour jitter j"."""
        return cls(j, j, j, hue)

    @property
    def active(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), (4,) each, in OPS order."""
        low = [max(0.0, 1.0 - j) for j in (self.brightness, self.contrast, self.saturation)] + [-self.hue]
        high = [1.0 + j for j in (self.brightness, self.contrast, self.saturation)] + [self.hue]
        return np.array(low), np.array(high)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """((n, 4) float32 factors in OPS order, (n, 4) int8 op order per image).  A fixed number of
        draws per image whatever the strengths, so each image's factors depend on its position only."""
        low, high = self.bounds()
        factors = (low + (high - low) * rng.random((n, 4))).astype(np.float32)
        order = rng.permuted(np.tile(np.arange(4, dtype=np.int8), (n, 1)), axis=1)
        return factors, order


# --- numpy references, one image (H, W, 3) float in 0..255 ------------------------------

def grayscale(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float64) @ LUMA


def adjust_brightness(image: np.ndarray, b: float) -> np.ndarray:
    return np.clip(np.asarray(image, np.float64) * b, 0.0, 255.0)


def adjust_contrast(image: np.ndarray, c: float) -> np.ndarray:
    mean = grayscale(image).mean()
    return np.clip(c * np.asarray(image, np.float64) + (1.0 - c) * mean, 0.0, 255.0)


def adjust_saturation(image: np.ndarray, s: float) -> np.ndarray:
    gray = grayscale(image)[..., None]
    return np.clip(s * np.asarray(image, np.float64) + (1.0 - s) * gray, 0.0, 255.0)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (..., 3) HSV in [0, 1] (hue as a fraction of the circle; grey: 0)."""
    r, g, b = np.moveaxis(np.asarray(rgb, np.float64), -1, 0)
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    d = np.where(delta > 0, delta, 1.0)
    h = np.select([v == r, v == g], [(g - b) / d, 2.0 + (b - r) / d], 4.0 + (r - g) / d)
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1.0), 0.0)
    return np.stack([h, s, v], axis=-1)


def adjust_hue(image: np.ndarray, h: float) -> np.ndarray:
    hsv = rgb_to_hsv(np.asarray(image, np.float64) / 255.0)
    hsv[..., 0] = (hsv[..., 0] + h) % 1.0
    return hsv_to_rgb(hsv) * 255.0


ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def jitter_image(image: np.ndarray, factors, order) -> np.ndarray:
    """One image's jitter: the ops in `order`, each with its factor (identity factors skipped)."""
    out = np.asarray(image, np.float64)
    for op in order:
        if factors[op] != IDENTITY[op]:
            out = ADJUST[op](out, float(factors[op]))
    return out


# --- torch, batched: (B, 3, H, W) float in 0..255, any memory format ---------------------

def jitter_batch_(x, factors: np.ndarray, order: np.ndarray, per_image: bool | None = None):
    """Jitter a float batch in place (and return it).

    per_image (the default on the CPU): each image's ops run in its order on a view of it, every
    op in place, so the image stays in cache and nothing is copied.  Batched (the default
    elsewhere, where a launch per image would cost more than the work): at each of the four
    positions, each op runs once on the images that have it there.  Both skip identity factors."""
    factors = np.asarray(factors, np.float32)
    order = np.asarray(order)
    if per_image is None:
        per_image = x.device.type == "cpu"
    if per_image:
        for i, (f, ops) in enumerate(zip(factors.tolist(), order.tolist())):
            jitter_one_(x[i:i + 1], f, ops)
        return x
    import torch
    table = torch.as_tensor(factors, device=x.device).to(x.dtype)
    for position in range(4):
        for op in range(4):
            sel = np.flatnonzero((order[:, position] == op) & (factors[:, op] != IDENTITY[op]))
            if sel.size:
                idx = torch.as_tensor(sel, device=x.device)
                x[idx] = _TORCH_ADJUST[op](x[idx], table[idx, op].view(-1, 1, 1, 1))
    return x


def jitter_one_(view, factors, ops):
    """One image, (1, 3, H, W) float in 0..255 (a view into a batch is fine), in place: the
    normaliser's per-sample loop can call it between the uint8 -> float copy and the mean."""
    for op in ops:
        if factors[op] != IDENTITY[op]:
            _TORCH_ADJUST[op](view, float(factors[op]))
    return view


# Each op works in place on (B, 3, H, W) with a float factor or a (B, 1, 1, 1) tensor of them.

def _gray_t(x):
    import torch
    luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * luma).sum(dim=1, keepdim=True)


def _brightness_t(x, b):
    return x.mul_(b).clamp_(0.0, 255.0)


def _contrast_t(x, c):
    import torch
    luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
    mean = (x.mean(dim=(2, 3)) * luma).sum(dim=1).view(-1, 1, 1, 1)  # the grey's mean, from 3 numbers
    return x.mul_(c).add_((1.0 - c) * mean).clamp_(0.0, 255.0)


def _saturation_t(x, s):
    gray = _gray_t(x)
    return x.mul_(s).add_(gray.mul_(1.0 - s)).clamp_(0.0, 255.0)


def _hue_t(x, h):
    """Hue rotation through HSV, with the closed form of HSV -> RGB: channel n (R 5, G 3, B 1) is
    v - v s clip(min(k, 4 - k), 0, 1), k = (n + 6 hue) mod 6."""
    import torch
    rgb = x / 255.0
    r, g, b = rgb.unbind(dim=1)
    v, low = rgb.amax(dim=1), rgb.amin(dim=1)
    delta = v - low
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(v == r, (g - b) / d, torch.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    shift = h.view(-1, 1, 1) if isinstance(h, torch.Tensor) else h
    hue = torch.remainder(hue + shift, 1.0)
    sat = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(n + 6.0 * hue, 6.0)
        x[:, c] = (v - v * sat * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)) * 255.0
    return x


_TORCH_ADJUST = (_brightness_t, _contrast_t, _saturation_t, _hue_t)
