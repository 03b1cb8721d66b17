"""Numbers that cannot be trusted are not saved (issue 19, mechanism 6): no checkpoint holds weights that are not
finite, or weights so large that the model's outputs are not; evaluate refuses a model whose outputs are not
finite; the divergence advice names a checkpoint that is good, and its command runs."""
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
from alexnet_pipe.model.alexnet import build_model
from alexnet_pipe.train.checkpoint import last_good_checkpoint, save_atomic, write_checkpoint
from alexnet_pipe.train.config import TrainSettings
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images

TRAIN = ["train", "--cpu", "--loader", "synthetic", "--max-steps", "1", "--width", "0.0625", "--crop", "64",
         "--batch-size", "2", "--eval-every", "0", "--recipe", "small", "--synthetic-steps", "1"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.count("Error:") == 1, result.output
    return result.output.strip().splitlines()[-1]


def test_a_run_that_diverges_at_its_first_step_saves_nothing_and_the_advice_runs(tmp_path):
    """--lr 1e30: after one step every weight is finite but every output overflows; such a model was saved as
    ckpt and best.pt, and train said "finished"."""
    line = error_line(run(*TRAIN, "--run", tmp_path / "r", "--lr", "1e30"))
    assert "the model's outputs at step 1 are not finite" in line and "the last good checkpoint is none" in line
    assert "start a new --run with a lower --lr" in line, line
    assert not list((tmp_path / "r").glob("*.pt"))
    result = run(*TRAIN, "--run", tmp_path / "new", "--lr", "0.001")  # the advice, as written
    assert result.exit_code == 0, result.output
    for path in (tmp_path / "new").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_learning_rate_beyond_float32_is_one_sentence_and_the_advice_runs(tmp_path):
    """3e38 x the biases' multiplier 2 is no float32: the optimiser's first step was a RuntimeError traceback."""
    line = error_line(run(*TRAIN, "--run", tmp_path / "r", "--lr", "3e38", "--recipe", "paper"))
    assert "--lr 3e+38 x --bias-lr-mult 2" in line and "lower --lr" in line, line
    assert not (tmp_path / "r").exists()
    assert run(*TRAIN, "--run", tmp_path / "r", "--lr", "0.001").exit_code == 0


def _state(step: int, scale: float = 1.0) -> dict:
    ts = TrainSettings(width=0.0625, crop=64)
    model = build_model(ts.arch, 3, ts.width).state_dict()
    return {"model": {k: v * scale for k, v in model.items()}, "optimizer": {}, "step": step, "num_classes": 3,
            "settings": dataclasses.asdict(ts)}


def test_weights_that_are_not_finite_are_never_written_and_the_advice_names_a_good_checkpoint(tmp_path):
    save_atomic(_state(1), tmp_path / "ckpt-00000001.pt")
    torch.save(_state(2, math.nan), tmp_path / "ckpt-00000002.pt")  # as an older version could leave one
    assert last_good_checkpoint(tmp_path) == tmp_path / "ckpt-00000001.pt"
    bad = _state(3)
    bad["model"]["classifier.fc8.bias"][0] = math.inf
    with pytest.raises(UserError) as caught:
        write_checkpoint(bad, tmp_path, keep=3, best=True)
    message = str(caught.value)
    assert "the weights at step 3 are not finite (model.classifier.fc8.bias)" in message, message
    assert f"the last good checkpoint is {tmp_path / 'ckpt-00000001.pt'}" in message, message
    assert not (tmp_path / "ckpt-00000003.pt").exists() and not (tmp_path / "best.pt").exists()


def test_optimiser_state_that_is_not_finite_is_never_written(tmp_path):
    bad = _state(1)
    bad["optimizer"] = {"state": {0: {"momentum_buffer": torch.tensor([0.0, math.nan])}}, "param_groups": []}
    with pytest.raises(UserError, match=r"optimizer\.state\.0\.momentum_buffer"):
        write_checkpoint(bad, tmp_path, keep=3, best=False)
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from alexnet_pipe.stats.compute import StatsSettings, run_stats
    images, labels = random_images(12, 64, seed=7), np.arange(12) % 3
    root = make_data_dir(tmp_path_factory.mktemp("finite") / "d",
                         {"train": (images[:6], labels[:6]), "val": (images[6:], labels[6:])}, 3, 1)
    run_stats(StatsSettings(root, pca=True, recompute=False, sample=None, plot=False))
    return root


@pytest.mark.parametrize("scale, why", [(math.nan, "NaN weights"), (1e30, "finite weights, overflowing outputs")])
def test_evaluate_refuses_a_model_whose_outputs_are_not_finite(scale, why, data, tmp_path):
    """Its softmax is NaN, and NaN scores ranked as some error rate without a word."""
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(_state(1), good)
    torch.save(_state(1, scale), bad)
    result = run("evaluate", good, "--data", data, "--loader", "torch", "--json")
    assert result.exit_code == 0 and math.isfinite(json.loads(result.stdout)["top1_error"]), result.output
    for words in (["evaluate", bad], ["evaluate", good, bad]):  # alone, or as an ensemble member
        line = error_line(run(*words, "--data", data, "--loader", "torch"))
        assert f"{bad} gives outputs that are not finite numbers" in line, (why, line)


def test_a_run_that_ends_by_its_epochs_refuses_outputs_that_are_not_finite(tmp_path):
    """The last epoch's end is a run's end too: --lr 1e30 over one epoch of one step (no --max-steps) overflows
    every output, and the run stops with the divergence sentence instead of saving that model and finishing."""
    from alexnet_pipe.train.loop import train
    from helpers.training import tiny
    run = tmp_path / "r"
    with pytest.raises(UserError, match="the model's outputs at step 1 are not finite"):
        train(tiny(run, lr=1e30, epochs=1, synthetic_steps=1))
    assert not list(run.glob("*.pt"))
