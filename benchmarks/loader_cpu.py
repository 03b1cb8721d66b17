"""CPU time per image of the torch loader, split between its main process and its DataLoader workers.

    python benchmarks/loader_cpu.py DATA paper|modern [--workers 2] [--batch-size 64] [--epochs 2]

On a machine shared with other jobs the wall-clock rate says how much of the cores the loader was given; the
CPU time per image what it costs.  Two figures: the whole run (the loader made, `--epochs` epochs, closed:
start-up included; the workers' share read from RUSAGE_CHILDREN once close() has joined them) and the steady
state (the epochs after the first, the workers' share read from /proc while they run: Linux only).  modern:
random-resized crops, colour jitter 0.4, no lighting, per-channel normalisation; paper: the paper's crops,
lighting and mean image.  Run it at two commits to compare them.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import time
from pathlib import Path


def _usage(who) -> tuple[float, float]:
    r = resource.getrusage(who)
    return r.ru_utime, r.ru_stime


def _children_now() -> tuple[float, float]:
    """(user, system) seconds of this process's live children, from /proc (zeros where there is no /proc)."""
    user = system = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]) / tick, system + int(fields[12]) / tick
    return user, system


def _split(images: int, main0, main1, workers0, workers1) -> dict:
    per = lambda b, e, k: (e[k] - b[k]) / images * 1e6  # noqa: E731
    return {"main_user_us": per(main0, main1, 0), "main_sys_us": per(main0, main1, 1),
            "workers_user_us": per(workers0, workers1, 0), "workers_sys_us": per(workers0, workers1, 1),
            "cpu_us_per_image": (sum(main1) - sum(main0) + sum(workers1) - sum(workers0)) / images * 1e6}


def main() -> None:
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("recipe", choices=["paper", "modern"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()
    modern = dict(crops="random-resized", color_jitter=0.4, lighting=0.0, normalize="channel")
    main0, workers0, t0 = _usage(resource.RUSAGE_SELF), _usage(resource.RUSAGE_CHILDREN), time.perf_counter()
    loader = make_loader(LoaderSettings(a.data, batch_size=a.batch_size, loader="torch", num_threads=a.workers,
                                        **(modern if a.recipe == "modern" else {})))
    images = steady = 0
    for epoch in range(a.epochs):
        batches = loader.epoch(epoch)
        images += len(next(batches)[0])
        if epoch == 1:  # the workers are up and the buffers made: from here on, the steady state
            s_main0, s_workers0, s_t0 = _usage(resource.RUSAGE_SELF), _children_now(), time.perf_counter()
        n = sum(len(x) for x, _ in batches)
        images, steady = images + n, steady + (n if epoch >= 1 else 0)
    if a.epochs >= 2:
        s_main1, s_workers1, s_wall = _usage(resource.RUSAGE_SELF), _children_now(), time.perf_counter() - s_t0
    loader.close()
    wall = time.perf_counter() - t0
    out = {"recipe": a.recipe, "images": images, "images_per_sec": images / wall,
           **_split(images, main0, _usage(resource.RUSAGE_SELF), workers0, _usage(resource.RUSAGE_CHILDREN))}
    if a.epochs >= 2:
        out["steady"] = {"images": steady, "images_per_sec": steady / s_wall,
                         **_split(steady, s_main0, s_main1, s_workers0, s_workers1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
