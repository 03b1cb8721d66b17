"""Checkpoints: atomic save, list / latest / load, every rank's RNG state, the resume rules, and load_model.

A checkpoint is one torch file `RUN/ckpt-<step>.pt` holding the model, optimiser and schedule state, the
position in the run (epoch, step in it, global step), every rank's RNG state and the settings it was trained
with; `best.pt` is a hard link to the best one.  Writes go through files.atomic_write, so a reader never sees
half of one and a crash leaves the previous checkpoints as they were. The file names are spelled here alone:
everyone else finds checkpoints through `checkpoints`, `latest_checkpoint` and `best_checkpoint`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Annotated

from pydantic import Field

from alexnet_pipe.core.metadata import Strict, check_model
from alexnet_pipe.train.config import TrainSettings, settings_from_dict
from alexnet_pipe.train.runlog import checked_settings, settings_model
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import UnreadableFile, atomic_write, open_regular

CKPT_PREFIX = "ckpt-"
BEST = "best.pt"


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temp file in the same dir, fsync, rename: a reader never sees half a checkpoint."""
    import torch
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def checkpoints(run: Path) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    return sorted(Path(run).glob(f"{CKPT_PREFIX}*.pt"), key=lambda p: int(p.stem[len(CKPT_PREFIX):]))


def latest_checkpoint(run: Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def best_checkpoint(run: Path) -> Path:
    """RUN/best.pt: the checkpoint of the lowest val top-1 error (it may not exist yet)."""
    return Path(run) / BEST


def nonfinite(state) -> list[str]:
    """The names of the floating tensors in a (nested) state that hold a NaN or an infinity."""
    import torch
    found = []

    def walk(value, name):
        if torch.is_tensor(value):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                found.append(name)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}.{i}")
    walk(state, "")
    return found


def last_good_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint of a run whose weights are finite (those written before that rule, or damaged
    since, are passed over): the one the divergence advice names."""
    for path in reversed(checkpoints(run)):
        try:
            state = load_checkpoint(path)
        except UserError:
            continue
        if not nonfinite(state["model"]):
            return path
    return None


def finite_outputs(model, crop: int) -> bool:
    """Whether the model's outputs on a fixed probe image are finite: weights can be finite yet so large that
    every activation overflows, which is as diverged as NaN."""
    import torch
    generator = torch.Generator().manual_seed(0)  # a fixed image, and the run's own RNG untouched
    probe = torch.randn(1, 3, crop, crop, generator=generator) * 64  # mean-subtracted pixels span about +-128
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(probe.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    return bool(torch.isfinite(out).all())


def diverged(what: str, run: Path) -> UserError:
    """The refusal to save numbers that cannot be trusted: every later resume, evaluation or picture of them
    would be NaN."""
    last = last_good_checkpoint(run)
    return UserError(f"{what}: the run diverged and no checkpoint was written; the last good checkpoint is "
                     f"{last or 'none'}; start a new --run with a lower --lr")


def write_checkpoint(state: dict, run: Path, keep: int, best: bool) -> Path:
    """ckpt-<step>.pt; the newest `keep` are kept, plus best.pt (a hard link to the best one); never one whose
    weights are not finite."""
    path = Path(run) / f"{CKPT_PREFIX}{state['step']:08d}.pt"
    bad = nonfinite({"model": state["model"], "optimizer": state.get("optimizer", {})})
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise diverged(f"the weights at step {state['step']} are not finite ({bad[0]}{more})", run)
    save_atomic(state, path)
    if best:
        tmp = path.with_name(f".{BEST}.tmp-{os.getpid()}")
        try:
            os.link(path, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, best_checkpoint(run))
    for old in checkpoints(run)[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def load_checkpoint(path: Path | str) -> dict:
    """A checkpoint's state dict; a file that is not one raises UserError (train --resume, evaluate, viz)."""
    import torch
    try:
        with open_regular(path) as f:  # torch.load(path) on a FIFO waited forever for a writer
            state = torch.load(f, map_location="cpu", weights_only=True)
    except (UnreadableFile, FileNotFoundError) as exc:
        raise UserError(f"{path} is not a checkpoint written by `alexnet-pipe train` (it cannot be read: "
                        f"{getattr(exc, 'reason', None) or 'it does not exist'})") from None
    except Exception as exc:  # torch.load on a junk, empty or truncated file raises pickle, zip, EOF, Key,
        # Runtime, Value... errors (no common type): all mean "not a checkpoint", said with torch's own text
        text = "" if isinstance(exc, (KeyError, EOFError)) else " ".join(str(exc).split())[:200]
        raise UserError(f"{path} is not a checkpoint written by `alexnet-pipe train` "
                        f"(torch.load cannot read it: {text or 'empty, cut short or not a torch file'})") from None
    if not isinstance(state, dict) or not {"model", "settings", "num_classes"} <= state.keys():
        raise UserError(f"{path} is not a checkpoint written by `alexnet-pipe train` "
                        "(it lacks model, settings or num_classes)")
    what, hint = "a checkpoint written by `alexnet-pipe train`", "pass another checkpoint of the run"
    check_model({k: v for k, v in state.items() if k in CheckpointMeta.model_fields}, CheckpointMeta, path, what,
                hint)
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in state["settings"].items()}  # asdict's tuples
    check_model(as_json, settings_model(), path, f"{what} (its settings)", hint)
    checked_settings(state["settings"], path, hint)
    return state


