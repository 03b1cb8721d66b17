"""Preemption (issue 12): SIGTERM, as Slurm, Kubernetes and spot instances send before a kill, stops a run after
a whole step with a checkpoint and a distinct exit status, and --resume continues it exactly."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_pipe.train.signals import PREEMPTED_EXIT
from alexnet_pipe.train.entry import run_training
from helpers.training import assert_same_weights, tiny, weights

ARGS = ["--cpu", "--loader", "synthetic", "--width", "0.0625", "--crop", "64", "--batch-size", "8",
        "--num-classes", "5", "--eval-every", "0", "--log-every", "1", "--schedule", "step", "--dropout", "0",
        "--synthetic-steps", "4", "--epochs", "1000"]


def _rows(run: Path) -> int:
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    except FileNotFoundError:
        return 0


def _sigterm_after(cmd: list[str], run: Path, rows: int, to_group: bool) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while _rows(run) < rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        if to_group:  # Slurm signals every process of the job step
            os.killpg(proc.pid, signal.SIGTERM)
        else:  # a plain `kill` of the launcher: it passes the notice on to its workers
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
# the resume and its reference run once per process count: the two ways the notice reaches 2 processes end in the
# same checkpoint and hint, which a resume then reads alike (each resume is two launches, ~20 s on 2 cores)
@pytest.mark.parametrize("nproc,to_group,resume", [("2", False, False), ("2", True, True), ("1", False, True)])
def test_sigterm_checkpoints_exits_75_and_resume_continues_exactly(tmp_path, nproc, to_group, resume):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "alexnet_pipe", "train", *ARGS, "--nproc", nproc, "--run", str(run)]
    done = _sigterm_after(cmd, run, rows=3, to_group=to_group)
    assert done.returncode == PREEMPTED_EXIT, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "stopped by SIGTERM" in done.stderr
    assert f"--run {run} --resume" in done.stderr
    state_step = max(int(p.stem.split("-")[1]) for p in run.glob("ckpt-*.pt"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert state_step == max(r["step"] for r in rows if "loss" in r)  # the checkpoint is of the last step taken
    if not resume:
        return
    target = state_step + 2
    # the printed hint as it stands (plus a stop): the resume takes the launch settings the run started with
    hint = re.search(r"`alexnet-pipe (train --run \S+ --resume)`", done.stderr).group(1)
    resumed = subprocess.run([*cmd[:3], *shlex.split(hint), "--max-steps", str(target)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "settings.json").read_text())["nproc"] == int(nproc)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in line]
    assert all("nproc" not in e["changed"] and "device" not in e["changed"] for e in events), events
    reference = tmp_path / "reference"  # uninterrupted, in this process (as many processes give the same weights)
    run_training(tiny(reference, dropout=0.0, max_steps=target, nproc=1, num_classes=5, epochs=1000))
    assert_same_weights(weights(run), weights(reference), atol=1e-5)



def _preempted_during(step: int, settings, monkeypatch) -> str:
    """train() in this process (so that a mutation tool sees it called; the test above runs it in processes of its
    own) with a SIGTERM given during `step`; -> the Preempted message."""
    import alexnet_pipe.train.loop as trainer
    from alexnet_pipe.core.errors import Preempted
    take_step = trainer.take_step

    def noticed(run, batches):
        take_step(run, batches)
        if run.pos.step == step:
            signal.raise_signal(signal.SIGTERM)  # the handler train() installed notes it; the step is whole

    monkeypatch.setattr(trainer, "take_step", noticed)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Preempted) as stopped:
            trainer.train(settings)
    finally:
        signal.signal(signal.SIGTERM, previous)  # a preempted train() leaves its handler (its process exits)
    return str(stopped.value)


def test_a_single_process_run_stops_at_the_step_the_notice_came_in(tmp_path, monkeypatch):
    """One process checks for SIGTERM after every step, not only at a metrics row: the notice given during step 3
    (of rows every 4) stops the run after step 3, with its row and checkpoint."""
    run = tmp_path / "run"
    message = _preempted_during(3, tiny(run, log_every=4, synthetic_steps=8, epochs=2), monkeypatch)
    assert "stopped by SIGTERM after step 3" in message, message
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3]
    assert sorted(p.name for p in run.glob("ckpt-*.pt")) == ["ckpt-00000003.pt"]


def test_a_preempted_run_s_checkpoint_is_not_marked_best(tmp_path, monkeypatch):
    """best.pt is the model of the best evaluation: epoch 1's (step 4), not the unevaluated one a SIGTERM in
    epoch 2 checkpoints (step 6)."""
    from alexnet_pipe.train.checkpoint import load_checkpoint
    run = tmp_path / "run"
    _preempted_during(6, tiny(run, eval_every=1, synthetic_steps=4, epochs=3), monkeypatch)
    assert (run / "ckpt-00000006.pt").exists()
    assert load_checkpoint(run / "best.pt")["step"] == 4
