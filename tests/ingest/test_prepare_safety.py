"""prepare and sample-data never lose a user's file, and bad input is one sentence (issue 15)."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from alexnet_pipe import shards
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.ingest.prepare import PrepareSettings, run
from alexnet_pipe.ingest.sample_data import SampleSettings, write_jpeg, write_sample_tree
from alexnet_pipe.ingest.sources import discover
from alexnet_pipe_cli.main import cli

SIZE = 32
TINY = SampleSettings(classes=2, train_per_class=3, val_per_class=1, seed=3, pathologies=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _prep(src, data, **kw):
    return run(PrepareSettings(source=Path(src), data=Path(data), size=SIZE, workers=1, **kw), echo=lambda *_: None)


def _cli(args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _one_error(result) -> str:
    """The single `Error:` line of a refused command (exit status 1 or 2)."""
    assert result.exit_code in (1, 2), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture()
def src(tmp_path):
    write_sample_tree(tmp_path / "src", TINY)
    return tmp_path / "src"


# --- 1. --overwrite removes only what prepare wrote ---------------------------------------------

@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_a_data_dir_overlapping_the_source_is_refused_and_nothing_is_deleted(src, tmp_path, where):
    if where == "contains":  # the source inside the data dir's train/, where prepare writes and removes
        shutil.copytree(src, tmp_path / "d" / "train" / "mine")
        src, data = tmp_path / "d" / "train" / "mine", tmp_path / "d"
    else:
        data = {"same": src, "inside": src / "out"}[where]
    before = _files(src)
    for extra in ([], ["--overwrite"]):
        error = _one_error(_cli(["prepare", src, "--data", data, "--size", SIZE, "--workers", 1, *extra]))
        assert "source" in error and "pass --overwrite" not in error
        assert _files(src) == before


def test_a_data_dir_may_hold_the_source_beside_its_shards(src, tmp_path):
    """As the demo does (DATA/demo/sample): --overwrite there leaves the source alone."""
    data = tmp_path / "d"
    shutil.copytree(src, data / "sample")
    before = _files(data / "sample")
    _prep(data / "sample", data)
    _prep(data / "sample", data, quality=70, overwrite=True)
    assert _files(data / "sample") == before


def test_overwrite_keeps_files_prepare_did_not_write(src, tmp_path):
    data = tmp_path / "d"
    _prep(src, data, shards=2)
    mine = {data / "notes.txt": "mine", data / "runs" / "r1" / "log.txt": "a run"}
    for path, text in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (data / "stats").mkdir()
    (data / "stats" / "mine.csv").write_text("x")
    _prep(src, data, shards=2, quality=70, overwrite=True)
    for path, text in mine.items():
        assert path.read_text() == text, path
    assert (data / "stats" / "mine.csv").read_text() == "x"
    assert json.loads((data / "prepare.json").read_text())["settings"]["quality"] == 70


def test_foreign_files_in_a_split_folder_are_refused_even_with_overwrite(src, tmp_path):
    data = tmp_path / "d"
    (data / "train").mkdir(parents=True)
    (data / "train" / "holiday.jpg").write_bytes(b"a user's photo")
    for extra in ([], ["--overwrite"]):
        error = _one_error(_cli(["prepare", src, "--data", data, "--size", SIZE, "--workers", 1, *extra]))
        assert "holiday.jpg" in error and "use --overwrite" not in error
    assert (data / "train" / "holiday.jpg").read_bytes() == b"a user's photo"


def test_a_users_file_inside_a_shard_dir_stops_overwrite_and_stays(src, tmp_path):
    data = tmp_path / "d"
    _prep(src, data, shards=2)
    note = data / "train" / "shard-00000" / "my-notes.txt"
    note.write_text("inside a shard")
    error = _one_error(_cli(["prepare", src, "--data", data, "--size", SIZE, "--workers", 1, "--overwrite"]))
    assert "my-notes.txt" in error
    assert note.read_text() == "inside a shard"
    assert (data / "manifest.json").is_file()  # refused before anything was removed


@pytest.mark.parametrize("junk", ["{not json", "[1, 2]", '{"settings": 7}', "\xff\xfe"])
def test_a_corrupt_prepare_json_is_one_sentence_and_does_not_block_overwrite(src, tmp_path, junk):
    data = tmp_path / "d"
    _prep(src, data, shards=2)
    (data / "prepare.json").write_bytes(junk.encode("latin-1"))
    error = _one_error(_cli(["prepare", src, "--data", data, "--size", SIZE, "--workers", 1]))
    assert "prepare.json" in error
    result = _cli(["prepare", src, "--data", data, "--size", SIZE, "--workers", 1, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert shards.read_manifest(data)["splits"]["train"]["count"] == 6


def test_a_damaged_rejects_list_of_a_shard_is_one_sentence_when_finalising(src, tmp_path):
    """The plain run that finalises reads each shard's rejects.jsonl through the checked reader."""
    data = tmp_path / "d"
    _prep(src, data, shards=2, only_shards=(0, 1))
    damaged = data / "train" / "shard-00000" / shards.REJECTS
    damaged.write_text('{"path": "train/a.JPEG", "split": "train"\n')
    error = _one_error(_cli(["prepare", src, "--data", data, "--size", SIZE, "--workers", 1, "--shards", 2]))
    assert str(damaged) in error and "line 1" in error and "delete that shard dir" in error
    assert not (data / shards.MANIFEST).exists()


