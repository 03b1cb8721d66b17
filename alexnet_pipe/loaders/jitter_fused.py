"""Colour jitter and the normalisation of one view in one compiled pass (numba): the torch loader's workers.

jitter_cv does the jitter with OpenCV, one whole-image pass per op that can clip, one per output plane and one to
convert uint8 to float32: each a trip through 600 KB of float32, and the passes, not the arithmetic, are the
cost (~130 us a 224 px view, against ~80 us for the paper recipe's normalisation alone).  Here each row of the
view goes through every op in registers and L1 (three float32 rows of the planes OpenCV split), and only the
normalised row is written: about 30 us, plus one more read pass where contrast needs the mean grey of the image
the ops before it made (a sum, not a write).  The ops are jitter.py's definitions in float32, in the image's
own order, every clip in place; the normalisation after them is the unjittered path's (TorchNormalizer's float32
operations).  Brightness, contrast and saturation only: a view with a hue factor goes through jitter_cv.  With
no op (the paper's recipe, evaluation) it is the normalisation alone, bit for bit TorchNormalizer's (no fused
multiply-add: numba leaves LLVM's contraction off without fastmath), ~30 against ~60-80 us for OpenCV's
three planes of subtract and add.

numba is optional (the `numba` extra: ~200 MB with llvmlite, and only the torch loader's CPU jitter uses it):
importing this module raises ImportError without it, and the finisher keeps jitter_cv's path.  The kernel is
compiled for one signature when this module is imported, in the process that makes the loader (its forked
workers inherit it); numba caches the machine code on disk (functions at module level: a closure's cache is
never reused), so a later run loads it instead of compiling (~3 s).
"""
from __future__ import annotations

import numba
import numpy as np

from alexnet_pipe.loaders.jitter import BRIGHTNESS, CONTRAST, HUE, IDENTITY, LUMA

_ZERO, _TOP, _ONE = np.float32(0.0), np.float32(255.0), np.float32(1.0)
_L0, _L1, _L2 = (np.float32(w) for w in LUMA)  # in float32, as the torch path's float32 batch applies them


def fusable(factors) -> bool:
    """Whether this pass can finish a view with these (4,) factors: not with a hue factor (jitter_cv's path)."""
    return float(factors[HUE]) == float(IDENTITY[HUE])


@numba.njit(inline="always")
def _ops_row(r, g, b, order, factors, n, mean_grey):
    """The first n ops of the image's `order` (OPS indices) on one row of float32 planes, in place, each with its
    factor (factors in OPS order) and clipped to [0, 255] as jitter.py does (brightness's lower clip left out: a
    factor >= 0 of pixels >= 0 is never below 0).  Hue and identity factors are skipped, as jitter.py skips them."""
    for k in range(n):
        op = order[k]
        f = factors[op]
        if op == HUE or f == _ONE:
            continue
        if op == BRIGHTNESS:
            for x in range(r.shape[0]):
                r[x] = min(r[x] * f, _TOP)
                g[x] = min(g[x] * f, _TOP)
                b[x] = min(b[x] * f, _TOP)
        elif op == CONTRAST:
            offset = (_ONE - f) * mean_grey
            for x in range(r.shape[0]):
                r[x] = min(max(r[x] * f + offset, _ZERO), _TOP)
                g[x] = min(max(g[x] * f + offset, _ZERO), _TOP)
                b[x] = min(max(b[x] * f + offset, _ZERO), _TOP)
        else:  # saturation: blend with the pixel's own grey
            rest = _ONE - f
            for x in range(r.shape[0]):
                grey = rest * (_L0 * r[x] + _L1 * g[x] + _L2 * b[x])
                r[x] = min(max(r[x] * f + grey, _ZERO), _TOP)
                g[x] = min(max(g[x] * f + grey, _ZERO), _TOP)
                b[x] = min(max(b[x] * f + grey, _ZERO), _TOP)


@numba.njit(inline="always")
def _load_row(planes, y, r, g, b):
    for x in range(r.shape[0]):
        r[x] = np.float32(planes[0, y, x])
    for x in range(r.shape[0]):
        g[x] = np.float32(planes[1, y, x])
    for x in range(r.shape[0]):
        b[x] = np.float32(planes[2, y, x])


# a sum's order is free here (fastmath's reassociation lets it vectorise): the mean grey is a float64 mean of
# per-row float32 sums, as exact as the reference needs (float32 rounding of a 224-term sum)
@numba.njit(fastmath={"reassoc", "nsz"}, nogil=True, cache=True)
def _mean_grey(planes, order, factors, n, r, g, b):
    total = 0.0
    for y in range(planes.shape[1]):
        _load_row(planes, y, r, g, b)
        _ops_row(r, g, b, order, factors, n, _ZERO)  # no contrast among the first n: the mean is unused
        row = _ZERO
        for x in range(r.shape[0]):
            row += _L0 * r[x] + _L1 * g[x] + _L2 * b[x]
        total += row
    return np.float32(total / (planes.shape[1] * planes.shape[2]))


@numba.njit(inline="always")
def _minus_plus(row, mean_row, add, target):
    for x in range(row.shape[0]):
        target[x] = (row[x] - mean_row[x]) + add


@numba.njit(inline="always")
def _minus_times(row, sub, mul, target):
    for x in range(row.shape[0]):
        target[x] = (row[x] - sub) * mul


# planes u8 (3, c, c), out f4 (3, c, c), order i1 (4 or 0), factors f4 (4), sub, mul, add f4 (3), mean f4 (3, S, S),
# x0, y0, has_mean: the plan's own arrays of an image's jitter, as they are (no per-image work in Python first)
@numba.njit("void(u1[:, :, ::1], f4[:, :, ::1], i1[::1], f4[::1], f4[::1], f4[::1], f4[::1], f4[:, :, ::1], "
            "i8, i8, b1)", nogil=True, cache=True)
def finish(planes, out, order, factors, sub, mul, add, mean, x0, y0, has_mean):
    """out = the view (three uint8 planes) jittered (its ops in `order`, none for an empty order), then normalised:
    (v - sub) * mul in each channel, or (v - the mean image's window at (x0, y0)) + add."""
    c = planes.shape[2]
    r, g, b = np.empty(c, np.float32), np.empty(c, np.float32), np.empty(c, np.float32)
    m = _ZERO
    for k in range(order.shape[0]):
        if order[k] == CONTRAST and factors[CONTRAST] != _ONE:  # the mean grey of what the ops before it made
            m = _mean_grey(planes, order, factors, k, r, g, b)
    for y in range(planes.shape[1]):
        _load_row(planes, y, r, g, b)
        _ops_row(r, g, b, order, factors, order.shape[0], m)
        if has_mean:  # on 1-D rows: these loops vectorise, 3-D indexing did not (~4x slower)
            _minus_plus(r, mean[0, y0 + y, x0:x0 + c], add[0], out[0, y])
            _minus_plus(g, mean[1, y0 + y, x0:x0 + c], add[1], out[1, y])
            _minus_plus(b, mean[2, y0 + y, x0:x0 + c], add[2], out[2, y])
        else:
            _minus_times(r, sub[0], mul[0], out[0, y])
            _minus_times(g, sub[1], mul[1], out[1, y])
            _minus_times(b, sub[2], mul[2], out[2, y])

