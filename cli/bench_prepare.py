"""`alexnet-pipe bench prepare`."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_pipe.core.limits import MAX_PROCESSES
from alexnet_pipe_cli.common import SIZE, run_and_report


@click.command("prepare")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder tree (train/<class>/...) to measure on [default: generate --images JPEGs].")
@click.option("--images", type=click.IntRange(min=8), default=1500, show_default=True)
@click.option("--workers", type=click.IntRange(1, MAX_PROCESSES), default=2, show_default=True)
@click.option("--size", type=SIZE, default=256, show_default=True)
@click.option("--resize", type=click.Choice(["area", "linear", "cubic", "lanczos"]), default="area", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Best of N per contender.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_prepare(as_json, **options):
    """prepare vs the one-process PIL script and bare decode, on the same files in one run.

    \b
    alexnet-pipe bench prepare --images 1500 --workers 2
    """
    from alexnet_pipe.report.bench_prepare import BenchPrepareSettings, run
    settings = BenchPrepareSettings(**options)
    run_and_report("bench prepare", settings, run, as_json, lambda out: [
        f"{out['images']} images, prepare --workers {out['workers']}:",
        f"  bare decode, 1 core      {out['bare_decode_images_per_sec_one_core']:8.1f} img/s",
        f"  PIL script, 1 process    {out['pil_baseline_images_per_sec']:8.1f} img/s",
        f"  prepare                  {out['prepare_images_per_sec']:8.1f} img/s",
        f"  prepare / PIL script     {out['ratio_vs_pil_baseline']:8.2f}x   (goal >= 2)",
        f"  per core / bare decode   {out['per_core_ratio_vs_bare_decode']:8.2f}    (goal >= 0.70)"])