def test_overwrite_removes_exactly_what_stats_writes(src, tmp_path):
    """owned.py names the stats files by hand (the stats wing is above it): every file `stats` writes, and only
    those, go with --overwrite."""
    from alexnet_pipe.stats.readers import OUTPUTS
    data = tmp_path / "d"
    _prep(src, data)
    assert _cli(["stats", "--data", data, "--pca", "--plot"]).exit_code == 0
    assert sorted(p.name for p in (data / "stats").iterdir()) == sorted(OUTPUTS)
    (data / "stats" / "mine.npy").write_bytes(b"mine")
    _prep(src, data, quality=70, overwrite=True)
    assert [p.name for p in (data / "stats").iterdir()] == ["mine.npy"]


def test_rmdir_if_empty_removes_only_an_empty_folder_and_never_fails(tmp_path):
    from alexnet_pipe.core.files import rmdir_if_empty
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for name in ("empty", "full", "link", "gone"):
        rmdir_if_empty(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "link", "target"]
    assert (tmp_path / "full" / "mine.txt").read_text() == "x" and (tmp_path / "link").is_symlink()


def test_sample_data_overwrite_goes_on_where_an_emptied_folder_cannot_be_removed(tmp_path, monkeypatch):
    """A folder the OS will not remove (a mount point, a permission) stays: the tree is written into it."""
    root = tmp_path / "tree"
    write_sample_tree(root, TINY)
    before = _files(root)
    real = Path.rmdir

    def refuse_val(self):
        if self.name == "val":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "rmdir", refuse_val)
    write_sample_tree(root, TINY, overwrite=True)
    assert _files(root) == before


# --- 2. sample-data --overwrite and places that are not directories ---------------------------

