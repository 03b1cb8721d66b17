"""evaluate: top-k maths and softmax averaging against numpy, and the command end to end on a tiny data dir."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from alexnet_pipe.train.evaluation import average_softmax, topk_correct
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images, write_pca_json

S = 72  # stored size; crop 64 (the smallest crop the network takes is 63)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_topk_against_numpy():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(200, 12)), rng.integers(0, 12, 200)
    ranks = (scores > scores[np.arange(200), labels][:, None]).sum(axis=1)  # 0 = label scored highest
    got = topk_correct(torch.from_numpy(scores), torch.from_numpy(labels), (1, 5))
    assert got == [int((ranks < 1).sum()), int((ranks < 5).sum())]
    assert topk_correct(torch.from_numpy(scores[:, :3]), torch.zeros(200, dtype=torch.long), (1, 5))[1] == 200


def test_ensemble_and_ten_crop_average_softmax():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).double() for _ in range(3)]
    x = torch.randn(5, 10, 3, 2, 2, dtype=torch.float64)  # 5 images x 10 views
    flat = x.reshape(50, 3, 2, 2)
    want = np.mean([np_softmax(m(flat).detach().numpy()) for m in models], axis=0).reshape(5, 10, 4).mean(axis=1)
    got = average_softmax(models, x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    single = average_softmax(models[:1], x[:, 0]).detach().numpy()
    np.testing.assert_allclose(single, np_softmax(models[0](x[:, 0]).detach().numpy()), rtol=1e-6)


def test_evaluate_help_and_bad_checkpoint(tmp_path):
    assert "--ten-crop" in CliRunner().invoke(cli, ["evaluate", "--help"]).output
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    result = CliRunner().invoke(cli, ["evaluate", str(junk), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "not a checkpoint written by" in result.output


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(tmp_path, data_dir):
    runner = CliRunner()
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        result = runner.invoke(cli, ["train", "--data", str(data_dir), "--run", str(run), "--cpu", "--loader",
                                     "torch", "--width", "0.0625", "--crop", "64", "--batch-size", "8",
                                     "--max-steps", "3", "--seed", str(seed), "--num-threads", "1"])
        assert result.exit_code == 0, result.output
        assert any("top1_error" in r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()))
        runs.append(run / "best.pt")
    one = runner.invoke(cli, ["evaluate", str(runs[0]), "--data", str(data_dir), "--loader", "torch", "--json"])
    assert one.exit_code == 0, one.output
    report = json.loads(one.output.strip().splitlines()[-1])
    assert report["images"] == 12 and report["views"] == 1 and 0 <= report["top1_error"] <= 1
    assert report["top5_error"] == 0.0  # 4 classes: the label is always among the top 5
    both = runner.invoke(cli, ["evaluate", *map(str, runs), "--data", str(data_dir), "--loader", "torch",
                               "--ten-crop", "--json"])
    assert both.exit_code == 0, both.output
    report = json.loads(both.output.strip().splitlines()[-1])
    assert report["views"] == 10 and report["images"] == 12 and len(report["checkpoints"]) == 2


def test_load_model_turns_any_unreadable_file_into_one_sentence(tmp_path):
    """torch.load raises UnpicklingError, EOFError, KeyError, RuntimeError... for junk: all one UserError."""
    from alexnet_pipe.core.errors import UserError
    from alexnet_pipe.train.checkpoint import load_model
    files = {"empty.pt": b"", "junk.pt": b"not a checkpoint at all", "zip.pt": b"PK\x03\x04 cut short"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=f"{name} is not a checkpoint written by `alexnet-pipe train`"):
            load_model(tmp_path / name)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(UserError, match="lacks model, settings or num_classes"):
        load_model(tmp_path / "tensor.pt")
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "empty.pt"), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "Aborted" not in result.output and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'empty.pt'} is not a checkpoint")


def test_weights_that_do_not_fit_their_settings_are_one_sentence(tmp_path):
    from dataclasses import asdict
    from alexnet_pipe.core.errors import UserError
    from alexnet_pipe.train.checkpoint import load_model
    from alexnet_pipe.model.alexnet import build_model
    from alexnet_pipe.train.config import TrainSettings
    state = {"model": build_model("alexnet", 3, 0.125).state_dict(), "num_classes": 3,
             "settings": asdict(TrainSettings(width=0.0625))}
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(UserError, match="its weights do not fit the model its settings describe"):
        load_model(tmp_path / "other.pt")
