"""A torch-loader worker's batches decoding only each view's rows (shards.strips) against decoding each record
whole, paired on the same batches of the same records.

    python benchmarks/rows_paired.py DATA [--recipes paper modern] [--rounds 8] [--steps 20]

DATA must be prepared by a prepare that writes a restart marker per MCU row (a data dir prepared before that
decodes whole both ways: the figures then only say the two paths cost the same).  For each recipe (paper: the
paper's crops, lighting and mean image; modern: random-resized crops, colour jitter 0.4, per-channel normalisation)
a DataLoader worker's work on epoch 1's first `--steps` batches (FinishedBatches, in this process) is timed both
ways, the two alternating batch by batch, in the thread's CPU time: the difference holds on a machine whose load
moves either figure alone by more.  Prints the medians per image, the paired saving and modern / paper's rate both
ways (the ratio `bench loader` reports, from the worker's CPU time alone); `--json` for the numbers.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

RECIPES = {"paper": {}, "modern": dict(crops="random-resized", color_jitter=0.4, lighting=0.0, normalize="channel")}


class _WholeRecords:
    """The record index with rows() decoding each record whole: the loader before strips."""

    def __init__(self, index):
        self._index = index

    def rows(self, datum, i, y0, y1):
        return self._index.pixels(datum, i), 0

    def __getattr__(self, name):
        return getattr(self._index, name)


def _batches(data: Path, recipe: str, steps: int):
    """(the worker's dataset reading rows, the same decoding whole, the steps' tasks) for one recipe."""
    import copy

    from alexnet_pipe.loaders import LoaderSettings, make_loader
    from alexnet_pipe.loaders.fallback import FinishedBatches
    loader = make_loader(LoaderSettings(data, batch_size=64, loader="torch", num_threads=0, **RECIPES[recipe]))
    rows, _tasks = loader._cpu_loader(0)
    whole = copy.copy(rows.dataset)
    whole.index = _WholeRecords(rows.dataset.index)
    slot = loader._slots.lend()
    tasks = [(slot, {k: p[k] for k in FinishedBatches.KEYS if k in p}) for p in loader.step_params(1, 0)[:steps]]
    return rows.dataset, whole, tasks


def _timed(dataset, task) -> float:
    start = time.thread_time()
    dataset[task]
    return (time.thread_time() - start) / len(task[1]["index"]) * 1e6


def measure(data: Path, recipes: list[str], rounds: int, steps: int) -> dict:
    setups = {r: _batches(data, r, steps) for r in recipes}
    gc.collect()
    gc.freeze()
    times = {(r, way): [] for r in recipes for way in ("rows", "whole")}
    for n in range(rounds):
        for recipe, (rows, whole, tasks) in setups.items():
            for k, task in enumerate(tasks):
                pair = [("rows", rows), ("whole", whole)]
                for way, dataset in pair if (n + k) % 2 else pair[::-1]:  # each way first as often
                    times[recipe, way].append(_timed(dataset, task))
    out = {r: {way: statistics.median(times[r, way]) for way in ("rows", "whole")} for r in recipes}
    for r in recipes:
        out[r]["saving"] = statistics.median(w - s for w, s in zip(times[r, "whole"], times[r, "rows"]))
    if {"paper", "modern"} <= set(recipes):
        out["modern_over_paper"] = {way: out["paper"][way] / out["modern"][way] for way in ("rows", "whole")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["paper", "modern"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import cv2
    cv2.setNumThreads(1)  # as in a worker
    result = measure(args.data, args.recipes, args.rounds, args.steps)
    if args.json:
        print(json.dumps(result))
        return
    for r in args.recipes:
        f = result[r]
        print(f"{r:7s} whole records {f['whole']:6.0f} us/image, rows only {f['rows']:6.0f} us/image; "
              f"paired saving {f['saving']:5.0f} us (medians of {args.rounds * args.steps} batches)")
    if "modern_over_paper" in result:
        m = result["modern_over_paper"]
        print(f"modern / paper's rate from the worker's CPU time: whole {m['whole']:.2f}, rows only {m['rows']:.2f}")


if __name__ == "__main__":
    main()
