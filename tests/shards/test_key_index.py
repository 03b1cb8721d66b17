"""The key index written beside each shard (keys.bin): what the loaders read instead of scanning LMDB."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alexnet_pipe.shards.writer
from alexnet_pipe import shards
from alexnet_pipe.shards import verify
from alexnet_pipe.core.files import write_json_atomic
from alexnet_pipe.loaders import records
from alexnet_pipe.loaders.records import RecordIndex
from helpers.shardgen import make_data_dir, random_images


def cursor_keys(shard_dir) -> list[bytes]:
    return [k for k, _ in shards.iter_records(shard_dir)]


# LMDB keys: 1..511 bytes (its default maximum); raw bytes, as prepare writes for non-UTF-8 file names
KEY_SETS = st.sets(st.binary(min_size=1, max_size=64) | st.binary(min_size=400, max_size=511), max_size=300)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=KEY_SETS)
def test_key_index_holds_the_cursor_keys_for_any_key_set(tmp_path_factory, keys):
    shard = tmp_path_factory.mktemp("s") / "shard-00000"
    writer = shards.ShardWriter(shard, 1)
    for key in sorted(keys):  # LMDB's default order: bytewise, shorter first on a common prefix
        writer.put(key, b"v" + key[:3])
    meta = writer.commit()
    index, problem = shards.key_index_problem(shard, meta)
    assert index is not None and problem is None
    assert list(index) == cursor_keys(shard) == sorted(keys)
    assert len(index) == meta["records"] == len(keys)


def test_commit_writes_the_key_index_before_the_rename(tmp_path, monkeypatch):
    seen = {}
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(f".tmp-{os.getpid()}") and os.path.isdir(src):
            seen["files"] = sorted(os.listdir(src))
        return real_replace(src, dst)
    monkeypatch.setattr(alexnet_pipe.shards.writer.os, "replace", replace)
    writer = shards.ShardWriter(tmp_path / "shard-00000", 1)
    writer.put(b"a", b"1")
    meta = writer.commit()
    assert shards.KEY_INDEX in seen["files"]
    assert len(meta["keys_sha256"]) == 64
    assert json.loads((tmp_path / "shard-00000" / shards.SHARD_META).read_text())["keys_sha256"] == meta["keys_sha256"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    n = 24
    return make_data_dir(tmp_path_factory.mktemp("keys"), {"train": (random_images(n, 8), np.arange(n) % 3)},
                         num_classes=3, shards=3)


def expected_keys(data) -> list[bytes]:
    return [k for d in shards.shard_dirs(data, "train") for k in cursor_keys(d)]


def test_record_index_reads_the_key_files_without_touching_lmdb(data, monkeypatch):
    want = expected_keys(data)

    def no_scan(path):
        raise AssertionError(f"the key index of {path} was not used")
    monkeypatch.setattr(records, "_txn", no_scan)
    index = RecordIndex(data, "train")
    assert list(index.keys) == want
    assert [index.keys[i] for i in range(len(want))] == want
    assert index.shard_of.tolist() == [i for i, d in enumerate(shards.shard_dirs(data, "train"))
                                       for _ in cursor_keys(d)]


def copy_data(data, dst):
    import shutil
    shutil.copytree(data, dst)
    return dst


def test_shards_written_before_the_key_index_are_scanned_silently(data, tmp_path, capsys):
    old = copy_data(data, tmp_path / "old")
    for d in shards.shard_dirs(old, "train"):
        (d / shards.KEY_INDEX).unlink()
        meta = json.loads((d / shards.SHARD_META).read_text())
        del meta["keys_sha256"]
        write_json_atomic(d / shards.SHARD_META, meta)
    index = RecordIndex(old, "train")
    assert list(index.keys) == expected_keys(data)
    assert index.read(5).label == RecordIndex(data, "train").read(5).label
    assert capsys.readouterr().err == ""


def flip_byte(path, at):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["missing", "flipped key byte", "flipped offset", "truncated",
                                    "another shard's", "meta.json damaged"])
def test_a_missing_or_damaged_key_file_falls_back_to_the_records_and_says_so(data, tmp_path, capsys, damage):
    bad = copy_data(data, tmp_path / "bad")
    dirs = shards.shard_dirs(bad, "train")
    path = dirs[1] / shards.KEY_INDEX
    if damage == "missing":
        path.unlink()
    elif damage == "flipped key byte":
        flip_byte(path, path.stat().st_size - 3)
    elif damage == "flipped offset":
        flip_byte(path, 24)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-1])
    elif damage == "another shard's":
        path.write_bytes((dirs[0] / shards.KEY_INDEX).read_bytes())
    else:
        (dirs[1] / shards.SHARD_META).write_text("{")
    index = RecordIndex(bad, "train")
    assert list(index.keys) == expected_keys(data)  # never another record than the LMDB holds
    err = capsys.readouterr().err
    assert str(dirs[1]) in err and "verify" in err and str(dirs[0]) not in err


def test_verify_reports_a_key_file_that_differs_from_the_records(data, tmp_path):
    bad = copy_data(data, tmp_path / "bad")
    dirs = shards.shard_dirs(bad, "train")
    flip_byte(dirs[2] / shards.KEY_INDEX, (dirs[2] / shards.KEY_INDEX).stat().st_size - 3)
    (dirs[0] / shards.KEY_INDEX).unlink()
    reports = {r.name: r.problems for r in verify.verify(bad)}
    assert any("keys.bin" in p for p in reports["shard-00002"])
    assert any("keys.bin" in p for p in reports["shard-00000"])
    assert reports["shard-00001"] == []


def test_keys_index_like_the_list_they_replace():
    keys = [b"a", b"\xff\xfe", b"ccc"]
    packed = shards.Keys.concat([shards.Keys.from_list(keys[:1]), shards.Keys.from_list([]),
                                 shards.Keys.from_list(keys[1:])])
    assert len(packed) == 3 and list(packed) == keys
    for i in [*range(-3, 3), *np.arange(3), np.int32(-1)]:  # loaders index with numpy integers
        assert packed[i] == keys[i]
    for i in (3, -4):
        with pytest.raises(IndexError):
            packed[i]


def test_prepare_owns_the_key_files_it_writes(data, tmp_path):
    """A resumed or --overwrite prepare refuses a data dir holding files it did not write: keys.bin is its own."""
    from alexnet_pipe.ingest import owned
    from alexnet_pipe.shards.datadir import DataDir
    dd = DataDir(copy_data(data, tmp_path / "d"))
    left = dd.root / "train" / "shard-00000" / f".{shards.KEY_INDEX}.tmp-123"  # what a kill inside commit leaves
    left.write_bytes(b"")
    assert owned.foreign_entries(dd) == []
    (dd.root / "train" / "shard-00000" / "notes.txt").write_text("mine")
    assert [p.name for p in owned.foreign_entries(dd)] == ["notes.txt"]
