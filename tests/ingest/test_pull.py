"""alexnet-pipe pull: a data dir in a real S3 server (moto; uploaded with boto3, not with our own code) -> a local
copy that verify accepts; a partial pull resumes; a local file pull did not write is never replaced."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import bucketdata
from alexnet_pipe.ingest.prepare import PrepareSettings, run
from alexnet_pipe.ingest.pull import pull
from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
from alexnet_pipe_cli.main import cli

SIZE = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A local data dir, with the files `stats` writes, to upload."""
    root = tmp_path_factory.mktemp("pull")
    write_sample_tree(root / "tree", SampleSettings(classes=3, train_per_class=7, val_per_class=2, seed=5))
    run(PrepareSettings(source=root / "tree", data=root / "d", size=SIZE, shards=2, workers=1), echo=lambda *_: None)
    result = CliRunner().invoke(cli, ["stats", "--data", str(root / "d"), "--pca"])
    assert result.exit_code == 0, result.output
    return root / "d"


@pytest.fixture()
def uploaded(prepared, s3) -> tuple:
    server, bucket = s3
    server.upload_tree(prepared, f"{bucket}/d")
    return server, f"{bucket}/d"


def _cli(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def _files(folder: Path) -> dict:
    """Every file but LMDB's lock file and prepare's lock files (.prepare.lock, .claims.lock: no data)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock.mdb" and not p.name.startswith(".")}


def test_pull_gives_the_data_dir_verify_accepts(prepared, uploaded, tmp_path):
    _, url = uploaded
    result = _cli("pull", url, tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert _files(tmp_path / "p") == _files(prepared)  # every file, stats/ included, byte for byte
    assert (tmp_path / "p" / "train" / "shard-00000" / "lock.mdb").is_file()  # DALI's reader wants it
    verified = _cli("verify", "--data", tmp_path / "p", "--workers", "1")
    assert verified.exit_code == 0 and "\nok: 24 records in 4 shards" in verified.output, verified.output
    assert bucketdata.snapshot(tmp_path / "p") == bucketdata.snapshot(prepared)
    stats = _cli("stats", "--data", tmp_path / "p", "--pca", "--recompute")
    assert stats.exit_code == 0, stats.output
    assert _files(tmp_path / "p")["stats/mean.npy"] == _files(prepared)["stats/mean.npy"]


def test_a_partial_pull_resumes_with_what_is_missing(uploaded, tmp_path):
    _, url = uploaded
    first = pull(url, tmp_path / "p")
    assert first["kept"] == [] and "val/shard-00001/data.mdb" in first["fetched"]
    (tmp_path / "p" / "val" / "shard-00001" / "data.mdb").unlink()
    (tmp_path / "p" / "manifest.json").unlink()  # a pull stopped before its end has no manifest
    (tmp_path / "p" / "val" / "shard-00001" / ".data.mdb.pull-part").write_bytes(b"half")  # ours, half-fetched
    again = pull(url, tmp_path / "p")
    assert again["fetched"] == ["val/shard-00001/data.mdb"]
    assert sorted(again["kept"]) == sorted(r for r in first["fetched"] if r != "val/shard-00001/data.mdb")
    assert not (tmp_path / "p" / "val" / "shard-00001" / ".data.mdb.pull-part").exists()
    assert _cli("verify", "--data", tmp_path / "p", "--workers", "1").exit_code == 0


@pytest.mark.parametrize("rel", ["train/shard-00000/data.mdb", "train/shard-00001/keys.bin", "manifest.json"])
def test_pull_never_replaces_a_file_it_did_not_write(uploaded, prepared, tmp_path, rel):
    _, url = uploaded
    mine = tmp_path / "p" / rel
    mine.parent.mkdir(parents=True)
    own = bytes(b ^ 0xFF for b in (prepared / rel).read_bytes())  # the same size as the bucket's, not its bytes
    mine.write_bytes(own)
    result = _cli("pull", url, tmp_path / "p")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (f"Error: {mine} exists and differs from {url}/{rel}: pull never "
                                              "replaces or deletes a file it did not write; move it away, or pull "
                                              "into another dir")
    assert mine.read_bytes() == own
    assert not (tmp_path / "p" / "val").exists()  # refused before fetching anything


def test_a_shard_that_is_not_the_manifests_is_refused(uploaded, prepared, tmp_path):
    server, url = uploaded
    bucket, prefix = bucketdata.split_url(url)
    server.client().upload_file(str(prepared / "train" / "shard-00001" / "data.mdb"), bucket,
                                f"{prefix}/train/shard-00000/data.mdb")  # another shard under its name
    result = _cli("pull", url, tmp_path / "p")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith(f"Error: {url}/train/shard-00000/data.mdb is not the shard "
                                                     "its manifest.json lists (")
    assert not (tmp_path / "p" / "train" / "shard-00000" / "data.mdb").exists()
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_pulling_an_unfinished_data_dir_is_one_sentence(uploaded, tmp_path):
    server, url = uploaded
    bucketdata.delete(server, url, "manifest.json")
    result = _cli("pull", url, tmp_path / "p")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith(f"Error: {url} holds no manifest.json: it is no finished data dir")


@pytest.mark.parametrize("words", [["stats"], ["verify"], ["train", "--cpu"]])
def test_commands_that_read_a_data_dir_point_a_bucket_url_to_pull(words):
    result = _cli(*words, "--data", "s3://my-bucket/alexnet-data")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].endswith("s3://my-bucket/alexnet-data is a bucket URL; this command reads "
                                                   "a local data dir: copy it first with `alexnet-pipe pull "
                                                   "s3://my-bucket/alexnet-data DIR` (docs/buckets.md)")


@pytest.mark.parametrize("jobs", [1, 3])
def test_pull_fetches_jobs_files_at_a_time_and_each_meta_json_after_the_data(uploaded, prepared, tmp_path,
                                                                              monkeypatch, jobs):
    """--jobs files in flight at once (never more), and every shard's meta.json only once all data files are
    here: a dir stopped midway never holds a shard's meta.json without its data."""
    import threading
    import time
    from alexnet_pipe.ingest import pull as pull_module
    fetch, lock, state = pull_module._fetch, threading.Lock(), {"now": 0, "most": 0, "order": []}

    def counted(url, want, local):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)  # long enough for the others to start
        try:
            return fetch(url, want, local)
        finally:
            with lock:
                state["now"] -= 1
                state["order"].append(want.rel)

    monkeypatch.setattr(pull_module, "_fetch", counted)
    result = _cli("pull", uploaded[1], tmp_path / "p", "--jobs", jobs)
    assert result.exit_code == 0, result.output
    assert _files(tmp_path / "p") == _files(prepared)
    assert state["most"] == jobs
    metas = [i for i, rel in enumerate(state["order"]) if rel.endswith("/meta.json")]
    assert metas and min(metas) == len(state["order"]) - len(metas)
