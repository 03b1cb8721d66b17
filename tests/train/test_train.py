"""The trainer: lr maths, checkpoints, resume, DDP equivalence and elastic restarts (gloo on CPU)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.train.checkpoint import checkpoints
from alexnet_pipe.train.config import resolve_settings
from alexnet_pipe.train.runlog import read_metrics
from alexnet_pipe.train.entry import finalize, run_training
from alexnet_pipe_cli.main import cli
from helpers.training import assert_same_weights, tiny, weights

TRAIN_ROW = ("step", "epoch", "loss", "lr")


def train_rows(run: Path) -> list[tuple]:
    return [tuple(r[k] for k in TRAIN_ROW) for r in read_metrics(run) if "loss" in r]


# ---------------------------------------------------------------- checks before a launch

def test_global_batch_must_split(tmp_path):
    with pytest.raises(UserError, match="does not split over 3"):
        finalize(tiny(tmp_path / "r", batch_size=8), 3)


def test_missing_data_says_what_to_run(tmp_path):
    s = tiny(tmp_path / "r", loader="torch", data=str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="alexnet-pipe prepare"):
        finalize(s, 1)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "manifest.json").write_text(json.dumps({"settings": {"size": 72}, "splits": {}}))
    with pytest.raises(UserError, match="alexnet-pipe stats --pca"):
        finalize(s, 1)


# ---------------------------------------------------------------- one process

def test_resume_continues_at_the_exact_step(tmp_path):
    """3 steps, then --resume to 6 == 6 steps straight: weights and metrics rows (dropout on: RNG restored)."""
    straight = tiny(tmp_path / "a", max_steps=6)
    run_training(straight)
    first = tiny(tmp_path / "b", max_steps=3)
    run_training(first)
    assert [r[0] for r in train_rows(tmp_path / "b")] == [1, 2, 3]
    run_training(dataclasses.replace(first, max_steps=6, resume="latest"))
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"), atol=1e-7)
    assert train_rows(tmp_path / "a") == train_rows(tmp_path / "b")
    assert [r[0] for r in train_rows(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]


def test_checkpoints_are_plain_tensors_and_pruned(tmp_path):
    run = tmp_path / "r"
    result = run_training(tiny(run, max_steps=6, ckpt_every=1, keep=2, eval_every=1))
    assert [p.name for p in checkpoints(run)] == ["ckpt-00000005.pt", "ckpt-00000006.pt"]
    assert (run / "best.pt").exists()
    for path in [*checkpoints(run), run / "best.pt"]:
        state = torch.load(path, weights_only=True)
        assert {"model", "optimizer", "schedule", "epoch", "step", "rng", "settings"} <= state.keys()
    last = torch.load(run / "ckpt-00000006.pt", weights_only=True)
    assert (last["step"], last["epoch"], last["step_in_epoch"]) == (6, 1, 2)
    assert json.loads((run / "settings.json").read_text())["width"] == 0.0625
    rows = read_metrics(run)
    assert rows[-1]["step"] == 6 and "top1_error" in rows[-1]  # evaluated at the stop
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(0 <= r["data_wait_fraction"] <= 1 and r["images_per_sec"] > 0 for r in rows if "loss" in r)
    assert 0 <= result["top1_error"] <= 1 and result["steps"] == 6
    with pytest.raises(UserError, match="already holds checkpoints"):
        finalize(tiny(run, max_steps=6), 1)


@pytest.mark.slow
def test_small_recipe_learns_synthetic_classes(tmp_path):
    """Colour-coded synthetic classes: the small recipe's init and schedule get the loss well under chance."""
    s = resolve_settings("small", loader="synthetic", run=str(tmp_path / "r"), crop=64, batch_size=16,
                         num_classes=5, width=0.125, eval_every=0, synthetic_steps=10, epochs=4, log_every=10)
    run_training(s)
    losses = [r["loss"] for r in read_metrics(tmp_path / "r") if "loss" in r]
    assert losses[0] > 1.2 and losses[-1] < 0.5 * math.log(5), losses


