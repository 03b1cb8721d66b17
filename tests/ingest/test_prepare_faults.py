"""prepare under faults (issue 12): a full disk, two writers on one data dir, array jobs of a scheduler."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from alexnet_pipe import shards
from alexnet_pipe.shards import verify
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.ingest.prepare import PrepareSettings, run
from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
from alexnet_pipe_cli.main import cli

SIZE = 48
SHARDS = 6


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "tree"
    write_sample_tree(root, SampleSettings(classes=3, train_per_class=10, val_per_class=3, seed=2, pathologies=False))
    return root


@pytest.fixture(scope="module")
def clean(tree, tmp_path_factory):
    """The uninterrupted run every faulty one must end up equal to."""
    data = tmp_path_factory.mktemp("clean") / "d"
    manifest = _prep(tree, data)["manifest"]
    return data, manifest


def _prep(src, data, **kw) -> dict:
    kw = {"size": SIZE, "shards": SHARDS, "workers": 1, **kw}
    return run(PrepareSettings(source=Path(src), data=Path(data), **kw), echo=lambda *_: None)


def _splits(manifest):
    return {s: [(e["name"], e["records"], e["checksum"]) for e in v["shards"]] for s, v in manifest["splits"].items()}


def _keys(data: Path) -> set[bytes]:
    return {k for split in ("train", "val") for d in shards.shard_dirs(data, split) for k, _ in shards.iter_records(d)}


def _leftovers(data: Path) -> list[str]:
    return [str(p) for p in data.rglob("*") if ".tmp-" in p.name or p.name.endswith(".claim")]


def _python(code: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _prep_code(src: Path, data: Path, **kw) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    return ("import json\nfrom pathlib import Path\nfrom alexnet_pipe.ingest.prepare import PrepareSettings, run\n"
            f"s = run(PrepareSettings(source=Path({str(src)!r}), data=Path({str(data)!r}), size={SIZE}, "
            f"shards={SHARDS}, workers=1, {args}), echo=lambda *_: None)\n"
            "print(json.dumps(s['written_shards']))\n")


def _written(proc: subprocess.Popen) -> list[str]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


# --- a full disk --------------------------------------------------------------------------------

def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])  # raw: LMDB's own commit meets the full disk (EIO)
def test_a_full_disk_is_one_sentence_keeps_whole_shards_and_resumes_to_the_clean_result(
        tree, tmp_path, small_disk, encoding):
    args = ["prepare", str(tree), "--size", str(SIZE), "--shards", str(SHARDS), "--workers", "1",
            "--encoding", encoding]
    assert CliRunner().invoke(cli, [*args, "--data", str(tmp_path / "clean")]).exit_code == 0
    clean = (tmp_path / "clean", shards.read_manifest(tmp_path / "clean"))
    data, ballast = small_disk / "d", small_disk / "ballast"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    ballast.write_bytes(b"\0" * (free - _du(clean[0]) // 2))  # room for about half of the run
    result = CliRunner().invoke(cli, [*args, "--data", str(data)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error) == 1 and "no space left" in error[0] and str(data) in error[0] and "MB more" in error[0]
    assert not _leftovers(data) and not (data / "manifest.json").exists()
    committed = [d for d in data.glob("*/shard-*") if shards.read_shard_meta(d)]
    assert committed, "the disk filled before any shard was committed: the test proves nothing"
    for shard in committed:
        meta = shards.read_shard_meta(shard)
        assert verify.check_shard(shard, meta, SIZE, 3) == [], shard
    ballast.unlink()
    again = CliRunner().invoke(cli, [*args, "--data", str(data)])
    assert again.exit_code == 0, again.output
    assert _splits(shards.read_manifest(data)) == _splits(clean[1]) and _keys(data) == _keys(clean[0])
    assert CliRunner().invoke(cli, ["verify", "--data", str(data), "--workers", "1"]).exit_code == 0


# --- two writers ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_whole_runs_started_together_give_one_clean_result(tree, clean, tmp_path):
    data = tmp_path / "d"
    procs = [_python(_prep_code(tree, data)) for _ in range(2)]
    written = [_written(p) for p in procs]
    assert not set(written[0]) & set(written[1])  # never two writers on one shard
    assert sorted(written[0] + written[1]) == sorted(f"{s}/{n}" for s, v in _splits(clean[1]).items() for n, *_ in v)
    assert _splits(shards.read_manifest(data)) == _splits(clean[1]) and not _leftovers(data)


@pytest.mark.slow
def test_overlapping_only_shards_workers_each_shard_once_then_a_plain_run_finalises(tree, clean, tmp_path):
    data = tmp_path / "d"
    procs = [_python(_prep_code(tree, data, only_shards=r)) for r in ((0, 4), (2, 6), (1, 5))]
    written = [set(_written(p)) for p in procs]
    assert sum(map(len, written)) == len(set.union(*written))  # disjoint
    assert _prep(tree, data)["written_now"] == 0
    assert _splits(shards.read_manifest(data)) == _splits(clean[1]) and not _leftovers(data)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_stale_claim_of_a_dead_process_is_taken_over(tree, clean, tmp_path):
    data = tmp_path / "d"
    (data / "train").mkdir(parents=True)
    claim = data / "train" / ".shard-00002.claim"
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": None}))
    tmp = data / "train" / ".shard-00002.tmp-999999"  # what that dead writer left
    tmp.mkdir()
    (tmp / "data.mdb").write_bytes(b"half")
    summary = _prep(tree, data)
    assert "train/shard-00002" in summary["written_shards"]
    assert _splits(summary["manifest"]) == _splits(clean[1]) and not _leftovers(data)


def test_a_stale_claim_on_a_committed_shard_is_cleared(tree, clean, tmp_path):
    """A writer killed after committing its shard but before letting go of the claim: the next run, which has
    nothing to write there, still removes the claim (seen as a flake of the SIGKILL test in test_prepare.py)."""
    import shutil
    data = tmp_path / "d"
    shutil.copytree(clean[0], data)
    claim = data / "train" / ".shard-00002.claim"
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": None}))
    summary = _prep(tree, data)
    assert summary["written_now"] == 0 and not _leftovers(data)


def test_a_live_claim_is_left_to_its_writer_and_finalising_names_it(tree, tmp_path):
    data = tmp_path / "d"
    (data / "train").mkdir(parents=True)
    claim = data / "train" / ".shard-00001.claim"
    claim.write_text(json.dumps({"host": "another-host", "pid": 4242, "start": None}))
    with pytest.raises(UserError, match="pid 4242 on another-host"):
        _prep(tree, data)
    assert not (data / "train" / "shard-00001").exists() and (data / "train" / "shard-00002").is_dir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live local process: the same
        claim.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "start": None}))
        summary = _prep(tree, data, only_shards=(0, SHARDS))
        assert summary["left_to_others"] == ["train/shard-00001"]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _prep(tree, data)["written_shards"] == ["train/shard-00001"]  # its writer died: taken over


# --- array jobs ---------------------------------------------------------------------------------------

def _cli_proc(src: Path, data: Path, env: dict, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "alexnet_pipe", "prepare", str(src), "--data", str(data), "--size", str(SIZE),
           "--shards", str(SHARDS), "--workers", "1", "--only-shards", "auto", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env})


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["slurm", "kubernetes"])
def test_array_job_tasks_then_a_plain_run_finalise_to_the_clean_result(tree, clean, tmp_path, scheduler):
    data = tmp_path / "d"
    if scheduler == "slurm":  # --array=1-3: ids start at 1
        tasks = [_cli_proc(tree, data, {"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_MIN": "1",
                                        "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_STEP": "1"}) for i in (1, 2, 3)]
    else:
        tasks = [_cli_proc(tree, data, {"JOB_COMPLETION_INDEX": str(i)}, "--array-count", "2") for i in (0, 1)]
    outputs = [t.communicate(timeout=240)[0] for t in tasks]
    assert all(t.returncode == 0 for t in tasks), outputs
    assert [out for out in outputs if "run prepare without --only-shards" not in out] == []
    assert _prep(tree, data)["written_now"] == 0  # the tasks wrote every shard between them
    assert _splits(shards.read_manifest(data)) == _splits(clean[1])


@pytest.mark.parametrize("env, extra, words", [
    ({}, [], "Slurm array job"),
    ({"JOB_COMPLETION_INDEX": "0"}, [], "--array-count"),
    ({"JOB_COMPLETION_INDEX": "5"}, ["--array-count", "2"], "outside the 2 tasks"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, [], "not a whole number"),
])
def test_only_shards_auto_outside_an_array_job_is_one_sentence(tree, tmp_path, monkeypatch, env, extra, words):
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["prepare", str(tree), "--data", str(tmp_path / "d"), "--size", str(SIZE),
                                      "--only-shards", "auto", *extra])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert words in [line for line in result.output.splitlines() if line.startswith("Error")][0]


def test_array_ranges_are_disjoint_and_cover_every_shard():
    from hypothesis import given, strategies as st

    from alexnet_pipe.ingest.arrayjob import auto_range

    @given(st.integers(0, 300), st.integers(1, 64))
    def check(shard_count, tasks):
        ranges = [auto_range({"JOB_COMPLETION_INDEX": str(i)}, tasks, shard_count) for i in range(tasks)]
        covered = [s for a, b in ranges for s in range(a, b)]
        assert covered == list(range(shard_count))
    check()
