"""Peak RSS of prepare's parent and of its largest worker, on N tiny images (docs/performance.md).

    .venv/bin/python benchmarks/prepare_memory.py 10000 160000 --workers 2 [--size 32]
    .venv/bin/python benchmarks/prepare_memory.py 1281167 --plan-only   # listing and shard plan alone

The tree is N hard links to 100 48x40 JPEGs (one per class) under train/<100 classes>/ (listing, planning and the
writer see N distinct files; the disk holds one), prepared at --size 32 into a fresh data dir.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Workers are sampled from /proc (VmHWM, per address space): getrusage(RUSAGE_CHILDREN) would report the
# parent's own size, since a spawned worker's fork-before-exec counts toward its ru_maxrss.
RUN = """
import json, os, resource, sys, threading, time
from pathlib import Path
from alexnet_pipe.ingest.plan import PrepareSettings
from alexnet_pipe.ingest.prepare import run
peak, done = [0], threading.Event()
def hwm_kb(pid):
    try:
        return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")).split()[1])
    except (OSError, StopIteration, ValueError):
        return 0
def sample():
    while not done.wait(0.2):
        kids = open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()
        peak[0] = max([peak[0]] + [hwm_kb(k) for k in kids])
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
run(PrepareSettings(source=Path(sys.argv[1]), data=Path(sys.argv[2]), size=int(sys.argv[4]),
                    workers=int(sys.argv[3])), echo=lambda *_: None)
done.set()
print(json.dumps({"seconds": time.perf_counter() - t,
                  "parent_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_mb": peak[0] / 1024}))
"""

# --plan-only: what the parent holds once the source is listed and planned (before any worker starts)
PLAN = """
import json, resource, sys, time
from pathlib import Path
from alexnet_pipe.ingest.plan import PrepareSettings, make_plan
from alexnet_pipe.ingest.sources import discover
t = time.perf_counter()
plan = make_plan(discover(Path(sys.argv[1])), PrepareSettings(source=Path(sys.argv[1]), data=Path(sys.argv[2])))
print(json.dumps({"seconds": time.perf_counter() - t, "shards": sum(len(p) for p in plan.values()),
                  "parent_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_tree(root: Path, n: int) -> None:
    import numpy as np

    from alexnet_pipe.ingest.sample_data import write_jpeg
    from alexnet_pipe.ingest.sample_drawing import draw_image
    root.mkdir(parents=True)
    for k in range(100):  # one file per class: a file takes at most 65,000 links
        write_jpeg(root / f"{k}.JPEG", draw_image(k % 8, np.random.default_rng(k), 40, 48))
    for i in range(n):
        folder = root / "src" / "train" / f"n{i % 100:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(root / f"{i % 100}.JPEG", folder / f"n{i % 100:08d}_{i}.JPEG")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("counts", type=int, nargs="+")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--plan-only", action="store_true", help="list and plan only: no image is written")
    args = parser.parse_args()
    for n in args.counts:
        with tempfile.TemporaryDirectory() as tmp:
            make_tree(Path(tmp) / "tree", n)
            script = PLAN if args.plan_only else RUN
            out = subprocess.run([sys.executable, "-c", script, str(Path(tmp) / "tree" / "src"), str(Path(tmp) / "d"),
                                  str(args.workers), str(args.size)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({"images": n, "plan_only": args.plan_only, "workers": args.workers, "size": args.size, "date": time.strftime("%Y-%m-%d"), **result}))


if __name__ == "__main__":
    main()
