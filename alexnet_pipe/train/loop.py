"""The trainer's loop: train(), which every process of a run executes, reading top to bottom, and its parts.

train() holds the epoch and step loops and nothing else: the step, the metrics row, the checkpoint and the
evaluation are the named functions below, each handed the `Run` (what the process holds while it trains).
entry.py checks the settings and starts train() in this process or in N. The other parts live in rooms of
their own: settings and recipes (config.py), the precision rule (precision.py), the learning-rate maths
(schedule.py), checkpoints and resume rules (checkpoint.py), the metrics log and progress (runlog.py), the data
(loaders/), the evaluation (evaluation.py).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alexnet_pipe.core.errors import Preempted, UserError
from alexnet_pipe.train.checkpoint import (data_fingerprint, diverged, finite_outputs, gather_rng,
                                           last_good_checkpoint, latest_checkpoint, load_checkpoint,
                                           resume_changes, resume_path, set_rng_state, settings_from_dict,
                                           write_checkpoint)
from alexnet_pipe.train.config import TrainSettings, model_for
from alexnet_pipe.train.evaluation import evaluate_model
from alexnet_pipe.train.optim import set_lr
from alexnet_pipe.train.precision import autocast, grad_scaler, resolved as resolved_precision
from alexnet_pipe.train.runlog import Meter, RunLog
from alexnet_pipe.train.schedule import Plateau, lr_at
from alexnet_pipe.train.signals import StopRequest


@dataclass
class Position:
    """Where a run stands; saved in every checkpoint, so a resume continues at the exact step."""
    step: int = 0            # optimizer steps taken in the whole run
    epoch: int = 0           # the epoch being trained
    step_in_epoch: int = 0   # steps of that epoch already taken
    best: float = math.inf   # best top-1 error seen


@dataclass
class Run:
    """What one process of a run holds while it trains; train() hands it to each of its parts."""
    s: TrainSettings         # precision resolved
    rank: int
    world: int
    device: object
    train_loader: object
    val_loader: object       # None when evaluations are off
    model: object
    net: object              # the model as trained: inside DDP and torch.compile where asked
    opt: object
    scaler: object           # fp16's GradScaler, else None
    plateau: Plateau
    log: RunLog
    data_fingerprint: str | None
    pos: Position = field(default_factory=Position)
    meter: Meter | None = None  # the steps since the last metrics row
    lr: float = 0.0          # this step's
    summary: dict = field(default_factory=dict)    # the last metrics row's figures
    last_eval: dict = field(default_factory=dict)  # the last evaluation's

    @property
    def spe(self) -> int:
        return self.train_loader.steps_per_epoch

    @property
    def stop(self) -> float:
        """The step at which this run ends, besides the last epoch."""
        return self.s.max_steps or math.inf


def make_loaders(s: TrainSettings, rank: int, world: int, device):
    """(train loader, val loader or None) for this rank; the val split only when evaluations are due."""
    cuda = device.type == "cuda"
    if s.loader == "synthetic":
        from alexnet_pipe.loaders.synthetic import SyntheticLoader
        common = dict(batch_size=s.batch_size // world, crop=s.crop, num_classes=s.num_classes or 10, rank=rank,
                      world_size=world, device=device, channels_last=cuda)
        return (SyntheticLoader(seed=s.seed, steps_per_epoch=s.synthetic_steps, **common),
                SyntheticLoader(seed=s.seed + 1, steps_per_epoch=2, **common) if s.eval_every else None)
    from alexnet_pipe.loaders import make_loader
    base = loader_settings(s, rank, world, device)
    val = dataclasses.replace(base, split="val", train=False) if s.eval_every else None
    return make_loader(base), (make_loader(val) if val else None)


def loader_settings(s: TrainSettings, rank: int, world: int, device):
    """The training loader's settings for this rank (the dry-run's table reads them too)."""
    from alexnet_pipe.loaders import LoaderSettings
    cuda = device.type == "cuda"
    return LoaderSettings(data=Path(s.data), batch_size=s.batch_size // world, crop=s.crop, loader=s.loader,
                          device=device.type, lighting=s.lighting, lighting_scale=s.lighting_scale,
                          normalize=s.normalize, channels_last=cuda, seed=s.seed, rank=rank, world_size=world,
                          num_threads=s.num_threads, crops=s.crops, crop_scale=s.crop_scale,
                          crop_ratio=s.crop_ratio, color_jitter=s.color_jitter, hue=s.hue)


def build(s: TrainSettings, num_classes: int, device):
    import torch
    model = model_for(s, num_classes)
    return model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format)


def make_opt(s: TrainSettings, model):
    from alexnet_pipe.train.optim import make_optimizer
    return make_optimizer(model, s.momentum_form, s.lr, s.momentum, s.weight_decay, s.bias_lr_mult, s.bias_decay)


def start(s: TrainSettings, rank: int, world: int, local_rank: int, device) -> Run:
    """The run's loaders, model and optimiser, restored from its checkpoint when it resumes; its log started."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    s = dataclasses.replace(s, precision=resolved_precision(s.precision, device.type))
    train_loader, val_loader = make_loaders(s, rank, world, device)
    model = build(s, train_loader.num_classes, device)
    net = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if world > 1 else model
    run = Run(s, rank, world, device, train_loader, val_loader, model, torch.compile(net) if s.compile else net,
              make_opt(s, model), grad_scaler(s.precision, device), Plateau(s.patience, s.max_drops),
              RunLog(Path(s.run), rank == 0), current_data(s))
    path = resume_path(s)
    saved = restore(path, run) if path is not None else s
    run.log.start(s, run.pos.step)
    if path is not None:
        run.log.say(f"resumed from {path} at step {run.pos.step} (epoch {run.pos.epoch + 1}, step "
                    f"{run.pos.step_in_epoch} in it)")
        changed = resume_changes(saved, s)[1]
        if changed:  # the settings a resume may change (finalize refused the others): on the record
            run.log.row(step=run.pos.step, event="resume", changed=changed)
    return run


