"""Colour jitter (alexnet_pipe.loaders.jitter): the numpy references against torchvision's documented
definitions, the torch batch against the numpy references, and the plan's draws."""
from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
import torch
from scipy import stats as sps

from alexnet_pipe.loaders import jitter
from alexnet_pipe.loaders.jitter import BRIGHTNESS, CONTRAST, HUE, SATURATION, JitterSpec


def _image(seed, h=6, w=5):
    return np.random.default_rng(seed).uniform(0, 255, (h, w, 3))


# torchvision's rgb_to_grayscale (transforms/_functional_tensor.py, and v2's _color.py), its float path:
# l_img = 0.2989 * r + 0.587 * g + 0.114 * b. ColorJitter's contrast and saturation blend with it.
TORCHVISION_LUMA = (0.2989, 0.587, 0.114)


def _luma(p):
    return TORCHVISION_LUMA[0] * p[0] + TORCHVISION_LUMA[1] * p[1] + TORCHVISION_LUMA[2] * p[2]


def test_grey_is_torchvisions_luma_in_numpy_and_torch():
    """One channel at a time: the grey of pure red, green and blue is 255 times torchvision's weight."""
    for channel, weight in enumerate(TORCHVISION_LUMA):
        pixel = np.zeros((1, 1, 3))
        pixel[..., channel] = 255.0
        assert jitter.grayscale(pixel)[0, 0] == pytest.approx(255.0 * weight, abs=1e-9)
        x = torch.from_numpy(pixel).permute(2, 0, 1)[None].clone()
        assert jitter._gray_t(x).item() == pytest.approx(255.0 * weight, abs=1e-9)
        s = 0.5  # saturation blends each channel with that grey
        np.testing.assert_allclose(jitter._saturation_t(x.clone(), s)[0, :, 0, 0].numpy(),
                                   s * pixel[0, 0] + (1 - s) * 255.0 * weight, atol=1e-9)


def test_against_torchvision_where_it_is_installed():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    img = torch.from_numpy(_image(3)).permute(2, 0, 1).float() / 255.0
    for ours, theirs, f in ((jitter.adjust_contrast, tvf.adjust_contrast, 0.6),
                            (jitter.adjust_saturation, tvf.adjust_saturation, 1.7)):
        want = theirs(img, f).permute(1, 2, 0).numpy() * 255.0
        np.testing.assert_allclose(ours(_image(3), f), want, atol=1e-3)


# --- the references, pixel by pixel from the definitions ------------------------------------

@pytest.mark.parametrize("b", [0.0, 0.6, 1.4, 3.0])
def test_brightness_scales_then_clips(b):
    img = _image(0)
    want = [[[min(255.0, b * c) for c in p] for p in row] for row in img]
    np.testing.assert_allclose(jitter.adjust_brightness(img, b), want, atol=1e-9)


@pytest.mark.parametrize("c", [0.0, 0.6, 1.4, 4.0])
def test_contrast_blends_with_the_mean_grey(c):
    img = _image(1)
    mean = sum(_luma(p) for row in img for p in row) / (img.shape[0] * img.shape[1])
    want = [[[min(255.0, max(0.0, c * v + (1 - c) * mean)) for v in p] for p in row] for row in img]
    np.testing.assert_allclose(jitter.adjust_contrast(img, c), want, atol=1e-9)


@pytest.mark.parametrize("s", [0.0, 0.6, 1.4, 4.0])
def test_saturation_blends_with_the_grey_image(s):
    img = _image(2)
    want = [[[min(255.0, max(0.0, s * v + (1 - s) * _luma(p))) for v in p] for p in row] for row in img]
    np.testing.assert_allclose(jitter.adjust_saturation(img, s), want, atol=1e-9)


@pytest.mark.parametrize("h", [-0.5, -0.2, 0.05, 1 / 3, 0.5])
def test_hue_rotates_the_hsv_hue_like_colorsys(h):
    img = np.concatenate([_image(3), [[[0, 0, 0], [255, 255, 255], [90, 90, 90], [255, 0, 0], [0, 255, 0]]]])

    def shift(p):
        hh, ss, vv = colorsys.rgb_to_hsv(*(p / 255))
        return np.array(colorsys.hsv_to_rgb((hh + h) % 1.0, ss, vv)) * 255

    want = [[shift(p) for p in row] for row in img]
    np.testing.assert_allclose(jitter.adjust_hue(img, h), want, atol=1e-9)


def test_hue_known_colours():
    red = np.array([[[255.0, 0, 0]]])
    np.testing.assert_allclose(jitter.adjust_hue(red, 1 / 3), [[[0, 255, 0]]], atol=1e-9)
    np.testing.assert_allclose(jitter.adjust_hue(red, 0.5), [[[0, 255, 255]]], atol=1e-9)


def test_jitter_image_applies_the_ops_in_the_given_order():
    img = _image(4)
    f = np.array([1.4, 0.6, 1.3, 0.1], np.float32)
    want = jitter.adjust_hue(jitter.adjust_brightness(jitter.adjust_saturation(
        jitter.adjust_contrast(img, f[1]), f[2]), f[0]), f[3])
    np.testing.assert_allclose(jitter.jitter_image(img, f, [CONTRAST, SATURATION, BRIGHTNESS, HUE]), want)
    # clipping makes the order matter
    assert not np.allclose(jitter.jitter_image(img, f, [0, 1, 2, 3]), jitter.jitter_image(img, f, [3, 2, 1, 0]))
    np.testing.assert_array_equal(jitter.jitter_image(img, jitter.IDENTITY, [0, 1, 2, 3]), img)


