"""The trainer: one train() loop that reads top to bottom, and the entry point that checks and launches it.

Every process of a run executes `train(settings)`; `run_training(settings)` checks the settings and either calls
it in this process or starts N processes through the elastic launcher (launch.py). Under torchrun the environment
already names the rank, so train() is called directly. The parts live in rooms of their own: settings and recipes
(config.py), the learning-rate maths (schedule.py), checkpoints and resume rules (checkpoint.py), the metrics log
and progress (runlog.py), the data (loaders/), the evaluation (evaluate.py).
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from alexnet_pipe.train.checkpoint import (check_resumable, data_fingerprint, diverged, finite_outputs, gather_rng,
                                           last_good_checkpoint, latest_checkpoint, load_checkpoint, resume_changes,
                                           resume_path, set_rng_state, settings_from_dict, write_checkpoint)
from alexnet_pipe.train.config import MIN_CROP, TrainSettings, check
from alexnet_pipe.shards.datadir import check_data
from alexnet_pipe.core.errors import Interrupted, Preempted, UserError
from alexnet_pipe.train.evaluation import evaluate_model
from alexnet_pipe.train.optim import set_lr
from alexnet_pipe.train.runlog import Meter, RunLog
from alexnet_pipe.train.schedule import Plateau, lr_at
from alexnet_pipe.train.signals import StopRequest
from alexnet_pipe.shards.verify import class_note


@dataclass
class Position:
    """Where a run stands; saved in every checkpoint, so a resume continues at the exact step."""
    step: int = 0            # optimizer steps taken in the whole run
    epoch: int = 0           # the epoch being trained
    step_in_epoch: int = 0   # steps of that epoch already taken
    best: float = math.inf   # best top-1 error seen


def make_loaders(s: TrainSettings, rank: int, world: int, device):
    """(train loader, val loader or None) for this rank; the val split only when evaluations are due."""
    cuda = device.type == "cuda"
    if s.loader == "synthetic":
        from alexnet_pipe.loaders.synthetic import SyntheticLoader
        common = dict(batch_size=s.batch_size // world, crop=s.crop, num_classes=s.num_classes or 10, rank=rank,
                      world_size=world, device=device, channels_last=cuda)
        return (SyntheticLoader(seed=s.seed, steps_per_epoch=s.synthetic_steps, **common),
                SyntheticLoader(seed=s.seed + 1, steps_per_epoch=2, **common) if s.eval_every else None)
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    base = LoaderSettings(data=Path(s.data), batch_size=s.batch_size // world, crop=s.crop, loader=s.loader,
                          device="gpu" if cuda else "cpu", lighting=s.lighting, lighting_scale=s.lighting_scale,
                          normalize=s.normalize, channels_last=cuda, seed=s.seed, rank=rank, world_size=world,
                          num_threads=s.num_threads, crops=s.crops, crop_scale=s.crop_scale,
                          crop_ratio=s.crop_ratio, color_jitter=s.color_jitter, hue=s.hue)
    val = dataclasses.replace(base, split="val", train=False) if s.eval_every else None
    return make_loader(base), (make_loader(val) if val else None)


def build(s: TrainSettings, num_classes: int, device):
    import torch
    from alexnet_pipe.model.alexnet import build_model
    model = build_model(s.arch, num_classes, s.width, lrn_alpha=s.lrn_alpha, bias_init=s.bias_init,
                        dropout=s.dropout, init=s.init, lrn_impl=s.lrn_impl, conv=s.conv)
    return model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format)


def train_step(net, opt, images, labels, autocast: bool, label_smoothing: float = 0.0):
    import torch
    import torch.nn.functional as F
    with torch.autocast(images.device.type, torch.bfloat16, enabled=autocast):  # (cross_entropy runs in fp32)
        loss = F.cross_entropy(net(images), labels, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def make_opt(s: TrainSettings, model):
    from alexnet_pipe.train.optim import make_optimizer
    return make_optimizer(model, s.momentum_form, s.lr, s.momentum, s.weight_decay, s.bias_lr_mult, s.bias_decay)


def restore(path: Path, model, opt, plateau: Plateau, rank: int, device) -> tuple[Position, TrainSettings]:
    """Load a checkpoint into the model, optimiser and schedule, and this rank's RNG; -> where it stood, and the
    settings it was written with."""
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    plateau.load_state_dict(state["schedule"])
    if rank < len(state["rng"]):
        set_rng_state(state["rng"][rank], device)
    saved = settings_from_dict(state["settings"])
    return Position(state["step"], state["epoch"], state["step_in_epoch"], state["best"]), saved


def save(s: TrainSettings, pos: Position, model, opt, plateau: Plateau, *, num_classes: int, rank: int,
         world: int, device, data_fingerprint: str | None, is_best: bool = False) -> None:
    """Every rank contributes its RNG state; rank 0 writes the checkpoint. A model whose outputs are no longer
    finite is not saved (every rank alike: their weights are the same)."""
    if not finite_outputs(model, s.crop):
        if pos.step >= (s.max_steps or math.inf) or pos.epoch >= s.epochs:  # no later loss will say so
            raise diverged(f"the model's outputs at step {pos.step} are not finite", Path(s.run))
        return  # the next metrics row's loss says the run diverged, naming the last good checkpoint
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": plateau.state_dict(),
             **asdict(pos), "rng": gather_rng(device, world), "settings": asdict(s), "num_classes": num_classes,
             "data_fingerprint": data_fingerprint}
    if rank == 0:
        write_checkpoint(state, Path(s.run), s.keep, is_best)


def dropout_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one rank's dropout draws at one step, a function of (seed, rank, step) alone: ranks draw
    different masks (one mask drawn N times would waste N-1 GPUs' worth of regularisation), and a resumed run,
    on any number of processes, replays them."""
    import numpy as np
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def seed_dropout(seed: int, device) -> None:
    """Seed the generator dropout draws from: the device's own (torch.manual_seed would seed every device and
    costs ~150 us a call on a CPU build, every step)."""
    import torch
    generator = torch.cuda.default_generators[device.index] if device.type == "cuda" else torch.default_generator
    generator.manual_seed(seed)


