"""Advice that works as written (issue 19, mechanism 7): each hint these mechanisms print is run by its test.

The hints of the other mechanisms are run where they are tested: ALEXNET_PIPE_DEBUG=1 (test_error_boundary),
"run the same command again" after a signal and "unset ..." for stray launcher variables (test_lifecycle),
"start a new --run with a lower --lr" and "lower --lr" (test_finite).
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe_cli.main import cli
from helpers.processes import interruptible_module
from helpers.shardgen import make_data_dir, random_images


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _command_in(line: str) -> list[str]:
    """The `alexnet-pipe ...` command a message quotes, as words after the program name."""
    quoted = line.split("`")[1]
    words = shlex.split(quoted)
    assert words[0] == "alexnet-pipe", line
    return words[1:]


def _signal_state(proc, what: str) -> str:
    """`what`, and the process's state and signal masks (Linux's /proc) where it still runs."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            lines = [line.strip() for line in f if line.startswith(("State", "Threads", "SigBlk", "SigIgn", "SigCgt"))]
    except OSError:
        lines = [f"exited: {proc.poll()}"]
    return what + "; " + ", ".join(lines)


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_says_a_command_that_runs(tmp_path):
    """It said "continue with ... --resume", which then failed: there was no checkpoint to continue."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        interruptible_module("alexnet_pipe", "train", "--cpu", "--loader", "synthetic", "--run", str(run_dir),
                             "--recipe", "small", "--width", "0.0625", "--crop", "64", "--batch-size", "2",
                             "--eval-every", "0", "--log-every", "1", "--synthetic-steps", "100000"),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        metrics, started = run_dir / "metrics.jsonl", time.monotonic()
        while not (metrics.is_file() and metrics.stat().st_size) and proc.poll() is None:
            assert time.monotonic() < started + 120, "training did not start"
            time.sleep(0.1)
        sent = _signal_state(proc, f"SIGINT sent {time.monotonic() - started:.1f} s after the start, metrics "
                                   f"{metrics.stat().st_size if metrics.is_file() else 'none'} bytes")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, sent + "\n" + out[-3000:]
    line = out.strip().splitlines()[-1]
    assert line.startswith("Error: interrupted") and "no checkpoint was written yet" in line, out[-3000:]
    assert not list(run_dir.glob("ckpt-*.pt"))
    words = _command_in(line)
    result = run(*words, "--max-steps", "2")  # as printed; --max-steps only bounds the test's run
    assert result.exit_code == 0, result.output
    assert list(run_dir.glob("ckpt-*.pt")), result.output


def test_a_model_too_large_for_the_memory_is_one_sentence_and_a_smaller_width_runs(tmp_path, monkeypatch):
    """Linux grants a huge allocation and kills the process when it is touched ("Killed", no message)."""
    import alexnet_pipe.core.memory as memory
    monkeypatch.setattr(memory, "available_bytes", lambda: 4 << 20)  # 4 MiB: width 1/16 (1 MB) fits, 1/4 not
    args = ["bench", "train", "--cpu", "--crop", "63", "--batch-size", "1", "--steps", "1", "--warmup", "1",
            "--repeats", "1"]
    result = run(*args, "--width", "0.25")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.output.strip().splitlines()[-1]
    assert "an alexnet of width 0.25" in line and "choose a smaller width" in line, line
    assert run(*args, "--width", "0.0625").exit_code == 0


@pytest.mark.dali
def test_a_data_dir_whose_name_is_not_utf8_is_one_sentence_for_dali_and_renamed_it_works(tmp_path):
    """DALI takes paths as UTF-8 only: a folder a Latin-1 system named was "Unsupported argument type"."""
    images, labels = random_images(8, 64, seed=1), np.arange(8) % 2
    latin = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/donn\xe9es"))
    make_data_dir(latin, {"train": (images, labels)}, 2, 1)
    result = run("stats", "--recompute", "--data", latin, "--device", "cpu")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.output.strip().splitlines()[-1]
    assert "not a UTF-8 name" in line and "rename the folder to a UTF-8 name" in line, line
    shutil.move(latin, tmp_path / "donnees")
    assert run("stats", "--recompute", "--data", tmp_path / "donnees", "--device", "cpu").exit_code == 0
