"""Where every stage reads and writes: one data dir, laid out the same for all commands."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.shards.manifest import read_manifest, shard_dirs

ENV_VAR = "ALEXNET_PIPE_DATA"
DEFAULT = Path("alexnet-data")


def resolve(data: Path | str | None) -> Path:
    """--data, else $ALEXNET_PIPE_DATA, else ./alexnet-data (the CLI resolves the same way)."""
    if data:
        return Path(data)
    return Path(os.environ.get(ENV_VAR) or DEFAULT)


@dataclasses.dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.jsonl"

    @property
    def stats(self) -> Path:
        return self.root / "stats"

    @property
    def mean(self) -> Path:
        return self.stats / "mean.npy"

    @property
    def pca(self) -> Path:
        return self.stats / "pca.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def split(self, name: str) -> Path:
        return self.root / name


def check_data(root: Path | str, need_val: bool) -> dict:
    """Say which earlier stage to run when the data dir is not ready for training or evaluation; -> its manifest
    (read once here). need_val: evaluations are due, so the val split must exist too."""
    d = DataDir(Path(root))
    if not d.manifest.exists():
        raise UserError(f"{d.root} has no manifest.json: run `alexnet-pipe prepare` first "
                        f"(or pass --data to the data dir it wrote)")
    if not (d.mean.exists() and d.pca.exists()):
        raise UserError(f"{d.stats} lacks mean.npy or pca.json: run `alexnet-pipe stats --pca --data {d.root}` first")
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
            raise UserError(f"{len(missing)} {split} shard dir(s) listed in {d.manifest} are missing ({missing[0]}): "
                            "run `alexnet-pipe prepare` again with the same settings to rewrite them")
    return manifest
