"""Issue 19, mechanism 5: the input tree's one rule (docs/format.md). Hidden names are never a class nor an
image (each file noted in rejects.jsonl), an empty class folder is refused, a stray folder never drops a split;
truncated JPEGs are rejected with the reason and decompression bombs refused from the header."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe.ingest.sample_data import SampleSettings, write_jpeg, write_sample_tree
from alexnet_pipe_cli.main import cli

TINY = SampleSettings(classes=2, train_per_class=3, val_per_class=1, seed=3, pathologies=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree") / "src"
    write_sample_tree(root, TINY)
    return root


@pytest.fixture()
def src(tree, tmp_path):
    return Path(shutil.copytree(tree, tmp_path / "src"))


def prepare(src, data, *extra):
    result = CliRunner().invoke(cli, ["prepare", str(src), "--data", str(data), "--size", "16", "--workers", "1",
                                      *map(str, extra)])
    assert "Traceback" not in result.output, result.output
    return result


def manifest_and_rejects(data):
    rejects = [json.loads(line) for line in (data / "rejects.jsonl").read_text().splitlines() if line.strip()]
    return json.loads((data / "manifest.json").read_text()), rejects


def a_jpeg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(path, np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_a_notebook_checkpoint_folder_is_no_class_and_shifts_no_label(src, tmp_path):
    real = sorted(p.name for p in (src / "train").iterdir())
    a_jpeg(src / "train" / ".ipynb_checkpoints" / "x-checkpoint.JPEG")
    a_jpeg(src / "train" / real[0] / ".hidden.JPEG")
    result = prepare(src, tmp_path / "d")
    assert result.exit_code == 0, result.output
    manifest, rejects = manifest_and_rejects(tmp_path / "d")
    assert [c["wnid"] for c in manifest["classes"]] == real
    assert manifest["splits"]["train"]["count"] == 6
    hidden = sorted(Path(r["path"]).name for r in rejects if "hidden" in r["reason"])
    assert hidden == [".hidden.JPEG", "x-checkpoint.JPEG"]


@pytest.mark.parametrize("stray", [".ipynb_checkpoints", "extra"])
def test_a_stray_folder_in_a_flat_val_drops_no_image(src, tmp_path, stray):
    a_jpeg(src / "val" / stray / "ILSVRC2012_val_00000001.JPEG")
    result = prepare(src, tmp_path / "d")
    assert result.exit_code == 0, result.output
    manifest, rejects = manifest_and_rejects(tmp_path / "d")
    assert manifest["splits"]["val"]["count"] == 2
    assert [r["split"] for r in rejects if stray in r["path"]] == ["val"]


def test_an_empty_class_folder_is_refused(src, tmp_path):
    (src / "train" / "n09999999").mkdir()
    (src / "train" / "n09999999" / ".DS_Store").write_bytes(b"\0")
    result = prepare(src, tmp_path / "d")
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: the class folder") and "n09999999 holds no files" in last
