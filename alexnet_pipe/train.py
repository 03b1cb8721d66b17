"""The trainer: settings and recipes, the learning-rate maths, checkpoints, and one readable train() loop.

Every process of a run executes `train(settings)`; `run_training(settings)` is the entry point that
checks the settings and either calls it in this process or starts N processes through the elastic
launcher (launch.py). Under torchrun the environment already names the rank, so train() is called directly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from alexnet_pipe.errors import Interrupted, UserError

SCHEDULES = ("plateau", "step", "cosine")
LOADERS = ("dali", "torch", "synthetic")
FAIL_ENV = "ALEXNET_PIPE_FAIL_AT_STEP"  # tests: rank 1 exits at this step on the first attempt of a launch


@dataclass(frozen=True)
class TrainSettings:
    data: str = "alexnet-data"
    run: str = ""                    # "" -> DATA/runs/<timestamp>
    recipe: str = "paper"
    arch: str = "alexnet"
    width: float = 1.0
    num_classes: int = 0             # 0: from the data (synthetic loader: 10)
    epochs: int = 90
    batch_size: int = 128            # global: split evenly across processes
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"        # plateau (the paper) | step | cosine
    patience: int = 2                # evaluations without a new best before a plateau drop
    max_drops: int = 3
    step_epochs: tuple[int, ...] = (30, 60, 80)
    warmup_epochs: float = 0.0
    init: str = "paper"              # paper: N(0, 0.01) | kaiming
    bias_init: float = 1.0           # conv2/4/5, fc6/7: paper 1, Caffe 0.1
    lrn_alpha: str = "paper"         # paper: alpha as printed | caffe: alpha / n
    dropout: float = 0.5
    crop: int = 0                    # 0: 7/8 of the stored size, 224 from 256 as in the paper
    loader: str = "dali"
    lighting: float = 0.1
    lighting_scale: str = "convnet2"  # convnet2: sqrt(eigval), 0..255 (Krizhevsky) | fbresnet
    normalize: str = "mean-image"    # mean-image (the paper) | channel
    device: str = "cpu"              # cpu | cuda
    nproc: int = 1
    compile: bool = False
    max_steps: int = 0               # 0: no limit
    seed: int = 0
    eval_every: int = 1              # epochs; 0: never
    ckpt_every: int = 0              # steps; 0: at the end of each epoch only
    keep: int = 3
    log_every: int = 20
    max_restarts: int = 0
    resume: str = ""                 # "" | "latest" | a checkpoint path
    num_threads: int = 2
    synthetic_steps: int = 8         # steps per epoch of the synthetic loader


# Explicit options override these. The dataclass defaults are the paper's recipe.
RECIPES: dict[str, dict] = {
    "paper": {},
    # Small data, CPU minutes: the paper's init sits at chance for epochs at this scale (Caffe moved the
    # biases to 0.1 for the same reason). He init on per-channel-normalised input keeps activations at unit
    # scale without the biases; a short linear warm-up then cosine decay; quarter width.
    "small": dict(width=0.25, epochs=30, batch_size=64, lr=0.01, schedule="cosine", warmup_epochs=2.0,
                  init="kaiming", bias_init=0.0, normalize="channel", patience=2, log_every=5),
}


def settings_from_dict(values: dict) -> TrainSettings:
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    return TrainSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


def resolve_settings(recipe: str = "paper", **overrides) -> TrainSettings:
    """Recipe values, then every override that is not None (explicit options beat the recipe)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainSettings(recipe=recipe, **{**RECIPES[recipe], **given})


# ---------------------------------------------------------------- learning-rate maths (pure)

