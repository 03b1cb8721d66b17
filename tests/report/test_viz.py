"""viz filters / neighbors / curves: a tiny checkpoint from the real trainer, PNG sizes, numpy references."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images

S, CROP, N_TRAIN, N_VAL, CLASSES = 72, 64, 40, 12, 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data dir, checkpoint): 2 steps of the real trainer (recipe small, width 0.25, crop 64) on a
    data dir from shardgen with stats from `alexnet_pipe.stats.compute`."""
    from alexnet_pipe.stats.compute import StatsSettings, run_stats
    from alexnet_pipe.train.checkpoint import latest_checkpoint
    from alexnet_pipe.train.config import resolve_settings
    from alexnet_pipe.train.entry import run_training
    root = tmp_path_factory.mktemp("viz")
    images = random_images(N_TRAIN + N_VAL, S, seed=5)
    labels = np.arange(N_TRAIN + N_VAL) % CLASSES
    data = make_data_dir(root / "data", {"train": (images[:N_TRAIN], labels[:N_TRAIN]),
                                         "val": (images[N_TRAIN:], labels[N_TRAIN:])}, CLASSES, 2, "jpeg")
    run_stats(StatsSettings(data, pca=True, recompute=False, sample=None, plot=False))
    run = root / "run"
    run_training(resolve_settings("small", data=str(data), run=str(run), crop=CROP, epochs=1, max_steps=2,
                                  batch_size=16, eval_every=0, log_every=1, loader="torch", num_threads=0))
    return data, latest_checkpoint(run)


def invoke(*args):
    return CliRunner().invoke(cli, ["viz", *map(str, args)])


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def png_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- filters

def test_filter_grid_places_kernels_and_normalises_each():
    from alexnet_pipe.report.filters import filter_grid
    rng = np.random.default_rng(0)
    w = rng.normal(size=(96, 3, 11, 11)) * 0.01
    w[50] = 0.0
    w[50, 0, 3, 7] = 5.0  # kernel 50 (second block): one red weight, the kernel's max; the rest its min
    w[3] = np.linspace(-1, 1, 363).reshape(3, 11, 11)
    scale, pad, gap = 4, 2, 8
    grid = filter_grid(w, groups=2, scale=scale, pad=pad, gap=gap)
    tile = 11 * scale + pad
    assert grid.shape == (2 * 3 * tile + pad + gap, 16 * tile + pad, 3) == (286, 738, 3)
    # kernel 50 = group 1, index 2 in it: row 0, column 2 of the lower block
    x0, y0 = pad + 2 * tile, pad + 3 * tile + gap
    np.testing.assert_array_equal(grid[y0 + 3 * scale + 1, x0 + 7 * scale + 2], [255, 0, 0])
    np.testing.assert_array_equal(grid[y0 + 1, x0 + 1], [0, 0, 0])
    # kernel 3: per-kernel min-max, weights (c, y, x) -> pixel (y, x, c)
    ref = np.round((w[3] + 1) / 2 * 255).astype(np.uint8).transpose(1, 2, 0)
    x3, y3 = pad + 3 * tile, pad
    np.testing.assert_array_equal(grid[y3:y3 + 11 * scale:scale, x3:x3 + 11 * scale:scale], ref)
    # the gap between the blocks and the padding are white
    assert (grid[pad + 3 * tile - pad:pad + 3 * tile + gap] == 255).all()


def test_filter_grid_single_block_for_owt():
    from alexnet_pipe.report.filters import filter_grid, filter_grid_size
    w = np.random.default_rng(1).normal(size=(64, 3, 11, 11))
    assert filter_grid(w, 1, scale=2).shape[:2][::-1] == filter_grid_size(64, 1, 11, 11, scale=2) == (16 * 24 + 2, 4 * 24 + 2)


def test_viz_filters_command(trained, tmp_path):
    import torch
    from alexnet_pipe.train.checkpoint import load_checkpoint, save_atomic
    _, ckpt = trained
    state = load_checkpoint(ckpt)
    w = state["model"]["features.conv1.weight"]
    assert tuple(w.shape) == (24, 3, 11, 11)  # width 0.25 of 96, even for the two halves
    w.copy_(torch.zeros_like(w))
    w[17, 2, 10, 0] = 1.0  # second block (12 + 5), bottom-left weight, blue
    known = tmp_path / "known.pt"
    save_atomic(state, known)
    result = invoke("filters", known, "--scale", 3)
    assert result.exit_code == 0, result.output
    out = tmp_path / "filters.png"  # default: beside the checkpoint
    assert f"wrote {out}" in result.output
    tile = 11 * 3 + 2
    assert png_size(out) == (12 * tile + 2, 2 * tile + 2 + 8)
    pixels = png_rgb(out)
    x0, y0 = 2 + 5 * tile, 2 + tile + 8
    np.testing.assert_array_equal(pixels[y0 + 10 * 3 + 1, x0 + 1], [0, 0, 255])
    np.testing.assert_array_equal(pixels[y0 + 1, x0 + 1], [0, 0, 0])
    np.testing.assert_array_equal(pixels[2 + 1, 2 + 1], [128, 128, 128])  # kernel 0 is constant: grey


