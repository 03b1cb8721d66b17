"""What the commands tell a user while they work: train names its run dir first with resolved settings, evaluate
shows progress and errors in percent (as demo does), array tasks say their shards, the Kaggle layout is called by
its name, and a --sample larger than the split says what it used."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import layouts
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
    root = tmp_path_factory.mktemp("tree") / "src"
    write_sample_tree(root, SampleSettings(classes=2, train_per_class=4, val_per_class=2, pathologies=False))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    images = random_images(14, 72, seed=3)
    root = make_data_dir(tmp_path_factory.mktemp("data") / "d", {"train": (images[:10], np.arange(10) % 2),
                                                                  "val": (images[10:], np.arange(4) % 2)}, 2, 1)
    assert invoke("stats", "--pca", "--data", root).exit_code == 0
    return root


def test_train_names_its_run_dir_first_with_resolved_settings(tmp_path):
    result = invoke("train", "--cpu", "--loader", "synthetic", "--data", tmp_path, "--width", "0.0625",
                    "--batch-size", "4", "--max-steps", "1", "--eval-every", "0", "--synthetic-steps", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    run = re.search(r"^train: run (\S+) ", "\n".join(lines[:3]), re.M).group(1)  # after finalize's notes, if any
    assert (tmp_path / "runs").is_dir() and json.loads(open(f"{run}/settings.json").read())["run"] == run
    head = "\n".join(lines[:lines.index(next(l for l in lines if l.startswith("finished")))])
    assert "crop 224" in head and "10 classes" in head and "1 CPU process" in head  # resolved, not 0
    assert 'run ""' not in head and "num_classes" not in head and len(head.splitlines()) <= 8


def test_evaluate_shows_progress_and_percent(data, tmp_path):
    run = tmp_path / "r"
    result = invoke("train", "--data", data, "--run", run, "--cpu", "--loader", "torch", "--width", "0.0625",
                    "--crop", "64", "--batch-size", "4", "--max-steps", "1", "--eval-every", "0",
                    "--normalize", "channel", "--lighting", "0", "--num-threads", "0")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", run / "ckpt-00000001.pt", "--data", data, "--loader", "torch", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert re.search(r"^evaluate val: .*2/2", result.stderr, re.M), result.stderr  # 4 val images, 2 a batch
    assert re.search(r"top-1 error \d+\.\d%, top-5 error \d+\.\d%$", result.stdout.strip())


def test_an_array_task_says_which_shards_it_takes(tree, tmp_path):
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    result = invoke("prepare", tree, "--data", tmp_path / "d", "--size", "32", "--workers", "1", "--shards", "4",
                    "--only-shards", "auto", env=env)
    assert result.exit_code == 0, result.output
    assert "array task 2 of 2 ($SLURM_ARRAY_TASK_ID=1) writes shards 2:4 of each split" in result.output


def test_the_kaggle_layout_is_called_kaggle(tree, tmp_path):
    src = layouts.kaggle_nested(tree, tmp_path / "kaggle")
    result = invoke("prepare", src, "--data", tmp_path / "d", "--size", "32", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "kaggle layout: train 8 images" in result.output and "folders layout" not in result.output
    result = invoke("prepare", tree, "--data", tmp_path / "d2", "--size", "32", "--workers", "1")
    assert "folders layout: train 8 images" in result.output


def test_a_sample_larger_than_the_split_says_what_it_used(data):
    result = invoke("stats", "--data", data, "--sample", "10000")
    assert result.exit_code == 0, result.output
    assert "--sample 10000 asked for more records than the train split holds: the sample is all 10" in result.output
    assert json.loads((data / "stats" / "pca.json").read_text())["sample"] == 10
