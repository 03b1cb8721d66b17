"""`alexnet-pipe bench train`: the step time of train() itself against the plainest loop, same model and tensors."""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

from alexnet_pipe.train.config import TrainSettings
from alexnet_pipe.loaders.synthetic import SyntheticLoader
from alexnet_pipe.train.runlog import read_metrics
from alexnet_pipe.train.loop import build, make_opt, train
from alexnet_pipe.train.precision import autocast


def bare_step_time(s: TrainSettings, steps: int, warmup: int) -> float:
    """Seconds per step of the plainest loop: same model, optimiser and fixed tensors, nothing else."""
    import torch
    import torch.nn.functional as F
    device = torch.device(s.device)
    torch.manual_seed(s.seed)
    images, labels = SyntheticLoader(s.batch_size, s.crop, s.num_classes or 10, device=device,
                                     channels_last=device.type == "cuda", pool=1).batches[0]
    model = build(s, s.num_classes or 10, device)
    net = torch.compile(model) if s.compile else model  # as train() does
    opt = make_opt(s, model)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast(s.precision, device):  # the trainer's precision rule
            loss = F.cross_entropy(net(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()  # waits for the device
    return (time.perf_counter() - t0) / steps


def trainer_step_time(s: TrainSettings, steps: int, warmup: int) -> float:
    """Seconds per step of train() itself on the synthetic loader, from its own metrics rows after warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(s, loader="synthetic", run=tmp, eval_every=0, max_steps=warmup + steps,
                                  log_every=warmup, synthetic_steps=warmup + steps, epochs=1, nproc=1,
                                  max_restarts=0, resume="")
        train(run)
        rows = [r for r in read_metrics(Path(tmp)) if "loss" in r and r["step"] > warmup]
    return sum(s.batch_size / r["images_per_sec"] * (r["step"] - prev)
               for r, prev in zip(rows, [warmup] + [r["step"] for r in rows])) / steps


def bench_train_step(s: TrainSettings, steps: int = 20, warmup: int = 5, repeats: int = 2) -> dict:
    """Best of `repeats` alternating runs of each; overhead = trainer / bare - 1 (the target is <= 5%)."""
    bare, trainer = math.inf, math.inf
    for _ in range(repeats):
        bare = min(bare, bare_step_time(s, steps, warmup))
        trainer = min(trainer, trainer_step_time(s, steps, warmup))
    return {"device": s.device, "arch": s.arch, "lrn_impl": s.lrn_impl, "conv": s.conv, "compile": s.compile,
            "momentum_form": s.momentum_form, "width": s.width, "crop": s.crop, "batch_size": s.batch_size,
            "steps": steps, "bare_step_ms": bare * 1e3, "trainer_step_ms": trainer * 1e3,
            "bare_images_per_sec": s.batch_size / bare, "trainer_images_per_sec": s.batch_size / trainer,
            "overhead": trainer / bare - 1}
