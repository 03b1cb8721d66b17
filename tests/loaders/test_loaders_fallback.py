"""The torch fallback loader: same numpy references, same plan, same outputs as DALI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_pipe.loaders import LoaderSettings, make_loader
from alexnet_pipe.loaders.records import RecordIndex
from helpers.loaders import CROP, N_TRAIN, N_VAL, build_data, check_train, decoded, reference_ten


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchload")
    return {enc: build_data(root / enc, enc) for enc in ("raw", "jpeg")}


def settings(data, **kw):
    return LoaderSettings(Path(data), **{"batch_size": 8, "crop": CROP, "loader": "torch",
                                         "with_params": True, **kw})


@pytest.mark.parametrize("enc", ["raw", "jpeg"])
def test_torch_train_matches_numpy_reference(dirs, enc):
    check_train(make_loader(settings(dirs[enc])), decoded(dirs[enc], "train"), dirs[enc] / "stats")


@pytest.mark.parametrize("recipe", [{}, {"crops": "random-resized", "crop_scale": (0.08, 1.0), "color_jitter": 0.4,
                                     "lighting": 0.0, "normalize": "channel"}], ids=["paper", "modern"])
def test_views_from_a_records_rows_equal_those_from_the_whole_record(tmp_path, recipe):
    """The same pictures stored with a restart marker per MCU row (each view decoded in its window's rows alone)
    and without (each record decoded whole, as before): the same batches, bit for bit, over two epochs."""
    rows, whole = (build_data(tmp_path / name, "jpeg", size=128, restart_rows=name == "rows")
                   for name in ("rows", "whole"))
    out = {}
    for name, data in (("rows", rows), ("whole", whole)):
        loader = make_loader(settings(data, num_threads=0, **recipe))
        out[name] = [(images, params) for epoch in (0, 1) for images, _labels, params in loader.epoch(epoch)]
        loader.close()
    assert len(out["rows"]) == len(out["whole"]) > 0
    for (got, p), (want, _) in zip(out["rows"], out["whole"]):
        assert torch.equal(got, want)
    # the GPU path's workers cut the same uint8 windows from either (ViewDataset: CUDA itself is not needed)
    from alexnet_pipe.loaders.fallback import ViewDataset
    cutters = [ViewDataset(RecordIndex(d, "train"), CROP, ten_crop=False) for d in (rows, whole)]
    for spec in (spec for _, p in out["rows"] for spec in loader._specs(p)):
        (a, label_a), (b, label_b) = (cutter[spec] for cutter in cutters)
        assert np.array_equal(a, b) and label_a == label_b
    index = RecordIndex(rows, "train")  # views whose rows were decoded as a strip, not whole after a fallback
    strips = sum(len(index.rows(index.read(i), i, y, y + h)[0]) < 128
                 for _, p in out["rows"] for i, (_x, y, _w, h) in zip(p["index"].tolist(), p["window"].tolist()))
    assert strips > len(out["rows"])  # more than one a batch: the comparison is of the two paths


def test_torch_channel_norm_in_process(dirs):
    loader = make_loader(settings(dirs["raw"], normalize="channel", lighting_scale="fbresnet", num_threads=0))
    check_train(loader, decoded(dirs["raw"], "train"), dirs["raw"] / "stats", normalize="channel",
                scale="fbresnet")


def test_torch_ten_crop_matches_numpy(dirs):
    pixels = decoded(dirs["jpeg"], "val")
    loader = make_loader(settings(dirs["jpeg"], split="val", train=False, views="ten-crop"))
    seen = 0
    for images, _labels, p in loader.epoch(0):
        for i, key in enumerate(p["key"]):
            np.testing.assert_allclose(images[i].numpy(), reference_ten(pixels[key], dirs["jpeg"] / "stats"), atol=1e-3)
            seen += 1
    assert seen == N_VAL


@pytest.mark.parametrize("enc", ["raw", "jpeg"])
@pytest.mark.parametrize("views", ["center", "ten-crop"])
@pytest.mark.dali
def test_dali_and_torch_agree_exactly_on_eval(dirs, enc, views):
    out = {}
    for name in ("dali", "torch"):
        loader = make_loader(settings(dirs[enc], split="val", train=False, views=views, loader=name,
                                      with_params=False))
        batches = list(loader.epoch(0))
        out[name] = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    assert torch.equal(out["dali"][0], out["torch"][0]) and torch.equal(out["dali"][1], out["torch"][1])


@pytest.mark.dali
def test_dali_and_torch_agree_on_training_batches(dirs):
    a = list(make_loader(settings(dirs["jpeg"], loader="dali", seed=9)).epoch(2, start_step=1))
    b = list(make_loader(settings(dirs["jpeg"], seed=9)).epoch(2, start_step=1))
    assert len(a) == len(b)
    for (xa, ya, pa), (xb, yb, pb) in zip(a, b):
        assert torch.equal(ya, yb) and (pa["key"] == pb["key"]).all()
        torch.testing.assert_close(xa, xb, atol=1e-4, rtol=0)


def test_torch_two_ranks_and_epochs(dirs):
    loaders = [make_loader(settings(dirs["raw"], rank=r, world_size=2)) for r in (0, 1)]
    assert loaders[0].steps_per_epoch == loaders[1].steps_per_epoch == len(loaders[0])
    orders = []
    for epoch in (0, 1):
        keys = [k for ld in loaders for _x, _y, p in ld.epoch(epoch) for k in p["key"]]
        assert len(keys) == len(set(keys)) == N_TRAIN
        orders.append(keys)
    assert orders[0] != orders[1]


def test_torch_dtype_channels_last(dirs):
    x, y = next(iter(make_loader(settings(dirs["raw"], with_params=False, dtype="bfloat16",
                                          channels_last=True)).epoch(0)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and x.shape == (8, 3, CROP, CROP)


@pytest.mark.gpu
@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_gpu_build_matches_cpu(dirs, loader):
    cpu = next(iter(make_loader(settings(dirs["jpeg"], loader=loader, with_params=False)).epoch(0)))
    gpu = next(iter(make_loader(settings(dirs["jpeg"], loader=loader, device="cuda", with_params=False)).epoch(0)))
    assert gpu[0].is_cuda
    diff = (gpu[0].cpu() - cpu[0]).abs()
    if loader == "torch":  # decoded by OpenCV on the CPU either way; only the float pass moved
        assert diff.max() <= 1e-4
    else:  # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: close on average, a few levels at edges
        assert diff.mean() <= 0.5 and diff.max() <= 12


def test_workers_start_after_opencv_work_in_the_same_process(tmp_path):
    """The demo writes its sample tree with OpenCV in the process that later evaluates with the torch loader: the
    forked workers inherited OpenCV's thread pool without its threads and hung forever on their first OpenCV call.
    Run in a process of its own, with a time limit, so a regression fails instead of hanging the suite."""
    import subprocess
    import sys
    data = build_data(tmp_path / "d", "jpeg")
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from alexnet_pipe.loaders import LoaderSettings, make_loader\n"
            "from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree\n"
            "write_sample_tree(Path(sys.argv[2]), SampleSettings(classes=2, train_per_class=8, val_per_class=2))\n"
            "s = LoaderSettings(data=Path(sys.argv[1]), split='val', train=False, batch_size=4, crop=32,\n"
            "                   loader='torch', num_threads=2)\n"
            "print(sum(len(labels) for _, labels in make_loader(s).epoch(0)))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(data), str(tmp_path / "tree")], capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the torch loader's workers hung after OpenCV work in the parent process")
    assert done.returncode == 0 and done.stdout.split()[-1] == str(N_VAL), done.stderr[-2000:]
