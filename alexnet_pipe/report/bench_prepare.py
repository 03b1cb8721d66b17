"""`bench prepare`: prepare's images/s against the one-process PIL script a user would write, and
against bare JPEG decoding of the same files, all measured in one run on the same files."""
from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# (width, height, share): ImageNet's common shapes and a thin tail of large photographs; the mean is
# ~220k pixels (a 500x440 image), close to the ~470x390 reported for ILSVRC-2012 train (most are 500 px wide)
SHAPES = [((500, 375), 0.42), ((375, 500), 0.10), ((500, 333), 0.20), ((500, 500), 0.05),
          ((333, 500), 0.05), ((300, 225), 0.08), ((800, 600), 0.09), ((1600, 1200), 0.01)]


@dataclasses.dataclass(frozen=True)
class BenchPrepareSettings:
    source: Path | None = None      # a folder tree to use; None: generate `images` photographs-like JPEGs
    images: int = 1500               # enough that worker start-up does not weigh on the rate
    workers: int = 2
    size: int = 256
    quality: int = 90
    resize: str = "area"
    repeats: int = 2                # best of N for each contender


def make_tree(root: Path, n: int, seed: int = 0) -> Path:
    """JPEGs of ImageNet-like sizes under root/train/<class>/ (procedural content + sensor-like noise)."""
    from alexnet_pipe.ingest.sample_data import write_jpeg
    from alexnet_pipe.ingest.sample_drawing import draw_image
    rng = np.random.default_rng(seed)
    shapes, weights = zip(*SHAPES)
    for i in range(n):
        w, h = shapes[rng.choice(len(shapes), p=np.array(weights) / sum(weights))]
        img = draw_image(i % 4, rng, h, w).astype(np.int16) + rng.normal(0, 6, (h, w, 1)).astype(np.int16)
        folder = root / "train" / f"n{i % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_jpeg(folder / f"img_{i:05d}.JPEG", np.clip(img, 0, 255).astype(np.uint8), quality=90)
    return root


def inputs(src: Path) -> list:
    """The items prepare takes from `src` (every split, every layout it reads; files it refuses before decoding
    left out): all contenders work on exactly these."""
    from alexnet_pipe.ingest.sources import discover
    inventory = discover(Path(src))
    return [item for items in inventory.splits.values() for item in items]


def pil_baseline(items: list, out: Path, size: int, quality: int) -> None:
    """The script a user would write: one process, PIL, one LMDB; an input PIL cannot read is skipped, as prepare
    rejects it."""
    import lmdb
    from PIL import Image
    from alexnet_pipe.ingest.items import read_bytes
    from alexnet_pipe.shards.codec import Datum
    env = lmdb.open(os.fsencode(out), map_size=1 << 36)
    with env.begin(write=True) as txn:
        for i, item in enumerate(items):
            try:
                img = Image.open(io.BytesIO(read_bytes(item))).convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError):  # PIL's "cannot identify", truncated data
                continue
            w, h = img.size
            s = size / min(w, h)
            img = img.resize((max(size, round(w * s)), max(size, round(h * s))))
            w, h = img.size
            img = img.crop(((w - size) // 2, (h - size) // 2, (w - size) // 2 + size, (h - size) // 2 + size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality)
            txn.put(f"{i:08d}".encode(), Datum(buf.getvalue(), 0, True, 3, size, size).to_bytes())
    env.close()


def bare_decode(items: list) -> None:
    """OpenCV's decode of each input's bytes; one that does not decode costs its attempt, as in prepare."""
    import cv2
    from alexnet_pipe.ingest.items import read_bytes
    cv2.setNumThreads(1)
    for item in items:
        data = np.frombuffer(read_bytes(item), np.uint8)
        if data.size:  # imdecode asserts on an empty buffer
            cv2.imdecode(data, cv2.IMREAD_COLOR)


def _best_rate(n: int, repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def run(settings: BenchPrepareSettings) -> dict:
    from alexnet_pipe.ingest.plan import PrepareSettings
    from alexnet_pipe.ingest.prepare import run as prepare_run
    from alexnet_pipe.ingest.items import read_bytes
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        src = settings.source or make_tree(work / "src", settings.images)
        items = inputs(src)
        n = len(items)
        for item in items:  # page cache warm for every contender alike
            read_bytes(item)

        def prepare_once():
            shutil.rmtree(work / "data", ignore_errors=True)
            prepare_run(PrepareSettings(source=Path(src), data=work / "data", size=settings.size,
                                        quality=settings.quality, resize=settings.resize,
                                        workers=settings.workers), echo=lambda *_: None)

        def pil_once():
            shutil.rmtree(work / "pil", ignore_errors=True)
            pil_baseline(items, work / "pil", settings.size, settings.quality)

        decode = _best_rate(n, settings.repeats, lambda: bare_decode(items))
        pil = _best_rate(n, settings.repeats, pil_once)
        prep = _best_rate(n, settings.repeats, prepare_once)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_core = prep / settings.workers
    return {"images": n, "workers": settings.workers, "cpu_count": os.cpu_count(),
            "prepare_images_per_sec": prep, "pil_baseline_images_per_sec": pil,
            "bare_decode_images_per_sec_one_core": decode,
            "ratio_vs_pil_baseline": prep / pil, "per_core_ratio_vs_bare_decode": per_core / decode}
