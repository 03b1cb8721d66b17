"""Fixtures of the train wing's tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.shardgen import make_data_dir, random_images, write_pca_json

S = 72  # stored size; crop 64 (the smallest crop the network takes is 63)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data dir of 40 train / 12 val images in 4 classes, with stats files written from numpy."""
    root = tmp_path_factory.mktemp("data") / "d"
    images, labels = random_images(52, S, seed=5), np.arange(52) % 4
    make_data_dir(root, {"train": (images[:40], labels[:40]), "val": (images[40:], labels[40:])}, 4, 2)
    (root / "stats").mkdir()
    np.save(root / "stats" / "mean.npy", images[:40].astype(np.float32).mean(axis=0))
    pixels = images[:40].reshape(-1, 3).astype(np.float64)
    w, v = np.linalg.eigh(np.cov(pixels.T))
    w, v = w[::-1], v[:, ::-1]
    write_pca_json(root / "stats" / "pca.json", w, v, pixels.mean(0), pixels.std(0), S, 40)
    return root
