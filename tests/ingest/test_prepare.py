"""prepare: layouts, pathologies, the shard plan, crash-safety, cluster mode, verify, DALI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import layouts
from alexnet_pipe import shards
from alexnet_pipe.ingest.prepare import PrepareSettings, run
from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
from alexnet_pipe_cli.main import cli

SIZE = 48


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample") / "tree"
    summary = write_sample_tree(root, SampleSettings(classes=3, train_per_class=8, val_per_class=3, seed=1))
    return root, summary


def prep(src, data, **kw) -> dict:
    settings = PrepareSettings(source=Path(src), data=Path(data), size=SIZE, **kw)
    return run(settings, echo=lambda *_: None)["manifest"]


def splits_of(manifest):
    return {s: [(e["records"], e["checksum"]) for e in v["shards"]] for s, v in manifest["splits"].items()}


def all_records(data: Path):
    manifest = shards.read_manifest(data)
    return {split: [(k, shards.Datum.from_bytes(v)) for d in shards.shard_dirs(data, split, manifest)
                    for k, v in shards.iter_records(d)] for split in manifest["splits"]}


def test_every_input_is_written_or_rejected(tree, tmp_path):
    root, summary = tree
    manifest = prep(root, tmp_path / "d", shards=2)
    rejects = [json.loads(line) for line in (tmp_path / "d" / "rejects.jsonl").read_text().splitlines()]
    rejected = {str(Path(r["path"]).relative_to(root)) for r in rejects}
    assert rejected == set(summary.expected_rejects)
    assert {r["reason"] for r in rejects} == {"empty file", "truncated JPEG (no end-of-image marker)",
                                              "not an image (unrecognised content)"}
    assert manifest["splits"]["train"]["count"] + len(rejects) == summary.train_count
    assert manifest["splits"]["val"]["count"] == summary.val_count
    assert [c["wnid"] for c in manifest["classes"]] == sorted(summary.wnids)
    assert manifest["classes"][0]["name"] != manifest["classes"][0]["wnid"]  # names from the mapping file


def test_records_are_shuffled_keys_labels_and_sizes(tree, tmp_path):
    root, summary = tree
    prep(root, tmp_path / "d", shards=3)
    wnids = sorted(summary.wnids)
    for split, recs in all_records(tmp_path / "d").items():
        keys = [k.decode() for k, _ in recs]
        numbers = [int(k.split("_", 1)[0]) for k in keys]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        paths = [k.split("_", 1)[1] for k in keys]
        assert paths != sorted(paths)  # key order is a shuffle, not the file order
        for (key, datum), path in zip(recs, paths):
            assert datum.encoded and (datum.height, datum.width, datum.channels) == (SIZE, SIZE, 3)
            assert path.startswith(f"{split}/")
            assert datum.label == summary.labels[path] if path in summary.labels else True
            if split == "train":
                assert wnids[datum.label] == path.split("/")[1]


def test_jpeg_records_decode_a_windows_rows_alone(tree, tmp_path):
    """Each record has a restart marker per MCU row (shards.strips), so the loaders decode the rows a view needs:
    a window in the middle MCU row of a 48 px record is a strip of that row alone, the whole image's pixels."""
    from alexnet_pipe.shards.pixels import decode_rgb, decode_rgb_rows
    from alexnet_pipe.shards.strips import rows_jpeg
    root, _ = tree
    prep(root, tmp_path / "d")
    records = [datum for recs in all_records(tmp_path / "d").values() for _, datum in recs]
    for datum in records:
        assert rows_jpeg(datum.data, 20, 28, SIZE) is not None
        rows, top = decode_rgb_rows(datum.data, 20, 28, SIZE)
        assert (top, rows.shape) == (16, (16, SIZE, 3))
        assert np.array_equal(rows[4:12], decode_rgb(datum.data)[20:28])
    assert len(records) > 20


