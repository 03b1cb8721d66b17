"""CPU time per image of the torch loader, split between its main process and its DataLoader workers.

    python benchmarks/loader_cpu.py DATA paper|modern [--workers 2] [--batch-size 64] [--epochs 2]

On a machine shared with other jobs the wall-clock rate says how much of the cores the loader was given; the
CPU time per image what it costs (the workers' is read from RUSAGE_CHILDREN once they have been joined at
the end of each epoch).  modern: random-resized crops, colour jitter 0.4, no lighting, per-channel
normalisation; paper: the paper's crops, lighting and mean image.  Run it at two commits to compare them.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def _usage(who) -> tuple[float, float]:
    r = resource.getrusage(who)
    return r.ru_utime, r.ru_stime


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
    loader = make_loader(LoaderSettings(a.data, batch_size=a.batch_size, loader="torch", num_threads=a.workers,
                                        **(modern if a.recipe == "modern" else {})))
    main0, workers0, t0 = _usage(resource.RUSAGE_SELF), _usage(resource.RUSAGE_CHILDREN), time.perf_counter()
    images = sum(len(x) for epoch in range(a.epochs) for x, _ in loader.epoch(epoch))
    wall = time.perf_counter() - t0
    main1, workers1 = _usage(resource.RUSAGE_SELF), _usage(resource.RUSAGE_CHILDREN)
    per = lambda b, e, k: (e[k] - b[k]) / images * 1e6  # noqa: E731
    print(json.dumps({"recipe": a.recipe, "images": images, "images_per_sec": images / wall,
                      "main_user_us": per(main0, main1, 0), "main_sys_us": per(main0, main1, 1),
                      "workers_user_us": per(workers0, workers1, 0), "workers_sys_us": per(workers0, workers1, 1),
                      "cpu_us_per_image": (sum(main1) - sum(main0) + sum(workers1) - sum(workers0)) / images * 1e6}))


if __name__ == "__main__":
    main()
