"""Colour jitter of one float32 HWC image with OpenCV, fused: jitter.py's ops for the DataLoader workers.

Brightness, contrast and saturation are affine maps of a pixel's RGB vector (contrast's offset is the
image's mean grey), and the clip to [0, 255] after each op only acts when its factor is above 1: with a
factor f <= 1 each op is a convex combination of values in [0, 255] (f x; c x + (1 - c) m, m a mean of
greys; s x + (1 - s) gray(x), the luma weights summing to 1), so its output stays in range.  So the ops
between two clips fold into one 3x4 matrix applied in one ``cv2.transform`` pass, contrast's mean grey
is read through that matrix from the channel means of the last image actually written (the mean of an
affine map is the map of the mean), and the matrix left after the last clip is handed back for the
caller to fold into its normalisation.  Same maths as jitter.jitter_image, in float32: an image costs
one pass per op whose factor is above 1 (about 1.5 of 3 at strength 0.4) instead of a dozen passes.
"""
from __future__ import annotations

import numpy as np

from alexnet_pipe.loaders.jitter import BRIGHTNESS, HUE, IDENTITY, LUMA, SATURATION

IDENTITY_AFFINE = np.hstack([np.eye(3), np.zeros((3, 1))])
_EYE = np.eye(3)
_SATURATION_GREY = np.outer(np.ones(3), LUMA)  # gray(x) copied into each channel


def jitter_affine_(image: np.ndarray, factors, order, spare: np.ndarray | None = None,
                   means=None) -> tuple[np.ndarray, np.ndarray]:
    """Jitter `image` ((H, W, 3) float32 in 0..255, contiguous) up to its last clip, in place, or between it and
    `spare` (same shape; OpenCV's transform is ~1.5x faster out of place): -> (the array holding the image now,
    the (3, 4) float64 affine map still to apply: x -> A[:, :3] x + A[:, 3]; the identity if none is pending).
    means: the image's channel means where known (read from the uint8 pixels it was copied from: cheaper)."""
    matrix, offset = _EYE, np.zeros(3)  # the pending map: x -> matrix @ x + offset
    means = None if means is None else np.asarray(means, np.float64)  # channel means of the image as it now is
    for op, f in ((op, float(factors[op])) for op in order):
        if f == IDENTITY[op]:
            continue
        if op == HUE:
            image, spare = _apply(image, spare, matrix, offset)
            rotate_hue_(image, f)
            matrix, offset, means = _EYE, np.zeros(3), None
            continue
        if op == BRIGHTNESS:
            matrix, offset = f * matrix, f * offset
        elif op == SATURATION:
            step = f * _EYE + (1.0 - f) * _SATURATION_GREY
            matrix, offset = step @ matrix, step @ offset
        else:  # contrast: blend with the mean grey of the image the pending map produces
            means = np.array(cv2_mean(image)) if means is None else means
            grey = float(LUMA @ (matrix @ means + offset))
            matrix, offset = f * matrix, f * offset + (1.0 - f) * grey
        if f > 1.0:  # the only case where the clip can act
            image, spare = _apply(image, spare, matrix, offset)
            _clip_(image, lower=op != BRIGHTNESS)
            matrix, offset, means = _EYE, np.zeros(3), None
    return image, affine(matrix, offset)


def affine(matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    out = np.empty((3, 4))
    out[:, :3], out[:, 3] = matrix, offset
    return out


def _apply(image, spare, matrix, offset) -> tuple[np.ndarray, np.ndarray | None]:
    """The pending map applied: (the array now holding the image, the spare one)."""
    if matrix is _EYE and not offset.any():
        return image, spare
    import cv2
    if spare is None:
        cv2.transform(image, affine(matrix, offset).astype(np.float32), dst=image)
        return image, None
    cv2.transform(image, affine(matrix, offset).astype(np.float32), dst=spare)
    return spare, image


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
