"""stats --plot: the mean image, and swatches along the principal colour axes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alexnet_pipe.stats.moments import StatsResult
from alexnet_pipe.stats.readers import MEAN_PLOT, PCA_PLOT


def write_plots(out: Path, result: StatsResult) -> list[Path]:
    """mean.png, and with eigenpairs pca_axes.png: swatches of mean_rgb + k sqrt(lambda_i) p_i."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    written = [out / MEAN_PLOT]
    fig = Figure(figsize=(4, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(np.clip(result.mean_image / 255.0, 0, 1))
    ax.set_title(f"mean of {result.images} training images")
    ax.axis("off")
    fig.savefig(written[0], dpi=100)
    if result.eigval is None:
        return written
    ks = np.arange(-3, 4)
    swatches = np.stack([[result.mean_rgb + k * np.sqrt(lam) * result.eigvec[:, i] for k in ks]
                         for i, lam in enumerate(result.eigval)])
    fig = Figure(figsize=(7, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(np.clip(swatches / 255.0, 0, 1), interpolation="nearest")
    ax.set_xticks(range(len(ks)), [f"{k:+d}σ" if k else "mean" for k in ks])
    ax.set_yticks(range(3), [f"p{i + 1}  λ={lam:.0f} ({100 * e:.1f}%)"
                             for i, (lam, e) in enumerate(zip(result.eigval, result.explained_variance))])
    ax.set_title("principal colour axes: mean RGB + k·sqrt(λ)·p")
    fig.tight_layout()
    written.append(out / PCA_PLOT)
    fig.savefig(written[1], dpi=100)
    return written
