"""`alexnet-pipe train`: AlexNet with DDP, on N GPUs (NCCL) or N CPU processes (gloo)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from alexnet_pipe_cli.common import data_option, print_settings

_FLOAT = click.FloatRange(min=0)


def _step_epochs(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(sorted(int(v) for v in value.split(",") if v.strip()))
    except ValueError:
        raise click.BadParameter("comma-separated epoch numbers, e.g. 30,60,80") from None


def _placement(cpu: bool, nproc: int | None, gpus: int | None) -> tuple[str, int]:
    """(device, processes) from --cpu/--nproc/--gpus; without any: every visible GPU, else one CPU process."""
    from alexnet_pipe import distributed
    from alexnet_pipe.launch import check_gpus, visible_gpus
    if cpu and gpus:
        raise click.UsageError("--cpu and --gpus exclude each other")
    if gpus and nproc:
        raise click.UsageError("--nproc is for --cpu; with GPUs there is one process per GPU (--gpus N)")
    if distributed.under_launcher():
        return ("cpu" if cpu else "cuda"), 0
    if cpu:
        return "cpu", nproc or 1
    if gpus:
        check_gpus(gpus)
        return "cuda", gpus
    found = visible_gpus()
    return ("cuda", found) if found else ("cpu", nproc or 1)


def _base_for_resume(resume: str | None, run: Path | None):
    """Resuming a run reuses its settings.json; explicit options still override it."""
    from alexnet_pipe.train import settings_from_dict
    if not resume:
        return None, run
    run = run or (Path(resume).parent if resume != "latest" else None)
    if run is None:
        raise click.UsageError("--resume without a checkpoint path needs --run DIR")
    saved = Path(run) / "settings.json"
    if not saved.exists():
        return None, run
    try:
        values = json.loads(saved.read_text())
        return settings_from_dict(values), run
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:  # truncated, or not a dict of settings
        raise click.ClickException(f"{saved} is not the settings.json that `alexnet-pipe train` writes ({exc}); "
                                   "restore it or start a new --run") from None


@click.command("train")
@data_option
@click.option("--run", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run dir for settings, metrics and checkpoints.  [default: DATA/runs/<timestamp>]")
@click.option("--recipe", type=click.Choice(["paper", "small"]), default=None,
              help="paper (default): the NIPS 2012 optimiser/init; small: learns a small dataset in CPU minutes "
                   "(docs/training.md). Explicit options override it.")
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Start one process per GPU (NCCL).")
@click.option("--cpu", is_flag=True, help="Train on CPU (gloo), e.g. for tests and CI.")
@click.option("--nproc", type=click.IntRange(min=1), default=None, help="CPU processes with --cpu.  [default: 1]")
@click.option("--arch", type=click.Choice(["alexnet", "alexnet-owt"]), default=None,
              help="alexnet: the paper's grouped net; alexnet-owt: torchvision's one-weird-trick layout.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Scale every channel count and fc width (quick CPU experiments).  [default: 1]")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: 90]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="GLOBAL batch, split evenly over the processes.  [default: 128]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="[default: 0.01]")
@click.option("--momentum", type=click.FloatRange(0, 1), default=None, help="[default: 0.9]")
@click.option("--weight-decay", type=_FLOAT, default=None, help="[default: 0.0005]")
@click.option("--schedule", type=click.Choice(["plateau", "step", "cosine"]), default=None,
              help="plateau: lr / 10 when val error stops improving, at most 3 times (the paper).")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Evaluations without a new best before a plateau drop.  [default: 2]")
@click.option("--step-epochs", callback=_step_epochs, default=None, metavar="E1,E2,..",
              help="Epochs where the step schedule divides the lr by 10.  [default: 30,60,80]")
@click.option("--warmup-epochs", type=_FLOAT, default=None, help="Linear lr warm-up.  [default: 0]")
@click.option("--init", type=click.Choice(["paper", "kaiming"]), default=None, help="[default: paper, N(0, 0.01)]")
@click.option("--bias-init", type=float, default=None,
              help="Bias of conv2/4/5, fc6/7: paper 1, Caffe 0.1.  [default: 1]")
@click.option("--lrn-alpha", type=click.Choice(["paper", "caffe"]), default=None,
              help="paper: alpha as printed; caffe: alpha / n (torch.nn.LocalResponseNorm).  [default: paper]")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None, help="[default: 0.5]")
@click.option("--crop", type=click.IntRange(min=63), default=None,
              help="Training crop.  [default: 7/8 of the stored size: 224 from 256]")
@click.option("--loader", type=click.Choice(["dali", "torch", "synthetic"]), default=None,
              help="synthetic: fixed random tensors, no data dir (benchmarks, tests).  [default: dali]")
@click.option("--normalize", type=click.Choice(["mean-image", "channel"]), default=None,
              help="Subtract the mean image (the paper) or per-channel mean/std.")
@click.option("--lighting", type=_FLOAT, default=None, help="PCA lighting sigma; 0 turns it off.  [default: 0.1]")
@click.option("--no-lighting", is_flag=True, help="No PCA lighting noise (the same as --lighting 0).")
@click.option("--lighting-scale", type=click.Choice(["convnet2", "fbresnet"]), default=None,
              help="PCA noise scale: cuda-convnet2's sqrt(eigenvalue) on 0..255, or fb.resnet's eigenvalue on "
                   "[0,1] (~2x weaker).  [default: convnet2]")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps.")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[CKPT]",
              help="Continue --run from its newest checkpoint (or from CKPT), at the exact step.")
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--eval-every", type=click.IntRange(min=0), default=None,
              help="Evaluate on val every N epochs; 0 never.  [default: 1]")
@click.option("--ckpt-every", type=click.IntRange(min=0), default=None,
              help="Also checkpoint every N steps (always at each epoch end).  [default: 0]")
@click.option("--keep", type=click.IntRange(min=1), default=None, help="Newest checkpoints kept (+ best.pt).  [default: 3]")
@click.option("--log-every", type=click.IntRange(min=1), default=None, help="Steps per metrics row.  [default: 20]")
@click.option("--max-restarts", type=click.IntRange(min=0), default=None,
              help="Restarts of the whole group after a worker dies (resumes from the last checkpoint).  [default: 0]")
@click.option("--num-threads", type=click.IntRange(min=1), default=None, help="Loader threads per process.  [default: 2]")
@click.option("--num-classes", type=click.IntRange(min=2), default=None, hidden=True)
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and exit.")
def train(data: Path, run: Path | None, recipe: str | None, gpus: int | None, cpu: bool, nproc: int | None,
          compile_: bool | None, resume: str | None, dry_run: bool, no_lighting: bool, **options):
    """Train AlexNet; rank 0 writes RUN/settings.json, RUN/metrics.jsonl and checkpoints.

    \b
    alexnet-pipe train --gpus 2                              # the paper's recipe, DALI, DDP over 2 GPUs
    alexnet-pipe train --recipe small --cpu --max-steps 200  # quick CPU run
    alexnet-pipe train --run alexnet-data/runs/x --resume    # continue where it stopped
    torchrun --nnodes 2 --nproc-per-node 8 ... -m alexnet_pipe train --run R   # several nodes (docs/training.md)
    """
    from alexnet_pipe.train import resolve_settings, run_training

    if no_lighting:
        if options["lighting"]:
            raise click.ClickException("--no-lighting and --lighting are contradictory: give one of them")
        options["lighting"] = 0.0
    device, processes = _placement(cpu, nproc, gpus)
    base, run = _base_for_resume(resume, run)
    given = dict(options, data=str(data), run=str(run) if run else None, compile=compile_, device=device,
                 nproc=processes or None, resume=resume)
    if base is not None:  # a resumed run keeps its recipe's resolved values unless told otherwise
        import dataclasses
        explicit_data = click.get_current_context().get_parameter_source("data").name != "DEFAULT"
        settings = dataclasses.replace(base, **{k: v for k, v in given.items()
                                                if v is not None and (k != "data" or explicit_data)})
    else:
        settings = resolve_settings(recipe or "paper", **given)
    if dry_run:
        from alexnet_pipe.train import finalize
        print_settings("train (dry run)", finalize(settings, settings.nproc))
        return
    print_settings("train", settings)
    run_training(settings)
