"""prepare from an object store (a real S3 server, moto in its own process) against the same prepare from local
files: record for record, for the folder, Kaggle and official-tar layouts; and its faults, each one sentence."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import layouts
from alexnet_pipe import shards
from alexnet_pipe.ingest import sources
from alexnet_pipe.ingest.prepare import PrepareSettings, run
from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
from alexnet_pipe_cli.main import cli

SIZE = 32


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """The same small download in the three layouts, each with a local prepare of it to compare with."""
    base = tmp_path_factory.mktemp("s3src")
    root = base / "folders"
    write_sample_tree(root, SampleSettings(classes=3, train_per_class=7, val_per_class=2, seed=3))
    built = {"folders": root, "kaggle": layouts.kaggle_nested(root, base / "kaggle"),
             "archives": layouts.archives(root, base / "archives")}
    return {name: (src, _prep(src, base / f"data-{name}")) for name, src in built.items()}


def _prep(src, data: Path, **kw) -> Path:
    run(PrepareSettings(source=src, data=data, size=SIZE, shards=2, **kw), echo=lambda *_: None)
    return data


def _records(data: Path) -> dict:
    manifest = shards.read_manifest(data)
    return {split: [(k, v) for d in shards.shard_dirs(data, split, manifest) for k, v in shards.iter_records(d)]
            for split in manifest["splits"]}


def _rejects(data: Path, prefix: str) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in (data / "rejects.jsonl").read_text().splitlines()]
    assert all(r["path"].startswith(prefix + "/") for r in rows), (prefix, rows)
    return sorted((r["path"][len(prefix) + 1:], r["split"], r["reason"]) for r in rows)


def _manifest(data: Path, prefix: str) -> dict:
    manifest = shards.read_manifest(data)
    if manifest["source"]["val_labels"]:
        manifest["source"]["val_labels"] = manifest["source"]["val_labels"].removeprefix(prefix)
    return manifest


def _sums(data: Path) -> list[list]:
    """Every shard's stats.npz, the sums `stats` merges into the mean and the PCA."""
    return [[np.load(f)[k].tolist() for k in ("pixel_sum", "rgb_outer", "count")]
            for f in sorted(data.glob("*/*/stats.npz"))]


def _same_as_local(local_src: Path, local: Path, url: str, data: Path) -> None:
    assert _records(data) == _records(local)  # keys and value bytes, shard by shard
    assert _manifest(data, url) == _manifest(local, str(local_src))  # counts, checksums, classes, labels' file
    assert _rejects(data, url) == _rejects(local, str(local_src))
    assert _sums(data) == _sums(local) and _sums(local)


@pytest.mark.parametrize("layout", ["folders", "kaggle", "archives"])
def test_a_bucket_prepares_record_for_record_as_the_same_files_on_disk(trees, s3, tmp_path, layout):
    server, bucket = s3
    src, local = trees[layout]
    server.upload_tree(src, f"{bucket}/imagenet")
    data = tmp_path / "d"
    result = CliRunner().invoke(cli, ["prepare", f"{bucket}/imagenet", "--data", str(data), "--size", str(SIZE),
                                      "--shards", "2", "--workers", "2" if layout == "archives" else "1"])
    assert result.exit_code == 0, result.output
    assert f"{'kaggle' if layout == 'kaggle' else layout} layout" in result.output
    _same_as_local(src, local, f"{bucket}/imagenet", data)


def _odd_tree(root: Path) -> Path:
    """What a real upload holds besides images: hidden folders and files, a file outside the class folders, a
    stray folder beside a flat val, a name that is no image."""
    write_sample_tree(root, SampleSettings(classes=2, train_per_class=3, val_per_class=2, seed=5,
                                           pathologies=False))
    wnid = sorted(p.name for p in (root / "train").iterdir())[0]
    for rel in (".DS_Store", "train/.ipynb_checkpoints/x.JPEG", f"train/{wnid}/.hidden.JPEG", "train/README",
                "val/stray/a.JPEG", f"train/{wnid}/notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not an image")
    return root


