"""The loader tests' tiny data dir and the numpy references the loaders are checked against.

Shared by the DALI, torch-fallback, modern-augmentation and GPU tests, which check every backend against the same
references on the same data.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from alexnet_pipe.loaders import jitter

from alexnet_pipe.loaders import augment
from alexnet_pipe.loaders.records import RecordIndex
from helpers.shardgen import make_data_dir, random_images, write_pca_json

S, CROP, N_TRAIN, N_VAL = 40, 32, 50, 10


def build_data(root: Path, encoding: str, size: int = S, restart_rows: bool = True) -> Path:
    """A tiny data dir (S=40 unless `size`) plus the stats files the loaders read, written here from numpy;
    `restart_rows` False: JPEG records as prepare wrote them before 2026-12-04 (decoded whole)."""
    images = random_images(N_TRAIN + N_VAL, size, seed=1)
    labels = np.arange(N_TRAIN + N_VAL) % 5
    make_data_dir(root, {"train": (images[:N_TRAIN], labels[:N_TRAIN]),
                         "val": (images[N_TRAIN:], labels[N_TRAIN:])}, 5, 2, encoding, restart_rows=restart_rows)
    stats = root / "stats"
    stats.mkdir()
    rng = np.random.default_rng(3)
    np.save(stats / "mean.npy", (rng.random((size, size, 3)) * 255).astype(np.float32))
    a = rng.normal(size=(3, 3))
    w, v = np.linalg.eigh(a @ a.T * 300)
    w, v = w[::-1], v[:, ::-1]
    write_pca_json(stats / "pca.json", w, v, [120.0, 110.0, 100.0], [60.0, 55.0, 50.0], size, N_TRAIN)
    return root


def decoded(data: Path, split: str) -> dict[str, np.ndarray]:
    """key -> the (S,S,3) RGB pixels of each record, decoded here with OpenCV."""
    index = RecordIndex(data, split)
    out = {}
    for i, key in enumerate(index.keys):
        datum = index.read(i)
        out[key.decode()] = (cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                             if datum.encoded else index.pixels(datum, i))
    return out


def reference_view(image, x, y, flip, alpha, stats: Path, normalize="mean-image", scale="convnet2"):
    """The paper's augmentation written out plainly: crop, lighting, mean, flip, CHW."""
    pca = json.loads((stats / "pca.json").read_text())
    eig = pca if scale == "convnet2" else pca["fbresnet"]
    val, vec = np.array(eig["eigval"]), np.array(eig["eigvec"])
    light = vec @ (alpha * np.sqrt(val)) if scale == "convnet2" else 255 * vec @ (alpha * val)
    win = image[y:y + CROP, x:x + CROP].astype(np.float64) + light
    if normalize == "mean-image":
        win -= np.load(stats / "mean.npy")[y:y + CROP, x:x + CROP]
    else:
        win = (win - np.array(pca["mean_rgb"])) / np.array(pca["std_rgb"])
    return (win[:, ::-1] if flip else win).transpose(2, 0, 1)


def reference_ten(image, stats: Path):
    mean = np.load(stats / "mean.npy")
    views = []
    for flip in (False, True):
        for x, y in [(0, 0), (8, 0), (0, 8), (8, 8), (4, 4)]:
            v = image[y:y + CROP, x:x + CROP] - mean[y:y + CROP, x:x + CROP].astype(np.float64)
            views.append((v[:, ::-1] if flip else v).transpose(2, 0, 1))
    return np.stack(views)


def check_train(loader, images_by_key, stats, **ref_kw):
    count = 0
    for images, labels, p in loader.epoch(1):
        assert images.dtype.is_floating_point and labels.dtype.is_signed and len(labels) == len(images)
        for i, key in enumerate(p["key"]):
            want = reference_view(images_by_key[key], p["crop_x"][i], p["crop_y"][i], p["flip"][i],
                                  p["alpha"][i].astype(np.float64), stats, **ref_kw)
            np.testing.assert_allclose(images[i].float().numpy(), want, rtol=1e-4, atol=2e-3)
            count += 1
    assert count == N_TRAIN


def reference_normalize(crops, xs, ys, flips, light, norm, size):
    """Plain numpy: (crop - mean window, mirrored like the crop) + light, or (crop + light - m) / s."""
    c, out = crops.shape[1], []
    for crop, x, y, f, lt in zip(crops.astype(np.float64), xs, ys, flips, light):
        if norm.mode == "mean-image":
            mean = norm.mean_image[y:y + c, x:x + c].astype(np.float64)
            v = crop - (mean[:, ::-1] if f else mean) + lt
        else:
            v = (crop + lt - norm.mean_rgb) / norm.std_rgb
        out.append(v.transpose(2, 0, 1))
    assert size - c >= max(xs)
    return np.stack(out)


def normalizer_case(rng, mode: str, n: int, size: int, c: int) -> tuple:
    """(norm, crops, xs, ys, flips, light): random inputs of TorchNormalizer, from `rng`."""
    norm = (augment.Normalizer(mode, mean_image=(rng.random((size, size, 3)) * 255).astype(np.float32))
            if mode == "mean-image" else
            augment.Normalizer(mode, mean_rgb=np.float32([120, 110, 100]), std_rgb=np.float32([60, 55, 50])))
    crops = rng.integers(0, 256, (n, c, c, 3), dtype=np.uint8)
    xs, ys = rng.integers(0, size - c + 1, n), rng.integers(0, size - c + 1, n)
    return norm, crops, xs, ys, np.arange(n) % 2 == 1, rng.normal(0, 20, (n, 3)).astype(np.float32)


def jittered_reference(crops, factors, order, xs, ys, flips, light, norm, size):
    """jitter.jitter_image on each crop (float64), then test_loaders' plain normalisation."""
    done = np.stack([jitter.jitter_image(c.astype(np.float64), f, o) for c, f, o in zip(crops, factors, order)])
    return reference_normalize(done, xs, ys, flips, light, norm, size)
