"""`alexnet-pipe train`: AlexNet with DDP, on N GPUs (NCCL) or N CPU processes (gloo).

Every option that is a setting comes from the TrainSettings field of the same name (config.py): its type, range,
choices, help and shown default are generated here, so nothing is typed twice.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import click

from alexnet_pipe.train.config import RECIPES, TrainSettings, default_text, opt_of
from alexnet_pipe.core.limits import MAX_PROCESSES
from alexnet_pipe_cli.common import FiniteFloat, data_option, print_settings, run_dir_callback


class EpochList(click.ParamType):
    name = "E1,E2,.."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            epochs = tuple(sorted(int(v) for v in value.split(",") if v.strip()))
        except ValueError:
            self.fail("comma-separated epoch numbers, e.g. 30,60,80", param, ctx)
        if not epochs or min(epochs) < 1:
            self.fail(f"epoch numbers must be 1 or more, not {value!r}", param, ctx)
        return epochs


class FloatPair(click.ParamType):
    """low,high: two finite numbers above the field's minimum, low <= high (tuple[float, float] settings)."""
    name = "LOW,HIGH"

    def __init__(self, low_bound: float | None, open_bound: bool):
        self.low_bound, self.open_bound = low_bound, open_bound

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            pair = tuple(float(v) for v in value.split(","))
        except ValueError:
            self.fail(f"two comma-separated numbers low,high, not {value!r}", param, ctx)
        if len(pair) != 2 or not all(map(math.isfinite, pair)) or pair[0] > pair[1]:
            self.fail(f"two finite numbers low,high with low <= high, not {value!r}", param, ctx)
        if self.low_bound is not None and (pair[0] < self.low_bound or self.open_bound and pair[0] == self.low_bound):
            self.fail(f"both numbers must be {'>' if self.open_bound else '>='} {self.low_bound:g}, not {value!r}",
                      param, ctx)
        return pair


def _click_type(f: dataclasses.Field):
    o = opt_of(f.name)
    if o.choices:
        return click.Choice(list(o.choices))
    if f.type == "int":
        bounded = o.min is not None or o.max is not None
        return click.IntRange(min=o.min, max=o.max, min_open=o.min_open, max_open=o.max_open) if bounded else int
    if f.type == "float":
        return FiniteFloat(min=o.min, max=o.max, min_open=o.min_open, max_open=o.max_open)
    if f.type == "tuple[float, float]":
        return FloatPair(o.min, o.min_open)
    if f.type.startswith("tuple"):
        return EpochList()
    raise TypeError(f"no click type for setting {f.name}: {f.type}")


def settings_options(func):
    """One click option per TrainSettings field that is offered on the command line."""
    for f in reversed(dataclasses.fields(TrainSettings)):
        o = opt_of(f.name)
        if not o.cli:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":  # --x/--no-x: a recipe's True can be switched off, its False on
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None,
                                  help=f"{o.help}  [default: {default_text(f.name)}]")
        else:
            option = click.option(flag, f.name, type=_click_type(f), default=None, hidden=o.hidden,
                                  help=f"{o.help}  [default: {default_text(f.name)}]")
        func = option(func)
    return func


def _placement(cpu: bool, nproc: int | None, gpus: int | None, resumed: TrainSettings | None = None
               ) -> tuple[str, int]:
    """(device, processes) from --cpu/--nproc/--gpus; without any: those of the run being resumed, else every
    visible GPU, else one CPU process."""
    from alexnet_pipe.train import distributed
    from alexnet_pipe.train.launch import check_gpus, visible_gpus
    if cpu and gpus:
        raise click.UsageError("--cpu and --gpus exclude each other")
    if gpus and nproc:
        raise click.UsageError("--nproc is for --cpu; with GPUs there is one process per GPU (--gpus N)")
    if distributed.under_launcher():  # torchrun says how many processes; the device is chosen as below
        return ("cuda" if not cpu and visible_gpus() else "cpu"), 0
    if resumed is not None and not (cpu or gpus or nproc):
        return _launched_as(resumed, visible_gpus())
    if cpu:
        return "cpu", nproc or 1
    if gpus:
        check_gpus(gpus)
        return "cuda", gpus
    found = visible_gpus()
    return ("cuda", found) if found else ("cpu", nproc or 1)


def _launched_as(saved: TrainSettings, gpus_here: int) -> tuple[str, int]:
    """A resume keeps the device and process count its run was started with (the printed hint is then just
    `--run R --resume`); where this machine lacks the GPUs, one sentence says how to choose others."""
    if saved.device == "cuda" and gpus_here < saved.nproc:
        raise click.ClickException(f"the run was started on {saved.nproc} GPU(s) and this machine has {gpus_here}; "
                                   "resume it with --gpus N or --cpu --nproc N")
    return saved.device, saved.nproc


def _saved_settings(path: Path, what: str) -> TrainSettings:
    """A run's settings.json (from --config, or the run being resumed), checked field by field (runlog)."""
    from alexnet_pipe.train.runlog import read_settings
    return read_settings(path, what)


