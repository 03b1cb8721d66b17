"""Per-image cost of the torch loader's worker-side steps for the modern recipe, best of repeats.

    python benchmarks/finish_cost.py DATA [--root ROOT] [--images 128] [--rounds 8] [--strength 0.4]

Times, on DATA's first pictures decoded once: the random-resized window's resize (augment.resized_window, the
reference), the jittered finisher (colour jitter 0.4 and per-channel normalisation into a CHW float32 view: with
OpenCV's passes, and with numba's compiled pass where numba is installed and --root's code has it) and,
for scale, the paper recipe's finisher (mean image, no jitter; OpenCV's and compiled); then a worker's whole
view with the compiled pass, each recipe's: the window cut, resized, mirrored and finished (ViewFinisher.view, or
before it the steps the loader took).  Each figure is the best
of 5 passes over the images, per round, in the thread's CPU time; the median and best of the rounds are printed.
CPU time and best-of because on a shared machine a pass's wall clock mostly says how much of a core it got.  --root: import alexnet_pipe from a `git archive`
copy instead (run it alternately with and without to compare two commits in the same minutes).
"""
from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path


def _import_from(root: str) -> None:
    """alexnet_pipe from `root`, not from the editable install (its finder sits in sys.meta_path)."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()
                        and "editable" not in type(f).__module__.lower()]
    sys.path.insert(0, root)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--root")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--strength", type=float, default=0.4)
    args = ap.parse_args()
    if args.root:
        _import_from(args.root)
    import cv2
    import numpy as np
    from alexnet_pipe.loaders import LoaderSettings, augment, make_loader
    from alexnet_pipe.loaders.finish_cpu import ViewFinisher
    from alexnet_pipe.loaders.jitter import JitterSpec
    from alexnet_pipe.loaders.records import decode_rgb
    cv2.setNumThreads(1)  # as in the DataLoader workers
    loader = make_loader(LoaderSettings(args.data, batch_size=64, loader="torch", num_threads=0))
    index, n, c = loader.index, min(args.images, len(loader.index)), 224
    images = [decode_rgb(index.read(i), index, i) for i in range(n)]
    loader.close()
    plan = augment.train_plan(n, seed=0, epoch=0, size=index.size, crop=c, sigma=0.0, crops="random-resized",
                              jitter=JitterSpec.strength(args.strength))
    windows = [augment.resized_window(images[k], plan.window[k], c, bool(plan.flip[k])) for k in range(n)]
    channel = augment.load_normalizer(args.data / "stats", "channel", index.size)
    modern = ViewFinisher(channel, index.size, c, False)  # jitter_cv's OpenCV passes
    mean_image = augment.load_normalizer(args.data / "stats", "mean-image", index.size)
    paper = ViewFinisher(mean_image, index.size, c, False)
    try:  # jitter_fused's one pass, with numba (a --root from before it has no such option)
        compiled = ViewFinisher(channel, index.size, c, False, compiled=True)
        paper_compiled = ViewFinisher(mean_image, index.size, c, False, compiled=True)
    except TypeError:
        compiled = paper_compiled = None
    out, light = np.empty((3, c, c), np.float32), np.zeros(3, np.float32)

    def resize():
        for k in range(n):
            augment.resized_window(images[k], plan.window[k], c, bool(plan.flip[k]))

    def jittered():
        for k in range(n):
            modern(windows[k], out, 0, 0, False, light, (plan.jitter[k], plan.jitter_order[k]))

    def jittered_compiled():
        for k in range(n):
            compiled(windows[k], out, 0, 0, False, light, (plan.jitter[k], plan.jitter_order[k]))

    def plain(finisher=paper):
        for k in range(n):
            x, y = (int(v) for v in plan.crop_xy[k] % (index.size - c + 1))
            finisher(images[k][y:y + c, x:x + c], out, x, y, False, light)

    def view(finisher, k, window, flip, x, y, jitter=None):
        """A worker's whole view: ViewFinisher.view where it exists; before it, the window cut (flipped, resized)
        and then finished, as the loader did."""
        if hasattr(finisher, "view"):
            return finisher.view(images[k], window, flip, out, x, y, light, jitter)
        cut = augment.resized_window(images[k], window, c, flip) if window[2:] != (c, c) else (
            augment.flipped_window(images[k], x, y, c, True) if flip else images[k][y:y + c, x:x + c])
        return finisher(cut, out, x, y, flip, light, jitter)

    def modern_views():
        for k in range(n):
            view(compiled, k, tuple(plan.window[k].tolist()), bool(plan.flip[k]), 0, 0,
                 (plan.jitter[k], plan.jitter_order[k]))

    def paper_views():
        for k in range(n):
            x, y = (int(v) for v in plan.crop_xy[k] % (index.size - c + 1))
            view(paper_compiled, k, (x, y, c, c), bool(plan.flip[k]), x, y)

    steps = {"resize": resize, "jittered finisher": jittered, "paper finisher": plain}
    if compiled is not None and compiled.fused is not None:
        steps["jittered finisher, compiled"] = jittered_compiled
        steps["paper finisher, compiled"] = lambda: plain(paper_compiled)
        steps["modern view (resize, flip, jitter, finish), compiled"] = modern_views
        steps["paper view (crop, flip, finish), compiled"] = paper_views
    best = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            best[name].append(min(timeit.Timer(step, timer=time.thread_time).repeat(number=1, repeat=5)) / n * 1e6)
    for name, times in best.items():
        print(f"{name}: {float(np.median(times)):.1f} us an image (median of {args.rounds} rounds' bests; "
              f"best {min(times):.1f})")


if __name__ == "__main__":
    main()
