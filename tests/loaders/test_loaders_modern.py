"""The modern augmentations wired into both loaders (issue 14): random-resized windows and colour jitter
against the numpy references (augment.resized_window, jitter.jitter_image) on the plan's own parameters."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders import jitter
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders.jitter import JitterSpec
from alexnet_pipe.loaders import LoaderSettings, make_loader
from alexnet_pipe.loaders.base import BaseLoader, TorchNormalizer, validate
from helpers.loaders import (CROP, N_TRAIN, S, decoded, jittered_reference, normalizer_case,
                             reference_normalize)

# DALI's linear resize and cv2's INTER_LINEAR share the sampling (pixel centres aligned, no antialiasing) but not
# the arithmetic: cv2 rounds 11-bit fixed-point weights, DALI computes in float and rounds once. Measured here
# (4 seeds, raw and JPEG): at most one grey level apart, ~12% of the values. The torch loader runs the
# reference itself: equal.
RESIZE_GREY_LEVELS = {"dali": 1, "torch": 0}
BACKENDS = [pytest.param("dali", marks=pytest.mark.dali), "torch"]


@pytest.fixture(scope="module")
def pixels(dirs):
    return {enc: decoded(d, "train") for enc, d in dirs.items()}


def modern(data, **kw):
    return LoaderSettings(Path(data), **{"batch_size": 8, "crop": CROP, "with_params": True, "normalize": "channel",
                                         "lighting": 0.0, "crops": "random-resized", **kw})


def unnormalised(images, stats: Path) -> np.ndarray:
    """(B, c, c, 3) float64: the channel normalisation undone."""
    norm = augment.load_normalizer(stats, "channel", S)
    return images.double().numpy().transpose(0, 2, 3, 1) * norm.std_rgb + norm.mean_rgb


# --- settings and plan --------------------------------------------------------------------------

@pytest.mark.parametrize("bad, says", [
    (dict(crops="inception"), "crops must be one of"),
    (dict(normalize="mean-image"), "random-resized crops need per-channel normalisation"),
    (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(crop_ratio=(1.0,)), "crop_ratio"),
    (dict(color_jitter=-0.1), "color_jitter"),
    (dict(hue=0.6), "hue"),
])
def test_bad_settings_are_one_sentence(tmp_path, bad, says):
    with pytest.raises(UserError, match=says):
        validate(modern(tmp_path, **bad))


def test_caffe_reader_refuses_the_modern_augmentations(tmp_path):
    from alexnet_pipe.report.dali_variants import check_reader
    with pytest.raises(UserError, match="reader 'caffe'"):
        check_reader(modern(tmp_path), "caffe")


def test_plan_carries_the_settings(dirs):
    s = modern(dirs["raw"], crop_scale=(0.3, 0.6), crop_ratio=(0.5, 2.0), color_jitter=0.3, hue=0.1, seed=4)
    plan = BaseLoader(s).plan(2)
    want = augment.train_plan(N_TRAIN, seed=4, epoch=2, size=S, crop=CROP, sigma=0.0, crops="random-resized",
                              scale=(0.3, 0.6), ratio=(0.5, 2.0), jitter=JitterSpec.strength(0.3, 0.1))
    for name in ("order", "window", "flip", "jitter", "jitter_order"):
        np.testing.assert_array_equal(getattr(plan, name), getattr(want, name), err_msg=name)
    area = plan.window[:, 2] * plan.window[:, 3] / S ** 2
    assert area.min() > 0.25 and area.max() < 0.65  # the scale reached the draws (rounding moves it a little)
    paper = BaseLoader(LoaderSettings(dirs["raw"], crop=CROP)).plan(2)
    assert paper.jitter is None and (paper.window[:, 2:] == CROP).all()
    evaluation = BaseLoader(modern(dirs["raw"], train=False, color_jitter=0.4)).plan(0)
    assert evaluation.jitter is None and (evaluation.window == [4, 4, CROP, CROP]).all()


# --- the normaliser: jitter on the float crop, before lighting, mean and std ----------------------

@pytest.mark.parametrize("mode", ["mean-image", "channel"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_normalizer_jitters_before_normalising(mode, channels_last):
    rng = np.random.default_rng(11)
    n, size, c = 10, 20, 16
    norm, crops, xs, ys, flips, light = normalizer_case(rng, mode, n, size, c)
    factors, order = JitterSpec.strength(0.6, 0.2).draw(rng, n)
    factors[2] = jitter.IDENTITY
    normalizer = TorchNormalizer(norm, size, c)
    want = jittered_reference(crops, factors, order, xs, ys, flips, light, norm, size)
    got = normalizer(torch.from_numpy(crops), xs, ys, flips, light, channels_last, jitter=(factors, order))
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    tol = dict(rtol=1e-5, atol=3e-3 if mode == "mean-image" else 5e-5)  # float32 against float64, 0..255 units
    np.testing.assert_allclose(got.numpy(), want, **tol)
    batched = normalizer._apply(torch.from_numpy(crops), xs, ys, flips, light, channels_last, batched=True,
                                jitter=(factors, order))  # CUDA's form, run here on the CPU
    np.testing.assert_allclose(batched.numpy(), want, **tol)
    plain = normalizer(torch.from_numpy(crops), xs, ys, flips, light, channels_last)  # no jitter: the old path
    np.testing.assert_allclose(plain.numpy(), reference_normalize(crops, xs, ys, flips, light, norm, size),
                               rtol=1e-5, atol=1e-3)


# --- both loaders against the references -------------------------------------------------------------

@pytest.mark.parametrize("enc", ["raw", "jpeg"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_resized_views_match_the_resize_reference(dirs, pixels, backend, enc):
    loader = make_loader(modern(dirs[enc], loader=backend, crop_scale=(0.08, 1.0), seed=5))
    seen, resized = 0, 0
    for images, _labels, p in loader.epoch(1):
        got = unnormalised(images, dirs[enc] / "stats")
        for i, key in enumerate(p["key"]):
            want = augment.resized_window(pixels[enc][key], p["window"][i], CROP, bool(p["flip"][i]))
            diff = np.abs(got[i] - want)
            assert diff.max() <= RESIZE_GREY_LEVELS[backend] + 1e-3, (key, p["window"][i], diff.max())
            assert diff.mean() <= 0.25, (key, p["window"][i], diff.mean())
            seen, resized = seen + 1, resized + int(tuple(p["window"][i, 2:]) != (CROP, CROP))
    assert seen == N_TRAIN and resized > N_TRAIN // 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_jittered_views_match_the_jitter_reference(dirs, pixels, backend):
    """Paper crops, mean image and lighting, plus colour jitter with hue: each view is
    jitter_image(window) + light - mean window, the jitter on the 0..255 crop before the rest."""
    stats = dirs["jpeg"] / "stats"
    loader = make_loader(LoaderSettings(dirs["jpeg"], batch_size=8, crop=CROP, with_params=True, loader=backend,
                                        color_jitter=0.4, hue=0.1, lighting=0.2, seed=3))
    eigen, norm = augment.load_eigen(stats, "convnet2"), augment.load_normalizer(stats, "mean-image", S)
    seen = 0
    for images, _labels, p in loader.epoch(0):
        crops = np.stack([augment.flipped_window(pixels["jpeg"][k], x, y, CROP, f)
                          for k, x, y, f in zip(p["key"], p["crop_x"], p["crop_y"], p["flip"])])
        want = jittered_reference(crops, p["jitter"], p["jitter_order"], p["crop_x"], p["crop_y"], p["flip"],
                                  augment.lighting_noise(p["alpha"], eigen), norm, S)
        np.testing.assert_allclose(images.numpy(), want, rtol=1e-5, atol=5e-3)
        seen += len(p["key"])
    assert seen == N_TRAIN


@pytest.mark.dali
def test_dali_and_torch_agree_on_modern_batches(dirs):
    a = list(make_loader(modern(dirs["jpeg"], loader="dali", color_jitter=0.4, seed=9)).epoch(2, start_step=1))
    b = list(make_loader(modern(dirs["jpeg"], loader="torch", color_jitter=0.4, seed=9)).epoch(2, start_step=1))
    assert len(a) == len(b) == 6
    for (xa, ya, pa), (xb, yb, pb) in zip(a, b):
        assert torch.equal(ya, yb) and (pa["key"] == pb["key"]).all() and (pa["window"] == pb["window"]).all()
        # at most the resize's grey level apart, times the jitter's largest gain on a difference (brightness
        # 1.4; contrast and saturation 1.4 on the pixel plus 0.4 on its mean or grey), over the smallest std
        std = augment.load_normalizer(dirs["jpeg"] / "stats", "channel", S).std_rgb.min()
        assert (xa - xb).abs().max() <= RESIZE_GREY_LEVELS["dali"] * 1.4 * 1.8 * 1.8 / std
        assert (xa - xb).abs().mean() <= 0.25 / std  # and mostly equal


# --- viz augment --recipe modern: what the network sees -------------------------------------------

def test_viz_augment_modern_shows_resized_jittered_views(dirs, pixels, tmp_path):
    from PIL import Image
    from alexnet_pipe.report.augment_grid import VizAugmentSettings, augment_loader, seen_pixels
    from alexnet_pipe_cli.main import cli
    from click.testing import CliRunner
    out = tmp_path / "modern.png"
    result = CliRunner().invoke(cli, ["viz", "augment", "--data", str(dirs["jpeg"]), "-o", str(out), "--n", "6",
                                      "--crop", str(CROP), "--recipe", "modern", "--loader", "torch"])
    assert result.exit_code == 0, result.output
    assert '"random-resized"' in result.output and "0.4" in result.output
    assert Image.open(out).size == (3 * (CROP + 2) + 2, 2 * (CROP + 2) + 2)
    s = VizAugmentSettings(dirs["jpeg"], out, 6, 0, CROP, 0.0, "convnet2", "torch", recipe="modern",
                           normalize="channel", crops="random-resized", color_jitter=0.4, hue=0.0)
    loader = augment_loader(s)
    images, _labels, p = next(iter(loader.epoch(0)))
    views = seen_pixels(images, p, loader)
    for i, key in enumerate(p["key"]):
        window = augment.resized_window(pixels["jpeg"][key], p["window"][i], CROP, bool(p["flip"][i]))
        want = np.clip(jitter.jitter_image(window, p["jitter"][i], p["jitter_order"][i]), 0, 255).round()
        assert np.abs(views[i].astype(float) - want).max() <= 1  # float32 against float64: a rounding apart
