"""The readers of the statistics files (stats/pca.json, stats/mean.npy), checked: shapes, finite numbers, ranges.

Every stage that reads the statistics (stats itself, the loaders' normaliser and lighting) reads them here, so a
damaged or hand-edited file is one sentence naming it, never NaN in a training run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import UnreadableFile, read_regular_bytes


def _pca_shape(need_pca: bool):
    from alexnet_pipe.core import metadata as m
    three, square = m.list_of(m.number(), 3), m.matrix(3, 3)
    eigen = {"eigval": three, "eigvec": square}
    fields = {"pca": m.boolean, "size": m.list_of(m.integer(1), 2), "images": m.integer(1),
              "pixels": m.integer(1), "mean_rgb": three, "std_rgb": three, "covariance": square,
              "shards_digest": m.string(r"[0-9a-f]{64}")}
    if need_pca:
        fields.update(eigen, fbresnet=m.record(eigen))
    return m.record(fields, {"source": m.string(), "sample": m.optional(m.integer(1))})


def read_pca(path: Path, *, need_pca: bool, hint: str | None = None) -> dict:
    """A pca.json, checked: every number finite, the vectors and matrices 3 and 3x3, eigenpairs
    where need_pca; one UserError naming the file otherwise."""
    from alexnet_pipe.core import metadata
    hint = hint or ("run `alexnet-pipe stats --pca`" if need_pca else "run `alexnet-pipe stats`")
    doc = metadata.read_json(path, _pca_shape(False), "the statistics `alexnet-pipe stats` writes", hint,
                             missing=f"{path} is missing: {hint}")
    if need_pca and not doc["pca"]:
        raise UserError(f"{path} has no eigenpairs: {hint}")
    return metadata.check_document(doc, _pca_shape(need_pca), path, "the statistics `alexnet-pipe stats` writes",
                                   hint)


def read_mean(path: Path, size: int | None = None, hint: str = "run `alexnet-pipe stats`") -> np.ndarray:
    """mean.npy, checked: float32 (S, S, 3), every value a finite 0..255 (and S == size if given)."""
    import io
    try:
        data = read_regular_bytes(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {hint}") from None
    except UnreadableFile as exc:
        raise UserError(f"{path} cannot be read ({exc.reason}): {hint}") from None
    try:
        mean = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path} is not a .npy array ({str(exc).splitlines()[0][:80]}): {hint}") from None
    problem = _mean_problem(mean, size)
    if problem:
        raise UserError(f"{path} is not a mean image ({problem}): {hint}")
    return mean.astype(np.float32)


def _mean_problem(mean: np.ndarray, size: int | None) -> str | None:
    if mean.dtype.kind not in "fiu" or mean.ndim != 3 or mean.shape[2] != 3 or mean.shape[0] != mean.shape[1]:
        return f"{mean.dtype} array of shape {mean.shape}, expected float (S, S, 3)"
    if size is not None and mean.shape[0] != size:
        return f"{mean.shape[0]}x{mean.shape[1]}, the shards hold {size}x{size} images"
    if not np.isfinite(mean).all() or mean.min(initial=0) < 0 or mean.max(initial=0) > 255:
        return "values outside 0..255, or not finite"
    return None
