"""`alexnet-pipe bench train`: the step time of train() itself against the plainest loop, same model and tensors.

The two run in alternating rounds (bare then train() in even rounds, the other way round in odd ones), and
each round gives its own overhead: the median over rounds is reported with its spread, so that a loaded
machine's drift falls on both alike and shows as spread instead of as a cost.  Beside the wall-clock time,
each side's CPU time per step (the process's, all threads): on a machine shared with other jobs the wall
clock measures how much of the cores the run was given, the CPU time what the step cost.  train() is timed
through its public entry only: wall time from its own metrics rows, CPU time as the difference between a
run of warm-up + timed steps and one of the warm-up steps alone (what both runs spend on setting up cancels).
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from alexnet_pipe.train.config import TrainSettings
from alexnet_pipe.loaders.synthetic import SyntheticLoader
from alexnet_pipe.train.runlog import read_metrics
from alexnet_pipe.train.loop import build, make_opt, train
from alexnet_pipe.train.precision import autocast


def bare_step_time(s: TrainSettings, steps: int, warmup: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of the plainest loop: same model, optimiser and tensors, nothing else."""
    import torch
    import torch.nn.functional as F
    device = torch.device(s.device)
    torch.manual_seed(s.seed)
    # the batches train() gets from the synthetic loader, in the same rotation: a single batch would stay in the
    # caches between steps where train()'s four do not (4.8 MB each at the CPU defaults)
    batches = SyntheticLoader(s.batch_size, s.crop, s.num_classes or 10, seed=s.seed, device=device,
                              channels_last=device.type == "cuda").batches
    model = build(s, s.num_classes or 10, device)
    net = torch.compile(model) if s.compile else model  # as train() does
    opt = make_opt(s, model)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
        images, labels = batches[i % len(batches)]
        with autocast(s.precision, device):  # the trainer's precision rule
            loss = F.cross_entropy(net(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()  # waits for the device
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def _run_train(s: TrainSettings, steps: int, log_every: int) -> tuple[list[dict], float]:
    """train() for `steps` steps on the synthetic loader: (its metrics rows, the CPU seconds of the call)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(s, loader="synthetic", run=tmp, eval_every=0, max_steps=steps,
                                  log_every=log_every, synthetic_steps=steps, epochs=1, nproc=1,
                                  max_restarts=0, resume="")
        c0 = time.process_time()
        train(run)
        cpu = time.process_time() - c0
        return [r for r in read_metrics(Path(tmp)) if "loss" in r], cpu


def trainer_step_time(s: TrainSettings, steps: int, warmup: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of train() itself: wall from its own metrics rows after warm-up, CPU as a
    run of warm-up + timed steps less a run of the warm-up alone."""
    rows, cpu = _run_train(s, warmup + steps, warmup)
    rows = [r for r in rows if r["step"] > warmup]
    wall = sum(s.batch_size / r["images_per_sec"] * (r["step"] - prev)
               for r, prev in zip(rows, [warmup] + [r["step"] for r in rows])) / steps
    _, setup = _run_train(s, warmup, warmup)
    return wall, (cpu - setup) / steps


def bench_train_step(s: TrainSettings, steps: int = 20, warmup: int = 5, repeats: int = 5,
                     threads: int | None = None) -> dict:
    """`repeats` rounds of both loops, the order alternating; overhead = trainer / bare - 1 per round (target
    <= 5%), reported as the median over rounds with its spread.  threads: torch's intra-op threads for both."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    bare, trainer = [], []
    for r in range(repeats):
        for side in (("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")):
            (bare if side == "bare" else trainer).append(
                (bare_step_time if side == "bare" else trainer_step_time)(s, steps, warmup))
    wall = [t[0] / b[0] - 1 for b, t in zip(bare, trainer)]
    cpu = [t[1] / b[1] - 1 for b, t in zip(bare, trainer)]
    bare_ms, trainer_ms = (statistics.median(x[0] for x in side) * 1e3 for side in (bare, trainer))
    return {"device": s.device, "arch": s.arch, "lrn_impl": s.lrn_impl, "conv": s.conv, "compile": s.compile,
            "momentum_form": s.momentum_form, "width": s.width, "crop": s.crop, "batch_size": s.batch_size,
            "steps": steps, "repeats": repeats, "torch_threads": torch.get_num_threads(),
            "bare_step_ms": bare_ms, "trainer_step_ms": trainer_ms,
            "bare_images_per_sec": s.batch_size / bare_ms * 1e3, "trainer_images_per_sec": s.batch_size / trainer_ms * 1e3,
            "overhead": statistics.median(wall), "overhead_spread": [min(wall), max(wall)],
            "bare_cpu_ms": statistics.median(x[1] for x in bare) * 1e3,
            "trainer_cpu_ms": statistics.median(x[1] for x in trainer) * 1e3,
            "cpu_overhead": statistics.median(cpu), "cpu_overhead_spread": [min(cpu), max(cpu)],
            "rounds": {"bare_ms": [x[0] * 1e3 for x in bare], "trainer_ms": [x[0] * 1e3 for x in trainer],
                       "bare_cpu_ms": [x[1] * 1e3 for x in bare], "trainer_cpu_ms": [x[1] * 1e3 for x in trainer]}}
