"""The augmentation maths (alexnet_pipe.augment) against explicit numpy references."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from alexnet_pipe import augment
from alexnet_pipe.errors import UserError

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
