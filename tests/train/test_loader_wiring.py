"""What loaders the trainer asks for (train/loop.py make_loaders, loader_settings): each training setting reaches
the loader's setting of the same name, the global batch is split over the processes, the val split is the
training one in evaluation mode, and the synthetic loader serves this rank's rows of the global batch. Fast,
without a training run, so that mutation testing (docs/testing.md) meets them first."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from alexnet_pipe.loaders.base import LoaderSettings
from alexnet_pipe.loaders.synthetic import SyntheticLoader
from alexnet_pipe.train.config import TrainSettings, resolve_settings

# a value other than both defaults for every setting the loader shares with the run, so a setting dropped on
# the way (the loader's default) or replaced shows
OFF_DEFAULT = dict(data="some/data", batch_size=96, crop=160, loader="torch", lighting=0.05,
                   lighting_scale="fbresnet", normalize="channel", seed=7, num_threads=5, crops="random-resized",
                   crop_scale=(0.2, 0.7), crop_ratio=(0.5, 2.0), color_jitter=0.3, hue=0.05)
NAMES = [{f.name for f in dataclasses.fields(cls)} for cls in (LoaderSettings, TrainSettings)]
SHARED = sorted(NAMES[0] & NAMES[1] - {"batch_size", "data", "device"})  # the three the trainer converts


def asked_loaders(monkeypatch, s: TrainSettings, rank: int, world: int, device: str) -> list:
    """The LoaderSettings make_loaders hands to make_loader, in order (no loader is built)."""
    import alexnet_pipe.loaders as pipeline
    from alexnet_pipe.train.loop import make_loaders
    seen = []
    monkeypatch.setattr(pipeline, "make_loader", lambda ls: seen.append(ls) or ls)
    train, val = make_loaders(s, rank, world, torch.device(device))
    assert (train, val) == (seen[0], seen[1] if len(seen) > 1 else None)
    return seen


def test_the_settings_shared_with_the_loader_are_the_runs_own():
    defaults = LoaderSettings(data="x")
    assert "lighting" in SHARED and "hue" in SHARED and "seed" in SHARED  # the field names still meet
    assert all(OFF_DEFAULT[k] not in (getattr(defaults, k), getattr(TrainSettings(), k)) for k in OFF_DEFAULT)
    assert set(SHARED) <= set(OFF_DEFAULT)  # a new shared setting needs a value here


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_each_rank_s_loaders_carry_the_run_s_settings_and_its_share_of_the_batch(monkeypatch, device):
    s = dataclasses.replace(TrainSettings(), **OFF_DEFAULT)
    train, val = asked_loaders(monkeypatch, s, 1, 4, device)  # torch.device("cuda") is made without a GPU
    assert {k: getattr(train, k) for k in SHARED} == {k: OFF_DEFAULT[k] for k in SHARED}
    assert type(train.batch_size) is int and train.batch_size * 4 == 96  # a quarter of the global batch
    assert (train.rank, train.world_size, train.data, train.device) == (1, 4, Path("some/data"), device)
    assert train.channels_last is (device == "cuda")  # NHWC where cuDNN wants it, plain tensors on the CPU
    assert (train.split, train.train) == ("train", True)
    # the val split is read like the train split (same batch, rank, normalisation...), in evaluation mode
    assert (val.split, val.train) == ("val", False)
    assert dataclasses.replace(val, split="train", train=True) == train


def test_a_run_that_never_evaluates_opens_no_val_split(monkeypatch):
    s = dataclasses.replace(TrainSettings(), **OFF_DEFAULT, eval_every=0)
    assert [ls.split for ls in asked_loaders(monkeypatch, s, 0, 1, "cpu")] == ["train"]


def _pool(loader) -> list:
    return [(x.clone(), y.clone()) for x, y in loader.epoch(0)]


@pytest.mark.parametrize("seed", [0, 7])  # 0: the seed a loader falls back to when it is given none
def test_the_synthetic_loader_serves_this_rank_s_rows_of_the_run_s_batches(seed):
    from alexnet_pipe.train.loop import make_loaders
    s = resolve_settings("paper", loader="synthetic", batch_size=12, crop=16, num_classes=5, seed=seed,
                         synthetic_steps=3)
    train, val = make_loaders(s, 1, 2, torch.device("cpu"))
    whole = SyntheticLoader(batch_size=12, crop=16, num_classes=5, steps_per_epoch=3, seed=seed)  # one process
    assert (train.num_classes, train.steps_per_epoch, val.num_classes) == (5, 3, 5)
    for (x, y), (wx, wy) in zip(_pool(train), _pool(whole), strict=True):
        assert torch.equal(x, wx[6:]) and torch.equal(y, wy[6:])  # rank 1 of 2: the second half of each batch
        assert x.is_contiguous()  # channels_last only on CUDA
    held_out = _pool(val)
    assert not any(torch.equal(vx, x) for vx, _ in held_out for x, _ in _pool(train))  # not the training images
    # the val split is fixed: two batches drawn as the training ones from the next seed. Its size and seed decide
    # the val error a synthetic run reports, and so its plateau drops: a run, or a benchmark, must see the same
    same = SyntheticLoader(batch_size=12, crop=16, num_classes=5, steps_per_epoch=2, seed=seed + 1)
    assert len(held_out) == 2 and all(torch.equal(vx, wx[6:]) and torch.equal(vy, wy[6:])
                                      for (vx, vy), (wx, wy) in zip(held_out, _pool(same)))


def test_the_synthetic_loader_has_ten_classes_when_the_run_names_none():
    from alexnet_pipe.train.loop import make_loaders
    s = resolve_settings("paper", loader="synthetic", batch_size=4, crop=8, eval_every=0)
    assert s.num_classes == 0 and s.seed == 0
    train, val = make_loaders(s, 0, 1, torch.device("cpu"))
    assert train.num_classes == 10 and val is None


def test_the_synthetic_loader_of_a_cuda_run_makes_channels_last_batches_on_it(monkeypatch):
    import alexnet_pipe.loaders.synthetic as synthetic
    from alexnet_pipe.train.loop import make_loaders
    made = []
    monkeypatch.setattr(synthetic, "SyntheticLoader", lambda **kw: made.append(kw) or kw)  # no GPU here
    s = resolve_settings("paper", loader="synthetic", batch_size=8, crop=8)
    make_loaders(s, 0, 1, torch.device("cuda"))
    assert [(kw["device"], kw["channels_last"]) for kw in made] == [(torch.device("cuda"), True)] * 2
