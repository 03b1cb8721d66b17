"""`alexnet-pipe demo`: README's main job."""
from __future__ import annotations

import click

from alexnet_pipe.loaders import LOADERS
from alexnet_pipe_cli.common import data_option, print_settings


@click.command()
@data_option
@click.option("--classes", type=click.IntRange(2, 64), default=10, show_default=True)
@click.option("--train-per-class", type=click.IntRange(10), default=80, show_default=True)
@click.option("--val-per-class", type=click.IntRange(2), default=20, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=12, show_default=True)
@click.option("--nproc", type=click.IntRange(1, 8), default=2, show_default=True, help="gloo DDP processes.")
@click.option("--loader", type=click.Choice(LOADERS), default="auto", show_default=True,
              help="auto: DALI where it is installed, else the torch DataLoader.")
@click.option("--pictures/--no-pictures", default=True, show_default=True)
def demo(data, **options):
    """The whole job on the built-in synthetic sample data, in a few CPU minutes.

    sample-data -> prepare -> stats --pca -> train (DDP, 2 processes) -> evaluate -> pictures,
    all under DATA/demo/ (replaced on every run; `rm -r DATA/demo` removes it).

    \b
    alexnet-pipe demo --data ./alexnet-data
    """
    from alexnet_pipe.report.demo import DemoSettings, run
    settings = DemoSettings(data=data, **options)
    print_settings("demo", settings)
    summary = run(settings, echo=click.echo)
    centre, ten = summary["errors"]["centre"], summary["errors"]["ten-crop"]
    chance = summary["chance_top1_error"]
    click.echo(f"\nDemo finished in {summary['seconds']:.0f} s; everything is in {settings.root}")
    click.echo(f"top-1 error {centre['top1_error']:.1%} (centre), {ten['top1_error']:.1%} (ten-crop); "
               f"top-5 error {centre['top5_error']:.1%} / {ten['top5_error']:.1%}; chance: {chance:.1%} top-1")
    if centre["top1_error"] > 0.5 * chance:
        raise click.ClickException(f"the network did not learn well enough: top-1 error {centre['top1_error']:.1%} "
                                   f"is not far below chance ({chance:.1%})")
