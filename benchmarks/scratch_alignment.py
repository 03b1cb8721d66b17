"""What the address of the torch loader's plane buffer costs: a worker's per-image steps with it at each offset.

    python benchmarks/scratch_alignment.py DATA [--images 640] [--rounds 3]

As a DataLoader worker without numba does for the paper's recipe, per image: read the record, decode it, cut the
window (flipped for half), split it into the finisher's uint8 planes and normalise them with OpenCV into a
float32 batch (the compiled pass, with numba, reads the window where it lies and splits nothing).  The planes are
put at 0, 16, 32 and 48 bytes past a cache line (np.empty's malloc gives 16-byte alignment, so any of these), the
rest as the loader has it.  Printed: each step's thread CPU time per image, best of the rounds.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _planes_at(offset: int, crop: int) -> np.ndarray:
    raw = np.empty(3 * crop * crop + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    return raw[start:start + 3 * crop * crop].reshape(3, crop, crop)


def _pass(loader, finisher, steps, out) -> dict:
    import cv2
    spent, clock, n = {"read+decode": 0.0, "window": 0.0, "split": 0.0, "normalise": 0.0}, time.thread_time, 0
    for p in steps:
        for k, i in enumerate(p["index"].tolist()):
            t0 = clock()
            image = loader.index.pixels(loader.index.read(i), i)
            x, y, _, _ = p["window"][k].tolist()
            flip, t1 = bool(p["flip"][k]), clock()
            window = image[y:y + 224, x:x + 224]
            window = cv2.flip(window, 1) if flip else window
            t2 = clock()
            cv2.split(window, finisher._planes)
            t3 = clock()
            mean = finisher._mean_window(int(p["crop_x"][k]), int(p["crop_y"][k]), flip)
            light = p["light"][k].tolist()
            for ch in range(3):  # as ViewFinisher.__call__ does after its split
                finisher._normalise(finisher._planes[ch], out[k, ch], mean[ch], light[ch], None)
            t4, n = clock(), n + 1
            for name, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[name] += dt
    return {name: s / n * 1e6 for name, s in spent.items()}


def main() -> None:
    import cv2
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    from alexnet_pipe.loaders.finish_cpu import ViewFinisher
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    cv2.setNumThreads(1)  # as in the workers
    loader = make_loader(LoaderSettings(a.data, batch_size=64, loader="torch", num_threads=0))
    finisher = ViewFinisher(loader.norm, loader.index.size, 224, False)  # OpenCV's passes
    steps = loader.step_params(0, 0)[:max(1, a.images // 64)]
    out = np.empty((64, 3, 224, 224), np.float32)
    out[...] = 0  # its pages touched once, as the loader's shared buffers are after the first batches
    for offset in (0, 16, 32, 48):
        finisher._plane_block = _planes_at(offset, 224)
        finisher._planes = list(finisher._plane_block)
        rounds = [_pass(loader, finisher, steps, out) for _ in range(a.rounds)]
        best = {name: min(r[name] for r in rounds) for name in rounds[0]}
        print(f"planes at +{offset:2d} B: " + ", ".join(f"{k} {v:6.1f}" for k, v in best.items())
              + f"  (us/image, sum {sum(best.values()):.0f})")
    loader.close()


if __name__ == "__main__":
    main()
