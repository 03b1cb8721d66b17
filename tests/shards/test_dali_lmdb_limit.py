"""DALI maps each LMDB with the map size stored in its meta page: ~140 one-record shards written with a
1 TiB map (as this tool once did, and Caffe does) exceed one process's 128 TiB of address space."""
from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np
import pytest

from alexnet_pipe.shards import decode
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.shards import Datum, ShardWriter, read_lmdb_meta, record_key

pytest.importorskip("nvidia.dali")
SHARDS = 140
LEGACY_MAP_SIZE = 1 << 40  # the map size shards were once written with, as Caffe's convert_imageset does


def legacy_shards(root: Path, n: int = SHARDS) -> list[Path]:
    """One raw 2x2 record each, in LMDBs created with a 1 TiB map, the size their meta page keeps."""
    dirs = []
    for i in range(n):
        env = lmdb.open(str(root / f"shard-{i:05d}"), map_size=LEGACY_MAP_SIZE)
        with env.begin(write=True) as txn:
            txn.put(record_key(i, f"train/{i}"), Datum(bytes([i % 256] * 12), i % 7, False, 3, 2, 2).to_bytes())
        env.close()
        dirs.append(root / f"shard-{i:05d}")
    return dirs


def test_dali_reads_more_legacy_shards_than_fit_one_address_space(tmp_path):
    dirs = legacy_shards(tmp_path)
    assert read_lmdb_meta(dirs[0]).map_size == 1 << 40
    groups = decode.dali_reader_groups(dirs)
    assert [len(g) for g in groups] == [64, 64, 12] and sum(groups, []) == dirs
    batches = list(decode.iter_decoded(dirs, batch_size=32, backend="dali", device="cpu"))
    labels = np.concatenate([b[1] for b in batches])
    images = np.concatenate([b[0] for b in batches])
    assert labels.tolist() == [i % 7 for i in range(SHARDS)]
    assert images[:, 0, 0, 0].tolist() == [i % 256 for i in range(SHARDS)]
    with pytest.raises(UserError, match="140 shards.*reserve 140 TiB.*--loader torch"):
        decode.check_dali_can_open(dirs)


def test_shards_written_now_reserve_little(tmp_path):
    dirs = []
    for i in range(3):
        w = ShardWriter(tmp_path / f"shard-{i:05d}", 2)
        w.put(record_key(i, "x"), Datum(bytes(12), 0, False, 3, 2, 2).to_bytes())
        w.commit()
        dirs.append(tmp_path / f"shard-{i:05d}")
    assert read_lmdb_meta(dirs[0]).map_size <= 64 << 20
    decode.check_dali_can_open(dirs * 2000)  # 6000 such shards still fit one process
    assert decode.dali_reader_groups(dirs) == [dirs]


def test_dali_error_cause_is_the_lmdb_line():
    exc = RuntimeError("Critical error when building pipeline:\nError in CPU operator `nvidia.dali.fn.readers.caffe`,\n"
                       "Assert on \"mdb_env_open(...) == 0\" failed: LMDB Error: Invalid argument, with file: /d/shard-00126\n"
                       "C++ context: [...]")
    assert "LMDB Error: Invalid argument" in decode.dali_error_cause(exc)
    assert "shard-00126" in decode.dali_error_cause(exc)
