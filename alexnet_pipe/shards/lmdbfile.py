"""A shard's LMDB environment on disk: its meta page read without mapping, and the one way to open it.

Every reader of a shard comes through `open_reader` (or `check_lmdb`, for readers that map the files
themselves): the file size is checked against the meta page before any data page is mapped, so a
truncated shard is one sentence naming it, never SIGBUS.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Iterator

from alexnet_pipe.core.errors import ShardFormatError
from alexnet_pipe.core.files import UnreadableFile, read_regular_bytes

DATA_MDB = "data.mdb"  # LMDB's own names inside an environment dir
LOCK_MDB = "lock.mdb"


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
        head = read_regular_bytes(Path(path) / DATA_MDB, limit=2 * _MAX_PSIZE)
    except FileNotFoundError:
        raise _unreadable(path, f"no {DATA_MDB}") from None
    except UnreadableFile as exc:
        raise _unreadable(path, f"{DATA_MDB}: {exc.reason}") from None
    first = _parse_meta(head)
    if first is None or not 512 <= first.psize <= _MAX_PSIZE or first.psize & (first.psize - 1):
        raise _damaged_lmdb(path, f"{DATA_MDB} does not start with an LMDB meta page")
    second = _parse_meta(head[first.psize:])
    return first if second is None or second.txnid < first.txnid else second


def check_lmdb(path: Path | str) -> LmdbMeta:
    """The meta page of a shard whose data.mdb holds every page it says is in use; ShardFormatError
    naming the shard otherwise. Readers that map the file themselves (DALI) call it first."""
    meta = read_lmdb_meta(path)
    size = os.stat(Path(path) / DATA_MDB).st_size
    if size < meta.bytes_needed:
        raise _damaged_lmdb(path, f"{DATA_MDB} is truncated: {size} bytes, its LMDB header says "
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

