"""Colour jitter and the normalisation of one view in one compiled pass (numba): the torch loader's workers.

jitter_cv does the jitter with OpenCV, one whole-image pass per op that can clip, one per output plane and one to
convert uint8 to float32: each a trip through 600 KB of float32, and the passes, not the arithmetic, are the cost
(~130 us a 224 px view, against ~80 us for the paper recipe's normalisation alone). Here each row of the view goes
through every op in registers and L1 (three float32 rows), and only the normalised row is written: about 30 us,
plus one more read pass where contrast needs the mean grey of the image the ops before it made (a sum, not a
write). The view is read where it lies: a crop straight from the decoded image (rows of RGB triples), a random-
resized window from the finisher's resize buffer, mirrored as it is read, so no window is copied, flipped or split
into planes first (20-38 us a view, benchmarks/view_paired.py). The ops are jitter.py's definitions in float32, in
the image's own order, every clip in place; the normalisation after them is the unjittered path's
(TorchNormalizer's float32 operations). Brightness, contrast and saturation only: a view with a hue factor goes
through jitter_cv. With no op (the paper's recipe, evaluation) it is the normalisation alone, bit for bit
TorchNormalizer's (no fused multiply-add: numba leaves LLVM's contraction off without fastmath), ~30 against ~60-80
us for OpenCV's three planes of subtract and add.

numba is optional (the `numba` extra: ~200 MB with llvmlite, and only the torch loader's CPU jitter uses it):
importing this module raises ImportError without it, and the finisher keeps jitter_cv's path.  The kernel is
compiled for its signatures (a writable or a read-only source) when this module is imported, in the process that
makes the loader (its forked workers inherit it); numba caches the machine code on disk (functions at module
level: a closure's cache is never reused), so a later run loads it instead of compiling (~3 s).
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
def _ops_row(r, g, b, order, factors, start, stop, mean_grey):
    """The ops order[start:stop] (OPS indices) on one row of float32 planes, in place, each with its factor
    (factors in OPS order) and clipped to [0, 255] as jitter.py does (brightness's lower clip left out: a factor
    >= 0 of pixels >= 0 is never below 0).  Hue and identity factors are skipped, as jitter.py skips them."""
    for k in range(start, stop):
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
def _load_row(src, y, x0, c, flip, r, g, b):
    """Row y of the c-pixel view of the uint8 source (rows of RGB triples) at pixel x0, mirrored if `flip`, into
    float32 planes.  c is passed, not taken from r: with r's length LLVM did not vectorise the mirrored loop (~8x)."""
    row = src[y, 3 * x0:3 * (x0 + c)]
    if flip:
        for x in range(c):
            k = 3 * (c - 1 - x)
            r[x] = np.float32(row[k])
            g[x] = np.float32(row[k + 1])
            b[x] = np.float32(row[k + 2])
    else:
        for x in range(c):
            r[x] = np.float32(row[3 * x])
            g[x] = np.float32(row[3 * x + 1])
            b[x] = np.float32(row[3 * x + 2])


# a sum's order is free here (fastmath's reassociation lets it vectorise); not inlined by numba, which would drop
# the flags with the function: the mean grey is a float64 mean of per-row float32 sums, as exact as the reference
# needs
@numba.njit(fastmath={"reassoc", "nsz"}, nogil=True, cache=True)
def _grey_sum(r, g, b):
    row = _ZERO
    for x in range(r.shape[0]):
        row += _L0 * r[x] + _L1 * g[x] + _L2 * b[x]
    return row


@numba.njit(inline="always")
def _minus_plus(row, mean_row, add, target):
    for x in range(row.shape[0]):
        target[x] = (row[x] - mean_row[x]) + add


@numba.njit(inline="always")
def _minus_times(row, sub, mul, target):
    for x in range(row.shape[0]):
        target[x] = (row[x] - sub) * mul


@numba.njit(inline="always")
def _contrast_at(order, factors):
    """Where contrast stands in the order (the ops before it make the image whose mean grey it needs), or the
    order's length where it does nothing."""
    for k in range(order.shape[0]):
        if order[k] == CONTRAST and factors[CONTRAST] != _ONE:
            return k
    return order.shape[0]


@numba.njit(inline="always")
def _normalise_row(r, g, b, out, y, sub, mul, add, mean, mx0, my0, has_mean):
    c = r.shape[0]
    if has_mean:  # on 1-D rows: these loops vectorise, 3-D indexing did not (~4x slower)
        _minus_plus(r, mean[0, my0 + y, mx0:mx0 + c], add[0], out[0, y])
        _minus_plus(g, mean[1, my0 + y, mx0:mx0 + c], add[1], out[1, y])
        _minus_plus(b, mean[2, my0 + y, mx0:mx0 + c], add[2], out[2, y])
    else:
        _minus_times(r, sub[0], mul[0], out[0, y])
        _minus_times(g, sub[1], mul[1], out[1, y])
        _minus_times(b, sub[2], mul[2], out[2, y])


def _array(dtype, ndim: int, readonly: bool = False):
    return numba.types.Array(dtype, ndim, "C", readonly=readonly)


# the sources: a decoded image (a raw record's pixels are the record's own bytes: read-only) or the resized window
_U1, _F4, _I8, _B1 = numba.types.uint8, numba.types.float32, numba.types.int64, numba.types.boolean
_IMAGES = (_array(_U1, 2), _array(_U1, 2, readonly=True))
_ROWS = (_I8, _I8, _B1, _array(_F4, 3), _array(numba.types.int8, 1), *[_array(_F4, 1)] * 4, _array(_F4, 3),
         _I8, _I8, _B1)


# src: rows of RGB triples, uint8 (the decoded image, whose crop is read where it lies, or the resized window); out
# f4 (3, c, c); order i1 (4 or 0), factors f4 (4), sub, mul, add f4 (3), mean f4 (3, S, S), mx0, my0, has_mean: the
# plan's own arrays of an image's jitter, as they are (no per-image work in Python first)
@numba.njit([numba.types.void(src, *_ROWS) for src in _IMAGES], nogil=True, cache=True)
def finish(src, x0, y0, flip, out, order, factors, sub, mul, add, mean, mx0, my0, has_mean):
    """out = the c x c view of `src` at (x0, y0) (mirrored if `flip`), jittered (its ops in `order`, none for an
    empty order), then normalised: (v - sub) * mul in each channel, or (v - the mean image's window at (mx0, my0))
    + add.  Where contrast needs the mean grey of what the ops before it made, a first pass reads the view through
    those ops and sums their grey (a sum, not a write)."""
    c = out.shape[2]
    n, split = order.shape[0], _contrast_at(order, factors)
    r, g, b = np.empty(c, np.float32), np.empty(c, np.float32), np.empty(c, np.float32)
    m = _ZERO
    if split < n:
        total = 0.0
        for y in range(c):
            _load_row(src, y0 + y, x0, c, flip, r, g, b)
            _ops_row(r, g, b, order, factors, 0, split, _ZERO)
            total += _grey_sum(r, g, b)
        m = np.float32(total / (c * c))
    for y in range(c):
        _load_row(src, y0 + y, x0, c, flip, r, g, b)
        _ops_row(r, g, b, order, factors, 0, n, m)
        _normalise_row(r, g, b, out, y, sub, mul, add, mean, mx0, my0, has_mean)
