"""The per-shard sums the statistics come from: merged from each train shard's stats.npz (the fast path), or
recomputed from the records in one decoding pass (decode.iter_decoded) and written back where they were damaged."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from alexnet_pipe.core.errors import ShardFormatError, UserError
from alexnet_pipe.shards.lmdbfile import DATA_MDB, open_reader
from alexnet_pipe.shards.manifest import SHARD_META, load_shard_meta, shard_dirs
from alexnet_pipe.shards.shardstats import SHARD_STATS, ShardStats
from alexnet_pipe.stats.readers import SPLIT


def _damaged(shard: Path, why: str) -> UserError:
    return UserError(f"the statistics of shard {shard} are {why}: run `alexnet-pipe stats --recompute` "
                     "to compute them from the records")


def load_shard_stats(shard: Path, entry: dict, size: int) -> ShardStats:
    """One shard's sums, checked against its meta.json and the manifest."""
    path = shard / SHARD_STATS
    if not shard.is_dir():  # --recompute cannot help: the records themselves are gone
        raise UserError(f"shard {shard} listed in the manifest is missing: run `alexnet-pipe prepare` again "
                        "with the same settings to rewrite it")
    if not path.is_file():
        raise _damaged(shard, f"missing ({SHARD_STATS} not found)")
    try:
        stats = ShardStats.load(path)
    except ShardFormatError:
        raise _damaged(shard, f"damaged ({SHARD_STATS} does not load)") from None
    meta = load_shard_meta(shard) or {}
    problem = _stats_problem(stats, size, entry.get("records"), meta.get("records"))
    if problem:
        raise _damaged(shard, f"damaged ({problem})")
    return stats


def _stats_problem(stats: ShardStats, size: int, manifest_records, meta_records) -> str | None:
    """Why these sums cannot be right, or None."""
    if stats.pixel_sum.shape != (size, size, 3):
        return f"pixel_sum has shape {stats.pixel_sum.shape}, the data dir's size is {size}"
    if stats.count != manifest_records or (meta_records is not None and stats.count != meta_records):
        return (f"{stats.count} images counted, the manifest lists {manifest_records} and "
                f"{SHARD_META} {meta_records}")
    if stats.count < 0 or stats.pixel_sum.min(initial=0) < 0 or stats.pixel_sum.max(initial=0) > 255 * stats.count:
        return "pixel sums out of range"
    outer = stats.rgb_outer
    n = stats.count * size * size
    sums = stats.pixel_sum.sum(axis=(0, 1))
    for c in range(3):
        sq, s = int(outer[c, c]), int(sums[c])
        # x in 0..255: s**2 / n <= sum(x**2) <= 255 * s (Cauchy-Schwarz and x**2 <= 255 x)
        if sq > 255 * s or (n and s * s > sq * n):
            return "squared sums inconsistent with the pixel sums"
    if not np.array_equal(outer, outer.T):
        return "rgb_outer is not symmetric"
    return None


def merge_shard_stats(data: Path, manifest: dict) -> ShardStats:
    size = int(manifest["settings"]["size"])
    entries = manifest["splits"][SPLIT]["shards"]
    total = ShardStats.zeros(size)
    for shard, entry in zip(shard_dirs(data, SPLIT, manifest), entries):
        total.merge(load_shard_stats(shard, entry, size))
    return total


# --- recomputing them from the records ------------------------------------------------

def shard_record_counts(shards: Sequence[Path]) -> list[int]:
    counts = []
    for shard in shards:
        env = open_reader(shard)
        try:
            counts.append(int(env.stat()["entries"]))
        finally:
            env.close()
    return counts


def accumulate(batches: Iterable[tuple[np.ndarray, np.ndarray]], counts: Sequence[int],
               on_batch: Callable[[int], None] | None = None) -> list[ShardStats | None]:
    """Per-shard sums from batches that run through the shards in order (counts: records each)."""
    per: list[ShardStats | None] = [None] * len(counts)
    ends = np.cumsum(counts)
    pos = 0
    for images, _labels in batches:
        start = 0
        while start < len(images):
            shard = int(np.searchsorted(ends, pos, side="right"))
            if shard >= len(counts):
                raise UserError("the shards yielded more records than their LMDB environments hold")
            take = min(len(images) - start, int(ends[shard]) - pos)
            if per[shard] is None:
                per[shard] = ShardStats(np.zeros(images.shape[1:], np.int64), np.zeros((3, 3), np.int64), 0)
            per[shard].add_batch(images[start:start + take])  # uint8, as iter_decoded yields
            start, pos = start + take, pos + take
        if on_batch:
            on_batch(len(images))
    return per


def recompute(shards: Sequence[Path], *, device: str, limit: int | None, raw_layout: str,
              backend: str = "auto") -> tuple[ShardStats, list[ShardStats | None]]:
    """One decoding pass: (total sums, per-shard sums; None for shards the pass did not reach)."""
    from alexnet_pipe.shards.decode import dali_error_cause, iter_decoded
    from alexnet_pipe.core.progress import Progress
    counts = shard_record_counts(shards)
    total_records = sum(counts) if limit is None else min(limit, sum(counts))
    progress = Progress(total_records, "decoding the train records")
    try:
        per = accumulate(iter_decoded(shards, device=device, limit=limit, raw_layout=raw_layout,
                                      backend=backend), counts, progress.update)
    except RuntimeError as exc:  # DALI reports a missing GPU or a bad LMDB as RuntimeError
        raise UserError(f"the decoding pass failed ({dali_error_cause(exc)})"
                        + ("; try --device cpu" if device != "cpu" else "")) from None
    progress.close()
    reached = [p for p in per if p is not None]
    if not reached:
        raise UserError("the train shards hold no records")
    total = ShardStats(np.zeros_like(reached[0].pixel_sum), np.zeros((3, 3), np.int64), 0)
    for p in reached:
        total.merge(p)
    if total.count != total_records:
        raise UserError(f"the decoding pass saw {total.count} records, the shards hold {total_records}: "
                        "run `alexnet-pipe verify`")
    return total, per


def repair_shard_stats(shards: Sequence[Path], per: Sequence[ShardStats | None], manifest: dict) -> list[Path]:
    """Write stats.npz where it is missing or damaged (after a full pass); returns those shards."""
    size = int(manifest["settings"]["size"])
    repaired = []
    for shard, entry, stats in zip(shards, manifest["splits"][SPLIT]["shards"], per):
        if stats is None:
            continue
        try:
            load_shard_stats(shard, entry, size)
        except UserError:
            stats.save(shard / SHARD_STATS)  # atomic: a reader never meets half a file
            repaired.append(shard)
    return repaired


def foreign_lmdbs(data: Path) -> list[Path]:
    """Caffe LMDBs made by other tools: DATA itself, or DATA/train/*/ (sorted)."""
    if (data / DATA_MDB).is_file():
        return [data]
    return sorted(p.parent for p in (data / SPLIT).glob(f"*/{DATA_MDB}"))
