"""The statistics files under DATA/stats/: their names, and the checked readers of those read back.

Every stage that reads the statistics (stats itself, the loaders' normaliser and lighting, train's readiness check)
reads them here, so a damaged or hand-edited file is one sentence naming it, never NaN in a training run. The
writers (outputs.py, plots.py) take the names from here too.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import UnreadableFile, read_regular_bytes
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.manifest import MANIFEST, read_manifest

SPLIT = "train"  # the split the statistics describe
MEAN = "mean.npy"  # float32 (S, S, 3) RGB: the mean image
PCA = "pca.json"  # mean/std RGB, covariance, eigenpairs, and the train shards they describe
MEAN_BINARYPROTO = "mean.binaryproto"  # the mean as Caffe's BlobProto, for Caffe users
STATS_SETTINGS = "stats_settings.json"  # the settings of the run that wrote them
MEAN_PLOT, PCA_PLOT = "mean.png", "pca_axes.png"  # stats --plot
OUTPUTS = (MEAN, PCA, MEAN_BINARYPROTO, STATS_SETTINGS, MEAN_PLOT, PCA_PLOT)  # all that `stats` writes


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


def shard_fingerprint(manifest: dict | None) -> list[dict]:
    if manifest is None:
        return []
    return [{k: s.get(k) for k in ("name", "records", "checksum")} for s in manifest["splits"][SPLIT]["shards"]]


def fingerprint_digest(shards: list[dict]) -> str:
    return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()


def load_stats(data: Path, *, need_pca: bool) -> dict:
    """pca.json of a data dir, checked (read_pca) and checked to describe its current train shards."""
    path = DataDir(Path(data)).stats / PCA
    hint = "run `alexnet-pipe stats --pca`" if need_pca else "run `alexnet-pipe stats`"
    doc = read_pca(path, need_pca=need_pca, hint=hint)
    if (Path(data) / MANIFEST).exists():
        current = fingerprint_digest(shard_fingerprint(read_manifest(Path(data))))
        if doc.get("shards_digest") != current:
            raise UserError(f"{path} describes other train shards than the manifest lists: {hint}")
    return doc