def test_viz_filters_of_the_trained_checkpoint(trained, tmp_path):
    _, ckpt = trained
    out = tmp_path / "f.png"
    result = invoke("filters", ckpt, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and png_size(out) == (12 * 46 + 2, 2 * 46 + 2 + 8)


def test_viz_filters_bad_input(tmp_path):
    result = invoke("filters", tmp_path / "missing.pt")
    assert result.exit_code == 2 and "does not exist" in result.output
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    result = invoke("filters", junk)
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.rstrip().splitlines()[-1]
    assert last.startswith(f"Error: {junk} is not a checkpoint") and result.output.count("Error:") == 1


# ---------------------------------------------------------------- neighbors

def test_nearest_matches_numpy_reference():
    from alexnet_pipe.report.neighbors import nearest
    rng = np.random.default_rng(2)
    train = rng.normal(size=(37, 20))
    queries = np.concatenate([train[[4, 30]], rng.normal(size=(1, 20))])
    batches = [(train[i:i + 8], np.arange(i, min(i + 8, 37))) for i in range(0, 37, 8)]
    dist, idx, searched = nearest(queries, iter(batches), k=5)
    ref = np.sqrt(((queries[:, None] - train[None]) ** 2).sum(-1))
    order = np.argsort(ref, axis=1)[:, :5]
    assert searched == 37
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, order, 1), rtol=1e-12)
    assert idx[0, 0] == 4 and idx[1, 0] == 30 and dist[0, 0] == 0 and dist[1, 0] == 0


def fc7_reference(ckpt, data, split):
    """Every record's fc7 by a plain loop: torch loader batches of 1, model.fc7, float64."""
    import torch
    from alexnet_pipe.train.checkpoint import load_model
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    model, ts = load_model(ckpt, torch.device("cpu"))
    loader = make_loader(LoaderSettings(data, split=split, train=False, batch_size=1, crop=ts.crop, loader="torch",
                                        normalize=ts.normalize, num_threads=0))
    with torch.no_grad():
        return np.concatenate([model.fc7(x).double().numpy() for x, _ in loader.epoch(0)])


@pytest.mark.dali
def test_neighbors_of_training_images_are_themselves(trained):
    from alexnet_pipe.report.neighbors import NeighborsSettings, find_neighbors
    data, ckpt = trained
    found = find_neighbors(NeighborsSettings(ckpt, data, Path("unused.png"), split="train", query=3, k=4,
                                             batch_size=16, loader="dali"))
    feats = fc7_reference(ckpt, data, "train")
    assert feats.shape[1] == 1024 and np.ptp(feats, axis=0).max() > 0  # width 0.25 of 4096, not constant
    np.testing.assert_array_equal(found["query_records"], [0, 1, 2])
    np.testing.assert_array_equal(found["records"][:, 0], [0, 1, 2])
    ref = np.sqrt(((feats[:3, None] - feats[None]) ** 2).sum(-1))
    scale = np.median(ref)
    assert scale > 0 and np.abs(found["distances"][:, 0]).max() < 1e-4 * scale
    np.testing.assert_allclose(found["distances"], np.sort(ref, axis=1)[:, :4], rtol=1e-4, atol=1e-4 * scale)
    assert found["searched"] == found["train_total"] == N_TRAIN


def test_viz_neighbors_command(trained, tmp_path):
    data, ckpt = trained
    out = tmp_path / "nn.png"
    result = invoke("neighbors", ckpt, "--data", data, "--query", 3, "--k", 4, "--limit", 20, "--batch-size", 8,
                    "--loader", "torch", "--num-threads", 0, "-o", out)
    assert result.exit_code == 0, result.output
    assert "searched the first 20 of 40 training images" in result.output and f"wrote {out}" in result.output
    assert out.stat().st_size > 0 and png_size(out) == (5 * 150, 3 * 160)


def test_viz_neighbors_bad_input(trained, tmp_path):
    data, ckpt = trained
    assert invoke("neighbors", tmp_path / "nope.pt", "--data", data).exit_code == 2
    result = invoke("neighbors", ckpt, "--data", data, "--split", "test")
    assert result.exit_code == 1 and "has no test split" in result.output and "Traceback" not in result.output
    result = invoke("neighbors", ckpt, "--data", tmp_path)
    assert result.exit_code == 1 and "manifest.json" in result.output


# ---------------------------------------------------------------- curves

