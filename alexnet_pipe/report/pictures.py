"""How every picture is written: pyplot-free Agg figures at a fixed DPI, the format from the -o suffix, and an
unwritable place as one sentence. matplotlib is imported inside the functions."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from alexnet_pipe.core.errors import UserError

DPI = 100
# -o suffix -> the format both matplotlib writers (Figure.savefig, image.imsave) take; no suffix: PNG
IMAGE_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "tif": "tiff", "tiff": "tiff", "webp": "webp",
                 "gif": "gif", "pdf": "pdf", "svg": "svg", "eps": "eps", "ps": "ps"}


def figure(figsize):
    """A pyplot-free Agg figure: no global state, safe in tests and threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def image_format(path: Path | str) -> str:
    """The format a picture is written in, from its suffix (none: PNG, at exactly that path); a suffix no
    writer here knows is one sentence listing those it does."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in IMAGE_FORMATS:
        raise UserError(f"{path}: cannot write .{suffix} pictures; end the name in one of "
                        f"{', '.join('.' + s for s in IMAGE_FORMATS)} (no suffix: PNG)")
    return IMAGE_FORMATS[suffix]


@contextlib.contextmanager
def writing(path: Path):
    """Create the PNG's folder; an unwritable place (read-only, full, not a folder) becomes one sentence."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): choose another -o/--output") from None


def save_figure(fig, path: Path) -> tuple[int, int]:
    with writing(path):
        # no bbox_inches="tight": the size stays figsize * dpi
        fig.savefig(Path(path), dpi=DPI, format=image_format(path))
    width, height = fig.canvas.get_width_height()
    return width, height


def write_image(canvas: np.ndarray, path: Path) -> tuple[int, int]:
    """An (H, W, 3) uint8 array as a PNG of exactly W x H pixels."""
    from matplotlib import image as mpimg
    with writing(path):
        mpimg.imsave(Path(path), canvas, format=image_format(path))
    return canvas.shape[1], canvas.shape[0]
