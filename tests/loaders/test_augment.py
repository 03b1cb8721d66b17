"""The augmentation maths (alexnet_pipe.loaders.augment) against explicit numpy references."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from alexnet_pipe.loaders import augment
from alexnet_pipe.core.errors import UserError

EIGVAL = np.array([300.0, 40.0, 5.0])
EIGVEC = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]


def test_ten_crop_offsets_are_corners_centre_then_flipped():
    offsets, flips = augment.ten_crop_offsets(256, 224)
    five = [[0, 0], [32, 0], [0, 32], [32, 32], [16, 16]]
    assert offsets.tolist() == five + five
    assert flips.tolist() == [False] * 5 + [True] * 5
    assert augment.ten_crop_offsets(41, 32)[0][4].tolist() == [4, 4]  # odd margin: floor


@pytest.mark.parametrize("scale", ["convnet2", "fbresnet"])
def test_lighting_noise_matches_per_image_formula(scale):
    alpha = np.random.default_rng(1).normal(0, 0.1, (7, 3))
    eigval = EIGVAL if scale == "convnet2" else EIGVAL / 255 ** 2
    got = augment.lighting_noise(alpha, augment.Eigen(eigval, EIGVEC, scale))
    for a, g in zip(alpha, got):
        if scale == "convnet2":
            want = sum(EIGVEC[:, i] * a[i] * np.sqrt(EIGVAL[i]) for i in range(3))
        else:  # [0,1] units, times 255
            want = 255 * sum(EIGVEC[:, i] * a[i] * EIGVAL[i] / 255 ** 2 for i in range(3))
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)


def test_convnet2_noise_std_is_sigma_times_sqrt_eigval():
    alpha = np.random.default_rng(2).normal(0, 0.1, (20000, 3))
    noise = augment.lighting_noise(alpha, augment.Eigen(EIGVAL, EIGVEC, "convnet2"))
    along = noise @ EIGVEC  # back onto the principal axes
    np.testing.assert_allclose(along.std(0), 0.1 * np.sqrt(EIGVAL), rtol=0.05)


@pytest.mark.parametrize("n,b,w", [(50, 8, 2), (48, 8, 2), (49, 8, 2), (33, 8, 3), (17, 4, 4),
                                   (5, 128, 2), (1000, 7, 1), (10, 3, 4), (4, 3, 4)])
def test_step_layout_covers_every_position_once_with_equal_steps(n, b, w):
    layout = augment.StepLayout(n, b, w)
    seen = []
    for step in range(layout.steps):
        for rank in range(w):
            start, size = layout.rank_span(step, rank)
            assert 1 <= size <= layout.max_batch <= b + 1
            seen += range(start, start + size)
    assert sorted(seen) == list(range(n))
    assert sum(layout.rank_records(r) for r in range(w)) == n


def test_step_layout_refuses_fewer_records_than_ranks():
    with pytest.raises(UserError):
        augment.StepLayout(3, 8, 4)


def test_train_plan_reproducible_and_changes_per_epoch():
    kw = dict(size=40, crop=32, sigma=0.1)
    a, b = augment.train_plan(100, seed=3, epoch=1, **kw), augment.train_plan(100, seed=3, epoch=1, **kw)
    c = augment.train_plan(100, seed=3, epoch=2, **kw)
    for f in ("order", "crop_xy", "flip", "alpha"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert sorted(a.order) == list(range(100)) and not np.array_equal(a.order, c.order)


def test_train_plan_statistics():
    plan = augment.train_plan(20000, seed=0, epoch=0, size=40, crop=32, sigma=0.1)
    for axis in range(2):
        counts = np.bincount(plan.crop_xy[:, axis], minlength=9)
        assert len(counts) == 9 and counts.min() > 0  # every offset 0..8 reachable, none beyond
        assert sps.chisquare(counts).pvalue > 1e-4
    assert abs(plan.flip.mean() - 0.5) < 0.02
    np.testing.assert_allclose(plan.alpha.std(0), 0.1, rtol=0.05)
    assert np.abs(plan.alpha.mean(0)).max() < 0.005
    assert not augment.train_plan(10, seed=0, epoch=0, size=40, crop=32, sigma=0).alpha.any()


def test_flipped_window_and_ten_windows():
    image = np.random.default_rng(4).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    got = augment.flipped_window(image, 5, 7, 32, True)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, image[7:39, 5:37][:, ::-1])
    np.testing.assert_array_equal(augment.flipped_window(image, 8, 0, 32, False), image[0:32, 8:40])
    ten = augment.ten_windows(image, 32)
    corners = [(0, 0), (8, 0), (0, 8), (8, 8), (4, 4)]
    want = [image[y:y + 32, x:x + 32] for x, y in corners]
    np.testing.assert_array_equal(ten, np.stack(want + [w[:, ::-1] for w in want]))


def test_missing_stats_say_what_to_run(tmp_path):
    with pytest.raises(UserError, match="alexnet-pipe stats"):
        augment.load_normalizer(tmp_path, "mean-image", 40)
    with pytest.raises(UserError, match="alexnet-pipe stats"):
        augment.load_normalizer(tmp_path, "channel", 40)
    with pytest.raises(UserError, match=r"stats --pca.*--lighting 0"):
        augment.load_eigen(tmp_path, "convnet2")
    (tmp_path / "pca.json").write_text(json.dumps({"mean_rgb": [1, 2, 3], "std_rgb": [1, 1, 1], "pca": False}))
    with pytest.raises(UserError, match="stats --pca"):
        augment.load_eigen(tmp_path, "fbresnet")
    np.save(tmp_path / "mean.npy", np.zeros((30, 30, 3), np.float32))
    with pytest.raises(UserError, match="30"):
        augment.load_normalizer(tmp_path, "mean-image", 40)


# --- the plan with the modern augmentations ------------------------------------------------

def _paper_draws(n, seed, epoch, size, crop, sigma):
    """The paper plan's draws as they were before the modern augmentations existed."""
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0])).permutation(n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 1]))
    crop_xy = rng.integers(0, size - crop + 1, (n, 2), dtype=np.int32)
    flip = rng.random(n) < 0.5
    alpha = rng.normal(0.0, sigma, (n, 3)).astype(np.float32)
    return order, crop_xy, flip, alpha