def _inventory(src) -> tuple:
    inv = sources.discover(src)
    prefix = str(src)
    items = {s: [(it.relpath, it.label, it.path.removeprefix(prefix)) for it in v] for s, v in inv.splits.items()}
    rejects = sorted((r["path"].removeprefix(prefix), r["split"], r["reason"]) for r in inv.rejects)
    return inv.layout, inv.classes, items, rejects


def test_the_layout_rules_answer_the_same_for_a_bucket(s3, tmp_path):
    """One copy of the rules: hidden names, strays and files outside classes come out as from the disk."""
    server, bucket = s3
    root = _odd_tree(tmp_path / "odd")
    server.upload_tree(root, f"{bucket}/odd")
    local, remote = _inventory(root), _inventory(f"{bucket}/odd")
    assert remote == local
    assert len(local[3]) == 4  # each odd file in a split is noted, none lost (the .txt in a class is an item)


def _listed_then(action):
    """sources.discover as prepare calls it, with action() run once the listing is done."""
    real = sources.discover

    def discover(*args, **kwargs):
        inv = real(*args, **kwargs)
        action()
        return inv
    return discover


def test_an_object_replaced_after_listing_is_a_named_reject(trees, s3, tmp_path, monkeypatch):
    import alexnet_pipe.ingest.prepare as prepare
    server, bucket = s3
    src, local = trees["folders"]
    server.upload_tree(src, f"{bucket}/in")
    key = f"in/{next(p for p in sorted((src / 'val').iterdir())).relative_to(src).as_posix()}"
    body = (src / key[3:]).read_bytes()
    monkeypatch.setattr(prepare, "discover", _listed_then(
        lambda: server.client().put_object(Bucket=bucket[5:], Key=key, Body=body + b"\xff\xd9" * 10)))
    manifest = run(PrepareSettings(source=f"{bucket}/in", data=tmp_path / "d", size=SIZE, shards=2),
                   echo=lambda *_: None)["manifest"]
    rows = [json.loads(line) for line in (tmp_path / "d" / "rejects.jsonl").read_text().splitlines()]
    changed = [r for r in rows if r["reason"].startswith("changed since it was listed")]
    assert [r["path"] for r in changed] == [f"{bucket}/{key}"]
    assert f"{len(body) + 20} bytes read where the listing said {len(body)}" in changed[0]["reason"]
    assert manifest["splits"]["val"]["count"] == shards.read_manifest(local)["splits"]["val"]["count"] - 1


def test_a_tar_cut_short_after_listing_names_its_members(trees, s3, tmp_path, monkeypatch):
    import alexnet_pipe.ingest.prepare as prepare
    server, bucket = s3
    src, _ = trees["archives"]
    server.upload_tree(src, f"{bucket}/in")
    cut = (src / "ILSVRC2012_img_val.tar").read_bytes()[:2048]
    monkeypatch.setattr(prepare, "discover", _listed_then(
        lambda: server.client().put_object(Bucket=bucket[5:], Key="in/ILSVRC2012_img_val.tar", Body=cut)))
    manifest = run(PrepareSettings(source=f"{bucket}/in", data=tmp_path / "d", size=SIZE, shards=2),
                   echo=lambda *_: None)["manifest"]
    rows = [json.loads(line) for line in (tmp_path / "d" / "rejects.jsonl").read_text().splitlines()]
    changed = {r["path"] for r in rows if r["reason"].startswith("changed since it was listed")}
    assert manifest["splits"]["val"]["count"] == 0 and len(changed) == 6  # 3 classes x 2 val images
    assert all(p.startswith(f"{bucket}/in/ILSVRC2012_img_val.tar!val/") for p in changed)


