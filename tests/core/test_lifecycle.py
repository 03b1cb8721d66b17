"""Process lifecycle (issue 19, mechanism 4): SIGTERM, SIGINT and SIGHUP stop prepare, verify, stats and evaluate
with their worker processes, keep what was committed and say so in one sentence; a later plain run resumes.
Launcher variables set without torchrun are named, never acted on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe.core import stopping
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images
from helpers.processes import DEFAULT_SIGINT, sleep_and_say


# ---------------------------------------------------------------- the mechanism, in this process

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_raise_where_the_command_is_and_the_handlers_come_back(sig):
    before = signal.getsignal(sig)
    with pytest.raises(stopping.Stopped) as caught:
        with stopping.stop_on_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler runs at once; never reached
    assert caught.value.signum == sig and isinstance(caught.value, KeyboardInterrupt)
    assert stopping.received() == sig and stopping.exit_code(130) == 128 + sig
    assert signal.getsignal(sig) is before


def test_a_second_signal_during_the_clean_up_lets_it_finish():
    cleaned = []
    with pytest.raises(stopping.Stopped):
        with stopping.stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a second `kill` while the stage cleans up
                time.sleep(0.05)
                cleaned.append(True)
    assert cleaned == [True]


def _gone(pid: int, within: float = 10.0) -> bool:
    """The process has ended (a zombie waiting for a reaper counts as ended)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_a_pool_left_by_an_exception_kills_its_workers_at_once(tmp_path):
    from alexnet_pipe.core.workers import worker_pool
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with worker_pool(1) as pool:
            pool.submit(sleep_and_say, str(tmp_path / "pid"))
            while not (tmp_path / "pid").exists():
                time.sleep(0.05)
            raise KeyboardInterrupt  # as Ctrl-C, SIGTERM or SIGHUP do in the parent
    assert time.monotonic() - started < 30  # not the task's 60 s
    assert _gone(int((tmp_path / "pid").read_text()), within=5)


