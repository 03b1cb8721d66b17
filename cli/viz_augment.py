"""`alexnet-pipe viz augment`: what the network sees, before mean subtraction."""
from __future__ import annotations

import click

from alexnet_pipe.loaders import LOADERS

from alexnet_pipe_cli.common import FiniteFloat, data_option, output_option, print_settings


@click.command()
@data_option
@output_option("augment.png")
@click.option("--n", type=click.IntRange(1, 1024), default=16, show_default=True, help="Views in the grid.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--crop", type=click.IntRange(1), default=224, show_default=True)
@click.option("--lighting", type=FiniteFloat(0), default=0.1, show_default=True,
              help="Sigma of the PCA lighting alphas (exaggerate it to see the effect).")
@click.option("--lighting-scale", type=click.Choice(["convnet2", "fbresnet"]), default="convnet2",
              show_default=True)
@click.option("--loader", type=click.Choice(LOADERS), default="auto", show_default=True,
              help="auto: DALI where it is installed, else the torch DataLoader.")
def viz_augment(data, output, n, seed, crop, lighting, lighting_scale, loader):
    """A grid of augmented training views (crop, flip, lighting) as the network sees them, with the
    mean added back and clipped to 0..255.

    \b
    alexnet-pipe viz augment --data ./alexnet-data -o augment.png --n 16 --lighting 0.5
    """
    from alexnet_pipe.viz import VizAugmentSettings, render_augment
    s = VizAugmentSettings(data, output, n, seed, crop, lighting, lighting_scale, loader)
    print_settings("viz augment", s)
    width, height = render_augment(s)
    click.echo(f"wrote {output} ({width}x{height} px, {n} views)")
