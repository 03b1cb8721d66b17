"""Whose a run dir is: the tool's when it holds the marker train writes into it first, and never a folder of
the user's that merely looks like a run (docs/training.md, "The run dir").

A new run goes into an absent or empty dir (a non-empty one needs --resume); the default DATA/runs/<timestamp>
is made with an exclusive mkdir, so two runs started in the same second get two dirs, never one.
"""
from __future__ import annotations

import os
from pathlib import Path

from alexnet_pipe.core.errors import UserError

MARKER = ".alexnet-pipe-run"  # written first into every run dir train makes or continues


def is_ours(run: Path) -> bool:
    return (Path(run) / MARKER).is_file()


def fresh_run_dir(run: Path) -> Path:
    """`run`, or `run`-2, -3, ...: the first name this process creates itself (mkdir fails on a taken one)."""
    run = Path(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = run if n == 1 else run.with_name(f"{run.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        _mark(candidate)
        return candidate
    raise UserError(f"could not make a new run dir beside {run}: pass --run DIR")


def claim_run_dir(run: Path, continuing: bool) -> None:
    """Make `run` the tool's, or refuse: a non-empty dir is only continued (--resume, or --resume auto on a
    dir of ours), and a dir without the marker is only continued where it holds train's own files."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise UserError(f"--run {run} is a file, not a folder: choose another --run")
    entries = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    if entries and not continuing:
        whose = ("it holds a run already: continue it with --resume" if is_ours(run) else
                 f"it holds files that `alexnet-pipe train` did not write ({', '.join(entries[:3])})")
        raise UserError(f"--run {run} is not empty ({whose}), or choose another --run")
    run.mkdir(parents=True, exist_ok=True)
    _mark(run)


def _mark(run: Path) -> None:
    path = run / MARKER
    if not path.exists():
        with open(path, "w") as f:
            f.write("made by alexnet-pipe train: files here are the run's (settings, metrics, checkpoints)\n")
            os.fsync(f.fileno())
