"""Colour jitter of one float32 HWC image with OpenCV, fused: jitter.py's ops for the DataLoader workers.

Brightness, contrast and saturation are affine maps of a pixel's RGB vector (contrast's offset is the
image's mean grey), and the clip to [0, 255] after each op only acts when its factor is above 1: with a
factor f <= 1 each op is a convex combination of values in [0, 255] (f x; c x + (1 - c) m, m a mean of
greys; s x + (1 - s) gray(x), the luma weights summing to 1), so its output stays in range.  So the ops
between two clips fold into one 3x4 matrix applied in one ``cv2.transform`` pass, contrast's mean grey
is read through that matrix from the channel means of the last image actually written (the mean of an
affine map is the map of the mean), and the matrix left after the last clip is handed back for the
caller to fold into its normalisation.  Same maths as jitter.jitter_image, in float32: an image costs
one pass per op whose factor is above 1 (about 1.5 of 3 at strength 0.4) instead of a dozen passes, the
uint8 -> float32 conversion folded into the first where it is per-channel, and the last clip left to a
caller that can apply it after its own increasing map (``jitter_deferred_``).
"""
from __future__ import annotations

import numpy as np

from alexnet_pipe.loaders.jitter import BRIGHTNESS, HUE, IDENTITY, LUMA, SATURATION

IDENTITY_AFFINE = np.hstack([np.eye(3), np.zeros((3, 1))])
_LUMA = LUMA.tolist()
_SIGMA = float(LUMA.sum())  # luma . (1, 1, 1): 0.9999 as torchvision rounds the weights, not 1


