"""Wrappers that watch train() from outside (as faults.py does: the loop carries no test hook).

`train_recording_dropout(settings, out)` runs train() on this rank with two changes made from outside: every rank
is served the batches of rank 0 (the same images on every rank), and the model's dropout layers report which of
their inputs they zeroed at each training step. The list of those masks, one dict per step, is saved to
`out.<rank>.pt` when train() returns.

`run_ranks(world, runs)` runs each (settings, out) of `runs` in turn through train_recording_dropout on `world`
gloo ranks, rank 0 in this process and the others in processes started here, each with the environment torchrun
gives a worker (RANK, WORLD_SIZE, MASTER_ADDR, ...).
"""
from __future__ import annotations

import os
import socket

import torch

import alexnet_pipe.train.loop as trainer


def _same_batches_everywhere(make_loaders):
    def loaders(s, rank, world, device):
        return make_loaders(s, 0, world, device)  # rank 0's rows, on every rank
    return loaders


def _recording(build, masks: list):
    def record(module, inputs, output) -> None:  # (a hook that returned a value would replace the output)
        if module.training:
            masks.append((module.name, (output == 0) & (inputs[0] != 0)))  # the units this layer dropped

    def recording_build(s, num_classes, device):
        model = build(s, num_classes, device)
        for name in ("drop6", "drop7"):
            layer = model.classifier.get_submodule(name)
            layer.name = name
            layer.register_forward_hook(record)
        return model
    return recording_build


def train_recording_dropout(settings, out: str) -> dict:
    masks: list = []
    make_loaders, build = trainer.make_loaders, trainer.build
    trainer.make_loaders, trainer.build = _same_batches_everywhere(make_loaders), _recording(build, masks)
    try:
        result = trainer.train(settings)
    finally:
        trainer.make_loaders, trainer.build = make_loaders, build
    steps = [dict(masks[i:i + 2]) for i in range(0, len(masks), 2)]  # drop6 then drop7, once per step
    torch.save(steps, f"{out}.{os.environ.get('RANK', 0)}.pt")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(rank: int, world: int, port: int) -> dict:
    return dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _rank(rank: int, world: int, port: int, settings, out: str) -> None:
    os.environ.update(_environment(rank, world, port))
    train_recording_dropout(settings, out)


def _as_rank_0(world: int, port: int, settings, out: str) -> dict:
    """train() in this very process as rank 0, its environment and SIGINT handler put back after (a mutation
    tool that maps tests to the functions they call sees only calls made in the test's own process)."""
    import signal
    saved, handler = dict(os.environ), signal.getsignal(signal.SIGINT)
    os.environ.update(_environment(0, world, port))
    try:
        return train_recording_dropout(settings, out)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        signal.signal(signal.SIGINT, handler)


def run_ranks(world: int, runs: list, deadline_s: float = 300.0) -> list[dict]:
    """Each run on rank 0 here and ranks 1.. in fresh processes (a process group set up twice in one process
    hung once on a loaded machine); a rank still alive `deadline_s` after rank 0 is done fails the test instead
    of hanging the suite. -> rank 0's train() result of each run."""
    import multiprocessing
    results = []
    for settings, out in runs:
        port = free_port()
        others = [multiprocessing.get_context("spawn").Process(target=_rank, args=(r, world, port, settings, out))
                  for r in range(1, world)]
        for process in others:
            process.start()
        try:
            results.append(_as_rank_0(world, port, settings, out))
        finally:
            for process in others:
                process.join(timeout=deadline_s)
                if process.is_alive():
                    process.kill()
                    raise AssertionError(f"rank of {settings.run} still running {deadline_s:.0f} s after rank 0")
        failed = [p.exitcode for p in others if p.exitcode]
        assert not failed, f"ranks of {settings.run} failed with exit codes {failed}"
    return results
