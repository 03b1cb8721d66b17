"""Shards damaged on disk (truncated data.mdb, bytes overwritten in a record): one sentence naming the
shard (and the record where it can be found), a non-zero exit, no traceback and no SIGBUS, for every
command path that reads records. Run as subprocesses: a SIGBUS would take pytest down with it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

from alexnet_pipe.shards import format as shards
from shardgen import make_data_dir, random_images


@pytest.fixture()
def data(tmp_path):
    images = random_images(24, 32, seed=4)
    return make_data_dir(tmp_path / "d", {"train": (images[:18], np.arange(18) % 3),
                                          "val": (images[18:], np.arange(6) % 3)}, 3, 3)


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet_pipe", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def assert_one_sentence(out: subprocess.CompletedProcess, *names: str) -> str:
    text = out.stdout + out.stderr
    assert out.returncode == 1, (out.returncode, text)  # 135 would be SIGBUS
    assert "Traceback" not in text and "BrokenProcessPool" not in text, text
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and last.count("Error") == 1, text
    for name in names:
        assert name in text, (name, text)
    return text


def truncate_half(shard: Path) -> None:
    path = shard / "data.mdb"
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_verify_names_a_truncated_shard(data, workers):
    truncate_half(data / "train" / "shard-00001")
    text = assert_one_sentence(cli("verify", "--data", str(data), "--workers", workers, cwd=data),
                               "train/shard-00001")
    assert "truncated" in text


@pytest.mark.parametrize("args", [["stats", "--recompute", "--device", "cpu"], ["stats", "--sample", "5", "--device", "cpu"]])
def test_stats_names_a_truncated_shard(data, args):
    truncate_half(data / "train" / "shard-00002")
    text = assert_one_sentence(cli(*args, "--data", str(data), cwd=data), "shard-00002")
    assert "truncated" in text


def test_open_reader_refuses_a_truncated_shard_before_mapping_it(data):
    shard = data / "train" / "shard-00000"
    truncate_half(shard)
    with pytest.raises(shards.ShardFormatError, match="shard-00000.*truncated"):
        shards.open_reader(shard)
    with pytest.raises(shards.ShardFormatError, match="shard-00000"):
        list(shards.iter_records(shard))


@pytest.mark.parametrize("content", [b"", b"\0" * 100, b"not an lmdb at all" * 1000])
def test_open_reader_refuses_what_is_not_an_lmdb(data, content):
    shard = data / "val" / "shard-00000"
    (shard / "data.mdb").write_bytes(content)
    with pytest.raises(shards.ShardFormatError, match="shard-00000"):
        shards.open_reader(shard)


def test_open_reader_refuses_a_fifo_in_place_of_data_mdb(data):
    shard = data / "val" / "shard-00000"
    (shard / "data.mdb").unlink()
    os.mkfifo(shard / "data.mdb")
    with pytest.raises(shards.ShardFormatError, match="not a regular file"):
        shards.open_reader(shard)


@pytest.mark.parametrize("records", [1, 7, 40])
def test_lmdb_meta_agrees_with_lmdb(tmp_path, records):
    shard = tmp_path / "s"
    env = lmdb.open(str(shard), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(records):
            txn.put(b"%08d" % i, os.urandom(3000 * (i % 3)))
    env.close()
    meta = shards.read_lmdb_meta(shard)
    env = lmdb.open(str(shard), readonly=True, lock=False)
    info, stat = env.info(), env.stat()
    assert (meta.last_pgno, meta.txnid, meta.psize, meta.entries) == \
        (info["last_pgno"], info["last_txnid"], stat["psize"], stat["entries"])
    assert meta.map_size == 1 << 24


def _overwrite_in_file(shard: Path, needle: bytes, at: int, new: bytes) -> None:
    """Overwrite every copy of a record (LMDB's copy-on-write can leave a stale page holding one)."""
    path = shard / "data.mdb"
    blob = bytearray(path.read_bytes())
    pos = blob.find(needle)
    assert pos >= 0
    while pos >= 0:
        blob[pos + at:pos + at + len(new)] = new
        pos = blob.find(needle, pos + 1)
    path.write_bytes(bytes(blob))


def _record(shard: Path, n: int) -> tuple[bytes, bytes]:
    env = shards.open_reader(shard)
    with env.begin() as txn:
        key, value = list(txn.cursor())[n]
    env.close()
    return key, value


@pytest.mark.parametrize("damage", ["datum", "jpeg"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_verify_names_shard_and_key_of_an_overwritten_record(data, damage, workers):
    shard = data / "train" / "shard-00001"
    key, value = _record(shard, 2)
    if damage == "datum":  # the Datum's own fields: a tag of wire type 7 where channels was
        _overwrite_in_file(shard, value, 0, b"\x0f")
    else:  # inside the JPEG: its header markers
        _overwrite_in_file(shard, value, value.index(b"\xff\xd8") + 2, b"\x00" * 8)
    text = assert_one_sentence(cli("verify", "--data", str(data), "--workers", workers, cwd=data),
                               "train/shard-00001", key.decode())


def test_read_datum_and_record_pixels_name_shard_and_key(data):
    shard = data / "train" / "shard-00000"
    key, value = _record(shard, 0)
    datum = shards.read_datum(shard, key, value)
    assert shards.record_pixels(shard, key, datum, 32).shape == (32, 32, 3)
    with pytest.raises(shards.ShardFormatError, match=f"{key.decode()}.*shard-00000|shard-00000.*{key.decode()}"):
        shards.read_datum(shard, key, b"\x0f" + value[1:])
    broken = shards.Datum(datum.data[:20] + bytes(40) + datum.data[60:], datum.label, True, 3, 32, 32)
    with pytest.raises(shards.ShardFormatError, match=key.decode()):
        shards.record_pixels(shard, key, broken, 32)
    with pytest.raises(shards.ShardFormatError, match="label 7"):
        shards.read_datum(shard, key, shards.Datum(datum.data, 7, True, 3, 32, 32).to_bytes(), num_classes=3)


def test_first_damaged_record_finds_the_overwritten_one(data):
    from alexnet_pipe.shards.verify import first_damaged_record
    dirs = [data / "train" / f"shard-0000{i}" for i in range(3)]
    assert first_damaged_record(dirs, 32, 3) is None
    key, value = _record(dirs[2], 3)
    _overwrite_in_file(dirs[2], value, 0, b"\x0f")
    found = first_damaged_record(dirs, 32, 3)
    assert (found.shard, found.key) == (dirs[2], key) and key.decode() in str(found)


def test_decoding_pass_refuses_a_truncated_shard_it_does_not_probe(data):
    """bench loader's decode-only figure reads through decode.iter_decoded, not through stats' counts."""
    from alexnet_pipe.shards import decode
    dirs = [data / "train" / f"shard-0000{i}" for i in range(3)]
    truncate_half(dirs[2])
    with pytest.raises(shards.ShardFormatError, match="shard-00002.*truncated"):
        list(decode.iter_decoded(dirs, backend="opencv"))
    # DALI maps the files itself: a regression here is SIGBUS, so it runs in a process of its own
    code = ("import sys; from alexnet_pipe import shards; from alexnet_pipe.shards import decode\n"
            "try:\n    list(decode.iter_decoded(sys.argv[1:], backend='dali'))\n"
            "except shards.ShardFormatError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code, *map(str, dirs)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "shard-00002" in out.stdout and "truncated" in out.stdout, out
    with pytest.raises(shards.ShardFormatError, match="shard-00002.*truncated"):
        decode.check_dali_can_open(dirs)


@pytest.mark.parametrize("loader", [pytest.param("dali", marks=pytest.mark.dali), "torch"])
@pytest.mark.parametrize("damage", ["datum", "jpeg"])
def test_training_loaders_stop_at_a_damaged_record_with_verify_s_sentence(data, loader, damage):
    """The loaders hitting the record verify names stop with the same sentence, not a DALI/OpenCV traceback."""
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    stats = data / "stats"
    stats.mkdir(exist_ok=True)
    np.save(stats / "mean.npy", np.full((32, 32, 3), 100, np.float32))
    shard = data / "train" / "shard-00001"
    key, value = _record(shard, 2)
    if damage == "datum":
        _overwrite_in_file(shard, value, 0, b"\x0f")
    else:
        _overwrite_in_file(shard, value, value.index(b"\xff\xd8") + 2, b"\x00" * 8)
    settings = LoaderSettings(data=data, batch_size=4, crop=28, loader=loader, lighting=0.0, num_threads=1)
    with pytest.raises(shards.DamagedRecord) as caught:
        for _ in make_loader(settings).epoch(0):
            pass
    assert caught.value.key == key and caught.value.shard == shard
    assert "train/shard-00001" in str(caught.value) and key.decode() in str(caught.value)
