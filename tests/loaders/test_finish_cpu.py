"""The torch loader's worker-side float work (issue 22): the fused OpenCV jitter against jitter.py's numpy
references, the numpy normalisation against the float64 reference and, bit for bit, against TorchNormalizer
(what the DALI loader uses), and the shared batch buffers the workers write into."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_pipe.loaders import LoaderSettings, jitter, jitter_cv, make_loader
from alexnet_pipe.loaders.base import TorchNormalizer
from alexnet_pipe.loaders.finish_cpu import ViewFinisher
from alexnet_pipe.loaders.jitter import BRIGHTNESS, CONTRAST, HUE, SATURATION, JitterSpec
from helpers.loaders import CROP, N_TRAIN, build_data, jittered_reference, normalizer_case, reference_normalize


def _fused(image, factors, order) -> np.ndarray:
    """The fused jitter, in place and between two buffers: the same image either way."""
    x = np.ascontiguousarray(image, np.float32)
    alone = jitter_cv.apply_affine_(*jitter_cv.jitter_affine_(x.copy(), factors, order))
    now, pending = jitter_cv.jitter_affine_(x, factors, order, spare=np.empty_like(x))
    np.testing.assert_array_equal(jitter_cv.apply_affine_(now.copy(), pending), alone)
    return alone


def _images(rng, n):
    """Random images in 0..255, a third of them bright (clipping happens) and some whole numbers (uint8 crops)."""
    out = []
    for k in range(n):
        img = rng.uniform(0, 255, (9, 7, 3))
        img = np.clip(img * 1.8, 0, 255) if k % 3 == 0 else img
        out.append(np.round(img) if k % 2 else img)
    return out


@pytest.mark.parametrize("strength, hue", [(0.4, 0.0), (0.9, 0.0), (1.6, 0.2), (0.4, 0.5)])
def test_fused_jitter_matches_the_reference(strength, hue):
    rng = np.random.default_rng(int(strength * 10 + hue * 100))
    images = _images(rng, 60)
    factors, order = JitterSpec.strength(strength, hue).draw(rng, len(images))
    for img, f, o in zip(images, factors, order):
        np.testing.assert_allclose(_fused(img, f, o), jitter.jitter_image(img, f, o), atol=2e-3)


@pytest.mark.parametrize("op", [BRIGHTNESS, CONTRAST, SATURATION, HUE])
@pytest.mark.parametrize("value", [0.0, 0.5, 1.7, 3.0])
def test_each_op_alone_and_between_clips(op, value):
    """Each op alone (factors above 1 clip), and folded between two clipping ops (the pending map's contrast
    mean is read through the map)."""
    img = _images(np.random.default_rng(4), 1)[0]
    f = jitter.IDENTITY.copy()
    f[op] = value if op != HUE else value / 6
    np.testing.assert_allclose(_fused(img, f, [0, 1, 2, 3]), jitter.jitter_image(img, f, [0, 1, 2, 3]), atol=2e-3)
    f = np.array([0.7, 0.6, 1.5, 0.0], np.float32)
    f[op] = value if op != HUE else value / 6
    for order in ([1, 0, 2, 3], [2, 1, 0, 3], [0, 2, 1, 3], [3, 1, 0, 2]):
        np.testing.assert_allclose(_fused(img, f, order), jitter.jitter_image(img, f, order), atol=2e-3)


def test_identity_leaves_the_image_alone():
    img = _images(np.random.default_rng(5), 2)[1].astype(np.float32)
    x = img.copy()
    now, pending = jitter_cv.jitter_affine_(x, jitter.IDENTITY, [0, 1, 2, 3], spare=np.empty_like(x))
    assert now is x and np.array_equal(pending, jitter_cv.IDENTITY_AFFINE)
    np.testing.assert_array_equal(x, img)


@pytest.mark.parametrize("factors", [
    [1.3, 0.8, 1.2, 0.0],  # brightness clips first, read from the uint8 pixels in the same pass
    [0.7, 1.4, 0.9, 0.0],  # contrast (its mean grey from the uint8 pixels) clips first
    [0.9, 0.8, 1.3, 0.0],  # saturation in the first map: copied, then transformed
    [0.9, 0.8, 0.7, 0.0],  # no clip at all: the pixels copied in, the whole map pending
    [1.0, 1.0, 1.0, 0.2],  # hue alone
])
def test_uint8_source_read_in_the_first_pass(factors):
    """Pixels handed over as uint8 (contiguous, or a strided view) and an unwritten float buffer: the same
    jitter as the reference, in every order, whichever pass reads them."""
    rng = np.random.default_rng(9)
    pixels = np.clip(rng.uniform(0, 255, (11, 13, 3)) * 1.3, 0, 255).astype(np.uint8)
    strided = np.pad(pixels, ((2, 0), (1, 0), (0, 0)))[2:, 1:]
    f = np.array(factors, np.float32)
    for source in (pixels, strided):
        for order in ([0, 1, 2, 3], [2, 0, 1, 3], [1, 2, 3, 0], [3, 2, 1, 0]):
            unwritten = np.full(pixels.shape, np.nan, np.float32)
            image, pending = jitter_cv.jitter_affine_(unwritten, f, order, spare=np.empty_like(unwritten),
                                                      source=source)
            got = jitter_cv.apply_affine_(image.copy(), pending)
            np.testing.assert_allclose(got, jitter.jitter_image(pixels, f, order), atol=2e-3)


def _finish(finisher, crops, xs, ys, flips, light, channels_last, jitter_draw=None):
    n, c = crops.shape[:2]
    out = np.full((n, c, c, 3) if channels_last else (n, 3, c, c), np.nan, np.float32)
    for k in range(n):
        jit = None if jitter_draw is None else (jitter_draw[0][k], jitter_draw[1][k])
        window = crops[k] if k % 3 else np.pad(crops[k], ((1, 0), (2, 0), (0, 0)))[1:, 2:]  # a strided view too
        finisher(window, out[k], int(xs[k]), int(ys[k]), bool(flips[k]), light[k], jit)
    return torch.from_numpy(out).permute(0, 3, 1, 2) if channels_last else torch.from_numpy(out)


@pytest.mark.parametrize("mode", ["mean-image", "channel"])
@pytest.mark.parametrize("channels_last, compiled", [(False, False), (True, False), (False, True)])
def test_finisher_equals_torch_normalizer_bit_for_bit(mode, channels_last, compiled):
    """OpenCV's passes, or numba's one pass (jitter_fused, CHW): TorchNormalizer's float32 operations either way."""
    n, size, c = 12, 20, 16
    norm, crops, xs, ys, flips, light = normalizer_case(np.random.default_rng(8), mode, n, size, c)
    finisher = ViewFinisher(norm, size, c, channels_last, compiled=compiled)
    assert (finisher.fused is not None) == compiled
    got = _finish(finisher, crops, xs, ys, flips, light, channels_last)
    np.testing.assert_allclose(got.numpy(), reference_normalize(crops, xs, ys, flips, light, norm, size),
                               rtol=1e-5, atol=1e-3)
    want = TorchNormalizer(norm, size, c)(torch.from_numpy(crops), xs, ys, flips, light, channels_last)
    assert torch.equal(got, want)  # the same float32 operations: the DALI and torch loaders agree exactly


