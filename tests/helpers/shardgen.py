"""Build a small data dir straight from numpy images, for tests of the stages after prepare.

It writes what prepare writes (JPEG or raw Datums, per-shard stats of the stored pixels,
manifest.json) through the same ShardWriter, without prepare's decoding of raw inputs.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from alexnet_pipe.core.files import write_json_atomic
from alexnet_pipe.shards import FORMAT_VERSION, Datum, ShardWriter, record_key, shard_name
from alexnet_pipe.shards.strips import restart_interval


def stored_pixels(rgb: np.ndarray, encoding: str, quality: int, restart_rows: bool = True) -> tuple[bytes, np.ndarray]:
    """(record data, the pixels a reader decodes from it).  `restart_rows`: a restart marker per MCU row, as
    prepare writes them (the loaders decode a window's rows alone: shards.strips); False: as before 2026-12-04."""
    if encoding == "raw":
        return rgb.tobytes(), rgb
    rst = [cv2.IMWRITE_JPEG_RST_INTERVAL, restart_interval(rgb.shape[1])] if restart_rows else []
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality, *rst])
    assert ok
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return buf.tobytes(), np.ascontiguousarray(decoded)


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour images (JPEG-friendly, not constant), uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_CUBIC) for s in small])


def make_data_dir(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int,
                  shards: int = 2, encoding: str = "jpeg", quality: int = 90, restart_rows: bool = True) -> Path:
    """splits: name -> (images uint8 (N,S,S,3) RGB, labels int (N,)). Returns root."""
    root = Path(root)
    size = next(iter(splits.values()))[0].shape[1]
    manifest = {"format_version": FORMAT_VERSION,
                "settings": {"size": size, "quality": quality, "encoding": encoding, "seed": 0},
                "classes": [{"wnid": f"n{9000000 + i:08d}", "name": f"class {i}"} for i in range(num_classes)],
                "splits": {}}
    for split, (images, labels) in splits.items():
        bounds = np.linspace(0, len(images), shards + 1).astype(int)
        entries = []
        for s in range(shards):
            writer = ShardWriter(root / split / shard_name(s), size)
            for i in range(bounds[s], bounds[s + 1]):
                data, pixels = stored_pixels(images[i], encoding, quality, restart_rows)
                datum = Datum(data, int(labels[i]), encoding == "jpeg", 3, size, size)
                writer.put(record_key(i, f"{split}/img_{i}.JPEG"), datum.to_bytes())
                writer.stats.add_image(pixels)
            meta = writer.commit({"split": split})
            entries.append({k: meta[k] for k in ("name", "records", "bytes", "checksum")})
        manifest["splits"][split] = {"count": len(images), "rejects": 0, "shards": entries}
    write_json_atomic(root / "manifest.json", manifest)
    return root


def write_pca_json(path, eigval, eigvec, mean_rgb, std_rgb, size: int, images: int) -> None:
    """A stats/pca.json with every field of the format (statfiles.read_pca checks them all), from numpy values."""
    eigval, eigvec = np.asarray(eigval, np.float64), np.asarray(eigvec, np.float64)
    doc = {"pca": True, "size": [size, size], "images": images, "pixels": images * size * size,
           "mean_rgb": list(map(float, mean_rgb)), "std_rgb": list(map(float, std_rgb)),
           "covariance": (eigvec * eigval) @ eigvec.T, "shards_digest": "0" * 64,
           "eigval": eigval, "eigvec": eigvec, "fbresnet": {"eigval": eigval / 255 ** 2, "eigvec": eigvec}}
    Path(path).write_text(json.dumps(doc, default=lambda a: a.tolist()))
