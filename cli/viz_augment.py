"""`alexnet-pipe viz augment`: what the network sees, before mean subtraction."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from alexnet_pipe_cli.common import data_option, print_settings


@dataclasses.dataclass(frozen=True)
class VizAugmentSettings:
    data: Path
    output: Path
    n: int
    seed: int
    crop: int
    lighting: float
    lighting_scale: str
    loader: str


def seen_pixels(images, params, loader) -> "np.ndarray":
    """(n, crop, crop, 3) uint8: the augmented views with the normalisation undone (lighting kept)."""
    import numpy as np
    out = images.float().numpy().transpose(0, 2, 3, 1)
    norm, crop = loader.norm, loader.settings.crop
    if norm.mode == "channel":
        return np.clip(out * norm.std_rgb + norm.mean_rgb, 0, 255).round().astype(np.uint8)
    views = []
    for img, x, y, flip in zip(out, params["crop_x"], params["crop_y"], params["flip"]):
        mean = norm.mean_image[y:y + crop, x:x + crop]
        views.append(img + (mean[:, ::-1] if flip else mean))
    return np.clip(np.stack(views), 0, 255).round().astype(np.uint8)


def grid(views, pad: int = 2) -> "np.ndarray":
    """Tiles on a white background: cols = ceil(sqrt(n)), a `pad` px gap around each."""
    import math
    import numpy as np
    n, c = len(views), views.shape[1]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (c + pad) + pad, cols * (c + pad) + pad, 3), 255, np.uint8)
    for i, view in enumerate(views):
        r, q = divmod(i, cols)
        canvas[pad + r * (c + pad):pad + r * (c + pad) + c, pad + q * (c + pad):pad + q * (c + pad) + c] = view
    return canvas


def render(s: VizAugmentSettings) -> tuple[int, int]:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import image as mpimg

    from alexnet_pipe.pipeline import LoaderSettings, make_loader
    loader = make_loader(LoaderSettings(s.data, batch_size=s.n, crop=s.crop, loader=s.loader,
                                        lighting=s.lighting, lighting_scale=s.lighting_scale,
                                        seed=s.seed, with_params=True))
    images, _labels, params = next(iter(loader.epoch(0)))
    canvas = grid(seen_pixels(images, params, loader))
    s.output.parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(s.output, canvas)
    return canvas.shape[1], canvas.shape[0]


@click.command()
@data_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("augment.png"),
              show_default=True, help="PNG to write.")
@click.option("--n", type=click.IntRange(1, 1024), default=16, show_default=True, help="Views in the grid.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--crop", type=click.IntRange(1), default=224, show_default=True)
@click.option("--lighting", type=click.FloatRange(0), default=0.1, show_default=True,
              help="Sigma of the PCA lighting alphas (exaggerate it to see the effect).")
@click.option("--lighting-scale", type=click.Choice(["convnet2", "fbresnet"]), default="convnet2",
              show_default=True)
@click.option("--loader", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
def viz_augment(data, output, n, seed, crop, lighting, lighting_scale, loader):
    """A grid of augmented training views (crop, flip, lighting) as the network sees them, with the
    mean added back and clipped to 0..255.

    \b
    alexnet-pipe viz augment --data ./alexnet-data -o augment.png --n 16 --lighting 0.5
    """
    s = VizAugmentSettings(data, output, n, seed, crop, lighting, lighting_scale, loader)
    print_settings("viz augment", s)
    width, height = render(s)
    click.echo(f"wrote {output} ({width}x{height} px, {n} views)")
