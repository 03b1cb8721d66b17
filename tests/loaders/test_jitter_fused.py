"""The compiled jitter-and-normalise pass (loaders/jitter_fused.py, numba) against jitter.py's numpy references:
every order of brightness, contrast and saturation, factors from 0 to 2 (clips that act, contrast after a clip),
both normalisations, flipped mean windows, generated cases; and that the torch loader's finisher takes it."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from alexnet_pipe.loaders import LoaderSettings, augment, jitter, jitter_fused, make_loader
from alexnet_pipe.loaders.finish_cpu import ViewFinisher
from alexnet_pipe.loaders.jitter import BRIGHTNESS, CONTRAST, HUE, SATURATION, JitterSpec
from helpers.loaders import CROP, N_TRAIN, S, decoded, jittered_reference, normalizer_case

# float32 against the float64 reference, in normalised units (channel: / ~55; mean image: 0..255 units)
TOLERANCE = {"channel": dict(rtol=1e-5, atol=5e-5), "mean-image": dict(rtol=1e-5, atol=3e-3)}


def _finish(finisher, crops, xs, ys, flips, light, factors, order):
    out = np.full((len(crops), 3) + crops.shape[1:3], np.nan, np.float32)
    for k in range(len(crops)):
        finisher(crops[k], out[k], int(xs[k]), int(ys[k]), bool(flips[k]), light[k], (factors[k], order[k]))
    return out


def _case(seed, mode, factors_rows, orders, bright=False):
    n, size, c = len(factors_rows), 20, 16
    norm, crops, xs, ys, flips, light = normalizer_case(np.random.default_rng(seed), mode, n, size, c)
    if bright:  # most pixels near the top: brightness and contrast above 1 clip many of them
        crops = np.clip(crops.astype(np.int32) + 150, 0, 255).astype(np.uint8)
    factors = np.array(factors_rows, np.float32)
    return norm, size, c, (crops, xs, ys, flips, light, factors, np.array(orders, np.int8))


@pytest.mark.parametrize("mode", ["channel", "mean-image"])
@pytest.mark.parametrize("bright", [False, True])
def test_every_order_and_factor_matches_the_reference(mode, bright):
    """The six orders of the three ops (hue last, identity), each with factors that clip and that do not."""
    rows, orders = [], []
    for perm, fs in itertools.product(itertools.permutations((BRIGHTNESS, CONTRAST, SATURATION)),
                                      [(1.6, 1.8, 1.9), (0.3, 0.6, 0.2), (1.9, 0.1, 1.4), (0.0, 2.0, 0.0)]):
        rows.append([*fs, 0.0])
        orders.append([*perm, HUE])
    norm, size, c, case = _case(3, mode, rows, orders, bright)
    finisher = ViewFinisher(norm, size, c, channels_last=False, compiled=True)
    assert finisher.fused is jitter_fused  # numba is in the test extra: this pass, not jitter_cv's
    got = _finish(finisher, *case)
    np.testing.assert_allclose(got, jittered_reference(*case[:1], case[5], case[6], *case[1:5], norm, size),
                               **TOLERANCE[mode])


def test_views_with_a_hue_factor_or_identities_take_their_own_paths():
    """A hue factor goes through jitter_cv (the kernel has no hue), identity factors are skipped."""
    assert not jitter_fused.fusable(np.array([1.2, 0.9, 1.1, 0.1], np.float32))
    assert jitter_fused.fusable(np.array([1.2, 0.9, 1.1, 0.0], np.float32))
    norm, size, c, case = _case(6, "channel", [[1.0, 0.9, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]], [[3, 2, 1, 0]] * 2)
    got = _finish(ViewFinisher(norm, size, c, channels_last=False, compiled=True), *case)
    np.testing.assert_allclose(got, jittered_reference(case[0], case[5], case[6], *case[1:5], norm, size),
                               **TOLERANCE["channel"])
    rng = np.random.default_rng(4)
    factors, order = JitterSpec.strength(0.6, 0.2).draw(rng, 8)
    norm, size, c, case = _case(5, "channel", factors, order)
    got = _finish(ViewFinisher(norm, size, c, channels_last=False, compiled=True), *case)
    np.testing.assert_allclose(got, jittered_reference(case[0], factors, order, *case[1:5], norm, size),
                               **TOLERANCE["channel"])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), mode=st.sampled_from(["channel", "mean-image"]),
       factors=st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0]) | st.floats(0.0, 2.0, width=32),
                        min_size=3, max_size=3),
       order=st.permutations([BRIGHTNESS, CONTRAST, SATURATION, HUE]), bright=st.booleans())
def test_generated_views_match_the_reference(seed, mode, factors, order, bright):
    norm, size, c, case = _case(seed, mode, [[*factors, 0.0]], [order], bright)
    got = _finish(ViewFinisher(norm, size, c, channels_last=False, compiled=True), *case)
    np.testing.assert_allclose(got, jittered_reference(case[0], case[5], case[6], *case[1:5], norm, size),
                               **TOLERANCE[mode])


def _view_case(rng, mode, resized, edge, size=20, c=16):
    """(norm, image, window, crop offset): a decoded image, and a window of it at an edge or anywhere; the crop's
    size in mean-image mode (the paper's crops), or any size (random-resized) in channel mode."""
    norm, *_ = normalizer_case(rng, mode, 1, size, c)
    height, width = (size, size) if mode == "mean-image" else (int(rng.integers(c, 40)), int(rng.integers(c, 40)))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    w, h = (int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))) if resized else (c, c)
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    x = {"left": 0, "right": width - w}.get(edge, x)
    y = {"top": 0, "bottom": height - h}.get(edge, y)
    return norm, image, (x, y, w, h), (x, y) if (w, h) == (c, c) else (0, 0)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2 ** 31), mode=st.sampled_from(["channel", "mean-image"]), resized=st.booleans(),
       edge=st.sampled_from(["any", "left", "right", "top", "bottom"]), flip=st.booleans(),
       jittered=st.sampled_from(["no", "yes", "hue"]), read_only=st.booleans())
