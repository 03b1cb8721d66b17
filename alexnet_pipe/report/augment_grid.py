"""What the network sees: a grid of augmented training views with the normalisation undone."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from alexnet_pipe.report.pictures import write_image


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
    recipe: str = "paper"  # where the augmentation's defaults came from (paper | modern), for the record
    normalize: str = "mean-image"
    crops: str = "translate"
    color_jitter: float = 0.0
    hue: float = 0.0


def seen_pixels(images, params, loader) -> np.ndarray:
    """(n, crop, crop, 3) uint8: the augmented views with the normalisation undone (lighting, colour jitter
    and the random-resized windows' resize kept: what the network sees)."""
    out = images.float().numpy().transpose(0, 2, 3, 1)
    norm, crop = loader.norm, loader.settings.crop
    if norm.mode == "channel":
        return np.clip(out * norm.std_rgb + norm.mean_rgb, 0, 255).round().astype(np.uint8)
    views = []
    for img, x, y, flip in zip(out, params["crop_x"], params["crop_y"], params["flip"]):
        mean = norm.mean_image[y:y + crop, x:x + crop]
        views.append(img + (mean[:, ::-1] if flip else mean))
    return np.clip(np.stack(views), 0, 255).round().astype(np.uint8)


def augment_grid(views, pad: int = 2) -> np.ndarray:
    """Tiles on a white background: cols = ceil(sqrt(n)), a `pad` px gap around each."""
    n, c = len(views), views.shape[1]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (c + pad) + pad, cols * (c + pad) + pad, 3), 255, np.uint8)
    for i, view in enumerate(views):
        r, q = divmod(i, cols)
        canvas[pad + r * (c + pad):pad + r * (c + pad) + c, pad + q * (c + pad):pad + q * (c + pad) + c] = view
    return canvas


def augment_loader(s: VizAugmentSettings):
    """The training loader of these settings, one batch of `n` views with their parameters."""
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    return make_loader(LoaderSettings(s.data, batch_size=s.n, crop=s.crop, loader=s.loader, lighting=s.lighting,
                                      lighting_scale=s.lighting_scale, seed=s.seed, with_params=True,
                                      normalize=s.normalize, crops=s.crops, color_jitter=s.color_jitter,
                                      hue=s.hue))


def render_augment(s: VizAugmentSettings) -> tuple[int, int]:
    import matplotlib
    matplotlib.use("Agg")

    loader = augment_loader(s)
    images, _labels, params = next(iter(loader.epoch(0)))
    canvas = augment_grid(seen_pixels(images, params, loader))
    return write_image(canvas, s.output)