def restore(path: Path, run: Run) -> TrainSettings:
    """Load a checkpoint into the model, optimiser, loss scaler and schedule, this rank's RNG and the position;
    -> the settings it was written with."""
    state = load_checkpoint(path)
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.plateau.load_state_dict(state["schedule"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    if run.rank < len(state["rng"]):
        set_rng_state(state["rng"][run.rank], run.device)
    run.pos = Position(state["step"], state["epoch"], state["step_in_epoch"], state["best"])
    return settings_from_dict(state["settings"])


def begin_epoch(run: Run):
    """The iterator of this epoch's batches from where the run stands; a fresh meter and progress display."""
    run.net.train()
    run.meter = Meter(run.device)
    run.log.begin_epoch(run.pos.epoch, run.spe, run.pos.step_in_epoch)
    return iter(run.train_loader.epoch(run.pos.epoch, start_step=run.pos.step_in_epoch))


def take_step(run: Run, batches) -> None:
    """One optimizer step on the next batch, at the scheduled lr and with this step's dropout draws."""
    s, pos = run.s, run.pos
    t0 = time.perf_counter()
    images, labels = next(batches)
    waited = time.perf_counter() - t0
    run.lr = lr_at(s.schedule, s.lr, pos.epoch + pos.step_in_epoch / run.spe, epochs=s.epochs,
                   step_epochs=s.step_epochs, warmup_epochs=s.warmup_epochs, drops=run.plateau.drops,
                   steps_per_epoch=run.spe)
    set_lr(run.opt, run.lr)
    seed_dropout(dropout_seed(s.seed, run.rank, pos.step), run.device)
    run.meter.add(train_step(run.net, run.opt, images, labels, s.precision, s.label_smoothing, run.scaler), waited)
    pos.step += 1
    pos.step_in_epoch += 1


def train_step(net, opt, images, labels, precision: str = "fp32", label_smoothing: float = 0.0, scaler=None):
    """Forward in the run's precision (the loss itself in fp32), backward, optimizer step; fp16 through its
    loss scaler."""
    import torch.nn.functional as F
    with autocast(precision, images.device):
        loss = F.cross_entropy(net(images), labels, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)  # skipped when the scaled gradients overflowed; the scale then shrinks
        scaler.update()
    return loss.detach()


def checkpoint_due(run: Run) -> bool:
    """A --ckpt-every checkpoint inside the epoch (its end writes one anyway), before the run's last step."""
    pos, every = run.pos, run.s.ckpt_every
    return bool(every) and pos.step % every == 0 and pos.step_in_epoch < run.spe and pos.step < run.stop


def row_due(run: Run) -> bool:
    """A metrics row every --log-every steps, at the epoch's end and at the run's last step."""
    pos = run.pos
    return pos.step % run.s.log_every == 0 or pos.step_in_epoch == run.spe or pos.step == run.stop


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


def write_row(run: Run) -> None:
    """The metrics row of the steps since the last one; a loss that is not finite stops the run here, before any
    checkpoint holds the diverged weights."""
    pos, steps_in_row = run.pos, run.meter.steps
    run.summary = summary = run.meter.flush(run.world, run.s.batch_size)
    if not math.isfinite(summary["loss"]):
        last = last_good_checkpoint(run.log.run)
        raise UserError(f"the training loss is {summary['loss']} at step {pos.step}: the run diverged; the last good "
                        f"checkpoint is {last or 'none (none was written yet)'}; start a new --run with a lower --lr, "
                        "or check the data and the stats")
    run.log.row(step=pos.step, epoch=round(pos.step / run.spe, 6), lr=run.lr, **summary)
    run.log.advance(steps_in_row, f"loss {summary['loss']:.4f} lr {run.lr:.3g}")


def save(run: Run, is_best: bool = False) -> None:
    """Every rank contributes its RNG state; rank 0 writes the checkpoint. A model whose outputs are no longer
    finite is not saved (every rank alike: their weights are the same)."""
    s, pos = run.s, run.pos
    if not finite_outputs(run.model, s.crop):
        if pos.step >= run.stop or pos.epoch >= s.epochs:  # no later loss will say so
            raise diverged(f"the model's outputs at step {pos.step} are not finite", Path(s.run))
        return  # the next metrics row's loss says the run diverged, naming the last good checkpoint
    state = {"model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
             "schedule": run.plateau.state_dict(), **asdict(run.pos), "rng": gather_rng(run.device, run.world),
             "settings": asdict(run.s), "num_classes": run.train_loader.num_classes,
             "data_fingerprint": run.data_fingerprint}
    if run.scaler is not None:
        state["scaler"] = run.scaler.state_dict()
    if run.rank == 0:
        write_checkpoint(state, Path(run.s.run), run.s.keep, is_best)


def stop_for_preemption(run: Run):
    """The scheduler's notice: this step's row and checkpoint, then leave (an epoch end evaluates on resume)."""
    write_row(run)
    run.log.end_epoch()
    save(run)
    raise Preempted(f"stopped by SIGTERM after step {run.pos.step}, checkpoint written; continue with "
                    f"`alexnet-pipe train --run {run.s.run} --resume`")


def end_epoch_position(run: Run) -> bool:
    """After the epoch's steps: True, and the position moved to the next epoch, when they were all taken (else
    --max-steps stopped the run inside it)."""
    pos = run.pos
    if pos.step_in_epoch < run.spe:
        return False
    pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
    return True


def evaluate_if_due(run: Run, whole: bool) -> bool:
    """The evaluation, every --eval-every epochs (they alone steer the plateau schedule) and where the run ends;
    -> whether it is the best so far."""
    s, pos = run.s, run.pos
    scheduled = whole and bool(s.eval_every) and pos.epoch % s.eval_every == 0
    if not s.eval_every or not (scheduled or pos.step >= run.stop or pos.epoch == s.epochs or not whole):
        return False
    run.last_eval = evaluate_model(run.model, run.val_loader, run.device, run.world, s.precision)
    is_best = run.last_eval["top1_error"] < pos.best
    pos.best = min(pos.best, run.last_eval["top1_error"])
    if scheduled and s.schedule == "plateau" and run.plateau.update(run.last_eval["top1_error"]):
        run.log.say(f"val error stopped improving: lr / 10 (drop {run.plateau.drops} of {s.max_drops})")
    epoch = float(pos.epoch) if whole else round(pos.step / run.spe, 6)
    run.log.row(step=pos.step, epoch=epoch, **run.last_eval)
    run.log.say(f"step {pos.step} epoch {epoch:g}: top-1 error {run.last_eval['top1_error']:.1%}, "
                f"top-5 error {run.last_eval['top5_error']:.1%} ({run.last_eval['images']} images)")
    return is_best


def say_epoch_done(run: Run) -> None:
    """(a run resumed at an epoch's end, after a preemption, has no row of this epoch)"""
    figures = (f", loss {run.summary['loss']:.4f}, {run.summary['images_per_sec']:.0f} images/s, data wait "
               f"{run.summary['data_wait_fraction']:.0%}") if run.summary else ""
    run.log.say(f"epoch {run.pos.epoch}/{run.s.epochs} done: step {run.pos.step}{figures}")


def finish(run: Run, seconds: float) -> dict:
    """The run's summary (said, and returned); the loaders closed."""
    pos = run.pos
    result = {"run": run.s.run, "steps": pos.step, "epochs": round(pos.step / run.spe, 6), "seconds": seconds,
              "best_top1_error": pos.best if pos.best < math.inf else None, **run.summary, **run.last_eval}
    run.log.say("finished: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in result.items()))
    run.train_loader.close()
    if run.val_loader is not None:
        run.val_loader.close()
    return result


def current_data(s: TrainSettings) -> str | None:
    """The data dir's fingerprint (checkpoint.data_fingerprint); None for the synthetic loader."""
    if s.loader == "synthetic":
        return None
    from alexnet_pipe.shards.manifest import read_manifest
    return data_fingerprint(read_manifest(Path(s.data)))


def train(s: TrainSettings) -> dict:
    """Train in this process: rank `RANK` of `WORLD_SIZE` (one process without those variables).

    Each epoch: its steps, with a metrics row every --log-every steps and a checkpoint every --ckpt-every; then
    the evaluation when one is due, and the epoch's checkpoint. SIGTERM ends the run after a step, checkpointed."""
    import torch
    from alexnet_pipe.train import distributed

    rank, world, local_rank, device = distributed.init(s.device)
    try:
        torch.manual_seed(s.seed)  # identical initial weights on every rank
        run = start(s, rank, world, local_rank, device)
        preempt, t_start = StopRequest(), time.perf_counter()
        while run.pos.epoch < s.epochs and run.pos.step < run.stop:
            batches = begin_epoch(run)
            while run.pos.step_in_epoch < run.spe and run.pos.step < run.stop:
                take_step(run, batches)
                ckpt, row = checkpoint_due(run), row_due(run)
                # ranks agree on a stop where a row syncs them anyway: no extra host sync on other steps
                if (row or ckpt or world == 1) and preempt.agreed(world, device):
                    stop_for_preemption(run)
                if row or ckpt:  # a checkpoint's row first: no checkpoint holds a diverged run
                    write_row(run)
                if ckpt:
                    save(run)
            run.log.end_epoch()
            whole = end_epoch_position(run)
            is_best = evaluate_if_due(run, whole)
            if whole:
                say_epoch_done(run)
            save(run, is_best=is_best)
        preempt.close()
        return finish(run, time.perf_counter() - t_start)
    finally:
        distributed.cleanup()
