"""Tiny trainer settings and weight comparisons, shared by the trainer, resume, preemption, cluster and full-disk
tests."""
from __future__ import annotations

from pathlib import Path

import torch

from alexnet_pipe.train.checkpoint import latest_checkpoint, load_checkpoint
from alexnet_pipe.train.config import TrainSettings


def tiny(run: Path, **kw) -> TrainSettings:
    base = dict(loader="synthetic", arch="alexnet", width=0.0625, crop=64, batch_size=8, num_classes=5,
                eval_every=0, log_every=1, schedule="step", synthetic_steps=4, run=str(run), data=str(run.parent))
    return TrainSettings(**{**base, **kw})


def weights(run: Path, step: int | None = None) -> dict:
    path = Path(run) / f"ckpt-{step:08d}.pt" if step else latest_checkpoint(Path(run))
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=key)
