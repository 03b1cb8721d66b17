"""The small files prepare leaves for every later stage: the data dir's manifest, each shard's meta, the rejects.

This module is the one that names them and the one way to write and read them back; every reader gets a checked
document (docs/format.md) or one ShardFormatError sentence naming the file.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from alexnet_pipe.core import metadata
from alexnet_pipe.core.errors import ShardFormatError
from alexnet_pipe.core.files import atomic_write, write_json_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"  # the data dir's: settings, classes, each split's shards; written last by prepare
SHARD_META = "meta.json"  # per-shard record count, bytes, checksum, rejects
REJECTS = "rejects.jsonl"  # the data dir's (every rejected input) and each shard's (its own)
_PREPARE_AGAIN = "run `alexnet-pipe prepare` again"
_REWRITE_SHARD = "delete that shard dir and run the same `alexnet-pipe prepare` command again"


@functools.cache
def _shapes():
    """The metadata formats (docs/format.md) as checks, built once on first use."""
    m = metadata
    shard_entry = {"name": m.string(r"shard-\d{5,}"), "records": m.integer(), "bytes": m.integer(),
                   "checksum": m.string(r"[0-9a-f]{64}")}
    split = m.record({"count": m.integer(), "rejects": m.integer(), "shards": m.list_of(m.record(shard_entry))})
    manifest = m.record({
        "format_version": m.anything,  # compared on its own, for a message naming both versions
        "settings": m.record({"size": m.integer(1)}, {"encoding": m.string("jpeg|raw"), "quality": m.integer(1, 100)}),
        "classes": m.list_of(m.record({"wnid": m.string(), "name": m.string()})),
        "splits": m.mapping_of(split)})
    meta = m.record(shard_entry, {"split": m.string(), "first_index": m.integer(), "last_index": m.integer(-1),
                                  "rejects": m.integer(), "fingerprint": m.string(),
                                  "keys_sha256": m.string(r"[0-9a-f]{64}")})
    reject = m.record({"path": m.string(), "split": m.string(), "reason": m.string()})
    return manifest, meta, reject


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
    return metadata.check_document(manifest, _shapes()[0], path, what, _PREPARE_AGAIN)


def shard_dirs(data_dir: Path, split: str, manifest: dict | None = None) -> list[Path]:
    """The LMDB directories of one split, in shard order, as the manifest lists them."""
    manifest = manifest or read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise ShardFormatError(f"{data_dir} has no '{split}' split")
    return [Path(data_dir) / split / s["name"] for s in manifest["splits"][split]["shards"]]


def write_manifest(data_dir: Path, manifest: dict) -> None:
    write_json_atomic(Path(data_dir) / MANIFEST, manifest)


def load_shard_meta(shard_dir: Path) -> dict | None:
    """The meta.json of a shard, checked; None where it is absent (the shard is not committed)."""
    path = Path(shard_dir) / SHARD_META
    if not os.path.lexists(path):
        return None
    return metadata.read_json(path, _shapes()[1], "a shard's meta.json", _REWRITE_SHARD)


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
    return metadata.read_json_lines(Path(path), _shapes()[2], "a rejects list written by `alexnet-pipe prepare`",
                                    hint)


def read_shard_rejects(shard_dir: Path) -> list[dict]:
    """The rejects.jsonl of a committed shard (its rows carry a "key_index" too), checked."""
    return read_rejects(Path(shard_dir) / REJECTS, _REWRITE_SHARD)


def write_rejects(path: Path, rows: list[dict]) -> None:
    """A rejects.jsonl, one row a line; readers see the old file or the new one."""
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