def test_workers_of_a_parent_killed_outright_exit_by_themselves(tmp_path):
    """SIGKILL leaves no clean-up to run: each worker notices its parent is gone."""
    code = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from alexnet_pipe.core.workers import worker_pool
        from helpers.processes import sleep_and_say
        if __name__ == "__main__":
            pool = worker_pool(1)
            pool.submit(sleep_and_say, {str(tmp_path / "pid")!r})
            time.sleep(120)
        """)
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "pid").exists():
            assert time.monotonic() < deadline and parent.poll() is None, "the worker did not start"
            time.sleep(0.1)
        parent.kill()
        parent.wait()
        assert _gone(int((tmp_path / "pid").read_text()), within=10)
    finally:
        if parent.poll() is None:
            parent.kill()


# ---------------------------------------------------------------- the commands, signalled from outside

# Runs the CLI with one library function slowed down (in the parent process): the first call leaves a marker
# file and waits, so the signal arrives while the command is at that point, with its workers running.
SLOWED = textwrap.dedent(f"""
    {DEFAULT_SIGINT}
    import importlib, pathlib, sys, time
    marker, target, pause = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    module_name, _, attr = target.partition(":")
    owner_name, _, member = attr.partition(".")
    module = importlib.import_module(module_name)
    owner = getattr(module, owner_name) if member else module
    real = getattr(owner, member or owner_name)
    def slowed(*args, **kwargs):
        marker.touch()
        time.sleep(pause)
        return real(*args, **kwargs)
    setattr(owner, member or owner_name, slowed)
    from alexnet_pipe_cli.main import cli
    if __name__ == "__main__":
        cli(sys.argv[4:], prog_name="alexnet-pipe")
    """)


def _descendants(pid: int) -> set[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def signalled(tmp_path: Path, sig: int, target: str, pause: float, args: list[str], workers: int) -> tuple:
    """Run the command with `target` slowed, signal it once `target` is reached and its `workers` are up;
    -> (exit status, output, the descendants it had)."""
    marker = tmp_path / "reached"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", SLOWED, str(marker), target, str(pause), *map(str, args)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() or len(_descendants(proc.pid)) < workers:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.05)
        children = _descendants(proc.pid)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, children


def one_sentence_on_stop(code: int, out: str, sig: int, children: set[int]) -> str:
    assert code == 128 + sig, out[-3000:]
    assert "Traceback" not in out and out.count("Error:") == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "interrupted" in last, out[-3000:]
    left = [pid for pid in children if not _gone(pid)]
    assert left == [], f"processes left running after the command ended: {left}"
    return last


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """60 JPEGs in 3 classes: enough shards for a run to be stopped in the middle."""
    root = tmp_path_factory.mktemp("tree")
    for i, image in enumerate(random_images(60, 96, seed=3)):
        folder = root / "train" / f"n{i % 3:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"img_{i}.JPEG"), image)
    return root


@pytest.mark.slow
def test_sigterm_to_prepare_with_two_workers_stops_them_keeps_whole_shards_and_resumes(tree, tmp_path):
    """The issue's case: SIGTERM left both workers blocked forever and the parent gone."""
    args = ["prepare", tree, "--data", tmp_path / "d", "--size", "32", "--shard-size", "5", "--workers", "2"]
    code, out, children = signalled(tmp_path, signal.SIGTERM, "alexnet_pipe.shards.writer:ShardWriter.commit",
                                    30, args, workers=2)
    line = one_sentence_on_stop(code, out, signal.SIGTERM, children)
    assert "interrupted by SIGTERM" in line and "run the same command again" in line, line
    assert not (tmp_path / "d" / "manifest.json").exists()
    assert not list((tmp_path / "d").glob("*/.shard-*"))  # no half-written shard
    result = CliRunner().invoke(cli, [str(a) for a in args])  # the hint: the same command again
    assert result.exit_code == 0, result.output
    clean = CliRunner().invoke(cli, [str(a) for a in args[:3]] + [str(tmp_path / "clean"), *map(str, args[4:])])
    assert clean.exit_code == 0, clean.output
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("d", "clean")]
    assert manifests[0]["splits"] == manifests[1]["splits"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    images, labels = random_images(24, 64, seed=5), np.arange(24) % 3
    root = make_data_dir(tmp_path_factory.mktemp("lifecycle") / "d",
                         {"train": (images[:18], labels[:18]), "val": (images[18:], labels[18:])}, 3, 3)
    from alexnet_pipe.stats.compute import StatsSettings, run_stats
    run_stats(StatsSettings(root, pca=True, recompute=False, sample=None, plot=False))
    return root


@pytest.mark.slow
def test_sighup_to_verify_with_two_workers_stops_them(data, tmp_path):
    args = ["verify", "--data", str(data), "--workers", "2"]
    code, out, children = signalled(tmp_path, signal.SIGHUP, "alexnet_pipe.shards.verify:ShardReport", 30, args,
                                    workers=2)
    line = one_sentence_on_stop(code, out, signal.SIGHUP, children)
    assert "interrupted by SIGHUP" in line and "run it again" in line, line
    assert CliRunner().invoke(cli, args).exit_code == 0  # the hint


@pytest.mark.slow
def test_sigterm_to_stats_is_one_sentence_and_keeps_the_stats(data, tmp_path):
    before = {p.name: p.read_bytes() for p in (data / "stats").iterdir()}
    code, out, children = signalled(tmp_path, signal.SIGTERM, "alexnet_pipe.stats.compute:merge_shard_stats", 30,
                                    ["stats", "--pca", "--data", data], workers=0)
    line = one_sentence_on_stop(code, out, signal.SIGTERM, children)
    assert "nothing was written" in line and "run the same command again" in line, line
    assert {p.name: p.read_bytes() for p in (data / "stats").iterdir()} == before
    assert CliRunner().invoke(cli, ["stats", "--pca", "--data", str(data)]).exit_code == 0


@pytest.mark.slow
def test_sigint_to_evaluate_stops_its_loader_workers(data, tmp_path):
    import dataclasses
    import torch
    from alexnet_pipe.model.alexnet import build_model
    from alexnet_pipe.train.config import TrainSettings
    ts = TrainSettings(width=0.0625, crop=64)
    torch.save({"model": build_model(ts.arch, 3, ts.width).state_dict(), "num_classes": 3,
                "settings": dataclasses.asdict(ts)}, tmp_path / "m.pt")
    args = ["evaluate", str(tmp_path / "m.pt"), "--data", str(data), "--loader", "torch", "--batch-size", "2"]
    code, out, children = signalled(tmp_path, signal.SIGINT, "alexnet_pipe.train.evaluation:topk_correct", 30,
                                    args, workers=2)
    line = one_sentence_on_stop(code, out, signal.SIGINT, children)
    assert "run it again" in line, line
    assert CliRunner().invoke(cli, args).exit_code == 0


# ---------------------------------------------------------------- launcher variables without a launcher

TRAIN = ["train", "--cpu", "--loader", "synthetic", "--max-steps", "1", "--width", "0.0625", "--crop", "64",
         "--batch-size", "2", "--eval-every", "0", "--recipe", "small", "--synthetic-steps", "1"]


class Hang(BaseException):
    pass


def _invoke(args, env):
    def alarm(signum, frame):
        raise Hang("train waited for processes that never come")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], env=env)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("env, named", [
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29541"}, "WORLD_SIZE='2'"),
    ({"RANK": "abc", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='abc'"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='2', WORLD_SIZE='2'"),
    ({"TORCHELASTIC_RESTART_COUNT": "1"}, "TORCHELASTIC_RESTART_COUNT='1'"),
], ids=["world-size-alone", "rank-not-a-number", "rank-beyond-the-world", "restart-count-alone"])
def test_launcher_variables_in_a_plain_shell_are_named_and_the_hint_works(env, named, tmp_path):
    """Never a hang (WORLD_SIZE alone waited for rank 1), a traceback (RANK=abc) or a silent resume (a stray
    restart count resumed the run dir's newest checkpoint); the sentence says which variables to unset, and
    train without them runs."""
    run = tmp_path / "run"
    assert _invoke([*TRAIN, "--run", run], {}).exit_code == 0  # a run with a checkpoint a stray count would resume
    result = _invoke([*TRAIN, "--run", tmp_path / "second"], env)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and named in line and "unset " in line, line
    assert not (tmp_path / "second").exists()
    unset = line.split("unset ", 1)[1].split(" to ")[0].split()
    left = {k: v for k, v in env.items() if k not in unset}
    assert not set(left) & {"RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"}, (unset, left)
    assert _invoke([*TRAIN, "--run", tmp_path / "second"], {**{k: None for k in unset}, **left}).exit_code == 0


def test_a_stop_between_two_verified_shards_ends_the_pool_at_once(data, monkeypatch):
    """The pool's generator is closed where the stop is met, not at interpreter exit (where its pipes are gone and
    its clean-up printed a traceback after the one sentence: seen once under SIGHUP with two workers)."""
    import multiprocessing

    from alexnet_pipe.core import progress
    from alexnet_pipe.shards.verify import verify

    def stop(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(progress.Progress, "update", stop)
    with pytest.raises(KeyboardInterrupt) as stopped:
        verify(data, workers=2, show=False)
    # the traceback held here keeps verify's frame alive, as an exit path would: only a close ends the pool
    assert stopped.tb is not None and not multiprocessing.active_children()


def test_a_stop_between_two_written_chunks_ends_the_pool_at_once(tree, tmp_path, monkeypatch):
    import multiprocessing

    from alexnet_pipe.core import progress
    from alexnet_pipe.ingest.plan import PrepareSettings
    from alexnet_pipe.ingest.prepare import run

    def stop(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(progress.Progress, "update", stop)
    settings = PrepareSettings(source=tree, data=tmp_path / "d", workers=2, shard_size=10)
    with pytest.raises(BaseException) as stopped:
        run(settings, echo=lambda *a: None)
    assert stopped.tb is not None and not multiprocessing.active_children()
