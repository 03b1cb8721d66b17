"""The Datum codec and the per-shard statistics, against hand-made references."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from alexnet_pipe import shards


def test_datum_wire_bytes_match_a_hand_encoding():
    # field 1..3 varints, 4 length-delimited, 5 varint, 7 bool: (number << 3 | wire type)
    expected = b"\x08\x03\x10\x02\x18\x04\x22\x03abc\x28\x96\x01\x38\x01"
    assert shards.Datum(b"abc", 150, True, 3, 2, 4).to_bytes() == expected
    assert shards.Datum.from_bytes(expected) == shards.Datum(b"abc", 150, True, 3, 2, 4)


def test_datum_negative_label_and_unknown_fields():
    d = shards.Datum(b"", -1, False)
    raw = d.to_bytes()
    assert b"\x28" + b"\xff" * 9 + b"\x01" in raw  # int32 -1 is a 10-byte varint on the wire
    extra = raw + b"\x35\x00\x00\x80\x3f" + b"\x31" + bytes(8)  # float_data (fixed32) and a fixed64
    assert shards.Datum.from_bytes(extra) == d
    with pytest.raises(shards.ShardFormatError):
        shards.Datum.from_bytes(b"\x22\x05ab")


def test_record_key_is_caffe_style():
    assert shards.record_key(42, "train/n01/a.JPEG") == b"00000042_train/n01/a.JPEG"


def test_shard_stats_against_numpy(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    stats = shards.ShardStats.zeros(16)
    for img in imgs:
        stats.add_image(img)
    x = imgs.reshape(-1, 3).astype(object)  # Python ints: exact
    ref_outer = np.array([[sum(x[:, i] * x[:, j]) for j in range(3)] for i in range(3)])
    assert (stats.rgb_outer == ref_outer.astype(np.int64)).all()
    assert (stats.pixel_sum == imgs.astype(np.int64).sum(0)).all() and stats.count == 7
    stats.save(tmp_path / "s.npz")
    back = shards.ShardStats.load(tmp_path / "s.npz")
    assert (back.pixel_sum == stats.pixel_sum).all() and back.count == 7
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(shards.ShardFormatError, match="damaged"):
        shards.ShardStats.load(tmp_path / "bad.npz")


def test_writer_refuses_unordered_keys_and_abort_leaves_nothing(tmp_path):
    w = shards.ShardWriter(tmp_path / "shard-00000", 4)
    w.put(b"00000002_x", b"v")
    with pytest.raises(ValueError):
        w.put(b"00000001_x", b"v")
    w.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n,size", [(1, 16), (3, 17), (5, 40)])
def test_batched_stats_are_exact_for_any_size(n, size):
    """Worst case for the float32 blocks: many pixels at 255 (partial sums at the 2**24 edge)."""
    rng = np.random.default_rng(n)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    imgs[0, : size // 2] = 255
    stats = shards.ShardStats.zeros(size)
    stats.add_batch(imgs)
    x = imgs.reshape(-1, 3).astype(np.int64)
    assert (stats.rgb_outer == x.T @ x).all()
    assert (stats.pixel_sum == imgs.astype(np.int64).sum(0)).all() and stats.count == n


def test_json_that_is_not_a_manifest_is_one_sentence(tmp_path):
    for text in ("[1, 2]", '{"format_version": 1}', '"x"'):
        (tmp_path / "manifest.json").write_text(text)
        with pytest.raises(shards.ShardFormatError, match="not a manifest written by `alexnet-pipe prepare`"):
            shards.read_manifest(tmp_path)


def test_a_missing_shard_dir_is_one_sentence(tmp_path):
    """lmdb.Error (a shard dir deleted after prepare) becomes a UserError that says what to run."""
    with pytest.raises(shards.ShardFormatError, match=r"missing or unreadable .*alexnet-pipe verify"):
        list(shards.iter_records(tmp_path / "shard-00000"))
    with pytest.raises(shards.ShardFormatError, match="missing or unreadable"):
        shards.open_reader(tmp_path / "gone")


@pytest.mark.parametrize("records, value_bytes", [(3, 100), (300, 5000), (40, 70000)])
def test_writer_grows_its_map_and_stores_a_small_one(tmp_path, monkeypatch, records, value_bytes):
    """The map size LMDB stores is what DALI reserves per shard: it must follow the data, not 1 TiB."""
    import lmdb
    monkeypatch.setattr(shards.ShardWriter, "INITIAL_MAP_SIZE", 64 << 10)
    rng = np.random.default_rng(0)
    values = [rng.integers(0, 256, value_bytes, dtype=np.uint8).tobytes() for _ in range(records)]
    writer = shards.ShardWriter(tmp_path / "shard-00000", 4)
    for i, v in enumerate(values):
        writer.put(shards.record_key(i, "x"), v)
    writer.commit()
    env = lmdb.open(str(tmp_path / "shard-00000"), readonly=True, lock=False)
    with env.begin() as txn:
        assert [v for _, v in txn.cursor()] == values
    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    env.close()
    meta = shards.read_lmdb_meta(tmp_path / "shard-00000")
    assert used <= meta.map_size <= max(4 * used, 64 << 10)



def test_a_full_disk_when_a_shard_opens_is_enospc_not_sigbus(small_disk):
    """LMDB maps lock.mdb, which it only ftruncates: on a full tmpfs that page is SIGBUS, a dead process."""
    import subprocess
    import sys
    with open(small_disk / "ballast", "wb", buffering=0) as f:  # fill it to the last block
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 16))
    code = f"from alexnet_pipe.shards import ShardWriter\nShardWriter({str(small_disk / 'shard-00000')!r}, 1)\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "No space left on device" in run.stderr, (run.returncode, run.stderr[-300:])
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast"]  # no temp dir left behind
