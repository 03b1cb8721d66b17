"""The shard format: Caffe ``Datum`` records in LMDB environments, plus the manifest.

Caffe's ``Datum`` is a protobuf message; we need five of its fields, so the wire format
is written by hand here instead of pulling in protobuf (the codec is ~40 lines and
tested against a reference encoding).  Field numbers are Caffe's (caffe.proto):

    message Datum { int32 channels = 1; int32 height = 2; int32 width = 3;
                    bytes data = 4; int32 label = 5; repeated float float_data = 6;
                    bool encoded = 7; }
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import struct
from pathlib import Path
from typing import Iterator

from alexnet_pipe.core.errors import ShardFormatError
from alexnet_pipe.core.files import UnreadableFile, atomic_write, fsync_path, read_regular_bytes, write_json_atomic

FORMAT_VERSION = 1
SHARD_STATS = "stats.npz"  # per-shard sufficient statistics, inside the shard dir
SHARD_META = "meta.json"  # per-shard record count, bytes, checksum, rejects
KEY_INDEX = "keys.bin"  # per-shard keys in LMDB's order, so loaders need not read every LMDB page to list them
# The map size a shard starts with; it doubles as the shard grows. LMDB stores the last one in the
# meta page, and every reader that sets none (DALI, Caffe's own reader) reserves that much address
# space per shard: 1 TiB, as shards were once written, let DALI open only ~126 shards per process
# (docs/format.md). Growing from 64 MiB keeps the stored size under twice the data.
INITIAL_MAP_SIZE = 64 << 20


# --- protobuf wire format -------------------------------------------------------------

def varint(value: int) -> bytes:
    if value < 0:  # int32 negatives are sign-extended to 10 bytes on the wire
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10  # a 64-bit value in 7-bit groups


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A varint as protobuf reads it: at most 10 bytes, bits beyond 64 dropped."""
    result = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise ShardFormatError("truncated varint")
        byte = buf[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result & ((1 << 64) - 1), pos + i + 1
    raise ShardFormatError("varint longer than 10 bytes")


def _int32(value: int) -> int:
    """protobuf's int32 from a varint: the low 32 bits, two's complement (so 0xFFFFFFFF is -1)."""
    value &= (1 << 32) - 1
    return value - (1 << 32) if value >= 1 << 31 else value


def _read_field(buf: bytes, pos: int) -> tuple[int, int, object, int]:
    key, pos = _read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if not 0 < number < 1 << 29:  # protobuf's range of field numbers
        raise ShardFormatError(f"field number {number} out of range")
    if wire == VARINT:
        value, pos = _read_varint(buf, pos)
        return number, wire, value, pos
    if wire == LENGTH_DELIMITED:
        length, pos = _read_varint(buf, pos)
    elif wire in (FIXED32, FIXED64):
        length = 4 if wire == FIXED32 else 8
    else:  # 3 and 4 are proto1 groups, which no Datum holds; 6 and 7 do not exist
        raise ShardFormatError(f"unsupported wire type {wire} (field {number})")
    if length > len(buf) - pos:
        raise ShardFormatError(f"field {number} is truncated ({length} bytes announced, {len(buf) - pos} left)")
    return number, wire, buf[pos:pos + length], pos + length


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of a protobuf message; any malformation is a
    ShardFormatError."""
    pos = 0
    while pos < len(buf):
        number, wire, value, pos = _read_field(buf, pos)
        yield number, wire, value


def encode_field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def encode_field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


@dataclasses.dataclass(frozen=True)
class Datum:
    data: bytes
    label: int
    encoded: bool
    channels: int = 3
    height: int = 0
    width: int = 0

    def to_bytes(self) -> bytes:
        parts = [encode_field_varint(1, self.channels), encode_field_varint(2, self.height),
                 encode_field_varint(3, self.width), encode_field_bytes(4, self.data),
                 encode_field_varint(5, self.label)]
        if self.encoded:
            parts.append(encode_field_varint(7, 1))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, buf: bytes) -> "Datum":
        """Parse a Datum; anything that is not one (wrong wire type, truncation) is a ShardFormatError.

        Fields come last-one-wins and unknown fields are skipped, as protobuf does; a field this
        reads (not float_data) in another wire type, which protobuf would keep aside as unknown,
        is refused here: it would otherwise read as an empty image or label 0.
        """
        fields = {1: 0, 2: 0, 3: 0, 4: b"", 5: 0, 7: 0}
        for number, wire, value in iter_fields(buf):
            if number in fields:
                if wire != _DATUM_WIRE[number]:
                    raise ShardFormatError(f"field {number} ({_DATUM_NAMES[number]}) has wire type {wire}, "
                                           f"a Datum has {_DATUM_WIRE[number]}")
                fields[number] = value
            elif number == 6 and wire == LENGTH_DELIMITED and len(value) % 4:
                raise ShardFormatError(f"packed float_data of {len(value)} bytes, not a multiple of 4")
        return cls(data=bytes(fields[4]), label=_int32(fields[5]), encoded=bool(fields[7]),
                   channels=_int32(fields[1]), height=_int32(fields[2]), width=_int32(fields[3]))


_DATUM_NAMES = {1: "channels", 2: "height", 3: "width", 4: "data", 5: "label", 7: "encoded"}
_DATUM_WIRE = {1: VARINT, 2: VARINT, 3: VARINT, 4: LENGTH_DELIMITED, 5: VARINT, 7: VARINT}


# --- keys, names, checksums -----------------------------------------------------------

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


# --- LMDB access ----------------------------------------------------------------------

def _unreadable(path: Path | str, exc: Exception) -> ShardFormatError:
    err = ShardFormatError(f"shard {path} is missing or unreadable ({exc}): run `alexnet-pipe verify` to see "
                           "which shards are damaged, then `alexnet-pipe prepare` again to rewrite them")
    err.reason = str(exc)  # the bare lmdb text, for verify's own report
    return err


def _damaged_lmdb(path: Path | str, why: str) -> ShardFormatError:
    err = ShardFormatError(f"shard {path} is damaged ({why}): delete that shard dir and run the same "
                           "`alexnet-pipe prepare` command again to rewrite it")
    err.reason = why
    return err


@dataclasses.dataclass(frozen=True)
class LmdbMeta:
    """What an LMDB environment's meta page says (the newer of its two)."""
    psize: int  # page size
    map_size: int  # address space every process that opens it without its own map size reserves
    last_pgno: int  # last page in use: the file holds at least (last_pgno + 1) * psize bytes
    txnid: int
    entries: int

    @property
    def bytes_needed(self) -> int:
        return (self.last_pgno + 1) * self.psize


# LMDB 0.9 on 64-bit little-endian hosts (its files are not portable): a 16-byte page header, then
# MDB_meta {u32 magic, u32 version, void *address, size_t mapsize, MDB_db dbs[2], pgno last_pg,
# txnid}; MDB_db {u32 pad, u16 flags, u16 depth, pgno branch, leaf, overflow, size_t entries,
# pgno root}; the page size is stored in dbs[0].pad.
_META = struct.Struct("<IIQQ48s48sQQ")
_DB = struct.Struct("<IHHQQQQQ")
_META_OFFSET = 16
LMDB_MAGIC, LMDB_VERSION = 0xBEEFC0DE, 1
_MAX_PSIZE = 1 << 16


def _parse_meta(page: bytes) -> LmdbMeta | None:
    if len(page) < _META_OFFSET + _META.size:
        return None
    magic, version, _address, map_size, free_db, main_db, last_pgno, txnid = _META.unpack_from(page, _META_OFFSET)
    if magic != LMDB_MAGIC or version != LMDB_VERSION:
        return None
    return LmdbMeta(_DB.unpack(free_db)[0], map_size, last_pgno, txnid, _DB.unpack(main_db)[6])


def read_lmdb_meta(path: Path | str) -> LmdbMeta:
    """The meta page of a shard's data.mdb, read with plain file reads: no page is mapped, so a
    truncated file cannot kill the process with SIGBUS, as a reader mapping it would."""
    try:
        head = read_regular_bytes(Path(path) / "data.mdb", limit=2 * _MAX_PSIZE)
    except FileNotFoundError:
        raise _unreadable(path, "no data.mdb") from None
    except UnreadableFile as exc:
        raise _unreadable(path, f"data.mdb: {exc.reason}") from None
    first = _parse_meta(head)
    if first is None or not 512 <= first.psize <= _MAX_PSIZE or first.psize & (first.psize - 1):
        raise _damaged_lmdb(path, "data.mdb does not start with an LMDB meta page")
    second = _parse_meta(head[first.psize:])
    return first if second is None or second.txnid < first.txnid else second


def check_lmdb(path: Path | str) -> LmdbMeta:
    """The meta page of a shard whose data.mdb holds every page it says is in use; ShardFormatError
    naming the shard otherwise. Readers that map the file themselves (DALI) call it first."""
    meta = read_lmdb_meta(path)
    size = os.stat(Path(path) / "data.mdb").st_size
    if size < meta.bytes_needed:
        raise _damaged_lmdb(path, f"data.mdb is truncated: {size} bytes, its LMDB header says "
                                  f"{meta.bytes_needed} are in use")
    return meta


def open_reader(path: Path | str):
    """A read-only LMDB environment; a missing, truncated or damaged shard raises ShardFormatError.

    Every reader of a shard comes through here: the file size is checked against the meta page
    before LMDB maps a single data page."""
    import lmdb
    check_lmdb(path)
    try:
        # bytes: LMDB encodes a str path as strict UTF-8, and a name that is not UTF-8 raised UnicodeEncodeError
        return lmdb.open(os.fsencode(path), readonly=True, lock=False, readahead=False, subdir=True,
                         max_readers=512)
    except lmdb.Error as exc:  # every lmdb failure type derives from lmdb.Error
        raise _unreadable(path, exc) from None


def iter_records(path: Path | str) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) of one shard in key order."""
    import lmdb
    env = open_reader(path)
    try:
        with env.begin(buffers=False) as txn:
            yield from txn.cursor()
    except lmdb.Error as exc:  # a page damaged after the environment opened
        raise _unreadable(path, exc) from None
    finally:
        env.close()


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
    """A record's image as uint8 (size, size, 3) RGB: JPEG/PNG decoded (a truncated JPEG, which
    libjpeg would fill with grey, is refused), raw bytes reshaped; DamagedRecord otherwise."""
    import numpy as np

    from alexnet_pipe.shards.pixels import Reject, decode_rgb
    if datum.encoded:
        try:
            pixels = decode_rgb(datum.data)
        except Reject as exc:
            raise DamagedRecord(shard, key, str(exc)) from None
    elif len(datum.data) == size * size * 3:
        pixels = np.frombuffer(datum.data, np.uint8).reshape(size, size, 3)
    else:
        raise DamagedRecord(shard, key, f"{len(datum.data)} raw bytes, not {size}x{size}x3")
    if pixels.shape != (size, size, 3):
        raise DamagedRecord(shard, key, f"image shape {pixels.shape}, expected {(size, size, 3)}")
    return pixels


# --- manifest, shard meta, rejects ------------------------------------------------------

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
_PREPARE_AGAIN = "run `alexnet-pipe prepare` again"


def _shapes():
    """The metadata formats (docs/format.md) as checks; built on first use, metadata imports this module."""
    from alexnet_pipe.core import metadata as m
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
    from alexnet_pipe.core import metadata
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


def load_shard_meta(shard_dir: Path) -> dict | None:
    """The meta.json of a shard, checked; None where it is absent (the shard is not committed)."""
    from alexnet_pipe.core import metadata
    path = Path(shard_dir) / SHARD_META
    if not os.path.lexists(path):
        return None
    return metadata.read_json(path, _shapes()[1], "a shard's meta.json",
                              "delete that shard dir and run the same `alexnet-pipe prepare` command again")


def read_rejects(path: Path) -> list[dict]:
    """A rejects.jsonl (the data dir's or a shard's): one {"path", "split", "reason"} per line."""
    from alexnet_pipe.core import metadata
    return metadata.read_json_lines(Path(path), _shapes()[2], "a rejects list written by `alexnet-pipe prepare`",
                                    _PREPARE_AGAIN)


# --- per-shard key index --------------------------------------------------------------

# keys.bin: magic, count u64le, (count + 1) offsets u64le into the blob, the keys joined. Offsets rather than
# separators because a key may hold any byte (prepare writes raw-byte keys for non-UTF-8 file names).
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


def read_key_index(shard_dir: Path, meta: dict | None = None) -> "Keys | None":
    """The keys of a shard from its keys.bin, in LMDB's order; None where there is none or it does not agree
    with meta.json (read from the shard when not given): the caller then lists the keys from LMDB."""
    if meta is None:
        meta = load_shard_meta(shard_dir)
    return key_index_problem(shard_dir, meta)[0]


# --- per-shard sufficient statistics --------------------------------------------------

@dataclasses.dataclass
class ShardStats:
    """Exact integer sums over the pixels of a set of records, as stored (decoded).

    pixel_sum[h, w, c]: sum over images of the pixel value (RGB) at each position;
    rgb_outer[i, j]: sum over every pixel of every image of x_i * x_j (RGB);
    count: number of images.  Merging is integer addition, so any shard order gives
    the same totals.
    """
    pixel_sum: "np.ndarray"
    rgb_outer: "np.ndarray"
    count: int = 0

    @classmethod
    def zeros(cls, size: int) -> "ShardStats":
        import numpy as np
        return cls(np.zeros((size, size, 3), np.int64), np.zeros((3, 3), np.int64), 0)

    def add_image(self, rgb: "np.ndarray") -> None:
        self.add_batch(rgb[None])

    def add_batch(self, batch: "np.ndarray") -> None:
        """Add uint8 images (B, S, S, 3) RGB; exact, and ~1.5x faster than one at a time."""
        import numpy as np
        if len(batch) == 0:
            return
        # uint8 sums of up to 2**23 images fit int32; the int64 total is kept across batches
        self.pixel_sum += batch.sum(axis=0, dtype=np.int32 if len(batch) < 1 << 23 else np.int64)
        self.rgb_outer += _outer_exact(batch.reshape(-1, 3))
        self.count += len(batch)

    def merge(self, other: "ShardStats") -> None:
        self.pixel_sum += other.pixel_sum
        self.rgb_outer += other.rgb_outer
        self.count += other.count

    def save(self, path: Path) -> None:
        import numpy as np
        with atomic_write(path, "wb") as f:
            np.savez(f, pixel_sum=self.pixel_sum, rgb_outer=self.rgb_outer,
                     count=np.int64(self.count))

    @classmethod
    def load(cls, path: Path) -> "ShardStats":
        """A stats.npz, checked: integer arrays of the documented shapes; ShardFormatError otherwise."""
        import io
        import zipfile

        import numpy as np
        try:
            with np.load(io.BytesIO(read_regular_bytes(path)), allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("pixel_sum", "rgb_outer", "count")}
        except FileNotFoundError:
            raise ShardFormatError(f"{path} is missing") from None
        except UnreadableFile as exc:
            raise ShardFormatError(f"{path} cannot be read ({exc.reason})") from None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ShardFormatError(f"{path} is damaged ({str(exc).splitlines()[0][:80]})") from None
        pixel_sum, rgb_outer, count = arrays["pixel_sum"], arrays["rgb_outer"], arrays["count"]
        if any(a.dtype.kind not in "iu" for a in arrays.values()) or count.shape != ():
            raise ShardFormatError(f"{path} holds arrays of other types than the integer sums it should")
        if pixel_sum.ndim != 3 or pixel_sum.shape[2] != 3 or rgb_outer.shape != (3, 3):
            raise ShardFormatError(f"{path} has arrays of the wrong shape")
        return cls(pixel_sum.astype(np.int64), rgb_outer.astype(np.int64), int(count))


def _outer_exact(x: "np.ndarray") -> "np.ndarray":
    """sum over rows of x x^T for uint8 x (N, 3), exactly.

    255 * 255 fits uint16, so each of the six channel products is one uint16 multiply and an
    exact uint64 sum: about twice as fast as float matmuls here, and exact by construction.
    """
    import numpy as np
    planes = [x[:, c].astype(np.uint16) for c in range(3)]
    out = np.empty((3, 3), np.int64)
    for i in range(3):
        for j in range(i, 3):
            out[i, j] = out[j, i] = np.multiply(planes[i], planes[j], dtype=np.uint16).sum(dtype=np.uint64)
    return out


# --- writing a shard ------------------------------------------------------------------

class ShardWriter:
    """Writes one shard to a hidden temp dir and renames it into place on commit.

    A shard dir under its final name is therefore always complete and synced: a run
    killed at any moment leaves at most a `.shard-NNNNN.tmp-PID` dir, which the next
    run deletes.  Records must come in increasing key order (the checksum relies on it).
    """
    TXN_RECORDS = 256
    INITIAL_MAP_SIZE = INITIAL_MAP_SIZE
    # LMDB sizes lock.mdb with ftruncate and writes it through a shared map: on a full disk (tmpfs) that sparse
    # page is SIGBUS, a dead process instead of ENOSPC. Its blocks are allocated first (8 KiB is what LMDB takes
    # for its default 126 readers; a larger existing file it keeps as it is).
    LOCK_BYTES = 16 << 10

    def __init__(self, final_dir: Path, size: int):
        import lmdb
        self.final_dir = Path(final_dir)
        self.tmp_dir = self.final_dir.with_name(f".{self.final_dir.name}.tmp-{os.getpid()}")
        self.tmp_dir.mkdir(parents=True)
        try:
            _allocate(self.tmp_dir / "lock.mdb", self.LOCK_BYTES)
            self.env = lmdb.open(os.fsencode(self.tmp_dir), map_size=self.INITIAL_MAP_SIZE, subdir=True, sync=False,
                                 metasync=False, lock=True)
        except BaseException:  # a full disk, most likely: leave no temp dir behind
            import shutil
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            raise
        self.map_size = self.INITIAL_MAP_SIZE
        self.txn = self.env.begin(write=True)
        self.pending: list[tuple[bytes, bytes]] = []  # this transaction's records, replayed after a resize
        self.stats = ShardStats.zeros(size)
        self.checksum = RecordChecksum()
        self.records = 0
        self.bytes = 0
        self._last_key = b""
        self.keys: list[bytes] = []  # written as keys.bin at commit

    def put(self, key: bytes, value: bytes) -> None:
        if key <= self._last_key:
            raise ValueError(f"keys must increase: {key!r} after {self._last_key!r}")
        self._last_key = key
        self.keys.append(key)
        self.pending.append((key, value))
        self._put(key, value)
        self.checksum.update(key, value)
        self.records += 1
        self.bytes += len(value)
        if len(self.pending) >= self.TXN_RECORDS:
            self._commit_txn()
            self.txn = self.env.begin(write=True)

    def _put(self, key: bytes, value: bytes) -> None:
        import lmdb
        try:
            self.txn.put(key, value, overwrite=False)
        except lmdb.MapFullError:
            self._grow_and_rewrite()

    def _grow_and_rewrite(self) -> None:
        """The map is full and the transaction void: double the map, write this transaction's records again."""
        import lmdb
        while True:
            with contextlib.suppress(lmdb.Error):  # a failed commit has already ended the transaction
                self.txn.abort()
            self.map_size *= 2
            self.env.set_mapsize(self.map_size)
            self.txn = self.env.begin(write=True)
            try:
                for k, v in self.pending:
                    self.txn.put(k, v, overwrite=False)
                return
            except lmdb.MapFullError:
                continue

    def _commit_txn(self) -> None:
        import lmdb
        while True:
            try:
                self.txn.commit()
                break
            except lmdb.MapFullError:  # the pages written at commit (free list) did not fit
                self._grow_and_rewrite()
        self.pending = []

    def commit(self, extra_meta: dict | None = None) -> dict:
        """Sync everything, then make the shard visible under its final name."""
        self._commit_txn()
        self.env.sync(True)
        self.env.close()
        self.stats.save(self.tmp_dir / SHARD_STATS)
        # LMDB's default order is bytewise, shorter first on a common prefix: bytes' own order, which put()
        # enforces, so the keys as put are the keys in the cursor's order
        keys = Keys.from_list(self.keys).to_file_bytes()
        with atomic_write(self.tmp_dir / KEY_INDEX, "wb") as f:
            f.write(keys)
        meta = {"name": self.final_dir.name, "records": self.records, "bytes": self.bytes,
                "checksum": self.checksum.hexdigest(), **(extra_meta or {}),
                "keys_sha256": hashlib.sha256(keys).hexdigest()}
        write_json_atomic(self.tmp_dir / SHARD_META, meta)
        fsync_path(self.tmp_dir / "data.mdb")
        os.replace(self.tmp_dir, self.final_dir)
        fsync_path(self.final_dir.parent)
        return meta

    def abort(self) -> None:
        import shutil
        try:
            self.txn.abort()
            self.env.close()
        finally:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _allocate(path: Path, size: int) -> None:
    """A file of `size` bytes whose blocks are allocated: ENOSPC here, never SIGBUS when mapped later."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def read_shard_meta(shard_dir: Path) -> dict | None:
    """The checked meta of a committed shard, or None where the shard is absent, incomplete or its
    meta.json damaged (prepare then writes the shard again)."""
    try:
        return load_shard_meta(shard_dir)
    except ShardFormatError:
        return None
