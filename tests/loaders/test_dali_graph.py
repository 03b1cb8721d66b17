"""The DALI graph's small functions (loaders/dali.py: decode, crop, resize, flip), each run on the CPU build
against numpy and OpenCV on images made here. The float work after them (TorchNormalizer) is tested against
numpy in test_loaders.py."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders.dali import (built_pipeline, decoded_window, flipped, mirror_in_place, resized,
                                       ten_views, train_view)
from helpers.shardgen import random_images, stored_pixels

pytestmark = pytest.mark.dali
S, CROP = 24, 16


def run_graph(build, inputs: list, dtypes: list) -> list[np.ndarray]:
    """One batch through a CPU pipeline: `build(*external source outputs)` -> the samples of its output."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=len(inputs[0]), num_threads=1, device_id=None)
    def graph():
        return build(*fn.external_source(source=lambda: inputs, num_outputs=len(inputs), batch=True,
                                         dtype=dtypes))

    (out,) = built_pipeline(graph).run()  # built without DALI's note on inputs a mode leaves unused
    return [np.array(out[i]) for i in range(len(inputs[0]))]


def _case(encoded: bool):
    """(record data per sample, the pixels OpenCV decodes from it, (x, y) anchors, (w, h) shapes, flips)."""
    rng = np.random.default_rng(5)
    images = random_images(4, S, seed=3)
    stored = [stored_pixels(im, "jpeg" if encoded else "raw", 90) for im in images]
    data = ([np.frombuffer(d, np.uint8) for d, _ in stored] if encoded else np.stack([p for _, p in stored]))
    anchors = rng.integers(0, S - CROP + 1, (4, 2)).astype(np.int32)
    shapes = np.array([[CROP, CROP], [CROP - 4, CROP], [S, S - 2], [9, 13]], np.int32)
    anchors = np.minimum(anchors, S - shapes)  # every window inside the image
    return data, [p for _, p in stored], anchors, shapes, np.array([0, 1, 1, 0], np.int32)


@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "jpeg"])
def test_decoded_window_is_the_slice_of_the_opencv_decode(encoded):
    from nvidia.dali import types
    data, pixels, anchors, shapes, _ = _case(encoded)
    got = run_graph(lambda d, a, s: decoded_window(d, a, s, encoded=encoded, device="cpu"),
                    [data, anchors, shapes], [types.UINT8, types.INT32, types.INT32])
    for image, (x, y), (w, h), out in zip(pixels, anchors, shapes, got):
        np.testing.assert_array_equal(out, image[y:y + h, x:x + w])


def test_flipped_mirrors_only_the_flagged_windows():
    from nvidia.dali import types
    _, pixels, _, _, flips = _case(False)
    got = run_graph(lambda im, f: flipped(im, f, "cpu"), [np.stack(pixels), flips], [types.UINT8, types.INT32])
    for image, f, out in zip(pixels, flips, got):
        np.testing.assert_array_equal(out, image[:, ::-1] if f else image)


def test_mirror_in_place_matches_numpy():
    crops = random_images(6, 8, seed=1).reshape(3, 2, 8, 8, 3).copy()
    flips = np.array([1, 0, 0, 1, 1, 0], bool)
    want = crops.reshape(6, 8, 8, 3).copy()
    want[flips] = want[flips][:, :, ::-1]
    mirror_in_place(crops, flips)
    np.testing.assert_array_equal(crops.reshape(6, 8, 8, 3), want)


def test_resized_is_opencv_bilinear_within_a_grey_level():
    """DALI computes the linear weights in float, cv2 in 11-bit fixed point: at most one level apart."""
    from nvidia.dali import types
    _, pixels, anchors, shapes, _ = _case(False)
    windows = [np.ascontiguousarray(image[y:y + h, x:x + w]) for image, (x, y), (w, h) in zip(pixels, anchors, shapes)]
    got = run_graph(lambda im: resized(im, CROP, "cpu"), [windows], [types.UINT8])
    for window, out in zip(windows, got):
        want = cv2.resize(window, (CROP, CROP), interpolation=cv2.INTER_LINEAR)
        assert out.shape == (CROP, CROP, 3)
        assert np.abs(out.astype(int) - want).max() <= 1


@pytest.mark.parametrize("flip_in_graph", [True, False])
def test_train_view_decodes_resizes_and_flips(flip_in_graph):
    from nvidia.dali import types
    data, pixels, anchors, shapes, flips = _case(True)
    got = run_graph(lambda d, a, s, f: train_view(d, a, s, f, encoded=True, device="cpu", crop=CROP, resize=True,
                                                  flip_in_graph=flip_in_graph),
                    [data, anchors, shapes, flips], [types.UINT8, types.INT32, types.INT32, types.INT32])
    for image, (x, y), (w, h), f, out in zip(pixels, anchors, shapes, flips, got):
        want = cv2.resize(image[y:y + h, x:x + w], (CROP, CROP), interpolation=cv2.INTER_LINEAR)
        want = want[:, ::-1] if f and flip_in_graph else want
        assert np.abs(out.astype(int) - want).max() <= 1


@pytest.mark.parametrize("flip_in_graph", [True, False])
def test_ten_views_are_the_corners_centre_and_their_mirrors(flip_in_graph):
    from nvidia.dali import types
    data, pixels, _, _, _ = _case(True)
    got = run_graph(lambda d: ten_views(d, encoded=True, device="cpu", size=S, crop=CROP,
                                        flip_in_graph=flip_in_graph), [data], [types.UINT8])
    far, mid = S - CROP, (S - CROP) // 2
    for image, out in zip(pixels, got):
        five = [image[y:y + CROP, x:x + CROP] for x, y in [(0, 0), (far, 0), (0, far), (far, far), (mid, mid)]]
        mirrored = [v[:, ::-1] for v in five] if flip_in_graph else five
        np.testing.assert_array_equal(out, np.stack(five + mirrored))
    assert augment.TEN_CROP_NAMES[5:] == tuple(f"{n} flipped" for n in augment.TEN_CROP_NAMES[:5])
