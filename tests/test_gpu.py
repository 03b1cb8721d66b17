"""The CUDA paths of the model and the trainer (bf16 autocast, channels_last). Each GPU test has a CPU twin
running the same function, so CI checks the code path even where no GPU is present."""
from __future__ import annotations

import math

import pytest
import torch

from alexnet_pipe.model import build_model
from alexnet_pipe.train import read_metrics, resolve_settings, run_training


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