def write_metrics(run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "epoch": s / 4, "lr": 0.01 * 0.1 ** (s // 8), "loss": 2.0 - 0.1 * s,
             "images_per_sec": 100.0, "data_wait_fraction": 0.1} for s in range(1, 17)]
    rows += [{"step": s, "epoch": s / 4, "top1_error": 0.9 - s / 40, "top5_error": 0.5 - s / 40, "images": 50}
             for s in (4, 8, 12, 16)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["step"])))


def test_viz_curves_command(tmp_path):
    run = tmp_path / "run"
    write_metrics(run)
    result = invoke("curves", run)
    assert result.exit_code == 0, result.output
    out = run / "curves.png"
    assert f"wrote {out} (1200x400 px, 20 metrics rows, 4 evaluations)" in result.output
    assert out.stat().st_size > 0 and png_size(out) == (1200, 400)


def test_viz_curves_of_a_real_run(trained, tmp_path):
    _, ckpt = trained  # the trainer's own metrics.jsonl: step rows only (eval_every 0)
    out = tmp_path / "c.png"
    result = invoke("curves", ckpt.parent, "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == (1200, 400) and "0 evaluations" in result.output


def test_viz_curves_bad_input(tmp_path):
    assert invoke("curves", tmp_path / "missing").exit_code == 2
    result = invoke("curves", tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == f"Error: {tmp_path} has no metrics.jsonl: pass the run dir " \
                                                      "that `alexnet-pipe train` wrote"
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch"\n')
    result = invoke("curves", tmp_path)
    assert result.exit_code == 1 and "is not JSON lines" in result.output


@pytest.mark.parametrize("name", ["filters", "neighbors", "curves"])
def test_help(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0 and "alexnet-pipe viz " + name in result.output


def test_viz_uses_the_one_checkpoint_loader(tmp_path):
    """An empty file (EOFError inside torch.load) is one sentence in viz too, from checkpoint.load_model."""
    import alexnet_pipe.report.filters as filters
    import alexnet_pipe.report.neighbors as neighbors
    assert not hasattr(filters, "load_model") and not hasattr(neighbors, "load_model")  # no second copy of the loader
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    result = invoke("filters", empty)
    assert result.exit_code == 1 and "Traceback" not in result.output and "Aborted" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {empty} is not a checkpoint")


def test_unwritable_output_is_one_sentence(trained, tmp_path):
    _, ckpt = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for args in (("filters", ckpt), ("curves", ckpt.parent)):
        result = invoke(*args, "-o", blocker / "out.png")  # its folder would have to be a file
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output  # refused before any work
        assert f"{blocker / 'out.png'} lies below {blocker}, which is a file" in result.output.strip().splitlines()[-1]


def test_viz_curves_skips_a_row_cut_by_a_killed_run_and_refuses_other_rows(tmp_path):
    run = tmp_path / "run"
    write_metrics(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 17, "epo')  # the trainer was killed while writing this row
    result = invoke("curves", run)
    assert result.exit_code == 0, result.output
    assert "20 metrics rows" in result.output and "skipped the unfinished last line 21" in result.output
    (run / "metrics.jsonl").write_text('[1]\n')
    result = invoke("curves", run)
    assert result.exit_code == 1 and "line 1 is not a metrics row" in result.output


def test_neighbor_titles_end_between_words(trained, tmp_path, monkeypatch):
    """Class names in neighbors.png keep whole words (ImageNet's 'tench, Tinca tinca' style): the first synonym,
    cut after the last word that fits; titles were cut mid-word ('red discs, synthet.')."""
    import re
    import shutil
    from alexnet_pipe.report import neighbors as viz
    data, ckpt = trained
    named = tmp_path / "named"
    shutil.copytree(data, named)
    manifest = json.loads((named / "manifest.json").read_text())
    long_names = ["red discs, synthetic red disc pattern", "Chesapeake Bay retriever", "tench, Tinca tinca",
                  "Staffordshire bullterrier, Staffordshire bull terrier"]
    for entry, name in zip(manifest["classes"], long_names):
        entry["name"] = name
    (named / "manifest.json").write_text(json.dumps(manifest))
    seen = {}
    monkeypatch.setattr(viz, "neighbors_figure", lambda *a: seen.update(titles=[*a[4], *sum(a[5], [])]) or (1, 1))
    viz.render_neighbors(viz.NeighborsSettings(ckpt, named, tmp_path / "nn.png", query=4, k=2, limit=12,
                                               batch_size=8, loader="torch", num_threads=0))
    assert {"red discs", "Chesapeake Bay…", "tench", "Staffordshire…"} >= set(seen["titles"]) and seen["titles"]
    for title in seen["titles"]:
        words = title.rstrip("…").split()
        name = next(n for n in long_names if n.startswith(title.rstrip("…")))
        assert words == re.split(r"[ ,]+", name)[:len(words)], (title, name)  # whole words, from the start
