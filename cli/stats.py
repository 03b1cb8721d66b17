"""`alexnet-pipe stats`: the mean image and RGB PCA eigenpairs of the training set."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_pipe_cli.common import data_option, device_option, print_settings


@click.command("stats")
@data_option
@click.option("--pca", is_flag=True, help="Also the eigenpairs of the 3x3 RGB pixel covariance.")
@click.option("--recompute", is_flag=True,
              help="Decode every train record instead of merging the per-shard sums "
                   "(for missing/damaged stats.npz, or Caffe LMDBs made by other tools).")
@click.option("--sample", type=click.IntRange(min=1), default=None, metavar="N",
              help="Quick estimate from the first N train records in key order (a decoding pass).")
@click.option("--plot", is_flag=True, help="Also write stats/mean.png and stats/pca_axes.png.")
@device_option("auto", auto=True, help="Where the decoding pass decodes JPEGs: auto = the GPU (DALI 'mixed') when one "
              "is visible.")
def stats(data: Path, pca: bool, recompute: bool, sample: int | None, plot: bool, device: str):
    """Mean image and RGB PCA eigenpairs of the training set, written under DATA/stats/.

    Merges the exact per-shard sums that prepare stored (instant, independent of shard
    order); --recompute or --sample decode the records instead.

    \b
    alexnet-pipe stats --data ./alexnet-data --pca --plot
    alexnet-pipe stats --pca --sample 10000       # quick estimate
    """
    from alexnet_pipe.stats.compute import StatsSettings, format_report, run_stats

    if device == "auto":
        from alexnet_pipe.shards.decode import cuda_devices
        device = "cuda" if cuda_devices() else "cpu"
    settings = StatsSettings(data=data, pca=pca, recompute=recompute or sample is not None,
                             sample=sample, plot=plot, device=device)
    print_settings("stats", settings)
    run = run_stats(settings)
    if sample is not None and run.result.images < sample:
        click.echo(f"note: --sample {sample} asked for more records than the train split holds: the sample is all "
                   f"{run.result.images} of them")
    click.echo(format_report(run))
