"""Where every stage reads and writes: one data dir, laid out the same for all commands."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from alexnet_pipe.shards.manifest import MANIFEST, REJECTS

ENV_VAR = "ALEXNET_PIPE_DATA"
DEFAULT = Path("alexnet-data")


def resolve(data: Path | str | None) -> Path:
    """--data, else $ALEXNET_PIPE_DATA, else ./alexnet-data (the CLI resolves the same way)."""
    if data:
        return Path(data)
    return Path(os.environ.get(ENV_VAR) or DEFAULT)


@dataclasses.dataclass(frozen=True)
class DataDir:
    """The places in a data dir; the files in them are named by their owners (shards.manifest, stats.readers)."""
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def rejects(self) -> Path:
        return self.root / REJECTS

    @property
    def stats(self) -> Path:
        return self.root / "stats"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def split(self, name: str) -> Path:
        return self.root / name