class CheckpointMeta(Strict):
    """A checkpoint's own numbers (the tensors beside them are checked by load_state_dict)."""
    num_classes: Annotated[int, Field(ge=1)]
    step: Annotated[int, Field(ge=0)] = 0
    epoch: Annotated[int, Field(ge=0)] = 0
    step_in_epoch: Annotated[int, Field(ge=0)] = 0
    best: Annotated[float, Field(ge=0, allow_inf_nan=True)] = math.inf  # inf: no evaluation yet
    settings: dict
    data_fingerprint: str | None = None
    rng: list[dict] = []


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


def resume_path(s: TrainSettings) -> Path | None:
    """An explicit path, or the newest checkpoint for --resume and for any elastic restart."""
    if s.resume and s.resume != "latest":
        return Path(s.resume)
    if s.resume == "latest" or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0:
        return latest_checkpoint(Path(s.run))
    return None


def finished_note(s: TrainSettings) -> str | None:
    """What to say instead of training when the checkpoint a resume starts from is already at the run's end
    (its epochs done, or --max-steps reached), with the option that trains on; None when there is work left."""
    path = resume_path(s)
    if path is None:
        return None
    import torch
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the position, not the tensors
    step, epoch = int(state["step"]), int(state["epoch"])
    if s.max_steps and step >= s.max_steps:
        limit, option, more = f"--max-steps {s.max_steps}", "--max-steps (0: no limit)", f"--max-steps {2 * step}"
    elif epoch >= s.epochs:
        limit, option, more = f"its {s.epochs} epochs", "--epochs", f"--epochs {s.epochs + max(1, s.epochs // 3)}"
    else:
        return None
    return (f"{s.run} has nothing left to train: {path.name} is at {limit} (step {step}, epoch {epoch} of "
            f"{s.epochs}). To train on, resume with a larger {option}: "
            f"`alexnet-pipe train --run {s.run} --resume {more}`")


# Settings a resumed run may change: how long it runs, how often it reports and saves, where and how fast it
# computes (device, processes, loader backend, implementations with the same maths). Every other setting defines
# the run (model, data, optimiser, schedule, augmentation, seed, precision: fp32, bf16 and fp16 compute other
# numbers) and must stay as it was. A device change keeps the run's precision (bf16 on CUDA stays bf16 on a CPU).
FREE_ON_RESUME = ("epochs", "max_steps", "eval_every", "ckpt_every", "keep", "log_every", "num_threads", "nproc",
                  "max_restarts", "resume", "run", "data", "device", "loader", "compile", "lrn_impl", "conv",
                  "tensorboard")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_changes(saved: TrainSettings, now: TrainSettings) -> tuple[list[str], dict]:
    """(the run-defining settings that differ, each as 'OPTION saved (now new)'; the free ones that differ,
    name -> [saved, now])."""
    refused, allowed = [], {}
    for f in dataclasses.fields(TrainSettings):
        before, after = getattr(saved, f.name), getattr(now, f.name)
        if before == after or f.name == "resume":  # how this process was started, not what the run does
            continue
        if f.name == "precision" and after == "auto":  # not asked for: the run's own (entry.check_resume)
            continue
        if f.name in FREE_ON_RESUME:
            allowed[f.name] = [before, after]
        else:
            refused.append(f"{_flag(f.name)} {_show(before)} (now {_show(after)})")
    return refused, allowed


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def check_resumable(state: dict, s: TrainSettings, data_fingerprint: str | None = None) -> None:
    """A resume continues the same run: the settings that define it, and the data, as the checkpoint's."""
    refused, _ = resume_changes(settings_from_dict(state["settings"]), s)
    if refused:
        raise UserError(f"--resume: the checkpoint was trained with {', '.join(refused)}; resume with the run's "
                        "own settings (only epochs, max steps, cadences, threads, processes and device may change) "
                        "or start a new --run")
    saved = state.get("data_fingerprint")
    if saved and data_fingerprint and saved != data_fingerprint:
        raise UserError(f"--resume: the checkpoint was trained on other data than {s.data} holds now (manifest "
                        f"fingerprint {saved} vs {data_fingerprint}); pass the run's own --data or start a new --run")


def data_fingerprint(manifest: dict) -> str:
    """What identifies a data dir's contents: every split's shards (names, record counts, checksums)."""
    splits = {name: [(e.get("name"), e.get("records"), e.get("checksum")) for e in info.get("shards", [])]
              for name, info in manifest.get("splits", {}).items()}
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:16]


def load_model(path: Path | str, device="cpu"):
    """A checkpoint written by train -> (model in eval mode, its training settings); the one loader of
    evaluate and viz. A file that is not such a checkpoint raises UserError."""
    from alexnet_pipe.train.config import model_for
    state = load_checkpoint(path)
    try:
        s = settings_from_dict(state["settings"])
        model = model_for(s, state["num_classes"])
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as exc:  # settings or weights that do not fit together
        raise UserError(f"{path}: its weights do not fit the model its settings describe "
                        f"({str(exc).strip().splitlines()[0]})") from None
    return model.to(device).eval(), s
