"""One record: its key, its shard's name, the checksum over a shard's records, and the checked read of one.

Every reader of a record's Datum and of its pixels comes through here (`read_datum`, `record_pixels`), so verify,
the loaders and the viz commands refuse the same records with the same sentence naming shard and key.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import hashlib
import os
from pathlib import Path

from alexnet_pipe.core.errors import ShardFormatError
from alexnet_pipe.shards.codec import Datum

if TYPE_CHECKING:  # annotations only: the module imports it where it is used
    import numpy as np


def record_key(index: int, relpath: str) -> bytes:
    """Caffe's key convention: the record's place in the split's shuffle, then its path. Lossless for file names
    that are not UTF-8: their bytes go into the key as they are on disk (os.fsencode undoes the surrogateescape
    that listing them put in); UTF-8 names give the same key as `.encode()`."""
    return f"{index:08d}_".encode() + os.fsencode(relpath)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class RecordChecksum:
    """sha256 over (key, value) pairs in key order: independent of LMDB's page layout."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, key: bytes, value: bytes) -> None:
        for part in (key, value):
            self._h.update(len(part).to_bytes(8, "little"))
            self._h.update(part)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


# --- one record, checked ---------------------------------------------------------------

class DamagedRecord(ShardFormatError):
    """A record that is not a Datum of this data dir; names the shard and the key."""

    def __init__(self, shard: Path | str, key: bytes, reason: str):
        super().__init__(f"record {key.decode(errors='replace')} of shard {shard} is damaged ({reason}): "
                         "run `alexnet-pipe verify` to list every damaged shard, delete those shard dirs and "
                         "run the same `alexnet-pipe prepare` command again to rewrite them")
        self.shard, self.key, self.reason = Path(shard), key, reason


def read_datum(shard: Path | str, key: bytes, value: bytes, num_classes: int | None = None) -> Datum:
    """The Datum stored under `key`; DamagedRecord (naming shard and key) where it is not one, or
    where its label is outside 0..num_classes-1."""
    try:
        datum = Datum.from_bytes(value)
    except ShardFormatError as exc:
        raise DamagedRecord(shard, key, f"not a Datum: {exc}") from None
    if num_classes is not None and not 0 <= datum.label < num_classes:
        raise DamagedRecord(shard, key, f"label {datum.label} outside 0..{num_classes - 1}")
    return datum


def record_pixels(shard: Path | str, key: bytes, datum: Datum, size: int) -> "np.ndarray":
    """The one record decoder: a record's image as uint8 (size, size, 3) RGB. JPEG/PNG are decoded by the image
    codec (shards.pixels: a truncated JPEG, which libjpeg would fill with grey, is refused), raw bytes reshaped;
    anything else is a DamagedRecord naming shard and key."""
    return record_rows(shard, key, datum, size, 0, size)[0]


def record_rows(shard: Path | str, key: bytes, datum: Datum, size: int, y0: int, y1: int) -> tuple["np.ndarray", int]:
    """record_pixels' rows y0 .. y1 at least: (uint8 (rows, size, 3) RGB of whole rows, top), the image's row y
    being the array's row y - top.  A JPEG written with a restart marker per MCU row (prepare's) is decoded only
    around those rows (shards.strips); any other record whole (top 0), with record_pixels' checks."""
    import numpy as np

    from alexnet_pipe.shards.pixels import Reject, decode_rgb, decode_rgb_rows  # OpenCV: not where nothing decodes
    if not datum.encoded:
        if len(datum.data) != size * size * 3:
            raise DamagedRecord(shard, key, f"{len(datum.data)} raw bytes, not {size}x{size}x3")
        return np.frombuffer(datum.data, np.uint8).reshape(size, size, 3), 0
    try:
        if y0 <= 0 and y1 >= size:
            pixels, top = decode_rgb(datum.data), 0
        else:  # a whole image here is `size` rows tall, or refused
            pixels, top = decode_rgb_rows(datum.data, y0, y1, size)
    except Reject as exc:
        raise DamagedRecord(shard, key, str(exc)) from None
    if pixels.shape[1:] != (size, 3) or (y0 <= 0 and y1 >= size and len(pixels) != size):
        raise DamagedRecord(shard, key, f"image shape {pixels.shape}, expected {(size, size, 3)}")
    return pixels, top
