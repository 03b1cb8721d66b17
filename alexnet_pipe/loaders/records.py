"""The records of a split: one cached read-only LMDB handle per (process, shard), and the index of every record.

Both loader backends read records through `RecordIndex`; the handles are cached per process because LMDB refuses
a second open of one env in a process and its handles must not cross fork().
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from alexnet_pipe.core.errors import ShardFormatError, UserError
from alexnet_pipe.shards.codec import Datum
from alexnet_pipe.shards.keyindex import Keys, key_index_problem
from alexnet_pipe.shards.lmdbfile import open_reader
from alexnet_pipe.shards.manifest import SHARD_META, load_shard_meta, read_manifest, shard_dirs
from alexnet_pipe.shards.records import read_datum, record_pixels, record_rows

_TXNS: dict[tuple[int, str], tuple] = {}


def _txn(path: Path):
    """One read-only LMDB env and read transaction per (process, shard).

    LMDB refuses a second open of one env in a process, and its handles must not cross fork(),
    so they are cached by pid; DataLoader workers open their own on first use.
    """
    key = (os.getpid(), str(path))
    if key not in _TXNS:
        for stale in [k for k in _TXNS if k[1] == key[1]]:  # inherited through fork: let go
            env, txn = _TXNS.pop(stale)
            txn.abort()
            env.close()
        env = open_reader(path)
        _TXNS[key] = (env, env.begin(buffers=False))
    return _TXNS[key][1]


def release_shards() -> None:
    """Close this process's cached LMDB handles (reads reopen them on demand).

    The loaders call it when an epoch ends and on close(), so that other code in the process
    (decode.iter_decoded, shards.iter_records) can open the same shards between epochs.
    """
    for key in [k for k in _TXNS if k[0] == os.getpid()]:
        env, txn = _TXNS.pop(key)
        txn.abort()
        env.close()


def _shard_keys(path: Path) -> Keys:
    """A shard's keys in LMDB's order: from its keys.bin, or where it has none (written before key files) or
    one that disagrees with meta.json, from an LMDB cursor, which reads every page of the key tree (seconds per
    shard on a cold page cache, where keys.bin is one sequential read)."""
    try:
        keys, problem = key_index_problem(path, load_shard_meta(path))
    except ShardFormatError as exc:  # a damaged meta.json: the LMDB itself may be fine, and stays the authority
        keys, problem = None, f"its {SHARD_META} is unreadable ({exc})"
    if keys is not None:
        return keys
    if problem:  # the records read from LMDB are right; only the start is slower. Say so, once per shard.
        print(f"note: shard {path}: {problem}; listing its keys from LMDB instead (slower start). "
              "`alexnet-pipe verify` checks the shard; re-preparing it rewrites the file", file=sys.stderr)
    return Keys.from_list(list(_txn(path).cursor().iternext(keys=True, values=False)))


class RecordIndex:
    """Every record of a split as (shard, key), in shard then key order; reads them by index."""

    def __init__(self, data: Path, split: str):
        manifest = read_manifest(Path(data))
        self.dirs = shard_dirs(Path(data), split, manifest)
        settings = manifest.get("settings", {})
        self.size = int(settings.get("size", 256))
        self.encoded = settings.get("encoding", "jpeg") != "raw"
        self.num_classes = len(manifest.get("classes", []))
        parts = [_shard_keys(path) for path in self.dirs]
        self.keys = Keys.concat(parts)  # keys[i] is record i's key, as bytes
        self.shard_of = np.repeat(np.arange(len(parts), dtype=np.int32), [len(p) for p in parts])
        release_shards()
        if not len(self.keys):
            raise UserError(f"the {split} split of {data} holds no records")

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int) -> Datum:
        """Record i; a damaged one is one sentence naming its shard and key (shards.DamagedRecord)."""
        shard, key = self.dirs[self.shard_of[i]], self.keys[i]
        value = _txn(shard).get(key)
        if value is None:
            raise UserError(f"record {key!r} vanished from {shard}")
        return read_datum(shard, key, value, self.num_classes or None)

    def pixels(self, datum: Datum, i: int) -> np.ndarray:
        """The (S, S, 3) uint8 RGB of record i, by the shards' one record decoder (decoded, or a raw record's
        bytes reshaped); a record that is not that is one sentence naming its shard and key."""
        return record_pixels(self.dirs[self.shard_of[i]], self.keys[i], datum, self.size)

    def rows(self, datum: Datum, i: int, y0: int, y1: int) -> tuple[np.ndarray, int]:
        """(whole rows of record i holding its rows y0 .. y1, the first one's row in the image): a prepared JPEG
        record is decoded only around them (shards.strips), any other whole (top 0)."""
        return record_rows(self.dirs[self.shard_of[i]], self.keys[i], datum, self.size, y0, y1)


def decode_rgb(datum, index: RecordIndex, i: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB of record i (EXIF orientation ignored, as in prepare): RecordIndex.pixels."""
    return index.pixels(datum, i)
