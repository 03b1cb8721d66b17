"""The DALI pipeline (CPU build) against numpy references; ranks, epochs, resume; the CLI commands."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe.loaders import augment
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders import LoaderSettings, make_loader
from alexnet_pipe.loaders.base import TorchNormalizer
from alexnet_pipe.report.dali_variants import BenchDaliLoader, CaffeReaderLoader
from alexnet_pipe.loaders.records import RecordIndex
from helpers.loaders import (CROP, N_TRAIN, N_VAL, S, check_train, decoded, normalizer_case, reference_normalize,
                             reference_ten)


@pytest.fixture(scope="module")
def pixels(dirs):
    return {(enc, split): decoded(d, split) for enc, d in dirs.items() for split in ("train", "val")}


def settings(data, **kw):
    return LoaderSettings(Path(data), **{"batch_size": 8, "crop": CROP, "with_params": True, **kw})


@pytest.mark.parametrize("enc", ["raw", "jpeg"])
def test_dali_train_matches_numpy_reference(dirs, pixels, enc):
    loader = make_loader(settings(dirs[enc]))
    check_train(loader, pixels[enc, "train"], dirs[enc] / "stats")


@pytest.mark.dali
def test_dali_float_path_matches_numpy_reference(dirs, pixels):
    """The former default (the float work in DALI's operators), kept for the benchmark."""
    check_train(BenchDaliLoader(settings(dirs["jpeg"]), normalize_in="dali"), pixels["jpeg", "train"],
                dirs["jpeg"] / "stats")


def test_dali_channel_norm_fbresnet_lighting(dirs, pixels):
    loader = make_loader(settings(dirs["jpeg"], normalize="channel", lighting_scale="fbresnet", lighting=0.3))
    check_train(loader, pixels["jpeg", "train"], dirs["jpeg"] / "stats", normalize="channel", scale="fbresnet")


@pytest.mark.parametrize("enc", ["raw", "jpeg"])
def test_dali_ten_crop_matches_numpy(dirs, pixels, enc):
    loader = make_loader(settings(dirs[enc], split="val", train=False, views="ten-crop"))
    seen = 0
    for images, labels, p in loader.epoch(0):
        assert images.shape[1:] == (10, 3, CROP, CROP)
        for i, key in enumerate(p["key"]):
            np.testing.assert_allclose(images[i].numpy(), reference_ten(pixels[enc, "val"][key], dirs[enc] / "stats"),
                                       atol=1e-3)
            seen += 1
    assert seen == N_VAL


def test_dali_centre_crop(dirs, pixels):
    loader = make_loader(settings(dirs["jpeg"], split="val", train=False))
    images, _, p = next(iter(loader.epoch(0)))
    assert (p["crop_x"] == 4).all() and (p["crop_y"] == 4).all() and not p["flip"].any()
    want = reference_ten(pixels["jpeg", "val"][p["key"][0]], dirs["jpeg"] / "stats")[4]
    np.testing.assert_allclose(images[0].numpy(), want, atol=1e-3)


def epoch_keys(loader, epoch, start_step=0):
    return [list(p["key"]) for _im, _lab, p in loader.epoch(epoch, start_step)]


def test_two_ranks_cover_every_record_once(dirs):
    loaders = [make_loader(settings(dirs["jpeg"], rank=r, world_size=2, seed=5)) for r in (0, 1)]
    assert loaders[0].steps_per_epoch == loaders[1].steps_per_epoch == 4  # 50 = 3*16 + 2
    assert loaders[0].images_per_epoch + loaders[1].images_per_epoch == N_TRAIN
    per_epoch = []
    for epoch in (0, 1):
        batches = [epoch_keys(ld, epoch) for ld in loaders]
        assert len(batches[0]) == len(batches[1]) == loaders[0].steps_per_epoch
        flat = [k for rank in batches for batch in rank for k in batch]
        assert sorted(flat) == sorted(RecordIndex(dirs["jpeg"], "train").keys[i].decode() for i in range(N_TRAIN))
        per_epoch.append(flat)
    assert per_epoch[0] != per_epoch[1]


def test_same_seed_epoch_same_batches_and_resume_is_the_tail(dirs):
    a, b = make_loader(settings(dirs["raw"], seed=2)), make_loader(settings(dirs["raw"], seed=2))
    full = list(a.epoch(3))
    again = list(b.epoch(3))
    tail = list(b.epoch(3, start_step=4))
    assert len(tail) == len(full) - 4
    for (x, y, p), (x2, y2, p2) in zip(full, again):
        assert (x == x2).all() and (y == y2).all() and (p["key"] == p2["key"]).all()
    for (x, _, p), (x2, _, p2) in zip(full[4:], tail):
        assert (x == x2).all() and (p["key"] == p2["key"]).all() and (p["alpha"] == p2["alpha"]).all()
    assert list(make_loader(settings(dirs["raw"], seed=3)).epoch(3))[0][2]["key"].tolist() != full[0][2]["key"].tolist()


@pytest.mark.dali
def test_one_pipeline_serves_every_finished_epoch(dirs):
    """Epochs run to their end reuse the built pipeline; after an abandoned one (batches prefetched
    and never taken) the next epoch starts on a fresh one. Either way each epoch gives exactly
    what a new loader gives for it."""
    def same(got, want):
        assert len(got) == len(want)
        for (x, y, p), (x2, y2, p2) in zip(got, want):
            assert torch.equal(x, x2) and torch.equal(y, y2) and (p["key"] == p2["key"]).all()

    def fresh(epoch, start_step=0):
        return list(make_loader(settings(dirs["jpeg"], seed=4)).epoch(epoch, start_step))

    import torch
    loader = make_loader(settings(dirs["jpeg"], seed=4))
    same(list(loader.epoch(0)), fresh(0))
    built = loader._pipe
    same(list(loader.epoch(1)), fresh(1))
    assert loader._pipe is built
    partial = loader.epoch(2)
    next(partial)
    partial.close()  # abandoned after one batch
    assert loader._pipe is None
    same(list(loader.epoch(2, start_step=3)), fresh(2, start_step=3))
    same(list(loader.epoch(3)), fresh(3))
    assert loader._pipe is not None and loader._pipe is not built
    last = loader.steps_per_epoch - 1  # an epoch shorter than DALI's prefetch queue
    rebuilt = loader._pipe
    same(list(loader.epoch(4, start_step=last)), fresh(4, start_step=last))
    same(list(loader.epoch(5)), fresh(5))
    assert loader._pipe is rebuilt
    batches = loader.epoch(6)  # as the trainer does: exactly steps_per_epoch next() calls, no StopIteration
    got = [next(batches) for _ in range(loader.steps_per_epoch)]
    del batches
    same(got, fresh(6))
    assert loader._pipe is rebuilt
    same(list(loader.epoch(7)), fresh(7))
    first = loader.epoch(8)  # two epochs open at once: each has its own pipeline
    head = [next(first)]
    same(list(loader.epoch(9)), fresh(9))
    same(head + list(first), fresh(8))


def test_dali_params_statistics(dirs):
    loader = make_loader(settings(dirs["raw"], batch_size=50, lighting=0.2))
    params = [p for e in range(12) for _x, _y, p in loader.epoch(e)]
    xs = np.concatenate([p["crop_x"] for p in params] + [p["crop_y"] for p in params])
    flips = np.concatenate([p["flip"] for p in params])
    alpha = np.concatenate([p["alpha"] for p in params])
    assert xs.min() == 0 and xs.max() == S - CROP and abs(xs.mean() - (S - CROP) / 2) < 0.3
    assert abs(flips.mean() - 0.5) < 0.06
    np.testing.assert_allclose(alpha.std(0), 0.2, rtol=0.12)


def test_dtype_and_channels_last(dirs):
    import torch
    loader = make_loader(LoaderSettings(dirs["jpeg"], batch_size=8, crop=CROP, dtype="bfloat16", channels_last=True))
    ref = make_loader(LoaderSettings(dirs["jpeg"], batch_size=8, crop=CROP))
    (x, y), (x0, y0) = next(iter(loader.epoch(0))), next(iter(ref.epoch(0)))
    assert torch.equal(y, y0)
    assert x.dtype == torch.bfloat16 and x.shape == (8, 3, CROP, CROP) and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.float(), x0, atol=2.0, rtol=1e-2)
    x16, _ = next(iter(make_loader(LoaderSettings(dirs["jpeg"], batch_size=8, crop=CROP, dtype="float16")).epoch(0)))
    assert x16.dtype == torch.float16
    cl, _ = next(iter(make_loader(LoaderSettings(dirs["jpeg"], batch_size=8, crop=CROP, channels_last=True)).epoch(0)))
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x0)


