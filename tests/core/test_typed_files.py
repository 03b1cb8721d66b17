"""Issue 19, mechanism 2: every file the tool reads back has a typed model with its owner; a wrong type, a
missing or unknown key (with a "did you mean"), an out-of-range or non-finite number, a key given twice, is one
sentence naming the file and the field. And the files agree with each other: a shard is the one the manifest
lists (no shard listed twice, none replaced by a copy of another) for every reader, not only verify."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe.core.errors import UserError
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("typed") / "d"
    images = random_images(8, 16, seed=3)
    make_data_dir(root, {"train": (images[:6], np.arange(6) % 2), "val": (images[6:], np.arange(2))}, 2, 2)
    return root


@pytest.fixture()
def data(built, tmp_path):
    return shutil.copytree(built, tmp_path / "d")


def one_sentence(result, *parts):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    last = result.output.strip().splitlines()[-1]
    for part in parts:
        assert str(part) in last, last
    return last


def edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def stats(data):
    return CliRunner().invoke(cli, ["stats", "--data", str(data)])


# --- settings.json (train --config, resume) ------------------------------------------------------

@pytest.mark.parametrize("doc,field", [({"step_epochs": ["a", "b"]}, "step_epochs[0]"),
                                       ({"lr": "0.1"}, "lr"), ({"epochs": 1.5}, "epochs"), ({"lr": -1.0}, "lr"),
                                       ({"momentum": 2}, "momentum"), ({"arch": "vgg"}, "arch"),
                                       ({"crop_scale": [0.1]}, "crop_scale")])
def test_config_with_a_wrong_value_names_the_file_and_the_field(tmp_path, doc, field):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--cpu", "--dry-run"])
    one_sentence(result, path, f"field {field}")


def test_config_with_a_misspelt_key_says_which_was_meant(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"step_epoch": [10, 20]}))
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--cpu", "--dry-run"])
    one_sentence(result, path, "step_epoch", "did you mean 'step_epochs'")


def test_a_saved_settings_file_reads_back_as_written(tmp_path):
    from dataclasses import asdict
    from alexnet_pipe.train.config import resolve_settings
    from alexnet_pipe.train.runlog import read_settings
    saved = resolve_settings("modern", data=str(tmp_path))
    (tmp_path / "settings.json").write_text(json.dumps(asdict(saved)))
    assert read_settings(tmp_path / "settings.json", "hint") == saved


# --- manifest.json, meta.json, rejects.jsonl -----------------------------------------------------

def test_manifest_unknown_key_near_miss(data):
    edit(data / "manifest.json", lambda m: m.__setitem__("clases", m.pop("classes")))
    last = one_sentence(stats(data), data / "manifest.json", "clases")
    assert "did you mean 'classes'" in last


def test_manifest_duplicate_key_and_non_finite_number(data):
    text = (data / "manifest.json").read_text()
    (data / "manifest.json").write_text(text.replace('"format_version": 1', '"format_version": 1, "format_version": 1'))
    one_sentence(stats(data), data / "manifest.json", "'format_version' appears twice")
    (data / "manifest.json").write_text(text.replace('"size": 16', '"size": 1e999'))
    one_sentence(stats(data), data / "manifest.json", "field settings.size")


def test_manifest_listing_a_shard_twice_is_refused(data):
    edit(data / "manifest.json", lambda m: m["splits"]["train"]["shards"].append(m["splits"]["train"]["shards"][0]))
    one_sentence(stats(data), data / "manifest.json", "shard-00000 twice")


def test_a_shard_replaced_by_a_copy_of_another_is_refused_by_stats_and_the_loaders(data):
    train = data / "train"
    shutil.rmtree(train / "shard-00000")
    shutil.copytree(train / "shard-00001", train / "shard-00000")
    one_sentence(stats(data), train / "shard-00000", "names shard-00001")
    from alexnet_pipe.loaders.records import RecordIndex
    with pytest.raises(UserError, match="names shard-00001"):
        RecordIndex(data, "train")


def test_a_shard_whose_checksum_differs_from_the_manifest_is_refused(data):
    edit(data / "train" / "shard-00001" / "meta.json", lambda m: m.__setitem__("checksum", "f" * 64))
    one_sentence(stats(data), data / "train" / "shard-00001", "checksum")


def test_meta_and_rejects_fields_are_typed(data):
    from alexnet_pipe.shards.manifest import load_shard_meta, read_rejects
    meta = data / "val" / "shard-00000" / "meta.json"
    edit(meta, lambda m: m.__setitem__("records", "3"))
    with pytest.raises(UserError, match=r"meta.json is not .*field records"):
        load_shard_meta(meta.parent)
    rejects = data / "rejects.jsonl"
    rejects.write_text(json.dumps({"path": "a", "split": "train", "reason": "x"}) + "\n"
                       + json.dumps({"path": "a", "split": "train", "reasn": "x"}) + "\n")
    with pytest.raises(UserError, match=r"line 2 .*reasn.*did you mean 'reason'"):
        read_rejects(rejects)


# --- stats files --------------------------------------------------------------------------------

def test_pca_json_fields_are_typed(data):
    from alexnet_pipe.stats.readers import PCA, read_pca
    assert stats(data).exit_code == 0
    path = data / "stats" / PCA
    good = path.read_text()
    for change, field in [(lambda d: d["mean_rgb"].__setitem__(0, 300.0), "mean_rgb[0]"),
                          (lambda d: d.__setitem__("images", True), "images"),
                          (lambda d: d.__setitem__("std_rgbb", d.pop("std_rgb")), "std_rgbb")]:
        path.write_text(good)
        edit(path, change)
        with pytest.raises(UserError, match=f"{re.escape(str(path))}.*field {re.escape(field)}"):
            read_pca(path, need_pca=False)
    path.write_text(good.replace('"pixels": ', '"pixels": 1e999, "x": ', 1))
    with pytest.raises(UserError, match="pixels"):
        read_pca(path, need_pca=False)


# --- metrics.jsonl and checkpoints --------------------------------------------------------------

def test_metrics_rows_are_typed(tmp_path):
    from alexnet_pipe.train.runlog import read_metrics
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": "nan"}\n')
    with pytest.raises(UserError, match="line 2 is not a metrics row.*field loss"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": -1}\n')
    with pytest.raises(UserError, match="field step"):
        read_metrics(tmp_path)


def test_checkpoint_metadata_is_typed(tmp_path):
    import torch
    from dataclasses import asdict
    from alexnet_pipe.train.checkpoint import load_checkpoint
    from alexnet_pipe.train.config import TrainSettings
    good = {"model": {}, "settings": asdict(TrainSettings()), "num_classes": 10, "step": 3}
    for state, field in [({**good, "num_classes": 0}, "num_classes"), ({**good, "step": "3"}, "step"),
                         ({**good, "settings": {**good["settings"], "step_epochs": ["a"]}}, "step_epochs[0]")]:
        torch.save(state, tmp_path / "c.pt")
        with pytest.raises(UserError, match=f"c.pt is not .*field {re.escape(field)}"):
            load_checkpoint(tmp_path / "c.pt")
    torch.save(good, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 3
