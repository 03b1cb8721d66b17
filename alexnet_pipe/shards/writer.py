"""Writing one shard: records into LMDB, then its statistics, key index and meta, all renamed into place at once."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from alexnet_pipe.core.files import fsync_path
from alexnet_pipe.shards.keyindex import write_key_index
from alexnet_pipe.shards.lmdbfile import DATA_MDB, LOCK_MDB
from alexnet_pipe.shards.manifest import write_shard_meta
from alexnet_pipe.shards.records import RecordChecksum
from alexnet_pipe.shards.shardstats import SHARD_STATS, ShardStats

# The map size a shard starts with; it doubles as the shard grows. LMDB stores the last one in the
# meta page, and every reader that sets none (DALI, Caffe's own reader) reserves that much address
# space per shard: 1 TiB, as shards were once written, let DALI open only ~126 shards per process
# (docs/format.md). Growing from 64 MiB keeps the stored size under twice the data.
INITIAL_MAP_SIZE = 64 << 20


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
            _allocate(self.tmp_dir / LOCK_MDB, self.LOCK_BYTES)
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
        keys_sha256 = write_key_index(self.tmp_dir, self.keys)
        meta = {"name": self.final_dir.name, "records": self.records, "bytes": self.bytes,
                "checksum": self.checksum.hexdigest(), **(extra_meta or {}), "keys_sha256": keys_sha256}
        write_shard_meta(self.tmp_dir, meta)
        fsync_path(self.tmp_dir / DATA_MDB)
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
