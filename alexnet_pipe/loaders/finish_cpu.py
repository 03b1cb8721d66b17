"""The float work of one view on the CPU, in numpy and OpenCV or numba: base.TorchNormalizer's, for a DataLoader
worker.

The torch loader on the CPU finishes each view where it is decoded, so the main process only hands batches
on: with several workers on many cores a main process doing the float work was the ceiling (~250 us an
image here, one core), and colour jitter in it cost as much again.  Without jitter the operations are
TorchNormalizer's per-sample ones, in its order, each one IEEE float32 operation (`(crop - mean window) +
light`, or `(crop - (mean_rgb - light)) * (1 / std)`): the output equals the DALI loader's bit for bit.  With
jitter (jitter_cv), the affine map left after the jitter's last clip and the normalisation's affine part
are one ``cv2.transform`` pass per output plane: float32 rounding apart from separate ops (~1e-3 grey levels);
and where only brightness follows that last clip, the clip itself waits until after the normalisation
(increasing in each channel, so clipping commutes with it at the mapped bounds): one HWC pass fewer.  Where numba
is installed and the finisher is asked to (`compiled`, CHW output), jitter_fused does all of it in one pass per
view instead: the same results (bit for bit without jitter), at ~0.7x the CPU time.
"""
from __future__ import annotations

import numpy as np

from alexnet_pipe.core.memory import aligned_empty
from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders.augment import Normalizer
from alexnet_pipe.loaders.jitter import IDENTITY
from alexnet_pipe.loaders.jitter_cv import jitter_deferred_


_IDENTITY = IDENTITY.tolist()