def write_row(log: RunLog, meter: Meter, pos: Position, spe: int, lr: float, world: int, batch: int) -> dict:
    """The metrics row of the steps since the last one; a loss that is not finite stops the run here, before any
    checkpoint holds the diverged weights."""
    steps_in_row = meter.steps
    summary = meter.flush(world, batch)
    if not math.isfinite(summary["loss"]):
        last = last_good_checkpoint(log.run)
        raise UserError(f"the training loss is {summary['loss']} at step {pos.step}: the run diverged; the last good "
                       f"checkpoint is {last or 'none (none was written yet)'}; start a new --run with a lower --lr, "
                       "or check the data and the stats")
    log.row(step=pos.step, epoch=round(pos.step / spe, 6), lr=lr, **summary)
    log.advance(steps_in_row, f"loss {summary['loss']:.4f} lr {lr:.3g}")
    return summary


def current_data(s: TrainSettings) -> str | None:
    """The data dir's fingerprint (checkpoint.data_fingerprint); None for the synthetic loader."""
    if s.loader == "synthetic":
        return None
    from alexnet_pipe.shards.format import read_manifest
    return data_fingerprint(read_manifest(Path(s.data)))


def say_eval(log: RunLog, step: int, epoch: float, metrics: dict) -> None:
    log.row(step=step, epoch=epoch, **metrics)
    log.say(f"step {step} epoch {epoch:g}: top-1 error {metrics['top1_error']:.4f}, "
            f"top-5 error {metrics['top5_error']:.4f} ({metrics['images']} images)")


