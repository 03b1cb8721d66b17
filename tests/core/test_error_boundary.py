"""The one error boundary (issue 19, mechanism 1): whatever escapes a command is one sentence that names the path
and what was being done, and a non-zero exit; ALEXNET_PIPE_DEBUG=1 shows the traceback instead."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import DiskFull, UnreadableFile
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def one_sentence(result, code=1) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and result.output.count("Error:") == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.output
    return last


@pytest.fixture()
def data(tmp_path) -> Path:
    images = random_images(12, 64, seed=2)
    labels = np.arange(12) % 3
    return make_data_dir(tmp_path / "d", {"train": (images[:9], labels[:9]), "val": (images[9:], labels[9:])}, 3, 1)


@pytest.fixture()
def read_only(tmp_path, data):
    """A copy of the data dir on a read-only file system (root writes through permissions, so a mount it is)."""
    from helpers.mounts import read_only_copy, unmount
    yield read_only_copy(tmp_path / "ro", data, "d")
    unmount(tmp_path / "ro")


def test_stats_on_a_read_only_data_dir_is_one_sentence(read_only):
    line = one_sentence(run("stats", "--pca", "--data", read_only))
    assert "`alexnet-pipe stats`" in line and "create the directory" in line, line
    assert f"{read_only / 'stats'}" in line and "read-only" in line, line


def test_the_traceback_is_there_with_the_debug_variable(read_only):
    result = run("stats", "--pca", "--data", read_only, env={"ALEXNET_PIPE_DEBUG": "1"})
    assert isinstance(result.exception, OSError) and result.exception.filename == str(read_only / "stats")


def test_a_file_where_a_directory_belongs_is_one_sentence(data):
    (data / "stats").write_text("the user's file")
    line = one_sentence(run("stats", "--pca", "--data", data))
    assert str(data / "stats") in line and "create the directory" in line, line
    assert (data / "stats").read_text() == "the user's file"


def _failing_info(data):
    raise ValueError("an unforeseen state")


def test_an_unforeseen_error_is_said_as_a_bug_and_its_hint_shows_the_traceback(data, monkeypatch):
    """The sentence asks for ALEXNET_PIPE_DEBUG=1; the same command with it raises the error itself."""
    import alexnet_pipe.shards.verify
    monkeypatch.setattr(alexnet_pipe.shards.verify, "info", _failing_info)
    line = one_sentence(run("info", "--data", data), code=70)
    assert "`alexnet-pipe info` failed unexpectedly (an unforeseen state [ValueError])" in line, line
    assert "run the same command with ALEXNET_PIPE_DEBUG=1" in line
    result = run("info", "--data", data, env={"ALEXNET_PIPE_DEBUG": "1"})
    assert isinstance(result.exception, ValueError) and result.exc_info[2] is not None


def _read_settings(path: Path):
    import json
    return json.loads(path.read_text())


def _replace(src: Path, dst: Path):
    os.replace(src, dst)


def test_what_the_boundary_says_of_reader_errors_renames_and_memory(tmp_path):
    """Reference: the exceptions Python and torch raise themselves, caught from real calls."""
    import torch
    from alexnet_pipe.core.boundary import explain
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(ValueError) as caught:
        _read_settings(tmp_path / "settings.json")
    line, code = explain(caught.value, "train")
    assert code == 1 and f"`alexnet-pipe train` could not read {tmp_path / 'settings.json'}" in line, line
    with pytest.raises(OSError) as caught:
        _replace(tmp_path / "absent", tmp_path / "elsewhere")
    line, _ = explain(caught.value, "prepare")
    assert f"could not rename {tmp_path / 'absent'} to {tmp_path / 'elsewhere'}: it does not exist" in line, line
    with pytest.raises(RuntimeError) as caught:
        torch.empty(1 << 62, dtype=torch.uint8)  # more than any allocator grants
    line, code = explain(caught.value, "bench train")
    assert code == 1 and "`alexnet-pipe bench train` ran out of memory" in line, line


# ---------------------------------------------------------------- errors from worker processes

class TwoPartError(UserError):
    def __init__(self, path, why):
        super().__init__(f"{path}: {why}")
        self.path = path


def test_user_errors_survive_pickling_whatever_their_constructor():
    """A worker's error crosses to the parent pickled; Exception's own pickling calls cls(message) and broke
    every UserError whose __init__ takes other arguments."""
    for error in (TwoPartError("/x", "why"), UnreadableFile(Path("/x"), "not a regular file"), UserError("plain")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and back.__dict__ == error.__dict__
    full = DiskFull.__new__(DiskFull, "no space left for /x")
    assert str(pickle.loads(pickle.dumps(full))) == "no space left for /x"


def raise_unreadable(path: str):
    raise UnreadableFile(Path(path), "not a regular file")


def test_a_workers_user_error_reaches_the_parent_as_itself(tmp_path):
    from alexnet_pipe.core.workers import worker_pool
    with pytest.raises(UnreadableFile) as caught:
        with worker_pool(1) as pool:
            pool.submit(raise_unreadable, str(tmp_path / "f")).result()
    assert caught.value.path == tmp_path / "f" and caught.value.reason == "not a regular file"


def refuse_on_rank_one() -> str:
    if os.environ["RANK"] == "1":
        raise UnreadableFile(Path("/data/shard"), "not a regular file")
    import time
    time.sleep(30)  # rank 0 waits, as ranks wait for each other in a collective, until the launcher stops it
    return "done"


@pytest.mark.slow
def test_a_user_error_in_a_launched_worker_is_raised_once_without_the_launchers_traceback(capfd):
    """Two processes through the elastic launcher, rank 1 refuses: the launcher's side raises that sentence
    (train --nproc 2 showed a ProcessExitedException traceback and a second 'worker failed' line)."""
    from alexnet_pipe.train.launch import launch
    with pytest.raises(UserError) as caught:
        launch(refuse_on_rank_one, (), nproc=2)
    assert str(caught.value) == "/data/shard cannot be read (not a regular file)"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ProcessExitedException" not in err and "Error" not in err, err


# ---------------------------------------------------------------- the listed cases

def test_every_seed_option_takes_the_seeds_its_consumers_take():
    """numpy's SeedSequence takes no negative seed, torch.manual_seed none beyond 64 bits: every --seed refuses
    both at the command line (prepare --seed -1 was a ValueError traceback)."""
    import click
    from helpers.commands import leaf_commands as _commands
    seeds = [(name, p) for name, cmd in _commands().items() for p in cmd.params if p.name == "seed"]
    assert {name for name, _ in seeds} >= {"prepare", "train", "viz augment", "sample-data"}
    for name, param in seeds:
        ctx = click.Context(_commands()[name])
        assert param.type.convert("0", param, ctx) == 0
        assert param.type.convert(str(2 ** 63 - 1), param, ctx) == 2 ** 63 - 1
        for bad in ("-1", str(2 ** 64)):
            with pytest.raises(click.BadParameter):
                param.type.convert(bad, param, ctx)


def test_prepare_with_a_negative_seed_is_one_sentence(tmp_path):
    line = one_sentence(run("prepare", tmp_path, "--data", tmp_path / "d", "--seed", "-1"), code=2)
    assert "--seed" in line and "-1" in line, line


def test_bench_prepare_on_the_built_in_sample_tree(tmp_path):
    """The sample tree holds an empty file, a non-image and a cut JPEG, which prepare rejects: the baselines
    work on the inputs prepare takes (an empty file crashed OpenCV's decode)."""
    import json
    assert run("sample-data", tmp_path / "s", "--classes", "2", "--train-per-class", "8",
               "--val-per-class", "1").exit_code == 0
    files = [p for p in (tmp_path / "s").rglob("*.JPEG") if p.is_file()]
    result = run("bench", "prepare", "--source", tmp_path / "s", "--repeats", "1", "--workers", "1", "--size", "32",
                 "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # --json: the object alone on stdout, progress on stderr
    assert 0 < out["images"] <= len(files)
    assert all(np.isfinite(v) and v > 0 for k, v in out.items() if k.endswith(("_per_sec", "_one_core")))


def run_or_hang(*args):
    import signal

    def hang(signum, frame):
        raise TimeoutError(f"{args} waited for a writer")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        return run(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("words", [["train", "--config", "FIFO", "--cpu", "--dry-run"], ["evaluate", "FIFO"],
                                   ["viz", "filters", "FIFO"]], ids=" ".join)
def test_a_fifo_where_a_file_is_read_is_one_sentence(words, tmp_path, data):
    """torch.load and read_text opened it and waited for a writer for ever (evaluate FIFO.pt hung)."""
    fifo = tmp_path / "in.pt"
    os.mkfifo(fifo)
    line = one_sentence(run_or_hang(*[fifo if w == "FIFO" else w for w in words], "--data", data)
                        if words[0] == "evaluate" else run_or_hang(*[fifo if w == "FIFO" else w for w in words]))
    assert str(fifo) in line and "not a regular file" in line, line


@pytest.mark.parametrize("words", [["viz", "augment", "--lighting"], ["viz", "augment", "--color-jitter"],
                                   ["bench", "loader", "--lighting"], ["train", "--cpu", "--dry-run", "--lighting"]],
                         ids=" ".join)
def test_augmentation_strengths_that_overflow_float32_are_refused(words, tmp_path):
    """--lighting 1e30: the noise overflowed into NaN pixels, cast into the picture as garbage without a word."""
    line = one_sentence(run(*words, "1e30", "--data", tmp_path), code=2)
    assert "1e+30" in line or "1e30" in line, line
