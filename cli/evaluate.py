"""`alexnet-pipe evaluate`: top-1/top-5 error of one checkpoint or an ensemble."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_pipe.loaders import LOADERS

from alexnet_pipe_cli.common import BATCH, data_option, require_gpu, run_and_report


@click.command("evaluate")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@data_option
@click.option("--split", default="val", show_default=True, help="Split of the data dir to evaluate on.")
@click.option("--ten-crop", is_flag=True, help="Average the softmax over the paper's 10 views (corners, centre, flips).")
@click.option("--batch-size", type=BATCH, default=128, show_default=True)
@click.option("--loader", type=click.Choice(LOADERS), default="auto", show_default=True,
              help="auto: DALI where it is installed, else the torch DataLoader.")
@click.option("--gpu", is_flag=True, help="Run on CUDA device 0.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Arithmetic of the forward passes: fp32, or bf16/fp16 autocast.  [default: the precision the "
                   "checkpoints were trained in, so the errors are those the run reported]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (top1_error, top5_error, images, views).")
def evaluate(checkpoints: tuple[Path, ...], data: Path, split: str, ten_crop: bool, batch_size: int, loader: str,
             gpu: bool, precision: str | None, as_json: bool):
    """Top-1 and top-5 error; several checkpoints average their softmax outputs (the paper's 5-CNN row).

    \b
    alexnet-pipe evaluate alexnet-data/runs/x/best.pt --ten-crop
    alexnet-pipe evaluate runs/a/best.pt runs/b/best.pt --json
    """
    from alexnet_pipe.train.evaluation import EvalSettings, evaluate as run_evaluate

    if gpu:
        require_gpu()
    settings = EvalSettings(checkpoints=tuple(str(c) for c in checkpoints), data=str(data), split=split,
                            ten_crop=ten_crop, batch_size=batch_size, loader=loader,
                            device="cuda" if gpu else "cpu", precision=precision)
    run_and_report("evaluate", settings, run_evaluate, as_json, lambda r: [
        f"{r['images']} images x {r['views']} view(s), {len(checkpoints)} model(s), {r['precision']}: "
        f"top-1 error {r['top1_error']:.1%}, top-5 error {r['top5_error']:.1%}"])
