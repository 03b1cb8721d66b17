"""The small files prepare leaves for every later stage: the data dir's manifest, each shard's meta, the rejects.

This module is the one that names them and the one way to write and read them back; every reader gets a checked
document (docs/format.md) or one ShardFormatError sentence naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from alexnet_pipe.core import metadata
from alexnet_pipe.core.errors import ShardFormatError
from alexnet_pipe.core.files import atomic_write, write_json_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"  # the data dir's: settings, classes, each split's shards; written last by prepare
SHARD_META = "meta.json"  # per-shard record count, bytes, checksum, rejects
REJECTS = "rejects.jsonl"  # the data dir's (every rejected input) and each shard's (its own)
_PREPARE_AGAIN = "run `alexnet-pipe prepare` again"
_REWRITE_SHARD = "delete that shard dir and run the same `alexnet-pipe prepare` command again"


Count = Annotated[int, Field(ge=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ShardEntry(metadata.Strict):
    name: Annotated[str, Field(pattern=r"^shard-\d{5,}$")]
    records: Count
    bytes: Count
    checksum: Sha256


class Split(metadata.Strict):
    count: Count
    rejects: Count
    shards: list[ShardEntry]

    @model_validator(mode="after")
    def _each_shard_once(self):
        names = [s.name for s in self.shards]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # two entries, one shard dir: its records would be read twice
            raise ValueError(f"it lists {twice[0]} twice")
        return self


class OutputSettings(metadata.Strict):
    """What prepare wrote with (ingest/plan.py output_settings); older manifests carry only some."""
    size: Annotated[int, Field(ge=1)]
    quality: Annotated[int, Field(ge=1, le=100)] = 90
    encoding: Literal["jpeg", "raw"] = "jpeg"
    resize: str = "area"
    reduce: bool = True
    seed: int = 0
    shards: Annotated[int, Field(ge=1)] | None = None
    shard_size: Annotated[int, Field(ge=1)] | None = None


class SourceInfo(metadata.Strict):
    layout: str
    val_labels: str | None = None


class ClassName(metadata.Strict):
    wnid: str
    name: str


class Manifest(metadata.Strict):
    format_version: int
    settings: OutputSettings
    source: SourceInfo | None = None
    classes: list[ClassName]
    splits: dict[str, Split]


class ShardMeta(ShardEntry):
    """A committed shard's meta.json (shards/writer.py, ingest/writing.py)."""
    split: str | None = None
    first_index: Count | None = None
    last_index: Annotated[int, Field(ge=-1)] | None = None
    rejects: Count | None = None
    fingerprint: str | None = None
    keys_sha256: Sha256 | None = None


class Reject(metadata.Strict):
    """One rejected input: the data dir's rows, and a shard's (which carry the record's key index)."""
    path: str
    split: str
    reason: str
    key_index: Count | None = None


def read_manifest(data_dir: Path) -> dict:
    """manifest.json of a data dir, checked against its format: ShardFormatError naming it otherwise."""
    path = Path(data_dir) / MANIFEST
    what = "a manifest written by `alexnet-pipe prepare`"
    text = metadata.read_text(path, what, _PREPARE_AGAIN,
                              missing=f"no {MANIFEST} in {data_dir}: run `alexnet-pipe prepare` first")
    try:
        manifest = metadata.parse_json(text)
    except ValueError as exc:
        raise ShardFormatError(f"{path} is unreadable ({exc}); {_PREPARE_AGAIN}") from None
    if isinstance(manifest, dict) and "format_version" in manifest and manifest["format_version"] != FORMAT_VERSION:
        raise ShardFormatError(f"{path} has format version {manifest.get('format_version')}, "
                               f"this alexnet-pipe reads {FORMAT_VERSION}")
    return metadata.check_model(manifest, Manifest, path, what, _PREPARE_AGAIN)


def shard_dirs(data_dir: Path, split: str, manifest: dict | None = None) -> list[Path]:
    """The LMDB directories of one split, in shard order, as the manifest lists them."""
    manifest = manifest or read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise ShardFormatError(f"{data_dir} has no '{split}' split")
    dirs = [Path(data_dir) / split / s["name"] for s in manifest["splits"][split]["shards"]]
    for folder, entry in zip(dirs, manifest["splits"][split]["shards"]):
        problem = shard_mismatch(folder, entry)
        if problem:
            raise ShardFormatError(f"shard {folder} is not the one {Path(data_dir) / MANIFEST} lists ({problem}): "
                                   f"{_REWRITE_SHARD}")
    return dirs


def shard_mismatch(shard_dir: Path, entry: dict) -> str | None:
    """Why a committed shard is not the manifest's entry (a copy of another shard, one from another prepare),
    or None. A missing or unreadable meta.json is left to the readers that need it (the LMDB is the authority)."""
    meta = read_shard_meta(shard_dir)
    if meta is None:
        return None
    if meta["name"] != Path(shard_dir).name:
        return f"its {SHARD_META} names {meta['name']}"
    for key in ("checksum", "records"):
        if meta[key] != entry[key]:
            return f"its {SHARD_META} has {key} {str(meta[key])[:16]}, the manifest {str(entry[key])[:16]}"
    return None


def write_manifest(data_dir: Path, manifest: dict) -> None:
    write_json_atomic(Path(data_dir) / MANIFEST, manifest)


def load_shard_meta(shard_dir: Path) -> dict | None:
    """The meta.json of a shard, checked; None where it is absent (the shard is not committed)."""
    path = Path(shard_dir) / SHARD_META
    if not os.path.lexists(path):
        return None
    return metadata.read_model(path, ShardMeta, "a shard's meta.json", _REWRITE_SHARD)


def read_shard_meta(shard_dir: Path) -> dict | None:
    """The checked meta of a committed shard, or None where the shard is absent, incomplete or its
    meta.json damaged (prepare then writes the shard again)."""
    try:
        return load_shard_meta(shard_dir)
    except ShardFormatError:
        return None


def write_shard_meta(shard_dir: Path, meta: dict) -> None:
    write_json_atomic(Path(shard_dir) / SHARD_META, meta)


def read_rejects(path: Path, hint: str = _PREPARE_AGAIN) -> list[dict]:
    """A rejects.jsonl (the data dir's or a shard's): one {"path", "split", "reason"} per line."""
    return metadata.read_model_lines(Path(path), Reject, "a rejects list written by `alexnet-pipe prepare`",
                                    hint)


def read_shard_rejects(shard_dir: Path) -> list[dict]:
    """The rejects.jsonl of a committed shard (its rows carry a "key_index" too), checked."""
    return read_rejects(Path(shard_dir) / REJECTS, _REWRITE_SHARD)


def write_rejects(path: Path, rows: list[dict]) -> None:
    """A rejects.jsonl, one row a line; readers see the old file or the new one."""
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
