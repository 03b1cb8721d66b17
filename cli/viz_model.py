"""`alexnet-pipe viz filters|neighbors|curves`: the paper's pictures of a trained network, and a run's curves."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_pipe.core.limits import MAX_PROCESSES
from alexnet_pipe.loaders import LOADERS

from alexnet_pipe_cli.common import BATCH, data_option, output_option, print_settings, require_gpu

_CKPT = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("filters")
@click.argument("checkpoint", type=_CKPT)
@output_option(None, "filters.png beside CKPT")
@click.option("--scale", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Pixels per kernel weight.")
def viz_filters(checkpoint: Path, output: Path | None, scale: int):
    """The conv1 kernels as the paper's Figure 3 grid: 16 a row, each kernel min-max normalised on
    its own (over its three channels together, so colours are kept).

    The paper's net (`alexnet`) was split over two GPUs: its first half of the kernels forms the top
    block and the second half the block below; `alexnet-owt` has one block. The PNG is the grid
    itself: 96 kernels of 11x11 at --scale 4 give 738 x 286 px.

    \b
    alexnet-pipe viz filters alexnet-data/runs/x/best.pt          # -> alexnet-data/runs/x/filters.png
    """
    from alexnet_pipe.report.filters import FiltersSettings, render_filters
    s = FiltersSettings(checkpoint, output or checkpoint.parent / "filters.png", scale)
    print_settings("viz filters", s)
    r = render_filters(s)
    click.echo(f"wrote {r['output']} ({r['width']}x{r['height']} px, {r['kernels']} kernels of "
               f"{r['kernel_size'][0]}x{r['kernel_size'][1]} in {r['groups']} block(s))")


@click.command("neighbors")
@click.argument("checkpoint", type=_CKPT)
@data_option
@click.option("--query", type=click.IntRange(1, 64), default=6, show_default=True,
              help="Query images: the first N of --split (prepare shuffled the record order).")
@click.option("--k", type=click.IntRange(1, 32), default=5, show_default=True, help="Neighbours per query.")
@click.option("--split", default="val", show_default=True, help="Split the queries come from.")
@click.option("--limit", type=click.IntRange(0), default=0, show_default=True,
              help="Training images searched (the first N in record order); 0: all of them.")
@click.option("--batch-size", type=BATCH, default=64, show_default=True)
@click.option("--loader", type=click.Choice(LOADERS), default="auto", show_default=True,
              help="auto: DALI where it is installed, else the torch DataLoader.")
@click.option("--num-threads", type=click.IntRange(0, MAX_PROCESSES), default=2, show_default=True,
              help="DALI threads / torch DataLoader workers.")
@click.option("--gpu", is_flag=True, help="Run on CUDA device 0.")
@output_option(None, "neighbors.png beside CKPT")
def viz_neighbors(checkpoint: Path, data: Path, query: int, k: int, split: str, limit: int, batch_size: int,
                  loader: str, num_threads: int, gpu: bool, output: Path | None):
    """The paper's Figure 4: query images (centre crop) and the training images whose fc7 features
    (the last hidden layer, 4096-d at width 1) are nearest in Euclidean distance.

    Features come from the eval pipeline (centre crop, no augmentation), model in eval mode; the
    pictures are the stored pixels' centre crops. One row per query: the query, then its k
    neighbours nearest first, each titled with its distance and class. The figure is
    (k + 1) * 150 x query * 160 px.

    \b
    alexnet-pipe viz neighbors alexnet-data/runs/x/best.pt --query 4 --k 5
    alexnet-pipe viz neighbors best.pt --data ./alexnet-data --limit 50000 -o nn.png
    """
    from alexnet_pipe.report.neighbors import NeighborsSettings, render_neighbors
    if gpu:
        require_gpu()
    s = NeighborsSettings(checkpoint, data, output or checkpoint.parent / "neighbors.png", split, query, k, limit,
                          batch_size, loader, "cuda" if gpu else "cpu", num_threads)
    print_settings("viz neighbors", s)
    r = render_neighbors(s)
    if r["searched"] == r["train_total"]:
        click.echo(f"searched all {r['train_total']} training images by fc7 distance")
    else:
        click.echo(f"searched the first {r['searched']} of {r['train_total']} training images by fc7 distance "
                   f"(--limit {limit})")
    if r["queries"] < query:
        click.echo(f"note: --query {query}: the {split} split holds {r['queries']} images, showing {r['queries']}")
    if r["k"] < k:
        click.echo(f"note: --k {k}: {r['searched']} training images searched, showing {r['k']} neighbours")
    click.echo(f"wrote {r['output']} ({r['width']}x{r['height']} px, {r['queries']} queries x {r['k']} neighbours)")


@click.command("curves")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@output_option(None, "RUN/curves.png")
def viz_curves(run: Path, output: Path | None):
    """Training loss, learning rate (log axis), and top-1/top-5 error against epochs, from
    RUN/metrics.jsonl; 3 panels, 12 x 4 in at 100 dpi = 1200 x 400 px.

    \b
    alexnet-pipe viz curves alexnet-data/runs/x                   # -> alexnet-data/runs/x/curves.png
    """
    from alexnet_pipe.report.curves import CurvesSettings, render_curves
    s = CurvesSettings(run, output or run / "curves.png")
    print_settings("viz curves", s)
    r = render_curves(s)
    click.echo(f"wrote {r['output']} ({r['width']}x{r['height']} px, {r['rows']} metrics rows, "
               f"{r['evaluations']} evaluations)")