def train(s: TrainSettings) -> dict:
    """Train in this process: rank `RANK` of `WORLD_SIZE` (one process without those variables)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from alexnet_pipe.train import distributed

    rank, world, local_rank, device = distributed.init(s.device)
    try:
        torch.manual_seed(s.seed)  # identical initial weights on every rank
        train_loader, val_loader = make_loaders(s, rank, world, device)
        spe, classes, cuda = train_loader.steps_per_epoch, train_loader.num_classes, device.type == "cuda"
        model = build(s, classes, device)
        net = DDP(model, device_ids=[local_rank] if cuda else None) if world > 1 else model
        net = torch.compile(net) if s.compile else net
        opt = make_opt(s, model)
        plateau = Plateau(s.patience, s.max_drops)
        path = resume_path(s)
        pos, saved = restore(path, model, opt, plateau, rank, device) if path is not None else (Position(), s)
        log = RunLog(Path(s.run), rank == 0)
        log.start(s, pos.step)
        if path is not None:
            log.say(f"resumed from {path} at step {pos.step} (epoch {pos.epoch + 1}, step {pos.step_in_epoch} in it)")
            changed = resume_changes(saved, s)[1]
            if changed:  # the settings a resume may change (finalize refused the others): on the record
                log.row(step=pos.step, event="resume", changed=changed)
        stop = s.max_steps or math.inf  # the step at which this run ends, besides the last epoch
        t_start, summary, last_eval = time.perf_counter(), {}, {}
        ctx = dict(num_classes=classes, rank=rank, world=world, device=device, data_fingerprint=current_data(s))
        preempt = StopRequest()

        while pos.epoch < s.epochs and pos.step < stop:
            epoch = pos.epoch
            net.train()
            meter = Meter(device)
            log.begin_epoch(epoch, spe, pos.step_in_epoch)
            batches = iter(train_loader.epoch(epoch, start_step=pos.step_in_epoch))
            stopping = False
            while pos.step_in_epoch < spe and pos.step < stop and not stopping:
                t0 = time.perf_counter()
                images, labels = next(batches)
                waited = time.perf_counter() - t0
                lr = lr_at(s.schedule, s.lr, epoch + pos.step_in_epoch / spe, epochs=s.epochs,
                           step_epochs=s.step_epochs, warmup_epochs=s.warmup_epochs, drops=plateau.drops,
                           steps_per_epoch=spe)
                set_lr(opt, lr)
                seed_dropout(dropout_seed(s.seed, rank, pos.step), device)
                meter.add(train_step(net, opt, images, labels, cuda, s.label_smoothing), waited)
                pos.step += 1
                pos.step_in_epoch += 1
                ckpt_due = bool(s.ckpt_every) and pos.step % s.ckpt_every == 0 and pos.step_in_epoch < spe
                row_due = pos.step % s.log_every == 0 or pos.step_in_epoch == spe or pos.step == stop or ckpt_due
                # ranks agree on a stop where a row syncs them anyway: no extra host sync on other steps
                stopping = (row_due or world == 1) and preempt.agreed(world, device)
                if row_due or stopping:
                    summary = write_row(log, meter, pos, spe, lr, world, s.batch_size)
                if ckpt_due and pos.step < stop and not stopping:
                    save(s, pos, model, opt, plateau, **ctx)
            log.end_epoch()
            if stopping:  # the scheduler's notice: this step's checkpoint, then leave (an epoch end evaluates on resume)
                save(s, pos, model, opt, plateau, **ctx)
                raise Preempted(f"stopped by SIGTERM after step {pos.step}, checkpoint written; continue with "
                                f"`alexnet-pipe train --run {s.run} --resume`")

            whole = pos.step_in_epoch == spe  # else --max-steps stopped the run inside the epoch
            if whole:
                pos.epoch, pos.step_in_epoch = epoch + 1, 0
            scheduled = whole and bool(s.eval_every) and pos.epoch % s.eval_every == 0
            due = bool(s.eval_every) and (scheduled or pos.step >= stop or pos.epoch == s.epochs or not whole)
            is_best = False
            if due:
                last_eval = evaluate_model(model, val_loader, device, world)
                is_best = last_eval["top1_error"] < pos.best
                pos.best = min(pos.best, last_eval["top1_error"])
                if scheduled and s.schedule == "plateau" and plateau.update(last_eval["top1_error"]):
                    log.say(f"val error stopped improving: lr / 10 (drop {plateau.drops} of {s.max_drops})")
                say_eval(log, pos.step, float(pos.epoch) if whole else round(pos.step / spe, 6), last_eval)
            if whole:  # (a run resumed at an epoch's end, after a preemption, has no row of this epoch)
                figures = (f", loss {summary['loss']:.4f}, {summary['images_per_sec']:.0f} images/s, data wait "
                           f"{summary['data_wait_fraction']:.0%}") if summary else ""
                log.say(f"epoch {epoch + 1}/{s.epochs} done: step {pos.step}{figures}")
            save(s, pos, model, opt, plateau, is_best=is_best, **ctx)

        result = {"run": s.run, "steps": pos.step, "epochs": round(pos.step / spe, 6),
                  "seconds": time.perf_counter() - t_start,
                  "best_top1_error": pos.best if pos.best < math.inf else None, **summary, **last_eval}
        log.say("finished: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in result.items()))
        preempt.close()
        train_loader.close()
        if val_loader is not None:
            val_loader.close()
        return result
    finally:
        distributed.cleanup()


# ---------------------------------------------------------------- checks and entry point

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
        check_resume(final, manifest)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
    if not s.resume and not restarted and latest_checkpoint(Path(run)) is not None:
        raise UserError(f"{run} already holds checkpoints: pass --resume to continue it, or another --run")
    if s.schedule == "plateau" and not s.eval_every:
        print("note: the plateau schedule needs evaluations; with --eval-every 0 the lr stays constant")
    return final


def check_resume(s: TrainSettings, manifest: dict | None) -> None:
    """The checkpoint exists, is one, continues this run (checkpoint.check_resumable), and its epoch plan
    survives a change in the number of processes."""
    if s.resume == "latest" and latest_checkpoint(Path(s.run)) is None:
        raise UserError(f"--resume: no checkpoint in {s.run}")
    if s.resume != "latest" and not Path(s.resume).is_file():
        raise UserError(f"--resume: no checkpoint file {s.resume}")
    state = load_checkpoint(resume_path(s))
    classes = len(manifest["classes"]) if manifest else (s.num_classes or 10)
    if int(state["num_classes"]) != classes:  # before the weights meet a model of another size in every rank
        raise UserError(f"--resume: the checkpoint has {state['num_classes']} classes but {s.data} holds {classes}; "
                        "pass the run's own --data or start a new --run")
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


def _loader(name: str) -> str:
    """The loader every rank will use, decided once before any launch."""
    if name == "synthetic":
        return name
    from alexnet_pipe.loaders import resolve_loader
    chosen = resolve_loader(name)
    if name == "auto":
        print(f"loader: {chosen} ({'NVIDIA DALI found' if chosen == 'dali' else 'NVIDIA DALI is not installed here'})")
    return chosen


def run_training(s: TrainSettings, worker=None) -> dict:
    """Check the settings, then train: here for one process, through the elastic launcher for several.

    The entry point for the CLI and the demo; returns rank 0's summary (train()'s dict). `worker` replaces
    train() as what each process runs (a module-level callable taking the settings: the restart test's fault
    injection wraps train() this way, so the loop itself carries no test hook).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from alexnet_pipe.train import distributed
    from alexnet_pipe.train.launch import launch
    if distributed.under_launcher():  # torchrun started us: the environment says who we are
        if not s.run:
            raise UserError("under torchrun pass --run-dir DIR: every rank must write to the same run dir")
        return (worker or train)(finalize(s, int(os.environ["WORLD_SIZE"])))
    s = finalize(s, s.nproc)
    try:
        if s.nproc == 1 and s.max_restarts == 0:
            return (worker or train)(s)
        return launch(worker or train_process, (s,), s.nproc, s.max_restarts)[0]
    except KeyboardInterrupt:  # checkpoints are atomic: the newest one on disk is whole
        raise Interrupted(f"interrupted: {_where(s)}") from None
    except Preempted:  # a worker took the notice (SIGTERM sent to the workers, as Slurm does)
        raise Preempted(f"stopped by SIGTERM: {_where(s)}") from None
    except SignalException as exc:  # the launcher was signalled; it stopped the workers (they checkpoint on SIGTERM)
        if exc.sigval == signal.SIGTERM:
            raise Preempted(f"stopped by SIGTERM: {_where(s)}") from None
        raise Interrupted(f"interrupted: {_where(s)}") from None


def _where(s: TrainSettings) -> str:
    last = latest_checkpoint(Path(s.run))
    if last is None:  # --resume would find nothing to continue; auto starts the run again from its settings
        return f"no checkpoint was written yet; start it again with `alexnet-pipe train --run {s.run} --resume auto`"
    return f"the last checkpoint is {last}; continue with `alexnet-pipe train --run {s.run} --resume`"


def train_process(s: TrainSettings) -> dict:
    """What each launched process runs: train(); a UserError (a preemption too) goes to the launcher's side,
    which says it once (launch.reporting)."""
    try:
        return train(s)
    except KeyboardInterrupt:  # Ctrl-C reaches every process; the launcher's side says what happened
        sys.exit(Interrupted.exit_code)