class ViewFinisher:
    """(c, c, 3) uint8 window (already flipped; a strided view is fine) -> float32 written into `out`:
    (3, c, c), or (c, c, 3) when `channels_last` (the NHWC memory of a channels_last batch).  `view` cuts the
    window from the decoded image itself (the loader's way: the compiled pass then reads it where it lies)."""

    def __init__(self, norm: Normalizer, size: int, crop: int, channels_last: bool, compiled: bool = False):
        self.mode, self.size, self.crop, self.channels_last = norm.mode, size, crop, channels_last
        # compiled: jitter_fused's one pass per view where numba is installed (CHW output), loaded now, before the
        # workers fork; else OpenCV's passes
        self.fused = _fused_pass() if compiled and not channels_last else None
        if norm.mode == "mean-image":
            plain = np.ascontiguousarray(norm.mean_image, np.float32)
            pair = (plain, np.ascontiguousarray(plain[:, ::-1]))  # a flipped view's mean is the flipped mean's
            self.means = pair if channels_last else tuple(np.ascontiguousarray(m.transpose(2, 0, 1)) for m in pair)
        else:
            self.mean_rgb = np.asarray(norm.mean_rgb, np.float32)
            self.inv_std = np.float32(1.0) / np.asarray(norm.std_rgb, np.float32)
        # the window's planes, OpenCV splits into these: on a cache line (core.memory.aligned_empty says why), as the
        # float buffers jitter_cv's passes alternate between and the resized window the compiled pass reads
        self._plane_block = aligned_empty((3, crop, crop), np.uint8)
        self._planes = list(self._plane_block)
        self._no_mean = np.zeros((3, 1, 1), np.float32)
        self._no_ops = (np.zeros(0, np.int8), np.zeros(0, np.float32))  # (order, factors): no op
        self._float = aligned_empty((crop, crop, 3), np.float32)
        self._spare = aligned_empty((crop, crop, 3), np.float32)
        self._resized = aligned_empty((crop, crop, 3), np.uint8)

    def view(self, image: np.ndarray, window, flip: bool, out: np.ndarray, x: int, y: int, light, jitter=None):
        """The view of a decoded (H, W, 3) uint8 image: its `window` (wx, wy, w, h) as it is where it is the
        crop's size, else resized to it; mirrored if `flip`; finished into `out` as __call__ does.  (x, y) is the
        crop's offset (the mean image's window).  The compiled pass reads a crop where it lies in the image, or the
        resized window in the finisher's buffer, and mirrors as it reads: no copy of the window, no split."""
        wx, wy, w, h = window = augment.check_window(image.shape, window)  # the compiled pass reads unchecked
        ops = None if self.fused is None else self._fused_ops(jitter)
        if ops is None:  # OpenCV's passes, or a hue factor: jitter_cv's, on the window cut as the reference cuts it
            return self(augment.cut_window(image, window, self.crop, flip), out, x, y, flip, light, jitter)
        if w == h == self.crop:
            source, sx, sy = image.reshape(image.shape[0], -1), wx, wy
        else:
            source, sx, sy = self._resize(image, window), 0, 0
        return self._fused_finish(source, sx, sy, flip, out, ops, x, y, flip, light)

    def __call__(self, window: np.ndarray, out: np.ndarray, x: int, y: int, flip: bool, light, jitter=None):
        ops = None if self.fused is None else self._fused_ops(jitter)
        if ops is not None:  # numba's one pass; without jitter the OpenCV passes' float32 operations, bit for bit
            c = self.crop
            src = np.ascontiguousarray(window).reshape(c, 3 * c)
            return self._fused_finish(src, 0, 0, False, out, ops, x, y, flip, light)
        light = np.asarray(light, np.float32)
        if jitter is not None and jitter[0].tolist() != _IDENTITY:
            return self._jittered(window, out, x, y, flip, light, jitter)
        mean = self._mean_window(x, y, flip)
        # the per-channel constants as OpenCV scalars (doubles, each exactly its float32): added after the mean
        # window, or subtracted (mean_rgb - light, float32 as TorchNormalizer's) and then multiplied
        shift = (light if mean is not None else self.mean_rgb - light).tolist()
        scale = None if mean is not None else self.inv_std.tolist()
        if self.channels_last:
            return self._normalise(window, out, mean, (*shift, 0.0), scale and (*scale, 0.0))
        import cv2
        cv2.split(window, self._planes)
        for ch in range(3):
            self._normalise(self._planes[ch], out[ch], None if mean is None else mean[ch], shift[ch],
                            scale and scale[ch])
        return out

    def _mean_window(self, x: int, y: int, flip: bool):
        """The mean image's window (mean-image mode; else None), as TorchNormalizer's per-sample path cuts it."""
        if self.mode != "mean-image":
            return None
        c = self.crop
        mean, x = self._mean_at(x, flip)
        return mean[y:y + c, x:x + c] if self.channels_last else mean[:, y:y + c, x:x + c]

    def _mean_at(self, x: int, flip: bool) -> tuple[np.ndarray, int]:
        """(the whole mean image as the view reads it, the window's x in it): a flipped view's window is the
        flipped mean's, mirrored in x."""
        return (self.means[1], self.size - self.crop - x) if flip else (self.means[0], x)

    @staticmethod
    def _normalise(src, out, mean, shift, scale):
        """out = (src - mean) + shift, or (src - shift) * scale: one channel (float shift and scale), or all three.
        OpenCV's arithmetic, not numpy's: the same IEEE float32 operations (uint8 -> float32 is exact, a float32
        scalar stays itself), without numpy's buffered mixed-type casting (~75 against ~120 us a 224 px view)."""
        import cv2
        if mean is not None:
            cv2.subtract(src, mean, dst=out, dtype=cv2.CV_32F)
            return cv2.add(out, shift, dst=out)
        cv2.subtract(src, shift, dst=out, dtype=cv2.CV_32F)
        return cv2.multiply(out, scale, dst=out)

    def _jittered(self, window, out, x, y, flip, light, jitter):
        import cv2
        image, affine, clip = jitter_deferred_(self._float, *jitter, spare=self._spare, source=window,
                                               defer=not self.channels_last)
        if self.mode == "mean-image":  # the normalisation's affine part: u -> scale u + shift, in each channel
            scale, shift = np.ones(3), light.astype(np.float64)
        else:
            scale = self.inv_std.astype(np.float64)
            shift = -(self.mean_rgb - light) * scale
        fused = scale[:, None] * affine
        fused[:, 3] += shift
        fused = fused.astype(np.float32)
        mean = self._mean_window(x, y, flip)
        if self.channels_last:
            cv2.transform(image, fused, dst=out)
        else:  # one output plane per row of the map: no HWC intermediate to split
            for ch in range(3):
                cv2.transform(image, fused[ch:ch + 1], dst=out[ch])
                if clip:  # the jitter's last clip, after the increasing normalisation: at the bounds it maps to
                    _clip_plane_(out[ch], float(scale[ch] * clip[1] + shift[ch]), float(shift[ch]) if clip[0] else None)
        return out if mean is None else np.subtract(out, mean, out=out)

    def _fused_ops(self, jitter):
        """(order, factors) of the view's jitter for the compiled pass (no op without jitter), or None where it
        cannot take them (a hue factor: jitter_cv's passes)."""
        if jitter is None or jitter[0].tolist() == _IDENTITY:
            return self._no_ops
        if not self.fused.fusable(jitter[0]):
            return None
        return np.ascontiguousarray(jitter[1], np.int8), np.ascontiguousarray(jitter[0], np.float32)

    def _resize(self, image: np.ndarray, window) -> np.ndarray:
        """(c, 3 c) uint8: the window resized to the crop as the reference does (augment.resized_window: OpenCV's
        INTER_LINEAR), into the finisher's own buffer, unflipped: the compiled pass mirrors as it reads."""
        import cv2
        x, y, w, h = window
        c = self.crop
        cv2.resize(image[y:y + h, x:x + w], (c, c), dst=self._resized, interpolation=cv2.INTER_LINEAR)
        return self._resized.reshape(c, 3 * c)

    def _fused_finish(self, src, sx, sy, mirror, out, ops, x, y, flip, light):
        """The jitter and the normalisation in jitter_fused's one pass over the crop of `src` (rows of RGB
        triples) at (sx, sy), read mirrored if `mirror`; `flip` (the view's) chooses the mean image's window."""
        light = np.asarray(light, np.float32)
        if self.mode == "mean-image":
            mean, x0 = self._mean_at(x, flip)
            self.fused.finish(src, sx, sy, mirror, out, *ops, light, light, light, mean, x0, y, True)
        else:
            self.fused.finish(src, sx, sy, mirror, out, *ops, self.mean_rgb - light, self.inv_std, light,
                              self._no_mean, 0, 0, False)
        return out


def _fused_pass():
    """jitter_fused (numba's compiled jitter and normalisation), or None where numba is not installed."""
    try:
        from alexnet_pipe.loaders import jitter_fused
    except ImportError:
        return None
    return jitter_fused


def _clip_plane_(plane: np.ndarray, upper: float, lower: float | None) -> None:
    import cv2
    cv2.threshold(plane, upper, upper, cv2.THRESH_TRUNC, dst=plane)
    if lower is not None:
        cv2.max(plane, lower, dst=plane)