def lr_at(schedule: str, base_lr: float, epoch: float, *, epochs: int = 90, step_epochs=(30, 60, 80),
          warmup_epochs: float = 0.0, drops: int = 0, steps_per_epoch: int = 1, gamma: float = 0.1) -> float:
    """Learning rate for the step that starts at fractional `epoch` (epoch index + step / steps_per_epoch).

    plateau: base * gamma^drops (drops decided by Plateau); step: base * gamma^(milestones passed);
    cosine: half cosine from base to 0 over `epochs`. Warm-up scales linearly up to 1 over warmup_epochs,
    counting the step itself, so the first step is never at lr 0.
    """
    if schedule == "plateau":
        lr = base_lr * gamma ** drops
    elif schedule == "step":
        lr = base_lr * gamma ** sum(epoch >= m for m in step_epochs)
    elif schedule == "cosine":
        lr = 0.5 * base_lr * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    if warmup_epochs > 0:
        lr *= min(1.0, (epoch + 1.0 / steps_per_epoch) / warmup_epochs)
    return lr


@dataclass
class Plateau:
    """The paper's rule: divide the lr by 10 when the validation error stops improving, at most max_drops times."""
    patience: int = 2
    max_drops: int = 3
    best: float = math.inf
    bad: int = 0
    drops: int = 0

    def update(self, error: float) -> bool:
        """Record one evaluation; True when the learning rate is to drop now."""
        if error < self.best:
            self.best, self.bad = error, 0
            return False
        self.bad += 1
        if self.bad >= self.patience and self.drops < self.max_drops:
            self.drops, self.bad = self.drops + 1, 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "drops": self.drops}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad, self.drops = float(state["best"]), int(state["bad"]), int(state["drops"])


# ---------------------------------------------------------------- checkpoints

CKPT_PREFIX = "ckpt-"


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temp file in the same dir, fsync, rename: a reader never sees half a checkpoint."""
    import torch
    from alexnet_pipe.files import atomic_write
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def checkpoints(run: Path) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    return sorted(Path(run).glob(f"{CKPT_PREFIX}*.pt"), key=lambda p: int(p.stem[len(CKPT_PREFIX):]))


def latest_checkpoint(run: Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def write_checkpoint(state: dict, run: Path, keep: int, best: bool) -> Path:
    """ckpt-<step>.pt; the newest `keep` are kept, plus best.pt (a hard link to the best one)."""
    path = Path(run) / f"{CKPT_PREFIX}{state['step']:08d}.pt"
    save_atomic(state, path)
    if best:
        tmp = path.with_name(f".best.pt.tmp-{os.getpid()}")
        try:
            os.link(path, tmp)
        except OSError:  # file systems without hard links
            import shutil
            shutil.copyfile(path, tmp)
        os.replace(tmp, path.with_name("best.pt"))
    for old in checkpoints(run)[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def load_checkpoint(path: Path | str) -> dict:
    """A checkpoint's state dict; a file that is not one raises UserError (train --resume, evaluate, viz)."""
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load on a junk, empty or truncated file raises pickle, zip, EOF, Key,
        # Runtime, Value... errors (no common type): all mean "not a checkpoint", said with torch's own text
        text = "" if isinstance(exc, (KeyError, EOFError)) else " ".join(str(exc).split())[:200]
        raise UserError(f"{path} is not a checkpoint written by `alexnet-pipe train` "
                        f"(torch.load cannot read it: {text or 'empty, cut short or not a torch file'})") from None
    if not isinstance(state, dict) or not {"model", "settings", "num_classes"} <= state.keys():
        raise UserError(f"{path} is not a checkpoint written by `alexnet-pipe train` "
                        "(it lacks model, settings or num_classes)")
    return state


def rng_state(device) -> dict:
    import torch
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    import torch
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def gather_rng(device, world: int) -> list[dict]:
    """Every rank's RNG state (dropout draws differ per rank), so a resume replays each rank exactly."""
    import torch.distributed as dist
    mine = rng_state(device)
    if world == 1:
        return [mine]
    everyone = [None] * world
    dist.all_gather_object(everyone, {k: v.cpu() if hasattr(v, "cpu") else v for k, v in mine.items()})
    return everyone


# ---------------------------------------------------------------- logging (rank 0)

