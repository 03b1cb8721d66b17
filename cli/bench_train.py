"""`alexnet-pipe bench train`: the trainer's step time against a bare torch loop, same model and tensors."""
from __future__ import annotations


import click

from alexnet_pipe.core.limits import MAX_SIZE, MAX_WIDTH
from alexnet_pipe.train.config import ARCHS, CONV_IMPLS, LRN_IMPLS, MOMENTUM_FORMS
from alexnet_pipe_cli.common import BATCH, FiniteFloat, run_and_report


@click.command("train")
@click.option("--arch", type=click.Choice(ARCHS), default=ARCHS[0], show_default=True)
@click.option("--lrn-impl", type=click.Choice(LRN_IMPLS), default=LRN_IMPLS[0], show_default=True,
              help="LRN kernel: fused (one op, analytic backward), reference (autograd), compiled (torch.compile).")
@click.option("--conv", type=click.Choice(CONV_IMPLS), default=CONV_IMPLS[0], show_default=True,
              help="Grouped layers as one grouped convolution or two dense ones.")
@click.option("--momentum-form", type=click.Choice(MOMENTUM_FORMS), default=MOMENTUM_FORMS[0], show_default=True)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (train() and the bare loop).")
@click.option("--width", type=FiniteFloat(min=0, min_open=True, max=MAX_WIDTH), default=None,
              help="[default: 1 on GPU, 0.25 on CPU]")
@click.option("--crop", type=click.IntRange(63, MAX_SIZE), default=None, help="[default: 224 on GPU, 112 on CPU]")
@click.option("--batch-size", type=BATCH, default=None, help="[default: 128 on GPU, 32 on CPU]")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Timed steps per run.")
@click.option("--warmup", type=click.IntRange(min=1), default=5, show_default=True, help="Untimed steps first.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Rounds of both loops, the order alternating; medians and spreads over rounds are reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch's intra-op threads for both loops [default: torch's own].  On a machine shared with "
                   "other jobs, 1 keeps OpenMP's waits out of the comparison.")
@click.option("--cpu", is_flag=True, help="Benchmark on CPU even where CUDA is present.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_train(arch: str, lrn_impl: str, conv: str, momentum_form: str, compile_: bool, width: float | None,
                crop: int | None, batch_size: int | None, steps: int, warmup: int, repeats: int,
                threads: int | None, cpu: bool, as_json: bool):
    """Step time of train() on synthetic tensors vs a bare forward/backward/step loop (target: <= 5% overhead).

    \b
    alexnet-pipe bench train                 # AlexNet, batch 128, bf16 + channels_last on a GPU
    alexnet-pipe bench train --cpu --width 0.25 --crop 112 --batch-size 32
    alexnet-pipe bench train --cpu --threads 1 --repeats 9   # on a shared machine: the cost, not the luck
    alexnet-pipe bench train --batch-size 256 --lrn-impl reference --conv split --json   # one row of a GPU table
    """
    import torch

    from alexnet_pipe.report.bench_train import bench_train_step
    from alexnet_pipe.train.config import TrainSettings

    gpu = torch.cuda.is_available() and not cpu
    settings = TrainSettings(
        loader="synthetic", arch=arch, device="cuda" if gpu else "cpu", width=width or (1.0 if gpu else 0.25),
        crop=crop or (224 if gpu else 112), batch_size=batch_size or (128 if gpu else 32), eval_every=0,
        lrn_impl=lrn_impl, conv=conv, momentum_form=momentum_form, compile=compile_)
    run_and_report("bench train", settings,
                   lambda s: bench_train_step(s, steps=steps, warmup=warmup, repeats=repeats, threads=threads),
                   as_json, _report)


def _report(r: dict) -> list[str]:
    rounds = r["rounds"]
    span = lambda key: f"{min(rounds[key]):.1f}-{max(rounds[key]):.1f}"  # noqa: E731
    pct = lambda key: f"{r[key]:+.1%} ({r[key + '_spread'][0]:+.1%} to {r[key + '_spread'][1]:+.1%})"  # noqa: E731
    return [f"{r['repeats']} rounds, medians (range):",
            f"bare loop   {r['bare_step_ms']:8.2f} ms/step ({span('bare_ms')})  {r['bare_images_per_sec']:9.1f} "
            f"images/s   CPU {r['bare_cpu_ms']:.2f} ms/step",
            f"train()     {r['trainer_step_ms']:8.2f} ms/step ({span('trainer_ms')})  "
            f"{r['trainer_images_per_sec']:9.1f} images/s   CPU {r['trainer_cpu_ms']:.2f} ms/step",
            f"overhead    {pct('overhead')} (target <= 5%)",
            f"CPU time    {pct('cpu_overhead')}"]
