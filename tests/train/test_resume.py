"""A resume continues the same run (issue 11): per-rank dropout that replays, settings and data that cannot
silently change, another number of processes, and a diverged loss that never becomes a checkpoint."""
from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from alexnet_pipe.train.checkpoint import check_resumable, latest_checkpoint, load_checkpoint
from alexnet_pipe.train.config import TrainSettings
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.train.runlog import read_metrics
from alexnet_pipe.train.entry import run_training
from alexnet_pipe.train.loop import dropout_seed
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images, write_pca_json
from helpers.training import assert_same_weights, tiny, weights


# ---------------------------------------------------------------- dropout: one stream per rank

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _masks_on_rank(rank: int, port: int, out: str) -> None:
    """Same seed, same weights, same batch on both ranks; dropout seeded the way train() seeds it."""
    import torch.distributed as dist
    from alexnet_pipe.model.alexnet import build_model
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = build_model("alexnet", 5, 0.0625, dropout=0.5).train()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    outputs = []
    for step in (7, 7, 8):
        torch.manual_seed(dropout_seed(0, rank, step))
        outputs.append(model(x).detach())
    weights_sum = torch.stack([p.double().sum() for p in model.parameters()])
    gathered = [torch.zeros_like(torch.stack(outputs)) for _ in range(2)]
    dist.all_gather(gathered, torch.stack(outputs))
    sums = [torch.zeros_like(weights_sum) for _ in range(2)]
    dist.all_gather(sums, weights_sum)
    if rank == 0:
        torch.save({"outputs": gathered, "sums": sums}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_fed_one_batch_draw_different_masks_that_replay(tmp_path):
    out = tmp_path / "masks.pt"
    mp.spawn(_masks_on_rank, args=(_free_port(), str(out)), nprocs=2)
    got = torch.load(out)
    torch.testing.assert_close(got["sums"][0], got["sums"][1], rtol=0, atol=0)  # identical initial weights
    rank0, rank1 = got["outputs"]
    assert not torch.equal(rank0[0], rank1[0])  # two masks, not one drawn twice
    for r in (rank0, rank1):
        torch.testing.assert_close(r[0], r[1], rtol=0, atol=0)  # (seed, rank, step) replays the mask
        assert not torch.equal(r[0], r[2])  # the next step draws anew


def test_dropout_seed_is_a_function_of_seed_rank_and_step():
    seeds = {dropout_seed(s, r, k) for s in range(3) for r in range(4) for k in range(50)}
    assert len(seeds) == 3 * 4 * 50 and all(0 <= x < 2 ** 63 for x in seeds)
    assert dropout_seed(1, 2, 3) == dropout_seed(1, 2, 3)


# ---------------------------------------------------------------- what a resume may change

def _trained_state(tmp_path) -> tuple[TrainSettings, dict]:
    s = tiny(tmp_path / "r", max_steps=2)
    run_training(s)
    return s, load_checkpoint(latest_checkpoint(tmp_path / "r"))


@pytest.mark.parametrize("change", [dict(seed=1), dict(batch_size=16), dict(crop=72), dict(normalize="channel"),
                                    dict(lighting=0.0), dict(recipe="small"), dict(lr=0.02), dict(momentum=0.8),
                                    dict(weight_decay=0.0), dict(schedule="cosine"), dict(step_epochs=(10,)),
                                    dict(dropout=0.3), dict(momentum_form="torch")])
def test_a_resume_that_would_change_the_run_is_refused_naming_both_values(tmp_path, change):
    s, state = _trained_state(tmp_path)
    (name, value), = change.items()
    with pytest.raises(UserError) as caught:
        check_resumable(state, dataclasses.replace(s, resume="latest", **change))
    flag = "--" + name.replace("_", "-")
    text = str(caught.value)
    assert flag in text and "(now " in text and text.count("\n") == 0
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    assert f"(now {shown})" in text


def test_allowed_changes_pass_and_are_written_as_an_event_row(tmp_path):
    s, state = _trained_state(tmp_path)
    later = dataclasses.replace(s, epochs=5, max_steps=3, log_every=2, num_threads=1, resume="latest")
    check_resumable(state, later)
    run_training(later)
    events = [r for r in read_metrics(tmp_path / "r") if r.get("event") == "resume"]
    assert events == [{"step": 2, "event": "resume",
                       "changed": {"epochs": [90, 5], "max_steps": [2, 3], "log_every": [1, 2], "num_threads": [2, 1]}}]


def _data_dir(root: Path, seed: int) -> Path:
    images, labels = random_images(24, 72, seed=seed), np.arange(24) % 3
    data = make_data_dir(root, {"train": (images, labels)}, 3, 2, "jpeg")
    (data / "stats").mkdir()
    np.save(data / "stats" / "mean.npy", images.astype(np.float32).mean(0))
    write_pca_json(data / "stats" / "pca.json", [3.0, 2.0, 1.0], np.eye(3), [120.0] * 3, [50.0] * 3, 72, 24)
    return data


def test_a_resume_on_other_data_is_refused(tmp_path):
    first, other = _data_dir(tmp_path / "a", 1), _data_dir(tmp_path / "b", 2)
    run = tmp_path / "run"
    args = ["train", "--cpu", "--loader", "torch", "--num-threads", "0", "--width", "0.0625", "--crop", "64",
            "--batch-size", "8", "--eval-every", "0", "--schedule", "step", "--run", str(run)]
    assert CliRunner().invoke(cli, [*args, "--data", str(first), "--max-steps", "1"]).exit_code == 0
    result = CliRunner().invoke(cli, ["train", "--cpu", "--run", str(run), "--resume", "--data", str(other),
                                      "--max-steps", "2"])
    assert result.exit_code == 1 and "other data" in result.output and "Traceback" not in result.output
    three = make_data_dir(tmp_path / "c", {"train": (random_images(12, 72, seed=5), np.arange(12) % 2)}, 2, 1, "jpeg")
    (three / "stats").mkdir()
    np.save(three / "stats" / "mean.npy", np.full((72, 72, 3), 100, np.float32))
    write_pca_json(three / "stats" / "pca.json", [3.0, 2.0, 1.0], np.eye(3), [120.0] * 3, [50.0] * 3, 72, 12)
    result = CliRunner().invoke(cli, ["train", "--cpu", "--run", str(run), "--resume", "--data", str(three)])
    assert result.exit_code == 1 and "has 3 classes but" in result.output and "holds 2" in result.output
    assert CliRunner().invoke(cli, ["train", "--cpu", "--run", str(run), "--resume", "--max-steps", "2"]).exit_code == 0


# ---------------------------------------------------------------- another number of processes

@pytest.mark.slow
def test_two_processes_then_one_equal_two_throughout(tmp_path):
    """The epoch plan is a function of (seed, epoch, global batch): 2 processes for 3 steps, then 1 for 3 more,
    reach the weights of 6 steps on one process (dropout 0: dropout masks are per rank by design).  The reference
    runs here, not launched: 2 processes throughout give the same weights (test_two_processes_match_one)."""
    both = tmp_path / "both"
    run_training(tiny(both, dropout=0.0, max_steps=6, nproc=1))
    moved = tmp_path / "moved"
    run_training(tiny(moved, dropout=0.0, max_steps=3, nproc=2))
    run_training(tiny(moved, dropout=0.0, max_steps=6, nproc=1, resume="latest"))
    assert_same_weights(weights(moved), weights(both), atol=1e-5)
    rows = read_metrics(moved)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert {"step": 3, "event": "resume", "changed": {"max_steps": [3, 6], "nproc": [2, 1]}} in rows


def test_every_global_step_reads_the_same_records_on_any_number_of_processes(tmp_path):
    from alexnet_pipe.loaders import LoaderSettings
    from alexnet_pipe.loaders.base import BaseLoader
    data = _data_dir(tmp_path / "d", 3)

    def global_steps(world: int) -> list[list[int]]:
        ranks = [BaseLoader(LoaderSettings(data=data, batch_size=8 // world, crop=64, loader="torch", rank=r,
                                           world_size=world, lighting=0.0)) for r in range(world)]
        per_rank = [loader.step_params(epoch=1, start_step=0) for loader in ranks]
        return [sorted(int(i) for p in step for i in p["index"]) for step in zip(*per_rank)]

    assert global_steps(2) == global_steps(1) == global_steps(4)


def test_a_process_count_that_changes_the_epoch_s_last_step_is_refused(tmp_path):
    """25 records in global batches of 8: 4 processes fold the one left over into the last full step, 1 process
    makes a fourth step of it; the order of that step would change, so the resume is refused."""
    from alexnet_pipe.train.entry import check_resume
    images, labels = random_images(25, 40, seed=4), np.arange(25) % 3
    data = make_data_dir(tmp_path / "d", {"train": (images, labels)}, 3, 2, "jpeg")
    manifest = json.loads((data / "manifest.json").read_text())
    run = tmp_path / "r"
    run_training(tiny(run, max_steps=1, nproc=1, num_classes=3))
    saved = load_checkpoint(latest_checkpoint(run))
    s = dataclasses.replace(TrainSettings(**saved["settings"]), nproc=4, resume="latest", batch_size=8)
    state_nproc = saved["settings"]["nproc"]
    assert state_nproc == 1
    with pytest.raises(UserError, match="last step of every epoch"):
        check_resume(s, manifest)


# ---------------------------------------------------------------- a diverged run

def test_a_non_finite_loss_stops_the_run_and_never_becomes_a_checkpoint(tmp_path):
    run = tmp_path / "r"
    s = tiny(run, lr=1e12, max_steps=8, ckpt_every=1, keep=20, init="kaiming", bias_init=0.0)
    with pytest.raises(UserError, match=r"the training loss is (nan|inf) at step \d+") as caught:
        run_training(s)
    for path in sorted(run.glob("ckpt-*.pt")):
        for value in load_checkpoint(path)["model"].values():
            assert torch.isfinite(value).all(), path
    assert not (run / "best.pt").exists()
    last = latest_checkpoint(run)
    assert (str(last) if last else "none") in str(caught.value)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has the GPUs the run was started on")
def test_a_resume_keeps_the_runs_gpus_and_says_so_where_they_are_missing(tmp_path):
    """`--run R --resume` alone continues on the device and process count R was started with; a machine without
    those GPUs gets one sentence naming the options that choose others."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps(dataclasses.asdict(TrainSettings(device="cuda", nproc=2))))
    result = CliRunner().invoke(cli, ["train", "--run", str(run), "--resume"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "started on 2 GPU(s)" in result.output and "--gpus N or --cpu --nproc N" in result.output


@pytest.mark.parametrize("limit", [dict(max_steps=2), dict(epochs=1, synthetic_steps=2)], ids=["max-steps", "epochs"])
def test_resuming_a_finished_run_says_how_to_train_on(tmp_path, limit):
    """A run at its last step has nothing to resume: one note with the option that trains on (it printed a
    zero-step 'finished ... seconds 0.0005'), and that command then trains on."""
    import re
    import shlex
    run = tmp_path / "r"
    run_training(tiny(run, **limit))
    rows = (run / "metrics.jsonl").read_text()
    result = CliRunner().invoke(cli, ["train", "--run", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert "nothing left to train" in result.output and "finished:" not in result.output
    assert (run / "metrics.jsonl").read_text() == rows
    hint = re.search(r"`alexnet-pipe (train --run .*?)`", result.output).group(1)
    assert ("--max-steps 4" if "max_steps" in limit else "--epochs 2") in hint
    result = CliRunner().invoke(cli, shlex.split(hint))
    assert result.exit_code == 0, result.output
    assert max(r["step"] for r in read_metrics(run)) == 4


def test_a_resume_restores_the_cuda_generator_only_on_a_gpu_and_only_when_saved(monkeypatch):
    """The saved CUDA RNG state goes back to the run's GPU (a stand-in records it: no CUDA here); a checkpoint
    without one (written on the CPU) or a resume on the CPU leaves the CUDA generator alone."""
    from alexnet_pipe.train.checkpoint import rng_state, set_rng_state
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    gpu, saved = torch.device("cuda", 1), {**rng_state(torch.device("cpu")), "cuda": torch.arange(4)}
    set_rng_state(saved, gpu)
    assert len(restored) == 1 and torch.equal(restored[0][0], saved["cuda"]) and restored[0][1] == gpu
    set_rng_state(saved, torch.device("cpu"))
    set_rng_state({k: v for k, v in saved.items() if k != "cuda"}, gpu)
    assert len(restored) == 1


def test_a_checkpoint_saves_the_cuda_generator_only_on_a_gpu(monkeypatch):
    """A stand-in for torch.cuda.get_rng_state (no CUDA here) hands a marker state for the asked device."""
    from alexnet_pipe.train.checkpoint import rng_state
    marker = torch.arange(3)
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device: marker if device == torch.device("cuda", 1) else None)
    assert rng_state(torch.device("cuda", 1))["cuda"] is marker
    assert "cuda" not in rng_state(torch.device("cpu"))


def test_an_elastic_restart_resumes_from_the_newest_checkpoint_and_a_first_start_from_none(tmp_path, monkeypatch):
    """torchrun's restart count is the only sign that a worker group was restarted after a failure (the slow
    test_killed_worker_restarts_from_checkpoint runs one): the restarted run must pick up its newest checkpoint
    without --resume, and a first start (count 0, or no torchrun) must not."""
    from alexnet_pipe.train.checkpoint import resume_path
    run = tmp_path / "r"
    run.mkdir()
    for step in (2, 10, 9):
        (run / f"ckpt-{step:08d}.pt").write_bytes(b"")
    newest, s = run / "ckpt-00000010.pt", TrainSettings(run=str(run))
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert resume_path(s) is None
    assert resume_path(dataclasses.replace(s, resume="latest")) == newest
    assert resume_path(dataclasses.replace(s, resume=str(run / "ckpt-00000002.pt"))) == run / "ckpt-00000002.pt"
    for count, expected in (("0", None), ("1", newest), ("2", newest)):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", count)
        assert resume_path(s) == expected, count
    assert resume_path(dataclasses.replace(s, resume=str(run / "ckpt-00000009.pt"))) == run / "ckpt-00000009.pt"


def test_the_newest_checkpoint_is_the_highest_step_past_eight_digits(tmp_path):
    """Names are padded to eight digits; a step past 99,999,999 gets nine, and sorting the names as text would put
    it first (a resume from an older checkpoint, the newest pruned as the oldest)."""
    from alexnet_pipe.train.checkpoint import checkpoints
    steps = [5, 99_999_999, 100_000_000, 100_000_001]
    for step in steps:
        (tmp_path / f"ckpt-{step:08d}.pt").write_bytes(b"")
    assert [int(p.stem.split("-")[1]) for p in checkpoints(tmp_path)] == steps
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-100000001.pt"


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_each_checkpoint_written_leaves_the_newest_keep_and_best_pt(tmp_path, keep):
    """--keep N (at least 1): after every checkpoint only the newest N remain, N = 1 included (the default is 3,
    and the run tests keep 2); best.pt, a hard link, still holds the best step once its ckpt file is pruned."""
    from alexnet_pipe.train.checkpoint import checkpoints, write_checkpoint
    for step in range(1, 6):
        state = {"step": step, "model": {"w": torch.full((2,), float(step))}, "optimizer": {}}
        write_checkpoint(state, tmp_path, keep=keep, best=step == 2)
        newest = list(range(1, step + 1))[-keep:]
        assert [int(p.stem.split("-")[1]) for p in checkpoints(tmp_path)] == newest
    assert torch.load(tmp_path / "best.pt", weights_only=True)["step"] == 2


def test_a_resume_says_the_checkpoint_step_and_epoch_it_continues_from(tmp_path, capfd):
    """Two steps an epoch, stopped after step 3: the resume continues in epoch 2 (counted from 1), one of its steps
    taken, and says so with the checkpoint's path (the line a requeued job's log shows)."""
    first = tiny(tmp_path / "r", max_steps=3, synthetic_steps=2)
    run_training(first)
    capfd.readouterr()
    run_training(dataclasses.replace(first, max_steps=4, resume="latest"))
    said = f"resumed from {tmp_path / 'r' / 'ckpt-00000003.pt'} at step 3 (epoch 2, step 1 in it)"
    assert said in capfd.readouterr().out