class RunLog:
    """RUN/settings.json and RUN/metrics.jsonl, written by rank 0 only; other ranks get a no-op."""

    def __init__(self, run: Path, enabled: bool):
        self.run, self.enabled = Path(run), enabled
        self.tty = enabled and sys.stdout.isatty()
        self.metrics = self.run / "metrics.jsonl"

    def start(self, settings: TrainSettings, resumed_step: int) -> None:
        """Keep only rows up to the step we continue from: a crash after the last checkpoint left later rows."""
        if not self.enabled:
            return
        from alexnet_pipe.files import write_json_atomic
        self.run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run / "settings.json", asdict(settings))
        rows = read_metrics(self.run) if self.metrics.exists() else []
        with open(self.metrics, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= resumed_step)

    def row(self, **values) -> None:
        if self.enabled:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(values) + "\n")

    def say(self, text: str) -> None:
        if self.enabled:
            if self.tty:
                sys.stdout.write("\r\033[K")
            print(text, flush=True)

    def bar(self, epoch: int, done: int, total: int, note: str = "") -> None:
        """One progress bar per epoch, redrawn in place; only on a terminal."""
        if self.tty:
            filled = int(30 * done / max(total, 1))
            sys.stdout.write(f"\repoch {epoch + 1} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {note}")
            sys.stdout.flush()


def read_metrics(run: Path) -> list[dict]:
    """RUN/metrics.jsonl rows; a last row cut by a killed run is skipped (with a note), any other bad row
    raises UserError."""
    path = Path(run) / "metrics.jsonl"
    text = path.read_text()
    lines, rows = text.splitlines(), []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines) and not text.endswith("\n"):  # killed mid-write: rows are whole lines
                print(f"note: skipped the unfinished last line {n} of {path}", file=sys.stderr)
                break
            raise UserError(f"{path} is not JSON lines (line {n}: {exc.msg}); "
                            "pass a run dir that `alexnet-pipe train` wrote") from None
        if not isinstance(row, dict) or "step" not in row:
            raise UserError(f"{path} line {n} is not a metrics row (no step): "
                            "pass a run dir that `alexnet-pipe train` wrote")
        rows.append(row)
    return rows


class Meter:
    """Loss, step count, data wait and wall time since the last metrics row (loss stays on the device)."""

    def __init__(self, device):
        import torch
        self.loss, self.steps, self.wait, self.t0 = torch.zeros((), device=device), 0, 0.0, time.perf_counter()

    def add(self, loss, waited: float) -> None:
        self.loss += loss
        self.steps += 1
        self.wait += waited

    def flush(self, world: int, global_batch: int) -> dict:
        import torch.distributed as dist
        loss = self.loss.float()
        if world > 1:
            dist.all_reduce(loss)
        total = loss.item()  # waits for the device: the steps queued so far count in this row's time
        elapsed = time.perf_counter() - self.t0
        out = {"loss": total / world / self.steps, "images_per_sec": self.steps * global_batch / elapsed,
               "data_wait_fraction": min(1.0, self.wait / elapsed)}
        self.loss.zero_()
        self.steps, self.wait, self.t0 = 0, 0.0, time.perf_counter()
        return out


# ---------------------------------------------------------------- data

class SyntheticLoader:
    """The loader protocol on fixed tensors: for benchmarks and tests, no data dir.

    A pool of `pool` global batches is made once (class c = a fixed colour + noise, so a model can learn
    it); step s of epoch e serves pool[(e * steps + s) % pool], rank r taking rows [r*b, (r+1)*b).
    """

    def __init__(self, batch_size: int, crop: int, num_classes: int = 10, steps_per_epoch: int = 8,
                 rank: int = 0, world_size: int = 1, seed: int = 0, device="cpu", channels_last=False, pool=4):
        import torch
        protos = torch.randn(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(1234))
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(num_classes, (pool, batch_size * world_size), generator=g)
        images = protos[labels] + torch.randn(*labels.shape, 3, crop, crop, generator=g)
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.batches = [(images[k, rows].to(device, memory_format=fmt), labels[k, rows].to(device))
                        for k in range(pool)]
        self.steps_per_epoch, self.num_classes = steps_per_epoch, num_classes
        self.images_per_epoch = steps_per_epoch * batch_size * world_size

    def epoch(self, epoch: int, start_step: int = 0):
        for step in range(start_step, self.steps_per_epoch):
            yield self.batches[(epoch * self.steps_per_epoch + step) % len(self.batches)]

    def close(self) -> None:
        self.batches = []