@pytest.mark.dali
def test_caffe_reader_is_deterministic_and_complete(dirs):
    import torch
    ranks = [CaffeReaderLoader(settings(dirs["jpeg"], rank=r, world_size=2)) for r in (0, 1)]
    labels = [torch.cat([lab for _x, lab, _p in ld.epoch(0)]) for ld in ranks]
    assert sum(len(lab) for lab in labels) == N_TRAIN and ranks[0].steps_per_epoch == ranks[1].steps_per_epoch
    assert sorted(torch.cat(labels).tolist()) == sorted((np.arange(N_TRAIN) % 5).tolist())
    full, tail = list(ranks[0].epoch(1)), list(ranks[0].epoch(1, start_step=2))
    assert all((a[0] == b[0]).all() for a, b in zip(full[2:], tail)) and len(tail) == len(full) - 2


# --- the fused torch normalisation ---------------------------------------------------------

@pytest.mark.parametrize("mode", ["mean-image", "channel"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_normalizer_matches_numpy(mode, channels_last):
    import torch
    n, size, c = 12, 20, 16
    norm, crops, xs, ys, flips, light = normalizer_case(np.random.default_rng(7), mode, n, size, c)
    normalizer = TorchNormalizer(norm, size, c)
    got = normalizer(torch.from_numpy(crops), xs, ys, flips, light, channels_last)
    assert got.dtype == torch.float32 and got.shape == (n, 3, c, c)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    np.testing.assert_allclose(got.numpy(), reference_normalize(crops, xs, ys, flips, light, norm, size),
                               rtol=1e-5, atol=1e-3)
    # the batched path (CUDA's default) does the same operations at once: bit-identical on the CPU
    batched = normalizer._apply(torch.from_numpy(crops), xs, ys, flips, light, channels_last, batched=True)
    assert batched.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.equal(batched, got.clone())


def test_output_buffers_are_reused_only_when_released():
    import torch
    norm = augment.Normalizer("mean-image", mean_image=np.zeros((8, 8, 3), np.float32))
    normalize = TorchNormalizer(norm, 8, 8)
    args = (np.zeros(2, int), np.zeros(2, int), np.zeros(2, bool), np.zeros((2, 3), np.float32))
    ones, twos = torch.ones(2, 8, 8, 3, dtype=torch.uint8), torch.full((2, 8, 8, 3), 2, dtype=torch.uint8)
    first = normalize(ones, *args)
    view = first[0]  # a view alone keeps the buffer busy
    ptr = first.data_ptr()
    del first
    second = normalize(twos, *args)
    assert second.data_ptr() != ptr and (view == 1).all() and (second == 2).all()
    del view
    third = normalize(ones, *args)  # the first buffer is free again: no new allocation
    assert third.data_ptr() == ptr and (third == 1).all() and (second == 2).all()


def test_missing_stats_is_a_user_error(tmp_path, dirs):
    import shutil
    data = tmp_path / "d"
    shutil.copytree(dirs["raw"], data, ignore=shutil.ignore_patterns("stats"))
    with pytest.raises(UserError, match="alexnet-pipe stats"):
        make_loader(LoaderSettings(data, crop=CROP))
    with pytest.raises(UserError, match="crop"):
        make_loader(LoaderSettings(dirs["raw"], crop=64))


# --- the commands ---------------------------------------------------------------------

def test_help_of_both_commands():
    from alexnet_pipe_cli.main import cli
    for args in (["bench", "loader", "--help"], ["viz", "augment", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "Usage" in result.output


@pytest.mark.dali
def test_bench_loader_json(dirs):
    from alexnet_pipe_cli.main import cli
    result = CliRunner().invoke(cli, ["bench", "loader", "--data", str(dirs["jpeg"]), "--crop", "32",
                                      "--batch-size", "8", "--batches", "2", "--warmup", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    for key in ("images_per_sec", "decode_only_images_per_sec", "baseline_images_per_sec",
                "speedup_vs_baseline", "fraction_of_decode_only"):
        assert out[key] > 0


@pytest.mark.dali
def test_bench_loader_times_the_modern_augmentation_against_the_papers(dirs):
    from alexnet_pipe_cli.main import cli
    result = CliRunner().invoke(cli, ["bench", "loader", "--data", str(dirs["jpeg"]), "--crop", "32",
                                      "--batch-size", "8", "--batches", "2", "--warmup", "1", "--json",
                                      "--no-baseline", "--crops", "random-resized", "--color-jitter", "0.4",
                                      "--lighting", "0"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["settings"]["normalize"] == "channel"  # what random-resized crops need, unless told otherwise
    assert out["paper_images_per_sec"] > 0 and out["images_per_sec"] > 0
    assert out["ratio_to_paper"] == pytest.approx(out["images_per_sec"] / out["paper_images_per_sec"])
    plain = json.loads(CliRunner().invoke(cli, ["bench", "loader", "--data", str(dirs["jpeg"]), "--crop", "32",
                                                "--batch-size", "8", "--batches", "1", "--json",
                                                "--no-baseline"]).output)
    assert "paper_images_per_sec" not in plain  # the paper's own augmentation is timed once


def test_bench_loader_bad_input(tmp_path):
    from alexnet_pipe_cli.main import cli
    result = CliRunner().invoke(cli, ["bench", "loader", "--data", str(tmp_path), "--json", "--no-baseline"])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["bench", "loader", "--batches", "0"])
    assert result.exit_code == 2
    result = CliRunner().invoke(cli, ["bench", "loader", "--normalize-in", "numpy"])
    assert result.exit_code == 2 and "normalize-in" in result.output


def test_viz_augment_writes_png(dirs, tmp_path):
    from PIL import Image
    from alexnet_pipe_cli.main import cli
    out = tmp_path / "aug.png"
    result = CliRunner().invoke(cli, ["viz", "augment", "--data", str(dirs["jpeg"]), "-o", str(out),
                                      "--n", "10", "--crop", "32", "--lighting", "0.5"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (4 * 34 + 2, 3 * 34 + 2)  # 4 columns, 3 rows, 2 px gaps
    result = CliRunner().invoke(cli, ["viz", "augment", "--data", str(tmp_path / "none"), "-o", str(out)])
    assert result.exit_code == 1 and "prepare" in result.output


def test_viz_shows_unnormalised_pixels(dirs, pixels):
    from alexnet_pipe.report.augment_grid import seen_pixels
    loader = make_loader(settings(dirs["raw"], lighting=0))
    images, _, p = next(iter(loader.epoch(0)))
    views = seen_pixels(images, p, loader)
    x, y, key = p["crop_x"][0], p["crop_y"][0], p["key"][0]
    want = pixels["raw", "train"][key][y:y + CROP, x:x + CROP]
    np.testing.assert_array_equal(views[0], want[:, ::-1] if p["flip"][0] else want)
