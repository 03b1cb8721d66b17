"""`alexnet-pipe sample-data DIR`: write the built-in synthetic ImageNet-layout tree."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_pipe_cli.common import SEED, print_settings


@click.command("sample-data")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", type=click.IntRange(2, 1000), default=10, show_default=True,
              help="Number of classes (shape x colour families).")
@click.option("--train-per-class", type=click.IntRange(1, 100_000), default=80, show_default=True,
              help="Train files per class (the deliberately odd files included).")
@click.option("--val-per-class", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Val images per class (flat val/, labels in LOC_val_solution.csv).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Same seed and counts give a byte-identical tree.")
@click.option("--pathologies/--no-pathologies", default=True, show_default=True,
              help="Include grayscale/CMYK/PNG-named-.JPEG files and a few broken ones.")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty DIR, replacing only the entries this command writes.")
def sample_data(directory: Path, classes: int, train_per_class: int, val_per_class: int, seed: int,
                pathologies: bool, overwrite: bool):
    """Write a small SYNTHETIC ImageNet-layout tree into DIR.

    The images are drawn procedurally (coloured shapes and textures on cluttered, noisy
    backgrounds); none of them comes from ImageNet. The layout is the Kaggle one: train/<wnid>/,
    a flat val/ with LOC_val_solution.csv, and LOC_synset_mapping.txt.

    \b
    Example:
      alexnet-pipe sample-data ./sample --classes 10 --train-per-class 80
      alexnet-pipe prepare ./sample
    """
    from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree

    settings = SampleSettings(classes=classes, train_per_class=train_per_class,
                              val_per_class=val_per_class, seed=seed, pathologies=pathologies)
    print_settings("sample-data settings", settings)
    summary = write_sample_tree(directory, settings, overwrite=overwrite)
    _print_summary(summary)


def _print_summary(summary) -> None:
    click.echo(f"Wrote {summary.train_count} train + {summary.val_count} val files "
               f"({len(summary.wnids)} classes) to {summary.root}")
    click.echo("These images are SYNTHETIC (drawn procedurally), not ImageNet; see README.txt there.")
    odd = {path: kind for path, kind in summary.pathological.items() if path not in summary.expected_rejects}
    if odd:
        click.echo("Unusual but valid files (prepare must convert them to RGB):")
        for path, kind in odd.items():
            click.echo(f"  {kind:<10} {path}")
    if summary.expected_rejects:
        click.echo("Deliberately broken files (prepare must reject them):")
        for path in summary.expected_rejects:
            click.echo(f"  {summary.pathological[path]:<10} {path}")
    click.echo(f"Next: alexnet-pipe prepare {summary.root}")