def test_sample_data_overwrite_keeps_a_users_file_inside_train(tmp_path):
    root = tmp_path / "tree"
    write_sample_tree(root, TINY)
    (root / "train" / "mine.txt").write_text("my notes")
    (root / "val" / "mine.JPEG").write_bytes(b"mine")
    result = _cli(["sample-data", root, "--classes", 2, "--train-per-class", 3, "--val-per-class", 1,
                   "--no-pathologies", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (root / "train" / "mine.txt").read_text() == "my notes"
    assert (root / "val" / "mine.JPEG").read_bytes() == b"mine"


def test_sample_data_overwrite_refuses_a_tree_it_did_not_write(tmp_path):
    root = tmp_path / "imagenet"
    (root / "train" / "n01440764").mkdir(parents=True)
    photo = root / "train" / "n01440764" / "n01440764_0.JPEG"
    photo.write_bytes(b"a real photograph")
    error = _one_error(_cli(["sample-data", root, "--classes", 2, "--overwrite"]))
    assert str(root) in error and "sample-data" in error
    assert photo.read_bytes() == b"a real photograph"


@pytest.mark.parametrize("target", ["/proc/alexnet-pipe-test", "/proc", "/dev/null", "a-file", "a-file/below"])
def test_sample_data_into_a_place_that_is_not_a_directory_is_one_sentence(tmp_path, target):
    (tmp_path / "a-file").write_text("x")
    path = target if target.startswith("/") else tmp_path / target
    _one_error(_cli(["sample-data", path, "--classes", 2, "--train-per-class", 3, "--val-per-class", 1,
                     "--no-pathologies", "--overwrite"]))
    assert (tmp_path / "a-file").read_text() == "x"


@pytest.mark.parametrize("target", ["/proc/alexnet-pipe-test", "/proc/self", "/dev/null", "a-file"])
def test_prepare_data_that_is_not_a_writable_directory_is_one_sentence(src, tmp_path, target):
    (tmp_path / "a-file").write_text("x")
    path = Path(target) if target.startswith("/") else tmp_path / target
    with pytest.raises(UserError):
        _prep(src, path)
    assert (tmp_path / "a-file").read_text() == "x"


# --- 3. names and label files ----------------------------------------------------------------

def test_a_non_utf8_file_name_is_kept_with_a_lossless_key(src, tmp_path):
    raw = os.fsencode(src / "train") + b"/" + os.fsencode(next((src / "train").iterdir()).name) + b"/caf\xe9.JPEG"
    shutil.copy(next((src / "train").rglob("*.JPEG")), os.fsdecode(raw))
    _prep(src, tmp_path / "d")
    keys = [k for d in shards.shard_dirs(tmp_path / "d", "train") for k, _ in shards.iter_records(d)]
    assert len(keys) == 7 and sum(k.endswith(b"/caf\xe9.JPEG") for k in keys) == 1


def test_a_non_utf8_class_folder_rejects_each_image_with_a_reason(src, tmp_path):
    folder = os.fsencode(src / "train") + b"/n0000\xff"
    os.mkdir(folder)
    shutil.copy(next((src / "train").rglob("*.JPEG")), os.fsdecode(folder + b"/a.JPEG"))
    manifest = _prep(src, tmp_path / "d")["manifest"]
    assert manifest["splits"]["train"]["count"] == 6 and len(manifest["classes"]) == 2
    rejects = [json.loads(line) for line in (tmp_path / "d" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and "UTF-8" in rejects[0]["reason"]


def test_a_non_utf8_label_file_is_one_sentence_naming_it(src, tmp_path):
    csv = src / "LOC_val_solution.csv"
    csv.write_bytes(csv.read_bytes() + b"ILSVRC2012_val_9\xff,n01 1 2 3 4\n")
    with pytest.raises(UserError, match="LOC_val_solution.csv"):
        discover(src)
    csv.write_bytes(b"ImageId,PredictionString\n")
    (src / "LOC_synset_mapping.txt").write_bytes(b"n0 caf\xe9\n")
    with pytest.raises(UserError, match="LOC_synset_mapping.txt"):
        discover(src)


def test_a_fifo_as_val_labels_is_refused_without_reading_it(src, tmp_path):
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_cli(["prepare", src, "--data", tmp_path / "d",
                                                                  "--val-labels", fifo, "--dry-run"])),
                              daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "w"):
            pass
        thread.join(5)
        pytest.fail("prepare blocked reading a FIFO")
    assert "labels.csv" in _one_error(outcome[0])


def test_a_fifo_among_the_images_is_rejected_not_read(src, tmp_path):
    os.mkfifo(next((src / "train").iterdir()) / "pipe.JPEG")
    manifest = _prep(src, tmp_path / "d")["manifest"]
    rejects = (tmp_path / "d" / "rejects.jsonl").read_text()
    assert manifest["splits"]["train"]["count"] == 6 and "pipe.JPEG" in rejects and "regular file" in rejects


def test_a_conflicting_duplicate_image_id_is_refused_naming_it(src):
    csv = src / "LOC_val_solution.csv"
    first = csv.read_text().splitlines()[1]
    image_id, prediction = first.split(",")
    csv.write_text(csv.read_text() + f"{image_id},n99999999 1 2 3 4\n")
    with pytest.raises(UserError, match=image_id):
        discover(src)
    csv.write_text(csv.read_text().splitlines()[0] + "\n" + f"{first}\n{first}\n")  # same label twice: fine
    discover(src)


def test_a_bad_meta_mat_is_reported_under_its_own_name(src, tmp_path):
    devkit = tmp_path / "devkit" / "data"
    devkit.mkdir(parents=True)
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    (devkit / "meta.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError) as err:
        discover(src, devkit / "ILSVRC2012_validation_ground_truth.txt")
    assert "meta.mat" in str(err.value) and "ground_truth" not in str(err.value)


# --- 4. nothing written is an error ------------------------------------------------------------

def test_every_image_broken_is_an_error(tmp_path):
    for i in range(3):
        folder = tmp_path / "src" / "train" / f"n0000000{i}"
        folder.mkdir(parents=True)
        (folder / "a.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(UserError, match="3 .*rejected"):
        _prep(tmp_path / "src", tmp_path / "d")
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_only_shards_beyond_the_plan_is_an_error(src, tmp_path):
    with pytest.raises(UserError, match="100:200"):
        _prep(src, tmp_path / "d", shards=2, only_shards=(100, 200))


def test_a_split_without_images_names_what_it_found(tmp_path):
    train = tmp_path / "src" / "train"
    train.mkdir(parents=True)
    (train / "readme.txt").write_text("hello")
    (train / "n01").mkdir()
    (train / "n01" / "notes.md").write_text("x")
    result = _cli(["prepare", tmp_path / "src", "--data", tmp_path / "d", "--workers", 1])
    error = _one_error(result)
    assert "train" in error and "2 files" in error and ".txt" in error and ".md" in error
    assert not (tmp_path / "d").exists()