# --- the torch batch against the references --------------------------------------------------

def _torch_batch(images, channels_last=False):
    x = torch.tensor(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)), dtype=torch.float32)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("op", range(4))
def test_torch_op_matches_its_reference(op, per_image):
    images = [_image(10 + i, 12, 9) for i in range(6)]
    low, high = JitterSpec(1.0, 1.0, 1.0, 0.5).bounds()
    factors = np.tile(jitter.IDENTITY, (6, 1))
    factors[:, op] = np.linspace(low[op], high[op], 6)
    order = np.tile(np.arange(4, dtype=np.int8), (6, 1))
    got = jitter.jitter_batch_(_torch_batch(images), factors, order, per_image).numpy().transpose(0, 2, 3, 1)
    for img, f, g in zip(images, factors, got):
        np.testing.assert_allclose(g, jitter.ADJUST[op](img, float(f[op])), atol=2e-3)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_batch_matches_reference_with_drawn_factors_and_orders(channels_last, per_image):
    n = 24
    factors, order = JitterSpec.strength(0.8, 0.3).draw(np.random.default_rng(8), n)
    factors[3, :] = jitter.IDENTITY  # an untouched image stays bit-identical
    images = [_image(20 + i, 10, 11) for i in range(n)]
    images[5] = np.clip(images[5] * 1.8, 0, 255)  # bright: clipping happens
    x = _torch_batch(images, channels_last)
    got = jitter.jitter_batch_(x, factors, order, per_image)
    assert got is x and got.is_contiguous(memory_format=torch.channels_last) == channels_last
    got = got.numpy().transpose(0, 2, 3, 1)
    for img, f, o, g in zip(images, factors, order, got):
        np.testing.assert_allclose(g, jitter.jitter_image(img, f, o), atol=2e-3)
    np.testing.assert_array_equal(got[3], np.float32(images[3]))


# --- the draws -------------------------------------------------------------------------------

def test_draws_follow_colorjitter_ranges():
    factors, order = JitterSpec(0.4, 0.2, 1.5, 0.1).draw(np.random.default_rng(9), 20000)
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.8, 1.2), (0.0, 2.5), (-0.1, 0.1)]):
        assert lo <= factors[:, col].min() and factors[:, col].max() <= hi
        assert sps.kstest(factors[:, col], sps.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    assert (np.sort(order, axis=1) == np.arange(4)).all()
    perms = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([perms[tuple(row)] for row in order], minlength=24)
    assert sps.chisquare(counts).pvalue > 1e-3
    # a strength of zero draws the identity
    zero, _ = JitterSpec(0.4).draw(np.random.default_rng(9), 50)
    np.testing.assert_array_equal(zero[:, 1:], np.tile(jitter.IDENTITY[1:], (50, 1)))


def test_spec_validation():
    assert JitterSpec.strength(0.4) == JitterSpec(0.4, 0.4, 0.4, 0.0) and not JitterSpec().active
    with pytest.raises(ValueError, match="0.5"):
        JitterSpec(hue=0.6)
    with pytest.raises(ValueError, match=">= 0"):
        JitterSpec(brightness=-0.1)


# --- issue 20: what mutation testing found unguarded (docs/testing.md) ----------------------------------------

@pytest.mark.parametrize("field", ["brightness", "contrast", "saturation", "hue"])
def test_every_negative_strength_is_refused(field):
    with pytest.raises(ValueError, match=">= 0"):
        JitterSpec(**{field: -0.1})


def test_strength_keeps_the_hue_and_draws_have_their_dtypes():
    assert JitterSpec.strength(0.4, 0.1) == JitterSpec(0.4, 0.4, 0.4, 0.1)
    factors, order = JitterSpec.strength(0.4, 0.1).draw(np.random.default_rng(0), 5)
    assert factors.dtype == np.float32 and order.dtype == np.int8 and factors.shape == order.shape == (5, 4)


def test_rgb_to_hsv_is_colorsys_greys_and_black_included():
    pixels = np.concatenate([np.random.default_rng(4).uniform(0, 1, (200, 3)),
                             [[0, 0, 0], [1, 1, 1], [0.4, 0.4, 0.4], [1, 0, 0.5], [0.9, 0.1, 0.3], [0, 0, 1]]])
    want = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    np.testing.assert_allclose(jitter.rgb_to_hsv(pixels), want, atol=1e-12)
    np.testing.assert_allclose(jitter.hsv_to_rgb(want), pixels, atol=1e-12)


@pytest.mark.parametrize("per_image", [True, False])
def test_the_batch_s_tensors_are_made_on_the_batch_s_device(per_image):
    """On the meta device (no data, every op checked for its device): a table, an index or a luma vector made on
    the CPU meets the batch on another device and fails, as it would on a GPU."""
    factors, order = JitterSpec.strength(0.8, 0.3).draw(np.random.default_rng(1), 6)
    x = torch.empty(6, 3, 5, 4, device="meta")
    assert jitter.jitter_batch_(x, factors, order, per_image) is x