def make_loaders(s: TrainSettings, rank: int, world: int, device):
    """(train loader, val loader or None) for this rank; the val split only when evaluations are due."""
    cuda = device.type == "cuda"
    if s.loader == "synthetic":
        common = dict(batch_size=s.batch_size // world, crop=s.crop, num_classes=s.num_classes or 10, rank=rank,
                      world_size=world, device=device, channels_last=cuda)
        return (SyntheticLoader(seed=s.seed, steps_per_epoch=s.synthetic_steps, **common),
                SyntheticLoader(seed=s.seed + 1, steps_per_epoch=2, **common) if s.eval_every else None)
    from alexnet_pipe.pipeline import LoaderSettings, make_loader
    base = LoaderSettings(data=Path(s.data), batch_size=s.batch_size // world, crop=s.crop, loader=s.loader,
                          device="gpu" if cuda else "cpu", lighting=s.lighting, lighting_scale=s.lighting_scale,
                          normalize=s.normalize, channels_last=cuda, seed=s.seed, rank=rank, world_size=world,
                          num_threads=s.num_threads)
    val = dataclasses.replace(base, split="val", train=False) if s.eval_every else None
    return make_loader(base), (make_loader(val) if val else None)


# ---------------------------------------------------------------- the loop

def build(s: TrainSettings, num_classes: int, device):
    import torch
    from alexnet_pipe.model import build_model
    model = build_model(s.arch, num_classes, s.width, lrn_alpha=s.lrn_alpha, bias_init=s.bias_init,
                        dropout=s.dropout, init=s.init)
    return model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format)


