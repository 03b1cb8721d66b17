"""The paper's Figure 3: a trained network's conv1 kernels as a grid.

Pure functions take the weights and return the grid; `render_filters` loads a checkpoint and writes it. The
picture is the grid itself, no axes: `scale` px per kernel pixel, `pad` px between tiles, `gap` px between the
row blocks of the two conceptual GPUs; `filter_grid_size` gives (width, height). The paper's 96 kernels of 11x11
at scale 4: 16 columns x 3 rows per block -> 738 x 286 px.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from alexnet_pipe.report.pictures import write_image

FILTER_COLS = 16  # the paper's Figure 3: 16 kernels a row, 3 rows per GPU


def normalize_kernels(weights: np.ndarray) -> np.ndarray:
    """(K, 3, h, w) float -> (K, h, w, 3) uint8, each kernel min-max scaled to 0..255 on its own
    (over all three channels together, so its colour is kept); a constant kernel becomes mid grey."""
    w = np.asarray(weights, np.float64)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    scaled = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1.0), 0.5)
    return np.round(scaled * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def filter_layout(count: int, groups: int) -> tuple[int, int, int]:
    """(kernels per group, columns, rows per group block)."""
    if groups < 1 or count % groups:
        raise ValueError(f"{count} kernels do not split into {groups} groups")
    per = count // groups
    cols = min(FILTER_COLS, per)
    return per, cols, math.ceil(per / cols)


def filter_grid_size(count: int, groups: int, kh: int, kw: int, scale: int = 4, pad: int = 2,
                     gap: int = 8) -> tuple[int, int]:
    """(width, height) in px of filter_grid's output."""
    _, cols, rows = filter_layout(count, groups)
    return (cols * (kw * scale + pad) + pad,
            groups * rows * (kh * scale + pad) + pad + (groups - 1) * gap)


def filter_origin(i: int, count: int, groups: int, kh: int, kw: int, scale: int = 4, pad: int = 2,
                  gap: int = 8) -> tuple[int, int]:
    """(x, y) of kernel i's top-left pixel: group block i // per, then row-major within the block."""
    per, cols, rows = filter_layout(count, groups)
    block, j = divmod(i, per)
    r, c = divmod(j, cols)
    return (pad + c * (kw * scale + pad),
            pad + block * (rows * (kh * scale + pad) + gap) + r * (kh * scale + pad))


def filter_grid(weights: np.ndarray, groups: int, scale: int = 4, pad: int = 2, gap: int = 8) -> np.ndarray:
    """The paper's Figure 3: conv1 kernels (K, 3, h, w) as an (H, W, 3) uint8 grid on white.

    Each kernel is min-max normalised on its own (normalize_kernels) and drawn `scale` px per
    weight. Kernels [0, K/groups) form the top block (the paper's GPU 1), the next K/groups the
    block below, `gap` px further down.
    """
    count, _, kh, kw = weights.shape
    tiles = normalize_kernels(weights).repeat(scale, axis=1).repeat(scale, axis=2)
    width, height = filter_grid_size(count, groups, kh, kw, scale, pad, gap)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        x, y = filter_origin(i, count, groups, kh, kw, scale, pad, gap)
        canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return canvas


def conv1_groups(arch: str) -> int:
    """The paper's net splits conv1 across two GPUs (48 + 48 kernels); alexnet-owt is one block."""
    return 2 if arch == "alexnet" else 1


@dataclasses.dataclass(frozen=True)
class FiltersSettings:
    checkpoint: Path
    output: Path
    scale: int = 4


def render_filters(s: FiltersSettings) -> dict:
    """-> {"output", "width", "height", "kernels", "groups"}."""
    from alexnet_pipe.train.checkpoint import load_model
    model, ts = load_model(s.checkpoint)
    weights = model.features.conv1.weight.detach().float().cpu().numpy()
    groups = conv1_groups(ts.arch)
    width, height = write_image(filter_grid(weights, groups, s.scale), s.output)
    return {"output": str(s.output), "width": width, "height": height, "kernels": len(weights),
            "groups": groups, "kernel_size": list(weights.shape[2:])}
