"""The shard plan: a pure function of (file list, seed, shard count).

Items are sorted by relative path, permuted by a seeded generator, and cut into contiguous shards. So any run,
on any machine, with any number of workers, writes the same records under the same keys; resuming after a crash
only has to find which shards are already committed (binding.py).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path

import numpy as np

from alexnet_pipe.ingest.items import Inventory, ItemList
from alexnet_pipe.shards.manifest import FORMAT_VERSION
from alexnet_pipe.shards.pixels import MAX_PIXELS
from alexnet_pipe.shards.records import shard_name

SPLIT_STREAMS = {"train": 0, "val": 1}


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    source: Path
    data: Path
    size: int = 256
    quality: int = 90
    encoding: str = "jpeg"          # "jpeg" | "raw"
    resize: str = "area"            # images.RESIZE_FILTERS
    reduce: bool = True             # DCT-domain downscaling while decoding large JPEGs
    max_pixels: int = MAX_PIXELS    # larger images are refused from their header (decompression bombs)
    seed: int = 0
    shards: int | None = None       # per split; None: ceil(records / shard_size)
    shard_size: int = 10000
    workers: int = 1
    val_labels: Path | None = None
    only_shards: tuple[int, int] | str | None = None  # [A, B): this machine's part; "auto": from the array job
    array_count: int | None = None  # tasks of a Kubernetes indexed job (Slurm says its own count)
    overwrite: bool = False
    scratch: Path | None = None     # --data in a bucket: where shards are written before upload (None: $TMPDIR)

    def output_settings(self) -> dict:
        """The settings that change what is written (workers and only_shards do not)."""
        return {"size": self.size, "quality": self.quality, "encoding": self.encoding,
                "resize": self.resize, "reduce": self.reduce, "seed": self.seed,
                "shards": self.shards, "shard_size": self.shard_size}


@dataclasses.dataclass(frozen=True, eq=False)
class ShardPlan:
    split: str
    index: int
    start: int                      # global index (key number) of the first item
    items: ItemList                 # a selection of the split's list: Items are made per chunk (see _tasks)

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the planned inputs; the plan record, resume and commit all ask for it."""
        h = hashlib.sha256()
        for i in range(len(self.items)):  # f"{relpath}\0{label}\n", without an Item per image
            h.update(self.items.relpath_bytes(i) + b"\0%d\n" % self.items.label(i))
        return h.hexdigest()


def shard_count(n: int, settings: PrepareSettings) -> int:
    if n == 0:
        return 0
    return min(settings.shards, n) if settings.shards else math.ceil(n / settings.shard_size)


def plan_split(split: str, items: ItemList, seed: int, count: int) -> list[ShardPlan]:
    """Seeded global shuffle of the split (sorted by relative path first), cut into `count` contiguous shards."""
    if count == 0:
        return []
    ordered = items.sorted_order()
    shuffled = ordered[np.random.default_rng([seed, SPLIT_STREAMS[split]]).permutation(len(ordered))]
    bounds = [len(shuffled) * s // count for s in range(count + 1)]
    return [ShardPlan(split, s, bounds[s], items.take(shuffled[bounds[s]:bounds[s + 1]])) for s in range(count)]


def make_plan(inv: Inventory, settings: PrepareSettings) -> dict[str, list[ShardPlan]]:
    # every split is listed, an empty one too, so the manifest says "val: 0" rather than nothing
    return {split: plan_split(split, items, settings.seed, shard_count(len(items), settings))
            for split, items in inv.splits.items()}


def plan_record(plan: dict[str, list[ShardPlan]], settings: PrepareSettings) -> dict:
    """What a data dir is bound to: output settings and the shard plan's fingerprint."""
    fps = {split: hashlib.sha256("".join(p.fingerprint for p in plans).encode()).hexdigest()
           for split, plans in plan.items()}
    return {"format_version": FORMAT_VERSION, "settings": settings.output_settings(),
            "plan": {split: {"shards": len(plan[split]), "fingerprint": fps[split]} for split in plan}}