def test_a_view_read_where_it_lies_is_the_cut_window_finished(seed, mode, resized, edge, flip, jittered, read_only):
    """view() reads a crop where it lies in the decoded image (read-only: a raw record's own bytes), or the resized
    window in the finisher's buffer, mirrored as it reads: bit for bit what __call__ makes of the window the
    reference cuts (augment.cut_window: a flipped copy, OpenCV's resize), which the tests above hold against
    jitter.py; without jitter also bit for bit OpenCV's passes (TorchNormalizer's operations)."""
    rng = np.random.default_rng(seed)
    norm, image, window, (x, y) = _view_case(rng, mode, resized and mode == "channel", edge)
    image.flags.writeable = not read_only
    light = rng.normal(0, 20, 3).astype(np.float32)
    jit = None
    if jittered != "no":
        factors, order = JitterSpec.strength(0.9, 0.2 if jittered == "hue" else 0.0).draw(rng, 1)
        jit = (factors[0], order[0])
    compiled = ViewFinisher(norm, 20, 16, channels_last=False, compiled=True)
    got, want = (np.full((3, 16, 16), np.nan, np.float32) for _ in range(2))
    compiled.view(image, window, flip, got, x, y, light, jit)
    compiled(augment.cut_window(image, window, 16, flip), want, x, y, flip, light, jit)
    np.testing.assert_array_equal(got, want)
    if jit is None:
        opencv = ViewFinisher(norm, 20, 16, channels_last=False)
        opencv(augment.cut_window(image, window, 16, flip), want, x, y, flip, light)
        np.testing.assert_array_equal(got, want)


def test_a_window_outside_the_image_is_refused_before_the_compiled_pass_reads_it():
    norm, image, _, _ = _view_case(np.random.default_rng(2), "channel", False, "any")
    finisher = ViewFinisher(norm, 20, 16, channels_last=False, compiled=True)
    height, width = image.shape[:2]
    for window in [(width - 15, 0, 16, 16), (0, height - 15, 16, 16), (-1, 0, 16, 16), (0, 0, width + 1, 8)]:
        with pytest.raises(ValueError, match="outside"):
            finisher.view(image, window, False, np.empty((3, 16, 16), np.float32), 0, 0, np.zeros(3, np.float32))


def test_the_finisher_uses_the_compiled_pass_only_when_asked_and_not_for_channels_last():
    norm, *_ = normalizer_case(np.random.default_rng(1), "channel", 1, 20, 16)
    assert ViewFinisher(norm, 20, 16, channels_last=False, compiled=True).fused is jitter_fused
    assert ViewFinisher(norm, 20, 16, channels_last=False).fused is None
    assert ViewFinisher(norm, 20, 16, channels_last=True, compiled=True).fused is None


@pytest.mark.parametrize("workers", [0, 2])
def test_the_torch_loader_s_modern_views_go_through_the_compiled_pass(dirs, monkeypatch, workers):
    """Random-resized windows with colour jitter 0.8 (no hue) through make_loader: each view is the reference's
    resize, jitter and normalisation; in-process, every view went through jitter_fused.finish."""
    calls = []
    finish = jitter_fused.finish
    monkeypatch.setattr(jitter_fused, "finish", lambda *a: calls.append(1) or finish(*a))
    data = dirs["jpeg"]
    loader = make_loader(LoaderSettings(data, batch_size=8, crop=CROP, with_params=True, loader="torch",
                                        normalize="channel", lighting=0.0, crops="random-resized",
                                        color_jitter=0.8, seed=9, num_threads=workers))
    norm, pixels, seen = augment.load_normalizer(data / "stats", "channel", S), decoded(data, "train"), 0
    for images, _labels, p in loader.epoch(0):
        for i, key in enumerate(p["key"]):
            window = augment.resized_window(pixels[key], p["window"][i], CROP, bool(p["flip"][i]))
            want = (jitter.jitter_image(window, p["jitter"][i], p["jitter_order"][i]) - norm.mean_rgb) / norm.std_rgb
            np.testing.assert_allclose(images[i].numpy().transpose(1, 2, 0), want, **TOLERANCE["channel"])
            seen += 1
    loader.close()
    assert seen == N_TRAIN and len(calls) == (N_TRAIN if workers == 0 else 0)
