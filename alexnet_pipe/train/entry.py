"""The trainer's entry point: the settings checked across fields (and a resume against its checkpoint) before any
process starts, then train() (loop.py) in this process, or in N through the elastic launcher (launch.py). Under
torchrun the environment already names the rank, so train() is called directly.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from alexnet_pipe.core.errors import Interrupted, Preempted, UserError
from alexnet_pipe.stats.ready import check_data
from alexnet_pipe.shards.verify import class_note
from alexnet_pipe.train import loop
from alexnet_pipe.train.checkpoint import (check_resumable, data_fingerprint, latest_checkpoint, load_checkpoint,
                                           resume_path, settings_from_dict)
from alexnet_pipe.train.config import MIN_CROP, TrainSettings, check
from alexnet_pipe.train.precision import resolved as resolved_precision
from alexnet_pipe.train.signals import PREEMPTED_EXIT


def default_run(data: str) -> str:
    return str(Path(data) / "runs" / time.strftime("%Y%m%d-%H%M%S"))


def finalize(s: TrainSettings, world: int) -> TrainSettings:
    """Cross-field rules and derived values (run dir, crop, process count, loader), checked before any launch."""
    check(s)
    if s.batch_size % world:
        raise UserError(f"global batch {s.batch_size} does not split over {world} processes; "
                        f"use a multiple of {world}")
    manifest = check_data(s.data, bool(s.eval_every)) if s.loader != "synthetic" else None
    size = int(manifest["settings"]["size"]) if manifest else 256
    if manifest and (note := class_note(manifest, s.data)):
        print(note)
    crop = s.crop or (224 if size >= 256 else int(size * 7 / 8))
    if not MIN_CROP <= crop <= size:
        raise UserError(f"crop {crop} must lie between {MIN_CROP} and the stored image size {size}")
    run = s.run or default_run(s.data)
    if s.resume == "auto":  # continue if there is something to continue (a requeued job), else start
        s = dataclasses.replace(s, resume="latest" if latest_checkpoint(Path(run)) else "")
    final = dataclasses.replace(s, crop=crop, run=run, nproc=world, loader=_loader(s.loader))
    if s.resume:  # before any worker starts, so a bad file is one sentence, not one traceback per rank
        final = check_resume(final, manifest)
    final = dataclasses.replace(final, precision=resolved_precision(final.precision, final.device))
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
    if not s.resume and not restarted and latest_checkpoint(Path(run)) is not None:
        raise UserError(f"{run} already holds checkpoints: pass --resume to continue it, or another --run")
    if s.schedule == "plateau" and not s.eval_every:
        print("note: the plateau schedule needs evaluations; with --eval-every 0 the lr stays constant")
    return final


def check_resume(s: TrainSettings, manifest: dict | None) -> TrainSettings:
    """The checkpoint exists, is one, continues this run (checkpoint.check_resumable), and its epoch plan
    survives a change in the number of processes; -> the settings to resume with: precision "auto" is the run's
    own (a run resumed on another device keeps computing as it did)."""
    if s.resume == "latest" and latest_checkpoint(Path(s.run)) is None:
        raise UserError(f"--resume: no checkpoint in {s.run}")
    if s.resume != "latest" and not Path(s.resume).is_file():
        raise UserError(f"--resume: no checkpoint file {s.resume}")
    state = load_checkpoint(resume_path(s))
    classes = len(manifest["classes"]) if manifest else (s.num_classes or 10)
    if int(state["num_classes"]) != classes:  # before the weights meet a model of another size in every rank
        raise UserError(f"--resume: the checkpoint has {state['num_classes']} classes but {s.data} holds {classes}; "
                        "pass the run's own --data or start a new --run")
    if s.precision == "auto":
        saved = settings_from_dict(state["settings"])
        s = dataclasses.replace(s, precision=resolved_precision(saved.precision, saved.device))
    check_resumable(state, s, data_fingerprint(manifest) if manifest else None)
    before = int(state["settings"].get("nproc", s.nproc))
    if manifest and before != s.nproc:
        from alexnet_pipe.loaders.augment import StepLayout
        n = sum(int(e["records"]) for e in manifest["splits"]["train"]["shards"])
        steps = [StepLayout(n, s.batch_size // w, w).steps for w in (before, s.nproc)]
        if steps[0] != steps[1]:
            raise UserError(f"--resume on {s.nproc} processes instead of {before} would change the last step of "
                            f"every epoch ({n} records in global batches of {s.batch_size}: {steps[0]} steps vs "
                            f"{steps[1]}); resume on {before} processes")
    return s


def _loader(name: str) -> str:
    """The loader every rank will use, decided once before any launch."""
    if name == "synthetic":
        return name
    from alexnet_pipe.loaders import resolve_loader
    chosen = resolve_loader(name)
    if name == "auto":
        print(f"loader: {chosen} ({'NVIDIA DALI found' if chosen == 'dali' else 'NVIDIA DALI is not installed here'})")
    return chosen


def run_training(s: TrainSettings, worker=None, checked: bool = False) -> dict:
    """Check the settings, then train: here for one process, through the elastic launcher for several.

    The entry point for the CLI and the demo; returns rank 0's summary (train()'s dict). `worker` replaces
    loop.train() as what each process runs (a module-level callable taking the settings: the restart test's fault
    injection wraps train() this way, so the loop itself carries no test hook). `checked`: the settings are
    finalize()'s already (the CLI printed them), so they are not checked twice.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from alexnet_pipe.train import distributed
    from alexnet_pipe.train.launch import launch
    if distributed.under_launcher():  # torchrun started us: the environment says who we are
        if not s.run:
            raise UserError("under torchrun pass --run-dir DIR: every rank must write to the same run dir")
        s = s if checked else finalize(s, int(os.environ["WORLD_SIZE"]))
        return _nothing_left(s, int(os.environ["RANK"]) == 0) or (worker or loop.train)(s)
    if not checked:
        chosen, auto = bool(s.run), s.resume == "auto"
        s = own_run_dir(finalize(s, s.nproc), chosen, auto)
    if done := _nothing_left(s, True):
        return done
    try:
        if s.nproc == 1 and s.max_restarts == 0:
            return (worker or loop.train)(s)
        return launch(worker or train_process, (s,), s.nproc, s.max_restarts)[0]
    except KeyboardInterrupt:  # checkpoints are atomic: the newest one on disk is whole
        raise Interrupted(f"interrupted: {_where(s)}") from None
    except Preempted:  # a worker took the notice (SIGTERM sent to the workers, as Slurm does)
        raise Preempted(f"stopped by SIGTERM: {_where(s)}") from None
    except SignalException as exc:  # the launcher was signalled; it stopped the workers (they checkpoint on SIGTERM)
        if exc.sigval == signal.SIGTERM:
            raise Preempted(f"stopped by SIGTERM: {_where(s)}") from None
        raise Interrupted(f"interrupted: {_where(s)}") from None


