"""The records of a split: one cached read-only LMDB handle per (process, shard), and the index of every record.

Both loader backends read records through `RecordIndex`; the handles are cached per process because LMDB refuses
a second open of one env in a process and its handles must not cross fork().
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..shards import DamagedRecord, Datum, open_reader, read_datum, read_manifest, shard_dirs

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


class RecordIndex:
    """Every record of a split as (shard, key), in shard then key order; reads them by index."""

    def __init__(self, data: Path, split: str):
        manifest = read_manifest(Path(data))
        self.dirs = shard_dirs(Path(data), split, manifest)
        settings = manifest.get("settings", {})
        self.size = int(settings.get("size", 256))
        self.encoded = settings.get("encoding", "jpeg") != "raw"
        self.num_classes = len(manifest.get("classes", []))
        self.keys: list[bytes] = []
        shard_of = []
        for i, path in enumerate(self.dirs):
            keys = list(_txn(path).cursor().iternext(keys=True, values=False))
            self.keys += keys
            shard_of += [i] * len(keys)
        self.shard_of = np.asarray(shard_of, np.int32)
        release_shards()
        if not self.keys:
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

    def damaged(self, i: int, reason: str) -> DamagedRecord:
        """The error for record i when its pixels cannot be had (a decoder refused them)."""
        return DamagedRecord(self.dirs[self.shard_of[i]], self.keys[i], reason)

    def pixels(self, datum: Datum, i: int | None = None) -> np.ndarray:
        """The (S, S, 3) uint8 array of a raw record (record i, named in the error when given)."""
        flat = np.frombuffer(datum.data, np.uint8)
        if flat.size != self.size * self.size * 3:
            reason = f"a raw record holds {flat.size} bytes, not {self.size}x{self.size}x3"
            raise self.damaged(i, reason) if i is not None else UserError(reason)
        return flat.reshape(self.size, self.size, 3)


def decode_rgb(datum, index: RecordIndex, i: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB of record i (OpenCV for JPEG; EXIF orientation ignored as in prepare); a record that
    does not decode to that is one sentence naming its shard and key."""
    if not datum.encoded:
        return index.pixels(datum, i)
    from ..images import decode_stored_jpeg
    rgb = decode_stored_jpeg(datum.data)
    if rgb is None or rgb.shape != (index.size, index.size, 3):
        raise index.damaged(i, f"does not decode to a {index.size}x{index.size} RGB image")
    return rgb
