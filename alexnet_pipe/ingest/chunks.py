"""The worker side of prepare: a chunk of inputs in, their records and pixel sums out."""
from __future__ import annotations

import dataclasses

import numpy as np

from alexnet_pipe.ingest import images
from alexnet_pipe.ingest.items import Item, read_bytes
from alexnet_pipe.shards.codec import Datum
from alexnet_pipe.shards.records import record_key
from alexnet_pipe.shards.shardstats import ShardStats

CHUNK = 32  # images per task sent to a worker
assert CHUNK * 255 < 1 << 16  # a chunk's pixel sums fit uint16 (see process_chunk)


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """What a worker needs to turn inputs into records (small, pickled with every task)."""
    size: int
    quality: int
    encoding: str
    resize: str
    reduce: bool
    max_pixels: int = images.MAX_PIXELS


@dataclasses.dataclass
class ChunkResult:
    records: list[tuple[bytes, bytes]]          # (key, Datum bytes) in key order
    rejects: list[dict]
    stats: ShardStats


def init_worker() -> None:
    import cv2
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads only contend


def to_record(job: ImageJob, index: int, item: Item) -> tuple[bytes, bytes, np.ndarray]:
    """(key, Datum bytes, the pixels as a reader will decode them); raises images.Reject."""
    import cv2
    try:
        data = read_bytes(item)
    except OSError as exc:
        raise images.Reject(f"unreadable ({exc.strerror or exc})") from None
    try:
        bgr = images.decode_bgr(data, job.size if job.reduce else 0, job.max_pixels)
        square = images.center_square(bgr, job.size, job.resize)
    except cv2.error as exc:
        raise images.Reject(f"undecodable ({str(exc).strip().splitlines()[-1]})") from None
    if job.encoding == "jpeg":
        value = images.encode_jpeg(square, job.quality, restart_rows=True)  # rows decodable alone (shards.strips)
        stored = images.decode_stored_jpeg(value)
    else:  # raw records are HWC RGB (docs/format.md)
        stored = cv2.cvtColor(square, cv2.COLOR_BGR2RGB)
        value = stored.tobytes()
    datum = Datum(value, item.label, job.encoding == "jpeg", 3, job.size, job.size)
    return record_key(index, item.relpath), datum.to_bytes(), stored


def process_chunk(task: tuple[ImageJob, str, list[tuple[int, Item]]]) -> ChunkResult:
    job, split, pairs = task
    result = ChunkResult([], [], ShardStats.zeros(job.size))
    stored_images = []
    for index, item in pairs:
        try:
            key, value, stored = to_record(job, index, item)
        except images.Reject as why:
            where = item.path if item.size < 0 else f"{item.path}!{item.relpath}"
            result.rejects.append({"path": where, "split": split, "reason": str(why), "key_index": index})
            continue
        result.records.append((key, value))
        stored_images.append(stored)
    if stored_images:
        result.stats.add_batch(np.stack(stored_images))
    # uint16 holds a chunk's sums exactly (assert at CHUNK) in a quarter of int64's bytes; the parent
    # merges them into the shard's int64 totals as they arrive
    result.stats.pixel_sum = result.stats.pixel_sum.astype(np.uint16)
    return result
