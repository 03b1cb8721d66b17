"""The statistics files under DATA/stats/: their names, and the checked readers of those read back.

Every stage that reads the statistics (stats itself, the loaders' normaliser and lighting, train's readiness check)
reads them here, so a damaged or hand-edited file is one sentence naming it, never NaN in a training run. The
writers (outputs.py, plots.py) take the names from here too.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import UnreadableFile, read_regular_bytes
from alexnet_pipe.core.metadata import Strict, read_model
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.manifest import MANIFEST, read_manifest

SPLIT = "train"  # the split the statistics describe
MEAN = "mean.npy"  # float32 (S, S, 3) RGB: the mean image
PCA = "pca.json"  # mean/std RGB, covariance, eigenpairs, and the train shards they describe
MEAN_BINARYPROTO = "mean.binaryproto"  # the mean as Caffe's BlobProto, for Caffe users
STATS_SETTINGS = "stats_settings.json"  # the settings of the run that wrote them
MEAN_PLOT, PCA_PLOT = "mean.png", "pca_axes.png"  # stats --plot
OUTPUTS = (MEAN, PCA, MEAN_BINARYPROTO, STATS_SETTINGS, MEAN_PLOT, PCA_PLOT)  # all that `stats` writes


Three = Annotated[list[float], Field(min_length=3, max_length=3)]
Square = Annotated[list[Three], Field(min_length=3, max_length=3)]
Positive = Annotated[int, Field(ge=1)]


class Eigenpairs(Strict):
    eigval: Three
    eigvec: Square


class PcaFile(Strict):
    """pca.json (outputs.pca_document): the moments always, the eigenpairs where `pca` is true."""
    source: str | None = None
    sample: Positive | None = None
    pca: bool
    size: Annotated[list[Positive], Field(min_length=2, max_length=2)]
    images: Positive
    pixels: Positive
    mean_rgb: Annotated[list[Annotated[float, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]
    std_rgb: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=3, max_length=3)]
    covariance: Square
    eigval: Three | None = None
    eigvec: Square | None = None
    explained_variance: Three | None = None
    fbresnet: Eigenpairs | None = None
    conventions: dict[str, str] | None = None
    shards: list[dict[str, str | int | None]] | None = None
    shards_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    files: dict[str, str] | None = None

    @model_validator(mode="after")
    def _eigenpairs_where_pca(self):
        if self.pca and None in (self.eigval, self.eigvec, self.fbresnet):
            raise ValueError("pca is true but eigval, eigvec or fbresnet is absent")
        return self


def read_pca(path: Path, *, need_pca: bool, hint: str | None = None) -> dict:
    """A pca.json, checked (PcaFile: every number finite, the vectors and matrices 3 and 3x3, eigenpairs
    where need_pca); one UserError naming the file and the field otherwise."""
    hint = hint or ("run `alexnet-pipe stats --pca`" if need_pca else "run `alexnet-pipe stats`")
    doc = read_model(path, PcaFile, "the statistics `alexnet-pipe stats` writes", hint,
                     missing=f"{path} is missing: {hint}")
    if need_pca and not doc["pca"]:
        raise UserError(f"{path} has no eigenpairs: {hint}")
    return doc


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