def _base(config: Path | None, recipe: str | None, resume: str | None, run: Path | None):
    """(saved settings to start from or None, run dir): --config's file, else a resumed run's settings.json."""
    if config is not None:
        if recipe:
            raise click.UsageError("--config and --recipe both set every default: give one of them")
        return _saved_settings(config, "pass a run's settings.json to --config"), run
    if not resume:
        return None, run
    run = run or (Path(resume).parent if resume not in ("latest", "auto") else None)
    if run is None:
        raise click.UsageError(f"--resume {resume} needs --run DIR: the run dir to continue")
    from alexnet_pipe.train.runlog import settings_path
    saved = settings_path(run)
    if not saved.exists():
        return None, run
    return _saved_settings(saved, "restore it or start a new --run"), run


@click.command("train")
@data_option
@click.option("--run", "--run-dir", "run", type=click.Path(file_okay=False, path_type=Path), default=None, callback=run_dir_callback,
              help="Run dir for settings, metrics and checkpoints; required under torchrun, where only the "
                   "--run-dir spelling passes (torchrun's own parser takes --run for its --run-path).  "
                   "[default: DATA/runs/<timestamp>]")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=None,
              help="paper (default): the NIPS 2012 network, optimiser and augmentation; small: learns a small "
                   "dataset in CPU minutes; modern: torchvision's AlexNet recipe with random-resized crops, colour "
                   "jitter and label smoothing (docs/training.md, docs/reproducing.md). Explicit options override it.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Start from a saved run's settings.json (explicit options still win).")
@click.option("--gpus", type=click.IntRange(1, MAX_PROCESSES), default=None, help="Start one process per GPU (NCCL).")
@click.option("--cpu", is_flag=True, help="Train on CPU (gloo), e.g. for tests and CI.")
@click.option("--nproc", type=click.IntRange(1, MAX_PROCESSES), default=None, help="CPU processes with --cpu.  [default: 1]")
@settings_options
@click.option("--no-lighting", is_flag=True, help="No PCA lighting noise (the same as --lighting 0).")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[CKPT]",
              help="Continue --run from its newest checkpoint (or from CKPT), at the exact step; `--resume auto`: "
                   "continue if the run dir holds a checkpoint, else start (requeued jobs).")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and exit.")
def train(data: Path, run: Path | None, recipe: str | None, config: Path | None, gpus: int | None, cpu: bool,
          nproc: int | None, resume: str | None, dry_run: bool, no_lighting: bool, **options):
    """Train AlexNet; rank 0 writes RUN/settings.json, RUN/metrics.jsonl and checkpoints.

    \b
    alexnet-pipe train --gpus 2                              # the paper's recipe, DALI, DDP over 2 GPUs
    alexnet-pipe train --recipe small --cpu --max-steps 200  # quick CPU run
    alexnet-pipe train --run alexnet-data/runs/x --resume    # continue where it stopped
    alexnet-pipe train --config alexnet-data/runs/x/settings.json --run alexnet-data/runs/y   # re-run a run
    torchrun --nnodes 2 --nproc-per-node 8 ... -m alexnet_pipe train --run-dir R   # several nodes
    """
    from alexnet_pipe.train import distributed
    from alexnet_pipe.train.config import resolve_settings
    from alexnet_pipe.train.entry import finalize, own_run_dir, run_training

    if no_lighting:
        if options["lighting"]:
            raise click.ClickException("--no-lighting and --lighting are contradictory: give one of them")
        options["lighting"] = 0.0
    base, run = _base(config, recipe, resume, run)
    device, processes = _placement(cpu, nproc, gpus, base if config is None else None)
    if run is None and distributed.under_launcher():  # every node must agree on one run dir
        raise click.ClickException("under torchrun pass --run-dir DIR, on a file system every node sees: all "
                                   "ranks write to one run dir (torchrun takes a --run of its own)")
    given = dict(options, data=str(data), run=str(run) if run else None, device=device,
                 nproc=processes or None, resume=resume)
    if base is not None:  # a saved run keeps its recipe's resolved values unless told otherwise
        explicit_data = click.get_current_context().get_parameter_source("data").name != "DEFAULT"
        settings = dataclasses.replace(base, **{k: v for k, v in given.items()
                                                if v is not None and (k != "data" or explicit_data)})
        if config is not None:  # a new run of the saved settings: never the saved run dir, nor its resume
            settings = dataclasses.replace(settings, run=str(run) if run else "", resume=resume or "")
    else:
        settings = resolve_settings(recipe or "paper", **given)
    if dry_run:
        from alexnet_pipe.train.paper import report
        final = finalize(settings, settings.nproc)
        print_settings("train (dry run)", final)
        click.echo(report(final))
        return
    under_torchrun = distributed.under_launcher()
    final = finalize(settings, int(os.environ["WORLD_SIZE"]) if under_torchrun else settings.nproc)
    if not under_torchrun:  # under torchrun every rank shares the dir; its checkpoints say whose it is
        final = own_run_dir(final, bool(settings.run), settings.resume == "auto")
    if not under_torchrun or os.environ["RANK"] == "0":
        from alexnet_pipe_cli.train_header import header
        click.echo("\n".join(header(final)))
    run_training(final, checked=True)