def test_pixels_match_a_pil_reference(tree, tmp_path):
    """Shorter side -> SIZE, centre square: compare with PIL's own decode + box-filter resize."""
    from PIL import Image
    root, summary = tree
    prep(root, tmp_path / "d", encoding="raw", reduce=False)
    recs = dict((k.decode().split("_", 1)[1], d) for k, d in all_records(tmp_path / "d")["train"])
    checked = 0
    for rel, datum in recs.items():
        img = Image.open(root / rel).convert("RGB")
        w, h = img.size
        s = min(w, h)
        ref = np.asarray(img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                         .resize((SIZE, SIZE), Image.BOX if s > SIZE else Image.BICUBIC), np.float64)
        got = np.frombuffer(datum.data, np.uint8).reshape(SIZE, SIZE, 3)
        assert np.abs(got - ref).mean() < 2.0, rel
        checked += 1
    kinds = set(summary.pathological.values())
    assert {"cmyk", "gray", "png", "rgba", "png16"} <= kinds and checked > 20


def test_layouts_give_identical_shards(tree, tmp_path):
    root, _ = tree
    reference = splits_of(prep(root, tmp_path / "d0", shards=2))
    built = {"kaggle": layouts.kaggle_nested(root, tmp_path / "k"),
             "sorted-val": layouts.sorted_val(root, tmp_path / "s"),
             "archives": layouts.archives(root, tmp_path / "a")}
    for name, src in built.items():
        manifest = prep(src, tmp_path / f"d-{name}", shards=2)
        assert splits_of(manifest) == reference, name
    assert manifest["source"]["val_labels"].endswith("ILSVRC2012_devkit_t12.tar.gz")
    assert manifest["classes"][0]["name"].startswith("words of")


def test_val_labels_override_and_missing_labels(tree, tmp_path):
    root, summary = tree
    src = tmp_path / "flat"
    import shutil
    shutil.copytree(root / "train", src / "train")
    shutil.copytree(root / "val", src / "val")
    manifest = prep(src, tmp_path / "d1")  # no csv anywhere: every val image is listed, none written
    rejects = (tmp_path / "d1" / "rejects.jsonl").read_text()
    assert manifest["splits"]["val"]["count"] == 0 and "give --val-labels" in rejects
    archive = layouts.archives(root, tmp_path / "arch")
    manifest = prep(src, tmp_path / "d2", val_labels=archive / "ILSVRC2012_devkit_t12.tar.gz")
    assert manifest["splits"]["val"]["count"] == summary.val_count


def test_plan_does_not_depend_on_workers_and_refuses_other_settings(tree, tmp_path):
    root, _ = tree
    one = prep(root, tmp_path / "d1", shards=2, workers=1)
    two = prep(root, tmp_path / "d2", shards=2, workers=2)
    assert splits_of(one) == splits_of(two)
    again = prep(root, tmp_path / "d1", shards=2, workers=2)  # same settings: nothing to redo
    assert splits_of(again) == splits_of(one)
    from alexnet_pipe.core.errors import UserError
    with pytest.raises(UserError, match="quality 90 -> 80"):
        prep(root, tmp_path / "d1", shards=2, quality=80)
    assert splits_of(prep(root, tmp_path / "d1", shards=2, quality=80, overwrite=True)) != splits_of(one)