@pytest.mark.parametrize("mode", ["mean-image", "channel"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_finisher_jitters_before_normalising(mode, channels_last):
    rng = np.random.default_rng(12)
    n, size, c = 12, 20, 16
    norm, crops, xs, ys, flips, light = normalizer_case(rng, mode, n, size, c)
    factors, order = JitterSpec.strength(0.6, 0.2).draw(rng, n)
    factors[2] = jitter.IDENTITY
    got = _finish(ViewFinisher(norm, size, c, channels_last), crops, xs, ys, flips, light, channels_last,
                  (factors, order))
    want = jittered_reference(crops, factors, order, xs, ys, flips, light, norm, size)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=3e-3 if mode == "mean-image" else 5e-5)


# --- the shared batch buffers ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("finish") / "jpeg", "jpeg")


def _settings(data, **kw):
    return LoaderSettings(Path(data), **{"batch_size": 4, "crop": CROP, "loader": "torch", "color_jitter": 0.4,
                                         "seed": 2, **kw})


def test_kept_batches_stay_as_they_were(data):
    """Every batch of two epochs kept (more batches than buffers, so the later ones come the old way): each
    equals the in-process loader's."""
    loader = make_loader(_settings(data, num_threads=2))
    kept = [batch for epoch in (0, 1) for batch in loader.epoch(epoch)]
    assert len(kept) == 2 * -(-N_TRAIN // 4) > len(loader._slots._buffers)
    alone = make_loader(_settings(data, num_threads=0))
    want = [batch for epoch in (0, 1) for batch in alone.epoch(epoch)]
    for (x, y), (wx, wy) in zip(kept, want, strict=True):
        assert torch.equal(x, wx) and torch.equal(y, wy)


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_write_into_the_shared_buffers(data, workers):
    """A trainer that lets each batch go: every batch is a view of one of the loader's buffers (no fresh
    segment), the buffers are reused, and they are shared memory where workers write them."""
    loader = make_loader(_settings(data, num_threads=workers))
    seen = [x.untyped_storage().data_ptr() for epoch in (0, 1) for x, _ in loader.epoch(epoch)]
    buffers = {b.untyped_storage().data_ptr() for b in loader._slots._buffers}
    assert set(seen) <= buffers and len(seen) > len(buffers)
    assert all(b.is_shared() for b in loader._slots._buffers) == (workers > 0)


def test_a_buffer_is_lent_again_only_once_free(data):
    loader = make_loader(_settings(data, num_threads=1))
    batches = loader.epoch(0)
    first, _ = next(batches)
    slots = loader._slots
    held = first.untyped_storage().data_ptr()
    for _ in range(len(slots._buffers) + 2):
        x, _ = next(batches)
        assert x.untyped_storage().data_ptr() != held  # `first` is still alive: its buffer is not reused
    batches.close()


@pytest.mark.parametrize("crop", [16, 64, 224])
def test_the_hot_scratch_buffers_start_on_a_cache_line(crop):
    """The planes OpenCV splits each view into and the float buffers of the jitter's passes: at 16 mod 32 (where
    malloc may put them) the split ran ~10x slower and the compiled pass ~2x, so a worker's speed was a draw."""
    from alexnet_pipe.loaders.slots import SharedBatches
    norm, *_ = normalizer_case(np.random.default_rng(1), "mean-image", 1, crop + 8, crop)
    for _ in range(4):
        finisher = ViewFinisher(norm, crop + 8, crop, False, compiled=True)
        buffers = (finisher._plane_block, finisher._float, finisher._spare, finisher._resized)
        assert [b.ctypes.data % 64 for b in buffers] == [0, 0, 0, 0]
        assert all(p.ctypes.data % 32 == 0 for p in finisher._planes)
    assert SharedBatches(0, 3 * crop * crop, shared=False).array(None, 3 * crop * crop).ctypes.data % 64 == 0