def _one_sentence(result, *expected: str) -> None:
    assert result.exit_code not in (0, None) and "Traceback" not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert all(e in last for e in expected), last


@pytest.mark.parametrize("how", ["deleted", "denied"])
def test_an_object_gone_or_denied_after_listing_is_one_sentence_naming_it(trees, s3, tmp_path, monkeypatch,
                                                                           how):
    import alexnet_pipe.ingest.prepare as prepare
    server, bucket = s3
    src, _ = trees["folders"]
    server.upload_tree(src, f"{bucket}/in")
    key = f"in/{sorted((src / 'val').iterdir())[0].relative_to(src).as_posix()}"
    client = server.client()
    if how == "deleted":
        act = lambda: client.delete_object(Bucket=bucket[5:], Key=key)  # noqa: E731
    else:  # listing allowed, reading every object denied: a policy as a bucket owner would set it
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*",
                  "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket[5:]}/*"}]}
        act = lambda: client.put_bucket_policy(Bucket=bucket[5:], Policy=json.dumps(policy))  # noqa: E731
    monkeypatch.setattr(prepare, "discover", _listed_then(act))
    result = CliRunner().invoke(cli, ["prepare", f"{bucket}/in", "--data", str(tmp_path / "d"),
                                      "--size", str(SIZE), "--workers", "1"])
    if how == "deleted":
        _one_sentence(result, f"cannot read {bucket}/{key}: it does not exist")
    else:
        _one_sentence(result, f"cannot read {bucket}/in/", "access denied")


def test_a_server_stopped_mid_prepare_is_one_sentence_and_a_rerun_completes(trees, tmp_path, monkeypatch):
    import alexnet_pipe.ingest.writing as writing  # where the chunks are handed to the workers
    from helpers.s3server import S3Server
    server = S3Server().start()
    for name, value in {**server.env, "ALEXNET_PIPE_REMOTE_RETRIES": "1",
                        "ALEXNET_PIPE_REMOTE_WAIT": "0.05"}.items():
        monkeypatch.setenv(name, value)
    src, local = trees["kaggle"]
    bucket = server.new_bucket()
    server.upload_tree(src, f"s3://{bucket}/in")
    real, calls = writing.process_chunk, []

    def stop_the_server_at_the_third_chunk(task):
        calls.append(1)
        if len(calls) == 3:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
        return real(task)
    monkeypatch.setattr(writing, "process_chunk", stop_the_server_at_the_third_chunk)
    data = tmp_path / "d"
    cmd = ["prepare", f"s3://{bucket}/in", "--data", str(data), "--size", str(SIZE), "--shards", "2",
           "--workers", "1"]
    try:
        result = CliRunner().invoke(cli, cmd)
        _one_sentence(result, f"cannot read s3://{bucket}/in/ILSVRC/Data/CLS-LOC/", "after 2 attempts")
        assert not (data / "manifest.json").exists()
        server.start()  # the same port: a store that is back (empty: moto keeps nothing), its objects put again
        server.client().create_bucket(Bucket=bucket)
        server.upload_tree(src, f"s3://{bucket}/in")
        monkeypatch.setattr(writing, "process_chunk", real)
        result = CliRunner().invoke(cli, cmd)
        assert result.exit_code == 0, result.output
    finally:
        server.stop()
    assert _records(data) == _records(local)


def test_a_url_without_its_back_end_names_the_extra(tmp_path, monkeypatch):
    for name in ("fsspec", "fsspec.core"):
        monkeypatch.setitem(sys.modules, name, None)  # as if alexnet-pipe[s3] were not installed
    result = CliRunner().invoke(cli, ["prepare", "s3://bucket/imagenet", "--data", str(tmp_path / "d")])
    _one_sentence(result, "s3://bucket/imagenet", "pip install 'alexnet-pipe[s3]'")


