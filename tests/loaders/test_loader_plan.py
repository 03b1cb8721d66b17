"""The loaders' shared plan maths (loaders/base.py, BaseLoader): where an epoch may resume, and the lighting each
backend is handed, against values computed here (issue 20: what mutation testing found unguarded)."""
from __future__ import annotations

import numpy as np
import pytest

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders import LoaderSettings
from alexnet_pipe.loaders.base import BaseLoader
from helpers.shardgen import make_data_dir, random_images, write_pca_json

MEAN_RGB = [120.0, 110.0, 100.0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan") / "d"
    images = random_images(20, 72, seed=2)
    make_data_dir(root, {"train": (images, np.arange(20) % 3)}, 3, 2, "raw")
    (root / "stats").mkdir()
    np.save(root / "stats" / "mean.npy", images.astype(np.float32).mean(0))
    write_pca_json(root / "stats" / "pca.json", [300.0, 40.0, 5.0], np.eye(3), MEAN_RGB, [50.0] * 3, 72, 20)
    return root


def _loader(data, **kw) -> BaseLoader:
    return BaseLoader(LoaderSettings(data=data, batch_size=8, crop=64, loader="torch", **kw))


def test_an_epoch_resumes_at_any_step_up_to_its_end_and_no_further(data):
    loader = _loader(data)
    steps = loader.steps_per_epoch
    assert steps == 3 and len(loader.step_params(1, steps - 1)) == 1
    assert loader.step_params(1, steps) == []  # a run stopped at an epoch's last step: nothing left of it
    for bad in (-1, steps + 1):
        with pytest.raises(UserError, match=rf"start_step {bad} is outside 0\.\.{steps}$"):
            loader.step_params(1, bad)


def test_the_lighting_handed_to_the_backends_is_float32_rgb_offsets(data):
    alpha = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, -1.0]], np.float32)
    lit = _loader(data, lighting=0.1).light(alpha)
    assert lit.dtype == np.float32
    np.testing.assert_allclose(lit, [[np.sqrt(300.0), 0, 0], [0, 0.5 * np.sqrt(40.0), -np.sqrt(5.0)]], rtol=1e-6)
    off = _loader(data, lighting=0.0).light(alpha)
    assert off.dtype == np.float32 and off.shape == (2, 3) and not off.any()


def test_one_normalizer_serves_both_memory_layouts_and_passes_the_jitter_on():
    """The normaliser caches its mean laid out as the output: a layout asked after another gets its own
    (a cache keyed on nothing would hand NCHW means to a channels_last batch); the jitter it is given reaches
    the batch, on the one call every device goes through."""
    import torch
    from alexnet_pipe.loaders.base import TorchNormalizer
    from alexnet_pipe.loaders.jitter import JitterSpec
    from helpers.loaders import normalizer_case, reference_normalize
    n, size, c = 6, 20, 16
    norm, crops, xs, ys, flips, light = normalizer_case(np.random.default_rng(3), "mean-image", n, size, c)
    normalizer, want = TorchNormalizer(norm, size, c), reference_normalize(crops, xs, ys, flips, light, norm, size)
    for channels_last in (False, True, False):
        got = normalizer(torch.from_numpy(crops), xs, ys, flips, light, channels_last)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-3)
    jitter = JitterSpec.strength(0.4, hue=0.1).draw(np.random.default_rng(4), n)
    plain = normalizer(torch.from_numpy(crops), xs, ys, flips, light).clone()
    jittered = normalizer(torch.from_numpy(crops), xs, ys, flips, light, jitter=jitter)
    assert not torch.allclose(jittered, plain)  # the jitter reached the batch
    torch.testing.assert_close(jittered, normalizer._apply(torch.from_numpy(crops), xs, ys, flips, light, False,
                                                           jitter=jitter).clone(), rtol=0, atol=0)
