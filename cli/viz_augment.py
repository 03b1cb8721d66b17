"""`alexnet-pipe viz augment`: what the network sees, before mean subtraction."""
from __future__ import annotations

import click

from alexnet_pipe.core.limits import MAX_SIZE, MAX_STRENGTH
from alexnet_pipe.train.config import RECIPES
from alexnet_pipe.loaders import LOADERS

from alexnet_pipe_cli.common import SEED, FiniteFloat, data_option, output_option, print_settings


@click.command()
@data_option
@output_option("augment.png")
@click.option("--n", type=click.IntRange(1, 1024), default=16, show_default=True, help="Views in the grid.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--crop", type=click.IntRange(1, MAX_SIZE), default=224, show_default=True)
@click.option("--recipe", type=click.Choice(list(RECIPES)), default="paper", show_default=True,
              help="Whose training augmentation: the paper's crops and lighting, or the modern recipe's "
                   "random-resized crops and colour jitter (train --recipe modern). Explicit options win.")
@click.option("--lighting", type=FiniteFloat(0, MAX_STRENGTH), default=None,
              help="Sigma of the PCA lighting alphas (exaggerate it to see the effect).  [default: the recipe's: "
                   "paper 0.1, modern 0]")
@click.option("--crops", type=click.Choice(["translate", "random-resized"]), default=None,
              help="The paper's translations or random-resized windows.  [default: the recipe's]")
@click.option("--color-jitter", type=FiniteFloat(0, MAX_STRENGTH), default=None,
              help="Colour jitter strength (brightness, contrast, saturation).  [default: the recipe's: paper 0, "
                   "modern 0.4]")
@click.option("--hue", type=FiniteFloat(0, 0.5), default=None, help="Hue jitter.  [default: the recipe's]")
@click.option("--lighting-scale", type=click.Choice(["convnet2", "fbresnet"]), default="convnet2",
              show_default=True)
@click.option("--loader", type=click.Choice(LOADERS), default="auto", show_default=True,
              help="auto: DALI where it is installed, else the torch DataLoader.")
def viz_augment(data, output, n, seed, crop, recipe, lighting, crops, color_jitter, hue, lighting_scale, loader):
    """A grid of augmented training views (crop or resized window, flip, colour jitter, lighting) as the
    network sees them, with the normalisation undone and clipped to 0..255.

    \b
    alexnet-pipe viz augment --data ./alexnet-data -o augment.png --n 16 --lighting 0.5
    alexnet-pipe viz augment --data ./alexnet-data -o modern.png --recipe modern
    """
    from alexnet_pipe.report.augment_grid import VizAugmentSettings, render_augment
    given = dict(lighting=lighting, crops=crops, color_jitter=color_jitter, hue=hue)
    aug = {**_recipe_augmentation(recipe), **{k: v for k, v in given.items() if v is not None}}
    s = VizAugmentSettings(data, output, n, seed, crop, aug.pop("lighting"), lighting_scale, loader, recipe, **aug)
    print_settings("viz augment", s)
    width, height = render_augment(s)
    click.echo(f"wrote {output} ({width}x{height} px, {n} views)")


def _recipe_augmentation(recipe: str) -> dict:
    """The training recipe's augmentation settings (config.RECIPES over the paper's defaults)."""
    from alexnet_pipe.train.config import RECIPES, TrainSettings
    paper = TrainSettings()
    names = ("lighting", "normalize", "crops", "color_jitter", "hue")
    return {k: RECIPES[recipe].get(k, getattr(paper, k)) for k in names}
