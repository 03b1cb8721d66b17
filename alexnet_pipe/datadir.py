"""Where every stage reads and writes: one data dir, laid out the same for all commands."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

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