def jitter_affine_(image: np.ndarray, factors, order, spare: np.ndarray | None = None,
                   source: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Jitter `image` ((H, W, 3) float32 in 0..255, contiguous) up to its last clip, in place, or between it and
    `spare` (same shape; OpenCV's transform is ~1.5x faster out of place): -> (the array holding the image now,
    the (3, 4) float64 affine map still to apply: x -> A[:, :3] x + A[:, 3]; the identity if none is pending).
    source: (H, W, 3) uint8 pixels not yet copied into `image`, if any: the first map is then read from them,
    in one ``cv2.addWeighted`` pass where it is per-channel (brightness and contrast alone: the uint8 -> float32
    conversion folded in), else after a copy; they are copied in if no map is applied.

    Every map the three ops compose is x -> a x + b gray(x) (1, 1, 1) + c (1, 1, 1): brightness and contrast
    scale it, saturation blends it with its grey, contrast's offset is the same in each channel.  So the
    pending map is three Python floats (a, b, c), not 3x4 matrices (numpy's small-array calls cost more
    than the arithmetic: ~30 us an image)."""
    image, affine, _ = jitter_deferred_(image, factors, order, spare, source, defer=False)
    return image, affine


def jitter_deferred_(image: np.ndarray, factors, order, spare: np.ndarray | None = None,
                     source: np.ndarray | None = None, defer: bool = True) -> tuple:
    """jitter_affine_, whose last clip, where only brightness follows it, is left to the caller (`defer`): ->
    (image, affine, clip): clip None, or (lower, upper): the pending map's output is still to be clipped to
    [0, upper] (lower True) or to [-inf, upper].  A caller whose next map is increasing in each channel (the
    normalisation) clips after it, at the bounds it maps to: one pass fewer."""
    a, b, c = 1.0, 0.0, 0.0
    means = None  # channel means of the image as it now is, read when contrast needs them
    values = np.asarray(factors).tolist()  # Python floats (float32 values kept exactly)
    steps = [(int(op), values[int(op)]) for op in order if values[int(op)] != IDENTITY[int(op)]]
    last, clip = _deferrable(steps) if defer else None, None
    for k, (op, f) in enumerate(steps):
        if op == HUE:
            image, spare = _apply(image, spare, a, b, c, source)
            rotate_hue_(image, f)
            a, b, c, means, source = 1.0, 0.0, 0.0, None, None
            continue
        if op == BRIGHTNESS:
            a, b, c = f * a, f * b, f * c
            clip = clip and (clip[0], f * clip[1])
        elif op == SATURATION:  # y -> f y + (1 - f) gray(y), gray(y) = (a + b sigma) gray(x) + c sigma
            a, b, c = f * a, f * b + (1.0 - f) * (a + b * _SIGMA), f * c + (1.0 - f) * c * _SIGMA
        else:  # contrast: blend with the mean grey of the image the pending map produces
            means = cv2_mean(image if source is None else source) if means is None else means
            grey = sum(w * m for w, m in zip(_LUMA, means))
            a, b, c = f * a, f * b, f * c + (1.0 - f) * ((a + b * _SIGMA) * grey + c * _SIGMA)
        if f > 1.0 and k == last:
            clip = (op != BRIGHTNESS, 255.0)
        elif f > 1.0:  # the only case where the clip can act
            image, spare = _apply(image, spare, a, b, c, source)
            _clip_(image, lower=op != BRIGHTNESS)
            a, b, c, means, source = 1.0, 0.0, 0.0, None, None
    if source is not None:
        np.copyto(image, source)
    return image, _matrix(a, b, c), clip


def _deferrable(steps) -> int | None:
    """The index of the last clipping step if only brightness follows it (a scale: the clip's bounds scale)."""
    clipping = [k for k, (op, f) in enumerate(steps) if f > 1.0 and op != HUE]
    if clipping and all(op == BRIGHTNESS for op, _ in steps[clipping[-1] + 1:]):
        return clipping[-1]
    return None


def _matrix(a: float, b: float, c: float, dtype=np.float64) -> np.ndarray:
    """The (3, 4) affine map of x -> a x + b gray(x) (1, 1, 1) + c (1, 1, 1)."""
    r, g, bl = (b * w for w in _LUMA)
    return np.array([[a + r, g, bl, c], [r, a + g, bl, c], [r, g, a + bl, c]], dtype)


def _apply(image, spare, a, b, c, source=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The pending map applied (read from `source` where given): (the array now holding the image, the spare)."""
    import cv2
    if source is not None:
        if b == 0.0:  # a x + c in each channel: converted and mapped in one pass
            cv2.addWeighted(source, a, source, 0.0, c, dst=image, dtype=cv2.CV_32F)
            return image, spare
        np.copyto(image, source)
    if a == 1.0 and b == 0.0 and c == 0.0:
        return image, spare
    target = image if spare is None else spare
    cv2.transform(image, _matrix(a, b, c, np.float32), dst=target)
    return (image, None) if spare is None else (spare, image)


def cv2_mean(image: np.ndarray) -> tuple:
    import cv2
    return cv2.mean(image)[:3]


def apply_affine_(image: np.ndarray, affine_map: np.ndarray) -> np.ndarray:
    """image <- A image, in place (skipped for the identity)."""
    import cv2
    if not np.array_equal(affine_map, IDENTITY_AFFINE):
        cv2.transform(image, affine_map.astype(np.float32), dst=image)
    return image


def _clip_(image: np.ndarray, lower: bool) -> None:
    import cv2
    cv2.threshold(image, 255.0, 255.0, cv2.THRESH_TRUNC, dst=image)
    if lower:  # brightness (f >= 0 of pixels >= 0) cannot go below 0
        cv2.threshold(image, 0.0, 0.0, cv2.THRESH_TOZERO, dst=image)


def rotate_hue_(image: np.ndarray, h: float) -> None:
    """jitter.adjust_hue in place: through OpenCV's float HSV (hue in degrees), rotated by h turns."""
    import cv2
    np.multiply(image, np.float32(1.0 / 255.0), out=image)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hue = hsv[..., 0]
    np.add(hue, np.float32(360.0 * h), out=hue)
    np.mod(hue, np.float32(360.0), out=hue)
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=image)
    np.multiply(image, np.float32(255.0), out=image)
