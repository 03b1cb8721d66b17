"""Issue 19, mechanism 3 (prepare and demo): a file of the user's that merely looks like one of ours is never
ours; --overwrite with --only-shards A:B removes only that range; a demo rerun removes only what it wrote."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
from alexnet_pipe_cli.main import cli

TINY = SampleSettings(classes=2, train_per_class=4, val_per_class=2, seed=5, pathologies=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("owned") / "src"
    write_sample_tree(root, TINY)
    return root


def prepare(src, data, *extra):
    result = CliRunner().invoke(cli, ["prepare", str(src), "--data", str(data), "--size", "16", "--workers", "1",
                                      *map(str, extra)])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("name,text", [("manifest.json", '{"name": "my project", "version": "1.0"}\n'),
                                       ("rejects.jsonl", "my own notes\n")])
@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_a_users_file_named_like_ours_is_never_replaced(tree, tmp_path, name, text, overwrite):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / name).write_text(text)
    result = prepare(tree, proj, *overwrite)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert str(proj / name) in last and "will not replace it" in last
    assert (proj / name).read_text() == text


def test_overwrite_with_only_shards_removes_only_that_range(tree, tmp_path):
    data = tmp_path / "d"
    assert prepare(tree, data, "--shards", 2).exit_code == 0
    kept = {split: (data / split / "shard-00001" / "data.mdb").stat().st_ino for split in ("train", "val")}
    result = prepare(tree, data, "--shards", 2, "--overwrite", "--only-shards", "0:1")
    assert result.exit_code == 0, result.output
    for split, inode in kept.items():  # the other machine's shard: untouched, not rewritten
        assert (data / split / "shard-00001" / "data.mdb").stat().st_ino == inode
        assert (data / split / "shard-00000" / "meta.json").is_file()


def test_a_demo_rerun_keeps_the_users_files(tmp_path):
    from alexnet_pipe.report.demo import MARKER, _fresh_root
    root = tmp_path / "demo"
    _fresh_root(root)
    (root / "stats").mkdir()
    (root / "stats" / "pca.json").write_text("{}")
    (root / "my-notes.txt").write_text("mine")
    _fresh_root(root)
    assert (root / "my-notes.txt").read_text() == "mine" and (root / MARKER).is_file()
    assert not (root / "stats").exists()
