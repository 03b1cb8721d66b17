"""`--recipe modern` (issue 14): its settings, their options, the smoothed loss in the trainer, and a run end to
end on the sample data through the CLI."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from alexnet_pipe.train.config import RECIPES, TrainSettings, check, resolve_settings, settings_from_dict
from alexnet_pipe.core.errors import UserError
from alexnet_pipe_cli.main import cli

MODERN_FIELDS = ("crops", "crop_scale", "crop_ratio", "color_jitter", "hue", "label_smoothing", "tensorboard")


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def dry_run(*args):
    return invoke("train", "--cpu", "--loader", "synthetic", "--run", "r", "--dry-run", *args)


def test_defaults_are_the_papers():
    s = TrainSettings()
    assert (s.crops, s.color_jitter, s.hue, s.label_smoothing, s.tensorboard) == ("translate", 0.0, 0.0, 0.0, False)
    assert not set(MODERN_FIELDS) & set(RECIPES["paper"]) and not set(MODERN_FIELDS) & set(RECIPES["small"])


def test_modern_recipe_values():
    s = resolve_settings("modern")
    want = dict(arch="alexnet-owt", epochs=90, batch_size=256, lr=0.01, momentum=0.9, weight_decay=1e-4,
                schedule="cosine", warmup_epochs=5.0, init="kaiming", bias_init=0.0, normalize="channel",
                lighting=0.0, crops="random-resized", color_jitter=0.4, hue=0.0, label_smoothing=0.1,
                momentum_form="torch", bias_lr_mult=1.0, bias_decay=True)
    assert {k: getattr(s, k) for k in want} == want
    assert (s.crop_scale, s.crop_ratio) == ((0.08, 1.0), (3 / 4, 4 / 3))
    check(s)


def test_dry_run_prints_every_setting():
    result = dry_run("--recipe", "modern")
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(TrainSettings):
        assert f"  {f.name} " in result.output, f.name
    assert '"random-resized"' in result.output and "[0.08, 1.0]" in result.output


def test_float_pair_options():
    result = dry_run("--crop-scale", "0.2,0.9", "--crop-ratio", "0.5, 2", "--label-smoothing", "0.2", "--tensorboard")
    assert result.exit_code == 0, result.output
    assert "[0.2, 0.9]" in result.output and "[0.5, 2.0]" in result.output
    for bad in ("0.9", "a,b", "0.9,0.2", "0,1", "1,2,3", "nan,1"):
        result = dry_run("--crop-scale", bad)
        assert result.exit_code == 2 and "--crop-scale" in result.output, (bad, result.output)
    for option, value in (("--hue", "0.6"), ("--color-jitter", "-1"), ("--label-smoothing", "1"),
                          ("--crops", "inception")):
        assert dry_run(option, value).exit_code == 2, option


def test_settings_files_are_checked_the_same_way(tmp_path):
    saved = json.loads(json.dumps(dataclasses.asdict(resolve_settings("modern"))))  # tuples become lists
    assert settings_from_dict(saved) == resolve_settings("modern")
    with pytest.raises(UserError, match="--crop-scale"):
        check(dataclasses.replace(TrainSettings(), crop_scale=(0.0, 1.0)))
    with pytest.raises(UserError, match="--label-smoothing"):
        check(dataclasses.replace(TrainSettings(), label_smoothing=1.0))


def test_make_loaders_passes_the_modern_settings(monkeypatch):
    import alexnet_pipe.loaders as pipeline
    from alexnet_pipe.train.loop import make_loaders
    seen = []
    monkeypatch.setattr(pipeline, "make_loader", lambda ls: seen.append(ls) or ls)
    s = resolve_settings("modern", data="d", crop=224, crop_scale=(0.2, 0.7), hue=0.05)
    make_loaders(s, 0, 1, torch.device("cpu"))
    train, val = seen
    assert (train.crops, train.crop_scale, train.crop_ratio, train.color_jitter, train.hue) == (
        "random-resized", (0.2, 0.7), (3 / 4, 4 / 3), 0.4, 0.05)
    assert not val.train  # the eval plan ignores them: centre crops, no jitter


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_train_step_smooths_the_loss(eps):
    from alexnet_pipe.train.loop import train_step
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    want = F.cross_entropy(net(x), y, label_smoothing=eps)
    got = train_step(net, opt, x, y, "fp32", eps)
    if eps == 0.0:  # the paper's loss, to the bit
        assert torch.equal(got, F.cross_entropy(net(x), y).detach())
    torch.testing.assert_close(got, want.detach())


def test_random_resized_with_the_mean_image_is_one_sentence(tmp_path):
    import numpy as np
    from alexnet_pipe.stats.compute import StatsSettings, run_stats
    from helpers.shardgen import make_data_dir, random_images
    images = random_images(8, 72, seed=1)
    data = make_data_dir(tmp_path / "d", {"train": (images[:6], np.arange(6) % 2),
                                          "val": (images[6:], np.arange(2) % 2)}, 2, 1)
    run_stats(StatsSettings(data, pca=False, recompute=False, sample=None, plot=False))
    result = invoke("train", "--data", str(data), "--cpu", "--loader", "torch", "--crops", "random-resized",
                    "--crop", "64", "--run", str(tmp_path / "r"), "--eval-every", "0", "--lighting", "0")
    assert result.exit_code == 1 and "need per-channel normalisation" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_modern_recipe_runs_end_to_end_on_the_sample_data(tmp_path):
    """sample-data -> prepare -> stats --pca -> train --recipe modern, through the CLI, with live curves."""
    src, data, run = tmp_path / "src", tmp_path / "data", tmp_path / "data" / "runs" / "m"
    for args in (["sample-data", str(src), "--classes", "2", "--train-per-class", "10", "--val-per-class", "2",
                  "--no-pathologies"],
                 ["prepare", str(src), "--data", str(data), "--size", "72", "--workers", "1"],
                 ["stats", "--data", str(data), "--pca"]):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    result = invoke("train", "--data", str(data), "--recipe", "modern", "--cpu", "--max-steps", "3", "--crop", "64",
                    "--width", "0.0625", "--batch-size", "8", "--eval-every", "0", "--run", str(run),
                    "--log-every", "1", "--tensorboard", "--num-threads", "0")
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "settings.json").read_text())
    assert saved["recipe"] == "modern" and saved["crops"] == "random-resized" and saved["label_smoothing"] == 0.1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 for r in rows)
    assert any((run / "tensorboard").iterdir())
