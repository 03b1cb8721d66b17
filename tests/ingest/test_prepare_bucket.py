"""prepare --data s3://...: array tasks on machines that share nothing, finalising, resume and faults, against a
real S3 server (moto in its own process), each compared record for record with the same prepare on local disk."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import bucketdata
from alexnet_pipe.core import remote
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.ingest.prepare import PrepareSettings, run
from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
from alexnet_pipe_cli.main import cli

SIZE, SHARDS = 32, 3


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket-src") / "tree"
    write_sample_tree(root, SampleSettings(classes=3, train_per_class=7, val_per_class=2, seed=3))
    return root


@pytest.fixture(scope="module")
def local(tree, tmp_path_factory):
    """The same prepare on local disk: what every bucket run must equal."""
    data = tmp_path_factory.mktemp("bucket-local") / "d"
    _prep(tree, data)
    return bucketdata.snapshot(data)


def _prep(src, data, **kw) -> dict:
    settings = PrepareSettings(source=Path(src), data=data, size=SIZE, shards=SHARDS, workers=1, **kw)
    return run(settings, echo=lambda *_: None)


def _bucket_snapshot(server, url, tmp_path) -> dict:
    return bucketdata.snapshot(bucketdata.download(server, url, tmp_path / "downloaded"))


def _task(tree, url, index, scratch) -> subprocess.Popen:
    """One Kubernetes indexed-Job task of 2, with its own scratch dir: machines that share no disk."""
    cmd = [sys.executable, "-m", "alexnet_pipe", "prepare", str(tree), "--data", url, "--size", str(SIZE),
           "--shards", str(SHARDS), "--workers", "1", "--only-shards", "auto", "--array-count", "2",
           "--scratch", str(scratch)]
    env = {**os.environ, "JOB_COMPLETION_INDEX": str(index)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_two_array_tasks_into_a_bucket_then_finalising_equal_a_local_run(tree, local, s3, tmp_path):
    server, bucket = s3
    url = f"{bucket}/alexnet-data"
    scratches = [tmp_path / f"machine{i}" for i in range(3)]
    tasks = [_task(tree, url, i, scratches[i]) for i in (0, 1)]
    outputs = [t.communicate(timeout=120)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outputs
    assert "manifest.json" not in bucketdata.keys(server, url)  # array tasks never finalise
    summary = _prep(tree, url, scratch=scratches[2])
    assert summary["written_now"] == 0  # the tasks wrote every shard between them
    assert _bucket_snapshot(server, url, tmp_path) == local
    assert [list(s.iterdir()) for s in scratches] == [[], [], []]  # the scratch copies are gone


def test_a_shard_whose_meta_json_never_arrived_is_written_again(tree, local, s3, tmp_path):
    server, bucket = s3
    url = f"{bucket}/d"
    _prep(tree, url, scratch=tmp_path)
    for rel in ("train/shard-00001/meta.json", "manifest.json"):  # a kill between a shard's data and its meta
        bucketdata.delete(server, url, rel)
    assert _prep(tree, url, scratch=tmp_path)["written_shards"] == ["train/shard-00001"]
    assert _bucket_snapshot(server, url, tmp_path) == local


def test_the_server_gone_mid_upload_is_one_sentence_and_the_rerun_completes(tree, local, s3, tmp_path,
                                                                           monkeypatch):
    server, bucket = s3
    url = f"{bucket}/d"
    monkeypatch.setenv(remote.RETRIES_VAR, "1")
    monkeypatch.setenv(remote.WAIT_VAR, "0.01")
    upload = remote.put_file

    def endpoint_gone_before_the_second_meta(local_file, target):
        if target.endswith("train/shard-00001/meta.json"):  # its data.mdb is up, its meta.json is not
            from helpers.s3server import free_port
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        upload(local_file, target)
    monkeypatch.setattr(remote, "put_file", endpoint_gone_before_the_second_meta)
    with pytest.raises(UserError, match=rf"^cannot upload to {url}/train/shard-00001/meta.json after 2 attempts: "
                                        r"Could not connect"):
        _prep(tree, url, scratch=tmp_path)
    keys = bucketdata.keys(server, url)
    assert "train/shard-00001/data.mdb" in keys and "train/shard-00001/meta.json" not in keys
    monkeypatch.setattr(remote, "put_file", upload)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    summary = _prep(tree, url, scratch=tmp_path)
    assert "train/shard-00000" not in summary["written_shards"]
    assert "train/shard-00001" in summary["written_shards"]
    assert _bucket_snapshot(server, url, tmp_path) == local
    assert list(tmp_path.glob(".alexnet-pipe-mirror-*")) == []


def test_a_killed_runs_mirror_is_removed_a_live_ones_kept(tree, s3, tmp_path):
    _, bucket = s3
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mirrors = {pid: tmp_path / f".alexnet-pipe-mirror-{pid}-abc123" for pid in (int(gone.stdout), live.pid)}
        for mirror in mirrors.values():
            (mirror / "train" / "shard-00000").mkdir(parents=True)
            (mirror / "train" / "shard-00000" / "data.mdb").write_bytes(b"a shard left by SIGKILL")
        (tmp_path / "alexnet-pipe-mirror-1-x").mkdir()  # not our name (no leading dot): the user's
        _prep(tree, f"{bucket}/d", scratch=tmp_path, only_shards=(0, 1))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["alexnet-pipe-mirror-1-x", mirrors[live.pid].name])
    finally:
        live.kill()
        live.wait()


def test_a_bucket_that_denies_writing_is_one_sentence(tree, s3, tmp_path):
    server, bucket = s3
    name = bucket.removeprefix("s3://")
    deny = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                                                    "Resource": f"arn:aws:s3:::{name}/*"}]}
    server.client().put_bucket_policy(Bucket=name, Policy=json.dumps(deny))
    result = CliRunner().invoke(cli, ["prepare", str(tree), "--data", f"{bucket}/d", "--size", str(SIZE),
                                      "--workers", "1", "--scratch", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: cannot upload to {bucket}/d/prepare.json: access denied (check the credentials and "
                      "the bucket's policy)"]


def test_overwrite_in_a_bucket_removes_only_what_prepare_wrote(tree, s3, tmp_path):
    server, bucket = s3
    url = f"{bucket}/d"
    bucket_name, _ = bucketdata.split_url(url)
    for key in ("d/notes.txt", "d/runs/r1/log.jsonl", "d/stats/my-plot.png"):
        server.client().put_object(Bucket=bucket_name, Key=key, Body=b"mine")
    _prep(tree, url, scratch=tmp_path)
    server.client().put_object(Bucket=bucket_name, Key="d/train/shard-00005/stray.bin", Body=b"x")
    with pytest.raises(UserError, match=r"holds 1 object\(s\) in its split folders that prepare did not write "
                                        r"\(train/shard-00005/stray.bin\)"):
        _prep(tree, url, scratch=tmp_path, overwrite=True)
    bucketdata.delete(server, url, "train/shard-00005/stray.bin")
    with pytest.raises(UserError, match=rf"^{url} holds shards made differently \(size {SIZE} -> 24, shards 3 -> 2\)"):
        run(PrepareSettings(source=tree, data=url, size=24, shards=2, workers=1, scratch=tmp_path), echo=print)
    run(PrepareSettings(source=tree, data=url, size=24, shards=2, workers=1, scratch=tmp_path, overwrite=True),
        echo=print)
    keys = bucketdata.keys(server, url)
    assert {"notes.txt", "runs/r1/log.jsonl", "stats/my-plot.png"} <= set(keys)
    assert not any(k.startswith(("train/shard-00002", "val/shard-00002")) for k in keys)  # the 3-shard run's
    assert bucketdata.snapshot(bucketdata.download(server, url, tmp_path / "dl"))["manifest"]["settings"]["size"] == 24


def test_a_full_scratch_dir_is_the_disk_full_sentence_and_the_rerun_completes(tree, local, s3, small_disk,
                                                                                  tmp_path):
    server, bucket = s3
    url = f"{bucket}/d"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "ballast").write_bytes(b"\0" * (free - (48 << 10)))  # less than one shard's LMDB and sums
    with pytest.raises(UserError, match=rf"^no space left on the device of {small_disk}: about \d+ MB more is "
                                        r"needed .* no partial shard is left"):
        _prep(tree, url, scratch=small_disk)
    assert not any(k.endswith("meta.json") for k in bucketdata.keys(server, url))
    assert list(small_disk.iterdir()) == [small_disk / "ballast"]  # the mirror is gone from the scratch dir
    (small_disk / "ballast").unlink()
    _prep(tree, url, scratch=small_disk)
    assert _bucket_snapshot(server, url, tmp_path) == local
