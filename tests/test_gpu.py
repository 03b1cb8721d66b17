"""The CUDA paths of the model and the trainer (bf16 autocast, channels_last). Each GPU test has a CPU twin
running the same function, so CI checks the code path even where no GPU is present."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from alexnet_pipe.model.alexnet import build_model
from alexnet_pipe.train.config import resolve_settings
from alexnet_pipe.train.runlog import read_metrics
from alexnet_pipe.train.entry import run_training


def short_run(device: str, run_dir, steps: int = 4) -> dict:
    s = resolve_settings("paper", loader="synthetic", device=device, nproc=1, width=0.25, crop=112,
                         batch_size=32, max_steps=steps, eval_every=0, schedule="step", log_every=1,
                         run=str(run_dir))
    return run_training(s)


def check_short_run(out: dict, run_dir, steps: int = 4) -> None:
    assert out["steps"] == steps and math.isfinite(out["loss"])
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == list(range(1, steps + 1))
    assert (run_dir / "settings.json").is_file() and list(run_dir.glob("ckpt-*.pt"))


def test_short_run_on_cpu(tmp_path):
    check_short_run(short_run("cpu", tmp_path / "r"), tmp_path / "r")


@pytest.mark.gpu
def test_short_run_on_cuda_bf16_channels_last(tmp_path):
    check_short_run(short_run("cuda", tmp_path / "r"), tmp_path / "r")


@pytest.mark.gpu
def test_model_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = build_model("alexnet", 10, 0.25, dropout=0.0).eval()
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        ref = model(x)
        gpu = model.cuda().to(memory_format=torch.channels_last)
        xc = x.cuda().to(memory_format=torch.channels_last)
        fp32 = gpu(xc).float().cpu()
        with torch.autocast("cuda", torch.bfloat16):
            bf16 = gpu(xc).float().cpu()
    scale = ref.abs().max()
    assert (fp32 - ref).abs().max() <= 1e-2 * scale  # TF32 convolutions
    assert (bf16 - ref).abs().max() <= 5e-2 * scale


@pytest.mark.gpu
def test_training_on_cuda_resumes_on_cpu(tmp_path):
    """A CUDA checkpoint (weights, momentum, CUDA RNG) loads where no GPU is used: map_location."""
    short_run("cuda", tmp_path / "r", steps=2)
    s = resolve_settings("paper", loader="synthetic", device="cpu", nproc=1, width=0.25, crop=112, batch_size=32,
                         max_steps=3, eval_every=0, schedule="step", log_every=1, run=str(tmp_path / "r"),
                         resume="latest")
    check_short_run(run_training(s), tmp_path / "r", steps=3)


# --- the DALI GPU graph and its hand-over to torch ------------------------------------

def _gpu_graph(ten_crop: bool, encoded: bool, normalize_in: str):
    """The DALI views on device "cuda" (the production loader's, or with normalize_in "dali" the benchmark's float
    variant), defined but not built (building needs CUDA): its operators."""
    from nvidia.dali import fn, pipeline_def, types
    from alexnet_pipe.loaders import augment
    from alexnet_pipe.loaders.dali import host_constant, ten_views, train_view
    from alexnet_pipe.report.dali_variants import dali_normalized
    norm = augment.Normalizer("mean-image", mean_image=np.zeros((16, 16, 3), np.float32))
    common = dict(encoded=encoded, device="cuda", crop=8, flip_in_graph=normalize_in == "torch")

    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def graph():
        data, anchor, flip, cmn = fn.external_source(source=lambda: None, num_outputs=4, batch=True,
                                                     dtype=[types.UINT8, types.INT32, types.INT32, types.FLOAT])
        if ten_crop:
            return ten_views(data, size=16, **common)
        views = train_view(data, anchor, host_constant([8, 8]), flip, resize=False, **common)
        if normalize_in == "torch":
            return views
        return dali_normalized(views, anchor, flip, cmn, norm=norm, device="cuda", crop=8, layout="CHW",
                               dtype=types.FLOAT)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused external-source outputs
        pipe = graph()
        pipe._build_graph()  # DALI's Python-side graph definition: no backend, no CUDA
    return pipe


# the benchmark's DALI float variant (report/dali_variants.py) times training views only: no ten-crop
@pytest.mark.parametrize("ten_crop, normalize_in", [(False, "torch"), (True, "torch"), (False, "dali")])
@pytest.mark.parametrize("encoded", [True, False])
@pytest.mark.dali
def test_gpu_graph_places_every_input_where_dali_wants_it(ten_crop, encoded, normalize_in):
    """Runs without a GPU: mixed decoders read host bytes; slice anchors/shapes and argument inputs stay on
    the host (a GPU-side anchor or shape costs a device-to-host copy and a sync per run, fn.slice docs)."""
    pipe = _gpu_graph(ten_crop, encoded, normalize_in)
    kinds = set()
    for op in pipe._ops:
        name, device, spec = getattr(op._op, "schema_name", type(op._op).__name__), op._op.device, op.spec
        kinds.add((name, device))
        where = [spec.InputDevice(i) for i in range(spec.NumInput())]
        regular = spec.NumRegularInput()
        assert all(d == "cpu" for d in where[regular:]), (name, where)  # argument inputs
        if device == "mixed":
            assert name.startswith("decoders__") and all(d == "cpu" for d in where), (name, where)
        if name in ("Slice", "decoders__ImageSlice"):
            assert where[1:regular] == ["cpu"] * (regular - 1), (name, where)
    assert ("decoders__ImageSlice" if encoded and not ten_crop else "decoders__Image", "mixed") in kinds or not encoded
    assert pipe._graph_outputs[0].device == "gpu"


@pytest.mark.dali
def test_gpu_decoding_pass_without_cuda_is_one_sentence(tmp_path, monkeypatch):
    import alexnet_pipe.shards.decode as decode
    from alexnet_pipe.core.errors import UserError
    from helpers.shardgen import make_data_dir, random_images
    from alexnet_pipe.shards import shard_dirs
    monkeypatch.setattr(decode, "cuda_devices", lambda: 0)  # the machine without CUDA, wherever this runs
    make_data_dir(tmp_path, {"train": (random_images(2, 16, 0), np.array([0, 1]))}, 2, 1, "jpeg")
    with pytest.raises(UserError, match="needs a CUDA device"):
        list(decode.iter_decoded(shard_dirs(tmp_path, "train"), device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["UINT8", "FLOAT16", "FLOAT"])
def test_dali_gpu_batch_to_torch_is_an_exact_copy(dtype):
    from nvidia.dali import fn, pipeline_def, types
    from alexnet_pipe.loaders.dali import to_torch
    host = np.random.default_rng(0).integers(0, 255, (3, 5, 7, 3)).astype(np.uint8)

    @pipeline_def(batch_size=3, num_threads=1, device_id=0)
    def graph():
        data = fn.external_source(source=lambda: host, batch=True, dtype=types.UINT8)  # called per batch
        return fn.cast(data.gpu(), dtype=getattr(types, dtype))

    pipe = graph()
    pipe.build()
    (out,) = pipe.run()
    got = to_torch(out, 0, copy=False)
    assert got.device == torch.device("cuda", 0) and tuple(got.shape) == host.shape
    assert torch.equal(got.cpu().double(), torch.from_numpy(host).double())


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["ten-crop", "train-dali-normalize", "caffe-reader"])
def test_dali_gpu_graph_matches_cpu_on_raw_records(tmp_path, case):
    """Raw records: no decoder difference, so GPU and CPU builds agree to float rounding."""
    from alexnet_pipe.loaders import LoaderSettings
    from alexnet_pipe.loaders.dali import DaliLoader
    from alexnet_pipe.report.dali_variants import BenchDaliLoader, CaffeReaderLoader
    from helpers.loaders import CROP, build_data
    data = build_data(tmp_path / "raw", "raw")
    kw = dict(batch_size=8, crop=CROP, with_params=False)
    if case == "ten-crop":
        kw.update(split="val", train=False, views="ten-crop")

    def first(device):
        s = LoaderSettings(data, device=device, **kw)
        if case == "train-dali-normalize":
            return next(iter(BenchDaliLoader(s, normalize_in="dali").epoch(0)))
        return next(iter((CaffeReaderLoader(s) if case == "caffe-reader" else DaliLoader(s)).epoch(0)))

    (cpu_x, cpu_y), (gpu_x, gpu_y) = first("cpu"), first("cuda")
    assert gpu_x.is_cuda and gpu_y.is_cuda and gpu_x.shape == cpu_x.shape
    torch.testing.assert_close(gpu_x.cpu(), cpu_x, atol=1e-3, rtol=0)
    assert torch.equal(gpu_y.cpu(), cpu_y)