# ---------------------------------------------------------------- several processes (elastic launch, gloo)

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, global batch 8, dropout off, a checkpoint after every step."""
    run = tmp_path_factory.mktemp("ref") / "run"
    run_training(tiny(run, dropout=0.0, max_steps=6, ckpt_every=1, keep=10))
    return run


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, reference):
    run = tmp_path / "ddp"
    run_training(tiny(run, dropout=0.0, max_steps=4, nproc=2))
    assert_same_weights(weights(run), weights(reference, 4), atol=1e-5)
    losses = [r[2] for r in train_rows(run)]
    np.testing.assert_allclose(losses, [r[2] for r in train_rows(reference)][:4], rtol=1e-4)


@pytest.mark.slow
def test_killed_worker_restarts_from_checkpoint(tmp_path, reference, capfd):
    """Rank 1 dies after step 3 on the first attempt; the launcher restarts both, they resume from step 2."""
    from helpers import faults
    assert faults.DIE_AFTER == 3
    run = tmp_path / "ft"
    run_training(tiny(run, dropout=0.0, max_steps=6, nproc=2, ckpt_every=2, max_restarts=1), worker=faults.train_dying)
    assert "resumed from" in capfd.readouterr().out
    assert [r[0] for r in train_rows(run)] == [1, 2, 3, 4, 5, 6]
    assert_same_weights(weights(run), weights(reference, 6), atol=1e-5)


# ---------------------------------------------------------------- CLI

def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_train_help():
    result = invoke("train", "--help")
    assert result.exit_code == 0 and "--max-restarts" in result.output and "--recipe" in result.output


def test_dry_run_prints_resolved_settings(tmp_path):
    result = invoke("train", "--recipe", "small", "--lr", "0.2", "--loader", "synthetic", "--cpu",
                    "--run", str(tmp_path / "r"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert '"kaiming"' in result.output and "0.2" in result.output and "0.25" in result.output
    assert not (tmp_path / "r").exists()


def test_cli_trains_and_resumes(tmp_path):
    run = tmp_path / "r"
    common = ["train", "--loader", "synthetic", "--cpu", "--width", "0.0625", "--crop", "64", "--batch-size",
              "4", "--num-classes", "3", "--eval-every", "0", "--run", str(run), "--log-every", "1"]
    assert invoke(*common, "--max-steps", "2").exit_code == 0
    result = invoke("train", "--run", str(run), "--resume", "--max-steps", "3", "--cpu")
    assert result.exit_code == 0, result.output
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "event" not in r] == [1, 2, 3]
    # the resume's allowed change is on the record, as an event row at the step it continued from
    assert [r for r in rows if "event" in r] == [{"step": 2, "event": "resume", "changed": {"max_steps": [2, 3]}}]
    assert json.loads((run / "settings.json").read_text())["batch_size"] == 4  # kept from the run


def test_more_gpus_than_present_is_a_clean_error(tmp_path):
    n = torch.cuda.device_count() + 1  # one more than this machine has, with or without CUDA
    result = invoke("train", "--gpus", str(n), "--loader", "synthetic", "--run", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert f"--gpus {n} needs {n} GPU(s)" in result.output and "Traceback" not in result.output


def test_bad_input_is_one_line(tmp_path):
    result = invoke("train", "--cpu", "--nproc", "3", "--batch-size", "128", "--loader", "synthetic",
                    "--run", str(tmp_path / "r"))
    assert result.exit_code == 1 and "does not split over 3 processes" in result.output
    result = invoke("train", "--cpu", "--data", str(tmp_path / "none"), "--loader", "torch")
    assert result.exit_code == 1 and "alexnet-pipe prepare" in result.output


def test_bench_train_reports_the_ratio():
    result = invoke("bench", "train", "--cpu", "--width", "0.0625", "--crop", "64", "--batch-size", "4",
                    "--steps", "2", "--warmup", "1", "--repeats", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert {"bare_step_ms", "trainer_step_ms", "overhead", "bare_images_per_sec", "trainer_images_per_sec"} <= \
        report.keys()
    assert report["trainer_step_ms"] > 0 and report["bare_step_ms"] > 0


def test_resume_from_a_file_that_is_not_a_checkpoint_or_of_another_model(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(UserError, match="is not a checkpoint written by `alexnet-pipe train`"):
        finalize(tiny(tmp_path / "r", resume=str(junk)), 1)
    run_training(tiny(tmp_path / "a", max_steps=1))
    with pytest.raises(UserError, match=r"trained with --width 0.0625 \(now 0.125\)"):
        finalize(tiny(tmp_path / "a", resume="latest", width=0.125), 1)


def test_resume_with_a_damaged_settings_json_is_one_sentence(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "settings.json").write_text('{"arch": "alex')
    result = invoke("train", "--run", str(run), "--resume", "--cpu")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "settings.json is not the settings.json that `alexnet-pipe train` writes" in result.output


def test_a_deleted_shard_dir_is_found_before_any_worker_starts(tmp_path):
    import shutil
    from helpers.shardgen import make_data_dir, random_images
    images = random_images(8, 64, seed=1)
    data = make_data_dir(tmp_path / "d", {"train": (images, np.arange(8) % 2)}, 2, 2)
    (data / "stats").mkdir()
    (data / "stats" / "mean.npy").write_bytes(b"")
    (data / "stats" / "pca.json").write_text("{}")
    shutil.rmtree(data / "train" / "shard-00000")
    s = tiny(tmp_path / "r", loader="torch", data=str(data))
    with pytest.raises(UserError, match=r"1 train shard dir\(s\) listed in .* are missing .*prepare"):
        finalize(s, 2)


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    import alexnet_pipe.train.loop as train_mod

    def interrupted(s):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "train", interrupted)
    run = tmp_path / "r"
    result = invoke("train", "--cpu", "--loader", "synthetic", "--run", str(run))
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert "no checkpoint was written yet" in result.output and f"--run {run} --resume" in result.output


def test_lighting_scale_reaches_the_loader(monkeypatch):
    import alexnet_pipe.loaders as pipeline
    from alexnet_pipe.train.config import resolve_settings
    from alexnet_pipe.train.loop import make_loaders
    seen = []
    monkeypatch.setattr(pipeline, "make_loader", lambda ls: seen.append(ls) or ls)
    s = resolve_settings("paper", data="d", lighting_scale="fbresnet", crop=224)
    make_loaders(s, 0, 1, torch.device("cpu"))
    assert [ls.lighting_scale for ls in seen] == ["fbresnet", "fbresnet"] and seen[0].train
    result = invoke("train", "--cpu", "--loader", "synthetic", "--lighting-scale", "fbresnet", "--dry-run",
                    "--run", "r")
    assert result.exit_code == 0 and '"fbresnet"' in result.output


def test_no_lighting_flag():
    result = invoke("train", "--cpu", "--loader", "synthetic", "--no-lighting", "--dry-run", "--run", "r")
    assert result.exit_code == 0 and "lighting         0.0" in result.output
    result = invoke("train", "--cpu", "--loader", "synthetic", "--no-lighting", "--lighting", "0.2", "--run", "r")
    assert result.exit_code == 1 and "contradictory" in result.output


def test_bench_train_times_the_implementation_asked_for(monkeypatch):
    """--lrn-impl / --conv reach the model both loops build (a GPU table compares them row by row)."""
    import alexnet_pipe.report.bench_train as bench
    built = []
    real = bench.build
    monkeypatch.setattr(bench, "build", lambda s, n, d: built.append((s.lrn_impl, s.conv)) or real(s, n, d))
    result = invoke("bench", "train", "--cpu", "--width", "0.0625", "--crop", "64", "--batch-size", "4", "--steps",
                    "1", "--warmup", "1", "--repeats", "1", "--lrn-impl", "reference", "--conv", "split", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["lrn_impl"], report["conv"]) == ("reference", "split") and ("reference", "split") in built


def test_resume_auto_needs_a_run_dir_and_starts_or_continues_it(tmp_path):
    """A requeued job's command: starts the run the first time, continues it after; never the current dir."""
    result = invoke("train", "--cpu", "--loader", "synthetic", "--resume", "auto", "--dry-run")
    assert result.exit_code == 2 and "--resume auto needs --run DIR" in result.output
    run = tmp_path / "r"
    common = ["train", "--loader", "synthetic", "--cpu", "--width", "0.0625", "--crop", "64", "--batch-size", "4",
              "--num-classes", "3", "--eval-every", "0", "--run", str(run), "--log-every", "1", "--resume", "auto"]
    assert invoke(*common, "--max-steps", "1").exit_code == 0
    assert invoke(*common, "--max-steps", "2").exit_code == 0
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]
