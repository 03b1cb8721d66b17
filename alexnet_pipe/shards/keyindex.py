"""A shard's key index (keys.bin): its keys in LMDB's order, so loaders need not read every LMDB page to list them.

keys.bin: magic, count u64le, (count + 1) offsets u64le into the blob, the keys joined. Offsets rather than
separators because a key may hold any byte (prepare writes raw-byte keys for non-UTF-8 file names). meta.json
holds its sha256, so a reader trusts the file only where both agree.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from alexnet_pipe.core.files import UnreadableFile, atomic_write, read_regular_bytes
from alexnet_pipe.shards.manifest import SHARD_META

if TYPE_CHECKING:  # annotations only: the module imports it where it is used
    import numpy as np

KEY_INDEX = "keys.bin"
_KEYS_MAGIC = b"APKEYS1\n"
_KEYS_HEAD = struct.Struct("<8sQ")


class Keys:
    """A sequence of keys as one bytes blob and an offsets array: ~45 bytes a key instead of a Python object
    each (~110 MB at ImageNet's 1.28 M in every loader process), and built without a Python loop."""

    def __init__(self, blob: bytes, offsets: "np.ndarray"):
        self.blob, self.offsets = blob, offsets  # offsets: uint64 (n + 1,), offsets[0] == 0, last == len(blob)

    @classmethod
    def from_list(cls, keys: list[bytes]) -> "Keys":
        import numpy as np
        offsets = np.zeros(len(keys) + 1, np.uint64)
        np.cumsum([len(k) for k in keys], out=offsets[1:])
        return cls(b"".join(keys), offsets)

    @classmethod
    def concat(cls, parts: list["Keys"]) -> "Keys":
        import numpy as np
        starts = np.cumsum([0] + [len(p.blob) for p in parts], dtype=np.uint64)
        offsets = np.concatenate([np.zeros(1, np.uint64)] + [p.offsets[1:] + s for p, s in zip(parts, starts)])
        return cls(b"".join(p.blob for p in parts), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.blob[int(self.offsets[i]):int(self.offsets[i + 1])]

    def __iter__(self) -> Iterator[bytes]:
        bounds = self.offsets.tolist()
        return (self.blob[a:b] for a, b in zip(bounds, bounds[1:]))

    def to_file_bytes(self) -> bytes:
        return _KEYS_HEAD.pack(_KEYS_MAGIC, len(self)) + self.offsets.astype("<u8").tobytes() + self.blob


def key_index_problem(shard_dir: Path, meta: dict | None) -> tuple["Keys | None", str | None]:
    """(the keys of keys.bin, None) where the file is there and agrees with meta.json (its digest, the record
    count); (None, None) for a shard written before key files (no digest in meta.json: nothing is wrong);
    (None, why) where meta.json promises a key file that is missing, damaged or inconsistent."""
    import numpy as np
    if meta is None or "keys_sha256" not in meta:
        return None, None
    path = Path(shard_dir) / KEY_INDEX
    try:
        raw = read_regular_bytes(path)
    except FileNotFoundError:
        return None, f"{KEY_INDEX} is missing"
    except UnreadableFile as exc:
        return None, f"{KEY_INDEX} cannot be read ({exc.reason})"
    # the digest covers every byte, so past it only a writer bug could make the checks below fail
    if hashlib.sha256(raw).hexdigest() != meta["keys_sha256"]:
        return None, f"{KEY_INDEX} differs from the digest in {SHARD_META}"
    if len(raw) < _KEYS_HEAD.size:
        return None, f"{KEY_INDEX} is truncated"
    magic, count = _KEYS_HEAD.unpack_from(raw)
    end = _KEYS_HEAD.size + 8 * (count + 1)
    if magic != _KEYS_MAGIC or count != meta["records"] or len(raw) < end:
        return None, f"{KEY_INDEX} does not hold {meta['records']} keys"
    offsets = np.frombuffer(raw, "<u8", count + 1, _KEYS_HEAD.size).astype(np.uint64)
    blob = raw[end:]
    # every key non-empty (LMDB has no empty key), so offsets strictly increase
    if offsets[0] != 0 or offsets[-1] != len(blob) or (np.diff(offsets.astype(np.int64)) <= 0).any():
        return None, f"{KEY_INDEX} has inconsistent offsets"
    return Keys(blob, offsets), None


def write_key_index(shard_dir: Path, keys: list[bytes]) -> str:
    """keys.bin of a shard from its keys in LMDB's order; -> the file's sha256, for meta.json."""
    data = Keys.from_list(keys).to_file_bytes()
    with atomic_write(Path(shard_dir) / KEY_INDEX, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()
