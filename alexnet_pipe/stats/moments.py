"""The maths of the statistics: the mean and the RGB covariance, exactly, from integer sums; then its eigenpairs.

The 3x3 covariance is formed from the integer sums with exact rational arithmetic: ``E[xx^T] - m m^T`` in float64
would lose digits to cancellation.

Conventions (also written into pca.json, see outputs.CONVENTIONS):
- population covariance (divide by the pixel count N), 0..255 scale, RGB order;
- eigenvalues descending, eigenvectors are the COLUMNS of ``eigvec``;
- sign: the component of largest magnitude of every eigenvector is positive (the first such
  component on a tie), so p1, the brightness axis, is all-positive;
- the fb.resnet.torch convention is the same eigenvectors with eigenvalues / 255**2 (pixels
  scaled to [0, 1]); fb.resnet's published eigvec columns 1 and 3 have the opposite sign,
  which the symmetric N(0, sigma) lighting noise does not see.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.shards.shardstats import ShardStats

SIGN_CONVENTION = "the largest-magnitude component of each eigenvector is positive (first on a tie)"


@dataclasses.dataclass(frozen=True)
class StatsResult:
    """Everything `stats` computes; eigval/eigvec are None without --pca."""
    mean_image: np.ndarray  # float32 (H, W, 3) RGB
    mean_rgb: np.ndarray  # float64 (3,)
    std_rgb: np.ndarray
    covariance: np.ndarray  # float64 (3, 3)
    images: int
    pixels: int
    eigval: np.ndarray | None = None
    eigvec: np.ndarray | None = None  # columns

    @property
    def explained_variance(self) -> np.ndarray | None:
        return None if self.eigval is None else self.eigval / self.eigval.sum()


def exact_moments(total: ShardStats) -> tuple[list[Fraction], list[list[Fraction]], int]:
    """(mean RGB, covariance) as exact fractions, and the pixel count, from integer sums."""
    if total.count <= 0:
        raise UserError("the train split holds no images, so there is no mean to compute")
    n = total.count * total.pixel_sum.shape[0] * total.pixel_sum.shape[1]
    s = [int(v) for v in total.pixel_sum.sum(axis=(0, 1), dtype=np.int64)]
    outer = [[int(v) for v in row] for row in total.rgb_outer]
    mean = [Fraction(si, n) for si in s]
    cov = [[Fraction(n * outer[i][j] - s[i] * s[j], n * n) for j in range(3)] for i in range(3)]
    return mean, cov, n


def principal_axes(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues descending and eigenvectors as columns, signs fixed by SIGN_CONVENTION."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    for j in range(vectors.shape[1]):
        if vectors[np.argmax(np.abs(vectors[:, j])), j] < 0:
            vectors[:, j] = -vectors[:, j]
    return np.maximum(values, 0.0), vectors


def compute(total: ShardStats, pca: bool) -> StatsResult:
    mean, cov, n = exact_moments(total)
    covariance = np.array([[float(c) for c in row] for row in cov])
    mean_image = (total.pixel_sum / np.float64(total.count)).astype(np.float32)
    result = StatsResult(mean_image=mean_image, mean_rgb=np.array([float(m) for m in mean]),
                         std_rgb=np.sqrt(np.maximum(np.diag(covariance), 0.0)),
                         covariance=covariance, images=total.count, pixels=n)
    if pca:
        eigval, eigvec = principal_axes(covariance)
        result = dataclasses.replace(result, eigval=eigval, eigvec=eigvec)
    return result