def own_run_dir(s: TrainSettings, chosen: bool, auto: bool) -> TrainSettings:
    """The run dir made the tool's (rundir.py): a fresh default one, or the --run given (`chosen`), continued only
    with --resume (or --resume auto, `auto`, on a dir of ours)."""
    from alexnet_pipe.train import rundir
    if not chosen:
        return dataclasses.replace(s, run=str(rundir.fresh_run_dir(Path(s.run))))
    rundir.claim_run_dir(Path(s.run), continuing=bool(s.resume) or (auto and rundir.is_ours(Path(s.run))))
    return s


def _nothing_left(s: TrainSettings, say: bool) -> dict | None:
    """A resume of a run already at its end: one note on how to train on, instead of a zero-step run."""
    from alexnet_pipe.train.checkpoint import finished_note
    note = finished_note(s) if s.resume else None
    if note and say:
        print(note, flush=True)
    return {"run": s.run, "steps": 0, "note": note} if note else None


def _where(s: TrainSettings) -> str:
    last = latest_checkpoint(Path(s.run))
    if last is None:  # --resume would find nothing to continue; auto starts the run again from its settings
        return f"no checkpoint was written yet; start it again with `alexnet-pipe train --run {s.run} --resume auto`"
    return f"the last checkpoint is {last}; continue with `alexnet-pipe train --run {s.run} --resume`"


def train_process(s: TrainSettings) -> dict:
    """What each launched process runs: train(); a UserError (a preemption too) goes to the launcher's side,
    which says it once (launch.reporting)."""
    try:
        return loop.train(s)
    except KeyboardInterrupt:  # Ctrl-C reaches every process; the launcher's side says what happened
        sys.exit(Interrupted.exit_code)