def test_only_shards_then_finalise(tree, tmp_path):
    root, _ = tree
    whole = prep(root, tmp_path / "whole", shards=3)
    data = tmp_path / "cluster"
    assert prep(root, data, shards=3, only_shards=(0, 1)) is None
    assert not (data / "manifest.json").exists()
    assert prep(root, data, shards=3, only_shards=(1, 3)) is None
    assert splits_of(prep(root, data, shards=3)) == splits_of(whole)


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_uninterrupted_result(tree, tmp_path):
    root, _ = tree
    whole = prep(root, tmp_path / "whole", shards=6)
    data = tmp_path / "killed"
    cmd = [sys.executable, "-m", "alexnet_pipe", "prepare", str(root), "--data", str(data),
           "--size", str(SIZE), "--shards", "6", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (data / "train" / "shard-00001" / "meta.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (data / "manifest.json").exists()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    assert splits_of(shards.read_manifest(data)) == splits_of(whole)
    assert not list((data / "train").glob(".shard-*"))


def test_verify_names_a_damaged_shard(tree, tmp_path):
    root, _ = tree
    data = tmp_path / "d"
    prep(root, data, shards=2)
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", "--data", str(data), "--workers", "1"])
    assert ok.exit_code == 0, ok.output
    mdb = data / "train" / "shard-00001" / "data.mdb"
    # every copy: LMDB's file also holds stale copies of pages from earlier transactions
    mdb.write_bytes(mdb.read_bytes().replace(b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\xff\xd8\xff\xe0\x00\x10JFXX"))
    bad = runner.invoke(cli, ["verify", "--data", str(data), "--workers", "1"])
    assert bad.exit_code == 1 and "train/shard-00001" in bad.output and "Traceback" not in bad.output


@pytest.mark.dali
def test_dali_caffe_reader_reads_the_shards(tree, tmp_path):
    from nvidia.dali import fn, pipeline_def, types
    root, summary = tree
    data = tmp_path / "d"
    manifest = prep(root, data, shards=2)
    dirs = [str(d) for d in shards.shard_dirs(data, "train")]
    n = manifest["splits"]["train"]["count"]

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        jpegs, labels = fn.readers.caffe(path=dirs, random_shuffle=False, name="r")
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB), labels

    p = pipe()
    p.build()
    imgs, labels = p.run()
    recs = all_records(data)["train"]
    import cv2
    for i, (key, datum) in enumerate(recs):
        assert int(np.array(labels[i])[0]) == datum.label
        ref = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        assert np.abs(np.array(imgs[i]).astype(int) - ref).max() <= 1


def _run_python(code: str, *, stdin: bool, timeout: int = 120):
    args = [sys.executable, "-"] if stdin else [sys.executable, "-c", code]
    return subprocess.run(args, input=code if stdin else None, capture_output=True, text=True, timeout=timeout)


def test_workers_start_after_opencv_threads_ran_in_the_parent(tree, tmp_path):
    """The demo draws images with OpenCV before prepare: forked workers would inherit its locks and hang."""
    root, _ = tree
    code = ("import cv2, numpy as np\n"
            "cv2.setNumThreads(2); cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (999, 999))\n"
            "from pathlib import Path\nfrom alexnet_pipe.ingest.prepare import PrepareSettings, run\n"
            f"run(PrepareSettings(source=Path({str(root)!r}), data=Path({str(tmp_path / 'd')!r}), size=32,"
            " workers=2, shards=2), echo=print)\n")
    out = _run_python(code, stdin=False)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "manifest.json").is_file()


def test_workers_that_cannot_start_are_an_error_not_a_hang(tree, tmp_path):
    """A script read from stdin cannot be re-imported by spawned workers: say so, do not wait forever."""
    root, _ = tree
    code = ("from pathlib import Path\nfrom alexnet_pipe.ingest.prepare import PrepareSettings, run\n"
            "from alexnet_pipe.core.errors import UserError\ntry:\n"
            f"    run(PrepareSettings(source=Path({str(root)!r}), data=Path({str(tmp_path / 'd')!r}), size=32,"
            " workers=2), echo=print)\nexcept UserError as exc:\n    print('USERERROR', exc)\n")
    out = _run_python(code, stdin=True)
    assert "USERERROR a worker process died" in out.stdout, out.stdout + out.stderr
    assert not list((tmp_path / "d" / "train").glob(".shard-*"))  # the half shard was removed


def test_ctrl_c_keeps_whole_shards_says_how_to_resume_and_exits_130(tree, tmp_path, monkeypatch):
    import alexnet_pipe.ingest.writing as writing  # where the chunks are handed to the workers
    root, _ = tree
    whole = prep(root, tmp_path / "whole", shards=3)
    real, calls = writing.process_chunk, []

    def interrupt_on_the_third_chunk(task):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)
    monkeypatch.setattr(writing, "process_chunk", interrupt_on_the_third_chunk)
    data = tmp_path / "d"
    cmd = ["prepare", str(root), "--data", str(data), "--size", str(SIZE), "--shards", "3", "--workers", "1"]
    result = CliRunner().invoke(cli, cmd)
    assert result.exit_code == 130 and "Traceback" not in result.output and "Aborted" not in result.output
    assert "run the same command again" in result.output.strip().splitlines()[-1]
    assert "2 of the 6 shards" in result.output  # one chunk per shard here: the third one was cut
    assert not (data / "manifest.json").exists()
    assert not list(data.glob("*/.shard-*"))  # no half-written shard left behind
    monkeypatch.setattr(writing, "process_chunk", real)
    assert CliRunner().invoke(cli, cmd).exit_code == 0
    assert splits_of(shards.read_manifest(data)) == splits_of(whole)