def test_a_local_prepare_imports_no_object_store_library(trees, tmp_path):
    src, _ = trees["archives"]
    code = ("import sys\nfrom alexnet_pipe_cli.main import cli\n"
            f"cli(['prepare', {str(src)!r}, '--data', {str(tmp_path / 'd')!r}, '--size', '{SIZE}', "
            "'--workers', '1'], standalone_mode=False)\n"
            "print('STORES', [m for m in ('fsspec', 's3fs', 'botocore', 'gcsfs') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "STORES []" in out.stdout, out.stdout + out.stderr


def test_val_labels_given_as_a_url_are_read_from_the_bucket(trees, s3, tmp_path):
    server, bucket = s3
    src, local = trees["folders"]
    server.upload_tree(src / "train", f"{bucket}/in/train")
    server.upload_tree(src / "val", f"{bucket}/in/val")  # no label file beside them: it is elsewhere
    server.client().upload_file(str(src / "LOC_val_solution.csv"), bucket[5:], "labels/solution.csv")
    result = CliRunner().invoke(cli, ["prepare", f"{bucket}/in", "--data", str(tmp_path / "d"), "--size", str(SIZE),
                                      "--shards", "2", "--workers", "1",
                                      "--val-labels", f"{bucket}/labels/solution.csv"])
    assert result.exit_code == 0, result.output
    assert _records(tmp_path / "d") == _records(local)
    assert shards.read_manifest(tmp_path / "d")["source"]["val_labels"] == f"{bucket}/labels/solution.csv"


def test_a_dropped_connection_while_reading_tar_headers_is_retried(trees, s3, monkeypatch):
    from alexnet_pipe.core import remote
    from alexnet_pipe.ingest import archives, remote_tars
    from alexnet_pipe.ingest.remote_tree import open_tree
    server, bucket = s3
    src, _ = trees["archives"]
    server.upload_tree(src, f"{bucket}/in")
    monkeypatch.setenv("ALEXNET_PIPE_REMOTE_WAIT", "0.01")
    real, drops = remote.open_file, []

    def open_file(url, size=None, block_size=1 << 16):
        f = real(url, size, block_size)
        if len(drops) < 2:  # the first two files opened (the outer listing, a per-class tar) fail once
            drops.append(url)

            def dropped(*_):
                raise ConnectionResetError(104, "Connection reset by peer")
            f.read = dropped
        return f
    monkeypatch.setattr(remote_tars.remote, "open_file", open_file)
    found = archives.list_train_archive(open_tree(f"{bucket}/in") / archives.TRAIN_TAR, rejects := [])
    assert len(drops) == 2 and rejects == []
    assert found == archives.list_train_archive(src / archives.TRAIN_TAR, [])


def test_an_object_that_is_also_a_folder_is_refused_by_name(s3):
    from alexnet_pipe.core.errors import UserError
    server, bucket = s3
    client = server.client()
    for key in ("in/train/n01/a.JPEG", "in/train/n01", "in/val/b.JPEG"):
        client.put_object(Bucket=bucket[5:], Key=key, Body=b"x")
    with pytest.raises(UserError, match=rf"{bucket}/in/train/n01 is both an object and the folder of other objects"):
        sources.discover(f"{bucket}/in")


@pytest.mark.parametrize("pattern", ["*", "*.JPEG", "n0*", "a?c.txt", "*.[jJ]*"])
def test_a_remote_tree_globs_as_pathlib_does_on_the_same_files(tmp_path, pattern):
    from alexnet_pipe.ingest.remote_tree import RemotePath, Snapshot
    files = ["train/n01/a.JPEG", "train/n01/b.jpeg", "train/n02/deep/c.JPEG", "abc.txt", "val/x.JPEG", "n0.csv"]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    root = RemotePath(Snapshot("s3://b/p", dict.fromkeys(files, 1)), "")
    want = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob(pattern))
    assert sorted(str(p)[len("s3://b/p/"):] for p in root.rglob(pattern)) == want