@pytest.mark.parametrize("crops", ["translate", "random-resized"])
@pytest.mark.parametrize("with_jitter", [False, True])
def test_paper_draws_are_unchanged_by_the_modern_options(crops, with_jitter):
    order, crop_xy, flip, alpha = _paper_draws(500, 7, 3, 40, 32, 0.1)
    spec = augment.JitterSpec.strength(0.4, 0.1) if with_jitter else None
    plan = augment.train_plan(500, seed=7, epoch=3, size=40, crop=32, sigma=0.1, crops=crops, jitter=spec)
    np.testing.assert_array_equal(plan.order, order)
    np.testing.assert_array_equal(plan.flip, flip)
    np.testing.assert_array_equal(plan.alpha, alpha)
    if crops == "translate":
        np.testing.assert_array_equal(plan.crop_xy, crop_xy)
        np.testing.assert_array_equal(plan.window, np.concatenate([crop_xy, np.full((500, 2), 32)], axis=1))
    else:
        np.testing.assert_array_equal(plan.crop_xy, plan.window[:, :2])
    assert (plan.jitter is not None) == with_jitter


def test_modern_plan_is_fixed_by_seed_and_epoch_and_sliced_with_the_rest():
    kw = dict(size=64, crop=56, sigma=0.0, crops="random-resized", jitter=augment.JitterSpec.strength(0.4, 0.2))
    a, b = (augment.train_plan(300, seed=1, epoch=4, **kw) for _ in range(2))
    c = augment.train_plan(300, seed=1, epoch=5, **kw)
    for f in ("window", "jitter", "jitter_order"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert not np.array_equal(getattr(a, f), getattr(c, f))
    # the rank split and resume slice every per-position array alike
    layout = augment.StepLayout(300, 16, 3)
    for step in (0, layout.steps - 1):
        start, size = layout.rank_span(step, 2)
        part = a.take(start, size)
        np.testing.assert_array_equal(part["window"], a.window[start:start + size])
        np.testing.assert_array_equal(part["jitter"], a.jitter[start:start + size])
        np.testing.assert_array_equal(part["jitter_order"], a.jitter_order[start:start + size])
        np.testing.assert_array_equal(part["crop_x"], a.window[start:start + size, 0])
    x, y, w, h = a.window.T
    assert (x >= 0).all() and (y >= 0).all() and (w >= 1).all() and (h >= 1).all()
    assert (x + w <= 64).all() and (y + h <= 64).all()
    assert "jitter" not in augment.train_plan(10, seed=1, epoch=0, size=64, crop=56, sigma=0).take(0, 5)


def test_eval_plan_windows_are_the_centre_crop():
    plan = augment.eval_plan(5, size=256, crop=224)
    assert plan.window.tolist() == [[16, 16, 224, 224]] * 5 and plan.jitter is None


def _windows(n, height, width, scale=augment.RRC_SCALE, seed=0):
    return augment.random_resized_windows(np.random.default_rng(seed), n, height, width, scale=scale)


def test_windows_follow_the_documented_distributions_when_every_attempt_fits():
    # area <= 0.5 and ratio <= 4/3 give sides <= sqrt(2/3) of the image: the first attempt always fits
    side = 2048
    x, y, w, h = _windows(10000, side, side, scale=(0.08, 0.5)).T.astype(np.float64)
    log_r = math.log(4 / 3)
    assert sps.kstest(w * h / side ** 2, sps.uniform(0.08, 0.42).cdf).pvalue > 1e-3
    assert sps.kstest(np.log(w / h), sps.uniform(-log_r, 2 * log_r).cdf).pvalue > 1e-3
    # positions uniform over the slack left by each window
    assert sps.kstest(x / (side - w + 1), "uniform").pvalue > 1e-3
    assert sps.kstest(y / (side - h + 1), "uniform").pvalue > 1e-3


def test_windows_follow_the_conditional_distribution_with_the_full_scale():
    # Square image: a draw (A, l) fits iff A <= exp(-|l|), so the accepted pairs are uniform on
    # that region: marginal density of A ~ min(L, -ln A), of l ~ exp(-|l|) - 0.08.
    side, a0, big_l = 2048, 0.08, math.log(4 / 3)
    _, _, w, h = _windows(10000, side, side).T.astype(np.float64)
    edge = math.exp(-big_l)

    def area_cdf(a):
        a = np.asarray(a, np.float64)
        anti = lambda t: t - t * np.log(t)  # integral of -ln t
        below = big_l * (np.minimum(a, edge) - a0)
        above = np.where(a > edge, anti(np.maximum(a, edge)) - anti(edge), 0.0)
        return (below + above) / (big_l * (edge - a0) + anti(1.0) - anti(edge))

    def log_ratio_cdf(v):
        v = np.asarray(v, np.float64)
        half = lambda u: 1 - np.exp(-u) - a0 * u
        return 0.5 + np.sign(v) * half(np.abs(v)) / (2 * half(big_l))

    assert sps.kstest(w * h / side ** 2, area_cdf).pvalue > 1e-3
    assert sps.kstest(np.log(w / h), log_ratio_cdf).pvalue > 1e-3


def _torchvision_get_params(rnd, height, width, scale, ratio):
    """RandomResizedCrop.get_params as its documentation describes it, one image, Python's random."""
    for _ in range(10):
        area = height * width * rnd.uniform(*scale)
        aspect = math.exp(rnd.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rnd.randint(0, width - w), rnd.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def test_windows_match_an_independent_simulation_when_attempts_fail():
    # 300x200 with areas up to 1.2: ~3 in 4 attempts fail, ~5% of the images fall back
    scale, ratio, n = (0.5, 1.2), augment.RRC_RATIO, 4000
    ours = _windows(n, 200, 300, scale=scale, seed=5)
    import random
    rnd = random.Random(5)
    ref = np.array([_torchvision_get_params(rnd, 200, 300, scale, ratio) for _ in range(n)])
    for col in range(4):
        assert sps.ks_2samp(ours[:, col], ref[:, col]).pvalue > 1e-3
    fallback = [16, 0, 267, 200]
    rate_ours, rate_ref = (np.all(a == fallback, axis=1).mean() for a in (ours, ref))
    assert 0.03 < rate_ref < 0.1 and abs(rate_ours - rate_ref) < 0.03


@pytest.mark.parametrize("height,width,want", [(64, 64, (0, 0, 64, 64)), (101, 300, (82, 0, 135, 101)),
                                               (300, 101, (0, 82, 101, 135)), (90, 100, (0, 0, 100, 90))])
def test_fallback_is_the_largest_centred_window_of_clamped_ratio(height, width, want):
    # areas of 2 to 3 times the image never fit: every image falls back (101 * 4/3 = 134.7 -> 135)
    got = _windows(6, height, width, scale=(2.0, 3.0))
    assert got.tolist() == [list(want)] * 6
    assert augment.fallback_window(height, width) == want


# --- the resize reference -----------------------------------------------------------------

def _bilinear(image, window, crop):
    """Bilinear resampling with pixel centres aligned: source = (dest + 0.5) * in / out - 0.5,
    clamped to the window (the definition cv2's INTER_LINEAR, DALI's linear resize and
    torch's interpolate(align_corners=False) share)."""
    x, y, w, h = window
    win = image[y:y + h, x:x + w].astype(np.float64)

    def taps(size):
        src = np.clip((np.arange(crop) + 0.5) * size / crop - 0.5, 0, size - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, size - 1), src - lo

    y0, y1, fy = taps(h)
    x0, x1, fx = taps(w)
    rows = win[y0] * (1 - fy)[:, None, None] + win[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.mark.parametrize("window", [(3, 5, 20, 30), (0, 0, 64, 64), (10, 2, 50, 37), (40, 40, 24, 24), (7, 9, 1, 3)])
def test_resized_window_is_bilinear_with_aligned_centres(window):
    image = np.random.default_rng(6).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    got = augment.resized_window(image, window, 32)
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    want = _bilinear(image, window, 32)
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.max() <= 1.0 and diff.mean() < 0.5  # cv2's fixed-point weights: within one level
    np.testing.assert_array_equal(augment.resized_window(image, window, 32, flip=True), got[:, ::-1])
    mean_image = image.astype(np.float32) * 0.7
    np.testing.assert_allclose(augment.resized_window(mean_image, window, 32), want * 0.7, atol=2e-2)


def test_resized_window_of_crop_size_is_the_plain_crop():
    image = np.random.default_rng(7).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for flip in (False, True):
        np.testing.assert_array_equal(augment.resized_window(image, (5, 7, 32, 32), 32, flip),
                                      augment.flipped_window(image, 5, 7, 32, flip))
    with pytest.raises(ValueError, match="outside"):
        augment.resized_window(image, (10, 0, 32, 32), 32)


def test_windows_drawn_in_blocks_stay_valid_and_fixed_across_blocks():
    n = augment._WINDOW_BLOCK + 1000  # a second, partial block
    a, b = (augment.random_resized_windows(np.random.default_rng(3), n, 64, 48) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    x, y, w, h = a.T
    assert (w >= 1).all() and (h >= 1).all() and (x + w <= 48).all() and (y + h <= 64).all()
    head, tail = a[:1000], a[-1000:]
    assert not np.array_equal(head, tail)  # the second block has draws of its own
    area = lambda win: (win[:, 2] * win[:, 3]).mean() / (64 * 48)
    assert abs(area(head) - area(tail)) < 0.05


# --- issue 20: what mutation testing found unguarded (docs/testing.md) ----------------------------------------

def _assert_plan_dtypes(plan: augment.EpochPlan, n: int) -> None:
    """The dtypes and shapes EpochPlan documents, which the loaders feed to DALI and torch as they are."""
    assert plan.order.dtype == np.int64 and plan.order.shape == (n,)
    assert plan.crop_xy.dtype == np.int32 and plan.crop_xy.shape == (n, 2)
    assert plan.flip.dtype == np.bool_ and plan.flip.shape == (n,)
    assert plan.alpha.dtype == np.float32 and plan.alpha.shape == (n, 3)
    assert plan.window.dtype == np.int32 and plan.window.shape == (n, 4)


def test_plans_have_their_documented_dtypes_and_the_eval_plan_is_key_order_centre_no_noise():
    for crops in augment.CROP_MODES:
        for sigma in (0.0, 0.1):
            _assert_plan_dtypes(augment.train_plan(30, seed=0, epoch=0, size=40, crop=32, sigma=sigma,
                                                   crops=crops), 30)
    plan = augment.eval_plan(7, size=41, crop=32)
    _assert_plan_dtypes(plan, 7)
    np.testing.assert_array_equal(plan.order, np.arange(7))
    assert (plan.crop_xy == 4).all() and not plan.flip.any() and not plan.alpha.any()
    offsets, flips = augment.ten_crop_offsets(257, 224)
    assert offsets.dtype == np.int32 and flips.dtype == np.bool_
    assert augment.centre_offset(257, 224) == 16 and isinstance(augment.centre_offset(257, 224), int)
    empty = augment.random_resized_windows(np.random.default_rng(0), 0, 40, 40)
    assert empty.shape == (0, 4) and empty.dtype == np.int32


def test_take_slices_every_field_under_its_name():
    plan = augment.train_plan(20, seed=2, epoch=1, size=40, crop=32, sigma=0.1)
    part = plan.take(3, 4)
    assert part.keys() == {"index", "crop_x", "crop_y", "flip", "alpha", "window"}
    np.testing.assert_array_equal(part["index"], plan.order[3:7])
    np.testing.assert_array_equal(part["crop_x"], plan.crop_xy[3:7, 0])
    np.testing.assert_array_equal(part["crop_y"], plan.crop_xy[3:7, 1])
    np.testing.assert_array_equal(part["flip"], plan.flip[3:7])
    np.testing.assert_array_equal(part["alpha"], plan.alpha[3:7])


def test_step_layout_refuses_steps_outside_the_epoch_in_one_sentence():
    layout = augment.StepLayout(48, 8, 2)
    assert layout.steps == 3
    for step in (-1, 3):
        with pytest.raises(IndexError, match=rf"step {step} outside 0\.\.2$"):
            layout.step_span(step)
    with pytest.raises(UserError, match="3 records cannot be split over 4 processes"):
        augment.StepLayout(3, 8, 4)
    with pytest.raises(ValueError, match="crops must be one of .* not 'inception'"):
        augment.train_plan(5, seed=0, epoch=0, size=40, crop=32, sigma=0, crops="inception")


def test_the_plan_passes_its_scale_and_ratio_to_the_windows():
    plan = augment.train_plan(200, seed=0, epoch=0, size=64, crop=32, sigma=0, crops="random-resized",
                              scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert (plan.window[:, 2:] == 32).all()


@pytest.mark.parametrize("height, width, scale, ratio, want", [
    (30, 40, (1.0, 1.0), (1.0, 1.0), (5, 0, 30, 30)),  # never fits: the fallback, with the ratio asked for
    (20, 20, (0.1 / 400, 0.1 / 400), (1.0, 1.0), (0, 0, 20, 20)),  # sides round to 0: never a window of none
    (20, 20, (1 / 400, 1 / 400), (0.2, 0.2), (8, 0, 4, 20)),  # 0 wide, 2 high
    (20, 20, (1 / 400, 1 / 400), (5.0, 5.0), (0, 8, 20, 4)),  # 2 wide, 0 high
])
def test_windows_that_cannot_fit_fall_back(height, width, scale, ratio, want):
    windows = augment.random_resized_windows(np.random.default_rng(0), 50, height, width, scale=scale, ratio=ratio)
    assert (windows == want).all()


@pytest.mark.parametrize("height, width, side", [(30, 40, 30), (40, 30, 30), (20, 20, 1)])
def test_windows_as_high_or_wide_as_the_image_or_of_one_pixel_fit(height, width, side):
    area = side * side / (height * width)
    windows = augment.random_resized_windows(np.random.default_rng(0), 400, height, width, scale=(area, area),
                                             ratio=(1.0, 1.0))
    assert (windows[:, 2:] == side).all()
    assert set(windows[:, 0].tolist()) == set(range(width - side + 1))
    assert set(windows[:, 1].tolist()) == set(range(height - side + 1))


def test_many_windows_are_as_many_as_asked():
    n = augment._WINDOW_BLOCK + 10
    assert augment.random_resized_windows(np.random.default_rng(0), n, 32, 32).shape == (n, 4)


@pytest.mark.parametrize("window, ok", [((0, 0, 0, 5), False), ((0, 0, 5, 0), False), ((0, 4, 10, 16), True),
                                        ((0, 5, 10, 16), False), ((20, 0, 10, 1), True), ((21, 0, 10, 1), False)])
def test_resized_window_refuses_a_window_outside_a_non_square_image(window, ok):
    image = np.zeros((20, 30, 3), np.uint8)  # 30 wide, 20 high
    if ok:
        assert augment.resized_window(image, window, 8).shape == (8, 8, 3)
    else:
        with pytest.raises(ValueError, match=r"window \(.*\) is outside the 30x20 image"):
            augment.resized_window(image, window, 8)


def test_lighting_noise_of_small_eigenvalues_and_a_bad_scale():
    eigen = augment.Eigen(np.array([0.25, 0.04, 0.0]), np.eye(3), "convnet2")
    noise = augment.lighting_noise(np.ones((2, 3)), eigen)
    assert noise.dtype == np.float32
    np.testing.assert_allclose(noise, [[0.5, 0.2, 0.0]] * 2, rtol=1e-6)
    assert augment.lighting_noise(np.ones(3), augment.Eigen(np.ones(3), np.eye(3), "fbresnet")).dtype == np.float32
    with pytest.raises(ValueError, match="lighting scale must be one of .* not 'other'"):
        augment.lighting_noise(np.ones(3), augment.Eigen(np.ones(3), np.eye(3), "other"))


def _stats_dir(tmp_path, pca: bool = True, std=(50.0, 60.0, 70.0)):
    from helpers.shardgen import write_pca_json
    mean = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    np.save(tmp_path / "mean.npy", mean)
    write_pca_json(tmp_path / "pca.json", [300.0, 40.0, 5.0], EIGVEC, [120.0, 110.0, 100.0], std, 8, 10)
    if not pca:
        doc = json.loads((tmp_path / "pca.json").read_text())
        doc = {k: v for k, v in doc.items() if k not in ("eigval", "eigvec", "fbresnet")}
        (tmp_path / "pca.json").write_text(json.dumps({**doc, "pca": False}))
    return mean


def test_statistics_load_as_written(tmp_path):
    mean = _stats_dir(tmp_path)
    image = augment.load_normalizer(tmp_path, "mean-image", 8)
    assert image.mode == "mean-image" and image.mean_rgb is None and image.std_rgb is None
    np.testing.assert_array_equal(image.mean_image, mean)
    channel = augment.load_normalizer(tmp_path, "channel", 8)
    assert channel.mode == "channel" and channel.mean_image is None
    assert channel.mean_rgb.dtype == channel.std_rgb.dtype == np.float32
    np.testing.assert_array_equal(channel.mean_rgb, [120, 110, 100])
    np.testing.assert_array_equal(channel.std_rgb, [50, 60, 70])
    for scale, eigval in (("convnet2", [300.0, 40.0, 5.0]), ("fbresnet", np.array([300.0, 40.0, 5.0]) / 255 ** 2)):
        eigen = augment.load_eigen(tmp_path, scale)
        assert eigen.scale == scale and eigen.eigval.dtype == eigen.eigvec.dtype == np.float64
        np.testing.assert_allclose(eigen.eigval, eigval, rtol=1e-12)
        np.testing.assert_allclose(eigen.eigvec, EIGVEC, rtol=1e-12)


def test_per_channel_statistics_need_no_eigenpairs(tmp_path):
    _stats_dir(tmp_path, pca=False, std=(50.0, 0.5, 70.0))  # a near-constant channel is still a channel
    np.testing.assert_array_equal(augment.load_normalizer(tmp_path, "channel", 8).std_rgb, [50, 0.5, 70])
    with pytest.raises(UserError, match=r"pca\.json has no eigenpairs: PCA lighting needs it: run `alexnet-pipe "
                                        r"stats --pca` first \(or turn lighting off: --lighting 0\)"):
        augment.load_eigen(tmp_path, "convnet2")


def test_statistics_that_cannot_be_used_are_one_sentence_each(tmp_path):
    with pytest.raises(UserError, match=r"mean\.npy is missing: the mean image is needed for mean subtraction; run "
                                        "`alexnet-pipe stats` first"):
        augment.load_normalizer(tmp_path, "mean-image", 8)
    with pytest.raises(UserError, match=r"pca\.json is missing: per-channel mean/std needs it: run `alexnet-pipe "
                                        "stats` first"):
        augment.load_normalizer(tmp_path, "channel", 8)
    _stats_dir(tmp_path, std=(50.0, 0.0, 70.0))
    with pytest.raises(UserError, match=rf"{tmp_path / 'pca.json'} has a zero channel std"):
        augment.load_normalizer(tmp_path, "channel", 8)
    with pytest.raises(ValueError, match="normalize must be one of .* not 'none'"):
        augment.load_normalizer(tmp_path, "none", 8)