def evaluate_model(model, loader, device, world: int) -> dict:
    """Centre-crop top-1/top-5 error over the val loader, summed over ranks."""
    import torch
    import torch.distributed as dist
    from alexnet_pipe.evaluate import topk_correct
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for images, labels in loader.epoch(0):
            c1, c5 = topk_correct(model(images).float(), labels, (1, 5))
            counts += torch.tensor([c1, c5, len(labels)], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(counts)
    model.train(was_training)
    n = counts[2].item()
    return {"top1_error": 1 - counts[0].item() / n, "top5_error": 1 - counts[1].item() / n, "images": int(n)}


def train_step(net, opt, images, labels, autocast: bool):
    import torch
    import torch.nn.functional as F
    with torch.autocast(images.device.type, torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(net(images), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def resume_path(s: TrainSettings) -> Path | None:
    """An explicit path, or the newest checkpoint for --resume and for any elastic restart."""
    if s.resume and s.resume != "latest":
        return Path(s.resume)
    if s.resume == "latest" or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0:
        return latest_checkpoint(Path(s.run))
    return None


def check_resumable(state: dict, s: TrainSettings) -> None:
    """The checkpoint's model must be the one these settings build (options given with --resume may differ)."""
    saved = settings_from_dict(state["settings"])
    differ = [f"--{k.replace('_', '-')} {getattr(saved, k)} (now {getattr(s, k)})"
              for k in ("arch", "width", "lrn_alpha") if getattr(saved, k) != getattr(s, k)]
    if differ:
        raise UserError(f"--resume: the checkpoint was trained with {', '.join(differ)}; "
                        "resume with the same model options or start a new --run")


def _fail_step(rank: int) -> int:
    """Fault injection for the restart test: rank 1, first attempt only."""
    first = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) == 0
    return int(os.environ.get(FAIL_ENV, 0)) if rank == 1 and first else 0


def train(s: TrainSettings) -> dict:
    """Train in this process: rank `RANK` of `WORLD_SIZE` (one process without those variables)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from alexnet_pipe import distributed

    rank, world, local_rank, device = distributed.init(s.device)
    try:
        torch.manual_seed(s.seed)  # identical initial weights on every rank
        train_loader, val_loader = make_loaders(s, rank, world, device)
        spe, global_batch, cuda = train_loader.steps_per_epoch, s.batch_size, device.type == "cuda"
        model = build(s, train_loader.num_classes, device)
        net = DDP(model, device_ids=[local_rank] if cuda else None) if world > 1 else model
        net = torch.compile(net) if s.compile else net
        opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        plateau, best, step, epoch0, start_in_epoch = Plateau(s.patience, s.max_drops), math.inf, 0, 0, 0
        if (path := resume_path(s)) is not None:
            state = load_checkpoint(path)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            plateau.load_state_dict(state["schedule"])
            step, epoch0, start_in_epoch, best = state["step"], state["epoch"], state["step_in_epoch"], state["best"]
            if rank < len(state["rng"]):
                set_rng_state(state["rng"][rank], device)
        log = RunLog(Path(s.run), rank == 0)
        log.start(s, step)
        if path is not None:
            log.say(f"resumed from {path} at step {step} (epoch {epoch0 + 1}, step {start_in_epoch} in it)")
        fail_at, t_start, last_eval, summary = _fail_step(rank), time.perf_counter(), {}, {}

        def checkpoint(epoch: int, in_epoch: int, is_best: bool = False) -> None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": plateau.state_dict(),
                     "epoch": epoch, "step_in_epoch": in_epoch, "step": step, "best": best,
                     "rng": gather_rng(device, world), "settings": asdict(s),
                     "num_classes": train_loader.num_classes}
            if rank == 0:
                write_checkpoint(state, Path(s.run), s.keep, is_best)

        def evaluate(epoch_done: float, scheduled: bool = True) -> bool:
            nonlocal best, last_eval
            last_eval = evaluate_model(model, val_loader, device, world)
            is_best = last_eval["top1_error"] < best
            best = min(best, last_eval["top1_error"])
            if scheduled and s.schedule == "plateau" and plateau.update(last_eval["top1_error"]):
                log.say(f"val error stopped improving: lr / 10 (drop {plateau.drops} of {s.max_drops})")
            log.row(step=step, epoch=epoch_done, **last_eval)
            log.say(f"step {step} epoch {epoch_done:g}: top-1 error {last_eval['top1_error']:.4f}, "
                    f"top-5 error {last_eval['top5_error']:.4f} ({last_eval['images']} images)")
            return is_best

        done = bool(s.max_steps) and step >= s.max_steps
        for epoch in range(epoch0, s.epochs if not done else epoch0):
            net.train()
            meter, batches = Meter(device), iter(train_loader.epoch(epoch, start_step=start_in_epoch))
            for i in range(start_in_epoch, spe):
                t0 = time.perf_counter()
                images, labels = next(batches)
                waited = time.perf_counter() - t0
                lr = lr_at(s.schedule, s.lr, epoch + i / spe, epochs=s.epochs, step_epochs=s.step_epochs,
                           warmup_epochs=s.warmup_epochs, drops=plateau.drops, steps_per_epoch=spe)
                for group in opt.param_groups:
                    group["lr"] = lr
                meter.add(train_step(net, opt, images, labels, cuda), waited)
                step += 1
                if step == fail_at:
                    os._exit(17)
                done = bool(s.max_steps) and step >= s.max_steps
                if step % s.log_every == 0 or i + 1 == spe or done:
                    summary = meter.flush(world, global_batch)
                    log.row(step=step, epoch=round(step / spe, 6), lr=lr, **summary)
                    log.bar(epoch, i + 1, spe, f"loss {summary['loss']:.4f} lr {lr:.3g}")
                if s.ckpt_every and step % s.ckpt_every == 0 and i + 1 < spe and not done:
                    checkpoint(epoch, i + 1)
                if done:
                    break
            start_in_epoch = 0
            if i + 1 == spe:  # a whole epoch: evaluate when due (and at the very end), then checkpoint
                due = bool(s.eval_every) and ((epoch + 1) % s.eval_every == 0 or done or epoch + 1 == s.epochs)
                is_best = due and evaluate(epoch + 1.0, scheduled=(epoch + 1) % s.eval_every == 0)
                log.say(f"epoch {epoch + 1}/{s.epochs} done: step {step}, loss {summary['loss']:.4f}, "
                        f"{summary['images_per_sec']:.0f} images/s, data wait {summary['data_wait_fraction']:.0%}")
                checkpoint(epoch + 1, 0, is_best)
            else:  # stopped by --max-steps inside an epoch
                checkpoint(epoch, i + 1, bool(s.eval_every) and evaluate(round(step / spe, 6), scheduled=False))
            if done:
                break
        result = {"run": s.run, "steps": step, "epochs": round(step / spe, 6), "seconds": time.perf_counter() - t_start,
                  "best_top1_error": best if best < math.inf else None, **summary, **last_eval}
        log.say("finished: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in result.items()))
        train_loader.close()
        if val_loader is not None:
            val_loader.close()
        return result
    finally:
        distributed.cleanup()


# ---------------------------------------------------------------- checks and entry point

def default_run(data: str) -> str:
    return str(Path(data) / "runs" / time.strftime("%Y%m%d-%H%M%S"))


def check_data(s: TrainSettings) -> dict:
    """Say which earlier stage to run when the data dir is not ready; -> its manifest (read once here)."""
    from alexnet_pipe.datadir import DataDir
    from alexnet_pipe.shards import read_manifest, shard_dirs
    d = DataDir(Path(s.data))
    if not d.manifest.exists():
        raise UserError(f"{d.root} has no manifest.json: run `alexnet-pipe prepare` first "
                        f"(or pass --data to the data dir it wrote)")
    if not (d.mean.exists() and d.pca.exists()):
        raise UserError(f"{d.stats} lacks mean.npy or pca.json: run `alexnet-pipe stats --pca --data {d.root}` first")
    manifest = read_manifest(d.root)
    splits = manifest["splits"]
    if "train" not in splits:
        raise UserError(f"{d.root} has no train split: run `alexnet-pipe prepare` with the training images")
    if s.eval_every and "val" not in splits:
        raise UserError(f"{d.root} has no val split: prepare one, or pass --eval-every 0 (and --schedule step)")
    # before any worker starts: a deleted shard would otherwise fail inside every rank
    for split in ("train", "val") if s.eval_every else ("train",):
        missing = [p for p in shard_dirs(d.root, split, manifest) if not p.is_dir()]
        if missing:
            raise UserError(f"{len(missing)} {split} shard dir(s) listed in {d.manifest} are missing ({missing[0]}): "
                            "run `alexnet-pipe prepare` again with the same settings to rewrite them")
    return manifest


def finalize(s: TrainSettings, world: int) -> TrainSettings:
    """Cross-field rules and derived values (run dir, crop, process count), checked before any launch."""
    from alexnet_pipe.model import MIN_CROP
    if s.batch_size % world:
        raise UserError(f"global batch {s.batch_size} does not split over {world} processes; "
                        f"use a multiple of {world}")
    size = int(check_data(s)["settings"]["size"]) if s.loader != "synthetic" else 256
    crop = s.crop or (224 if size >= 256 else int(size * 7 / 8))
    if not MIN_CROP <= crop <= size:
        raise UserError(f"crop {crop} must lie between {MIN_CROP} and the stored image size {size}")
    run = s.run or default_run(s.data)
    if s.resume == "latest" and latest_checkpoint(Path(run)) is None:
        raise UserError(f"--resume: no checkpoint in {run}")
    if s.resume not in ("", "latest") and not Path(s.resume).is_file():
        raise UserError(f"--resume: no checkpoint file {s.resume}")
    if s.resume:  # before any worker starts, so a bad file is one sentence, not one traceback per rank
        check_resumable(load_checkpoint(resume_path(dataclasses.replace(s, run=run))), s)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
    if not s.resume and not restarted and latest_checkpoint(Path(run)) is not None:
        raise UserError(f"{run} already holds checkpoints: pass --resume to continue it, or another --run")
    if s.schedule == "plateau" and not s.eval_every:
        print("note: the plateau schedule needs evaluations; with --eval-every 0 the lr stays constant")
    return dataclasses.replace(s, crop=crop, run=run, nproc=world)


def run_training(s: TrainSettings) -> dict:
    """Check the settings, then train: here for one process, through the elastic launcher for several.

    The entry point for the CLI and the demo; returns rank 0's summary (train()'s dict).
    """
    from alexnet_pipe import distributed
    from alexnet_pipe.launch import launch
    if distributed.under_launcher():  # torchrun started us: the environment says who we are
        if not s.run:
            raise UserError("under torchrun pass --run DIR: every rank must write to the same run dir")
        return train(finalize(s, int(os.environ["WORLD_SIZE"])))
    s = finalize(s, s.nproc)
    try:
        if s.nproc == 1 and s.max_restarts == 0:
            return train(s)
        return launch(train, (s,), s.nproc, s.max_restarts)[0]
    except KeyboardInterrupt:  # checkpoints are atomic: the newest one on disk is whole
        last = latest_checkpoint(Path(s.run))
        where = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
        raise Interrupted(f"interrupted: {where}; continue with `alexnet-pipe train --run {s.run} --resume`") from None


# ---------------------------------------------------------------- benchmark: trainer vs a bare loop

def bare_step_time(s: TrainSettings, steps: int, warmup: int) -> float:
    """Seconds per step of the plainest loop: same model, optimiser and fixed tensors, nothing else."""
    import torch
    import torch.nn.functional as F
    device = torch.device("cuda" if s.device == "cuda" else "cpu")
    torch.manual_seed(s.seed)
    images, labels = SyntheticLoader(s.batch_size, s.crop, s.num_classes or 10, device=device,
                                     channels_last=device.type == "cuda", pool=1).batches[0]
    model = build(s, s.num_classes or 10, device)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()  # waits for the device
    return (time.perf_counter() - t0) / steps


def trainer_step_time(s: TrainSettings, steps: int, warmup: int) -> float:
    """Seconds per step of train() itself on the synthetic loader, from its own metrics rows after warm-up."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(s, loader="synthetic", run=tmp, eval_every=0, max_steps=warmup + steps,
                                  log_every=warmup, synthetic_steps=warmup + steps, epochs=1, nproc=1,
                                  max_restarts=0, resume="")
        train(run)
        rows = [r for r in read_metrics(Path(tmp)) if "loss" in r and r["step"] > warmup]
    return sum(s.batch_size / r["images_per_sec"] * (r["step"] - prev)
               for r, prev in zip(rows, [warmup] + [r["step"] for r in rows])) / steps


def bench_train_step(s: TrainSettings, steps: int = 20, warmup: int = 5, repeats: int = 2) -> dict:
    """Best of `repeats` alternating runs of each; overhead = trainer / bare - 1 (the target is <= 5%)."""
    bare, trainer = math.inf, math.inf
    for _ in range(repeats):
        bare = min(bare, bare_step_time(s, steps, warmup))
        trainer = min(trainer, trainer_step_time(s, steps, warmup))
    return {"device": s.device, "arch": s.arch, "width": s.width, "crop": s.crop, "batch_size": s.batch_size,
            "steps": steps, "bare_step_ms": bare * 1e3, "trainer_step_ms": trainer * 1e3,
            "bare_images_per_sec": s.batch_size / bare, "trainer_images_per_sec": s.batch_size / trainer,
            "overhead": trainer / bare - 1}
