"""Whether a data dir is ready for training or evaluation: a manifest, its shards, and the statistics."""
from __future__ import annotations

from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.manifest import MANIFEST, read_manifest, shard_dirs
from alexnet_pipe.stats.readers import MEAN, PCA


def check_data(root: Path | str, need_val: bool) -> dict:
    """Say which earlier stage to run when the data dir is not ready for training or evaluation; -> its manifest
    (read once here). need_val: evaluations are due, so the val split must exist too."""
    d = DataDir(Path(root))
    if not d.manifest.exists():
        raise UserError(f"{d.root} has no {MANIFEST}: run `alexnet-pipe prepare` first "
                        f"(or pass --data to the data dir it wrote)")
    if not ((d.stats / MEAN).exists() and (d.stats / PCA).exists()):
        raise UserError(f"{d.stats} lacks {MEAN} or {PCA}: run `alexnet-pipe stats --pca --data {d.root}` first")
    manifest = read_manifest(d.root)
    splits = manifest["splits"]
    if "train" not in splits:
        raise UserError(f"{d.root} has no train split: run `alexnet-pipe prepare` with the training images")
    if need_val and "val" not in splits:
        raise UserError(f"{d.root} has no val split: prepare one, or pass --eval-every 0 (and --schedule step)")
    # before any worker starts: a deleted shard would otherwise fail inside every rank
    for split in ("train", "val") if need_val else ("train",):
        missing = [p for p in shard_dirs(d.root, split, manifest) if not p.is_dir()]
        if missing:
            raise UserError(f"{len(missing)} {split} shard dir(s) listed in {d.manifest} are missing "
                            f"({missing[0]}): run `alexnet-pipe prepare` again with the same settings to rewrite them")
    return manifest
