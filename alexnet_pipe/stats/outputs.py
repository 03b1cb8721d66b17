"""Writing the statistics: mean.npy, the Caffe mean.binaryproto, stats_settings.json, and pca.json last."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from alexnet_pipe.core.files import atomic_write, write_json_atomic
from alexnet_pipe.shards.codec import encode_field_bytes, encode_field_varint, varint
from alexnet_pipe.stats.moments import SIGN_CONVENTION, StatsResult
from alexnet_pipe.stats.readers import (MEAN, MEAN_BINARYPROTO, PCA, STATS_SETTINGS, fingerprint_digest,
                                        shard_fingerprint)

CONVENTIONS = {
    "scale": "pixel values 0..255, RGB order",
    "covariance": "population covariance over every pixel of every image (divided by `pixels`)",
    "eigval": "descending",
    "eigvec": "eigvec[i][j] is component i (R, G, B) of eigenvector j: the columns are the eigenvectors",
    "sign": SIGN_CONVENTION,
    "fbresnet": "same eigenvectors, eigenvalues of pixels scaled to [0, 1] (eigval / 255**2)",
    "mean_npy": "float32 (H, W, 3), RGB, HWC, 0..255",
    "mean_binaryproto": "Caffe BlobProto 1x3xHxW float, BGR, CHW",
}


def encode_blobproto(mean_rgb_hwc: np.ndarray) -> bytes:
    """Caffe BlobProto of a mean image: legacy num/channels/height/width and shape, BGR CHW floats."""
    h, w, c = mean_rgb_hwc.shape
    chw_bgr = np.ascontiguousarray(mean_rgb_hwc[..., ::-1].transpose(2, 0, 1), dtype="<f4")
    shape = encode_field_bytes(1, b"".join(varint(d) for d in (1, c, h, w)))  # packed int64 dims
    return b"".join([encode_field_varint(1, 1), encode_field_varint(2, c), encode_field_varint(3, h),
                     encode_field_varint(4, w), encode_field_bytes(5, chw_bgr.tobytes()),
                     encode_field_bytes(7, shape)])


def pca_document(result: StatsResult, *, source: str, sample: int | None, manifest: dict | None) -> dict:
    shards = shard_fingerprint(manifest)
    doc = {"source": source, "sample": sample, "pca": result.eigval is not None,
           "size": list(result.mean_image.shape[:2]), "images": result.images, "pixels": result.pixels,
           "mean_rgb": result.mean_rgb.tolist(), "std_rgb": result.std_rgb.tolist(),
           "covariance": result.covariance.tolist()}
    if result.eigval is not None:
        doc.update(eigval=result.eigval.tolist(), eigvec=result.eigvec.tolist(),
                   explained_variance=result.explained_variance.tolist(),
                   fbresnet={"eigval": (result.eigval / 255.0 ** 2).tolist(), "eigvec": result.eigvec.tolist()})
    doc.update(conventions=CONVENTIONS, shards=shards, shards_digest=fingerprint_digest(shards),
               files={"mean": MEAN, "binaryproto": MEAN_BINARYPROTO})
    return doc


def write_outputs(out: Path, result: StatsResult, doc: dict, settings) -> None:
    """mean.npy, mean.binaryproto, stats_settings.json (the run's settings, a dataclass), then pca.json last
    (its checksums say 'done')."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / MEAN, "wb") as f:
        np.save(f, result.mean_image)
    with atomic_write(out / MEAN_BINARYPROTO, "wb") as f:
        f.write(encode_blobproto(result.mean_image))
    write_json_atomic(out / STATS_SETTINGS, json.loads(json.dumps(dataclasses.asdict(settings), default=str)))
    write_json_atomic(out / PCA, doc)
