"""A worker's per-view work now against the planes kernel's (commit 661c497 and before), paired on each image.

    git show 661c497:alexnet_pipe/loaders/jitter_fused.py > /tmp/planes_kernel.py
    python benchmarks/view_paired.py DATA paper|modern --old-kernel /tmp/planes_kernel.py [--rounds 2]

As a DataLoader worker of the torch loader does (epoch 1's plan, every step, in one process): read and decode each
record, then its view both ways, in alternating order, into the same batch buffer: now, ViewFinisher.view (the
compiled pass reads the crop where it lies in the image, or the resized window, mirrored as it reads); before, the
window cut (a flipped copy, or resized and flipped), split into the finisher's uint8 planes and the old kernel run
over them.  Paired on the same decoded image in the same minute, the difference holds on a machine whose load
moves either alone by more (the thread's CPU time, per view).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np


def _module(path: Path):
    """The old kernel's module, importable by its name (numba's disk cache imports it again by name)."""
    spec = importlib.util.spec_from_file_location("planes_kernel", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _planes_view(kernel, finisher, image, out, p, k) -> None:
    """The view as the loader made it before: cut, flipped, resized copies, split into planes, the old kernel."""
    import cv2
    from alexnet_pipe.loaders import augment
    window, flip = tuple(p["window"][k].tolist()), bool(p["flip"][k])
    cv2.split(augment.cut_window(image, window, finisher.crop, flip), finisher._planes)
    light = np.asarray(p["light"][k], np.float32)
    ops = finisher._fused_ops((p["jitter"][k], p["jitter_order"][k]) if "jitter" in p else None)
    if finisher.mode == "mean-image":
        mean, x0 = finisher._mean_at(int(p["crop_x"][k]), flip)
        kernel.finish(finisher._plane_block, out, *ops, light, light, light, mean, x0, int(p["crop_y"][k]), True)
    else:
        kernel.finish(finisher._plane_block, out, *ops, finisher.mean_rgb - light, finisher.inv_std, light,
                      finisher._no_mean, 0, 0, False)


def main() -> None:
    import cv2
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("recipe", choices=["paper", "modern"])
    ap.add_argument("--old-kernel", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    kernel = _module(a.old_kernel)
    cv2.setNumThreads(1)  # as in the workers
    modern = dict(crops="random-resized", color_jitter=0.4, lighting=0.0, normalize="channel")
    loader = make_loader(LoaderSettings(a.data, batch_size=64, loader="torch", num_threads=0,
                                        **(modern if a.recipe == "modern" else {})))
    dataloader, _ = loader._cpu_loader(0)
    views, finisher = dataloader.dataset, dataloader.dataset.finisher
    out = loader._slots.array(loader._slots.lend(), 64 * 3 * 224 * 224).reshape(64, 3, 224, 224)
    gc.collect()
    gc.freeze()  # as in a forked worker: no collection of the parent's heap inside the timed loop
    spent, clock, n = {"read+decode": 0.0, "now": 0.0, "planes": 0.0}, time.thread_time, 0
    for _ in range(a.rounds):
        for p in loader.step_params(1, 0):
            for k, i in enumerate(p["index"].tolist()):
                t0 = clock()
                image = views.index.pixels(views.index.read(i), i)
                spent["read+decode"] += clock() - t0
                for way in (("now", "planes") if n % 2 else ("planes", "now")):
                    t0 = clock()
                    if way == "now":
                        views._view(image, out[k], p, k)
                    else:
                        _planes_view(kernel, finisher, image, out[k], p, k)
                    spent[way] += clock() - t0
                n += 1
    loader.close()
    print(json.dumps({"recipe": a.recipe, "views": n, **{f"{k}_us": round(v / n * 1e6, 1) for k, v in spent.items()}}))


if __name__ == "__main__":
    main()
