"""One device vocabulary (core.devices): cpu | cuda everywhere, DALI's names only inside the graphs, and the
older "gpu" still accepted where users type a device."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe.core.devices import DEVICES, dali_device, device_name
from alexnet_pipe.core.errors import UserError


def test_the_vocabulary_and_its_one_translation_to_dali():
    assert DEVICES == ("cpu", "cuda")
    assert [device_name(v) for v in ("cpu", "cuda", "gpu")] == ["cpu", "cuda", "cuda"]
    with pytest.raises(UserError, match="cpu, cuda"):
        device_name("tpu")
    assert [dali_device(d) for d in DEVICES] == ["cpu", "gpu"]
    assert [dali_device(d, decoder=True) for d in DEVICES] == ["cpu", "mixed"]
    with pytest.raises(ValueError):
        dali_device("gpu")  # DALI's word is not the library's: the translation takes only the vocabulary


def test_every_settings_class_speaks_the_vocabulary():
    from alexnet_pipe.loaders.base import LoaderSettings, validate
    from alexnet_pipe.train.config import opt_of
    assert opt_of("device").choices == DEVICES
    validate(LoaderSettings(Path("d"), device="cuda"))
    with pytest.raises(UserError, match="device must be one of cpu, cuda"):
        validate(LoaderSettings(Path("d"), device="gpu"))


@pytest.mark.dali
def test_dali_decoder_on_cuda_is_mixed():
    from alexnet_pipe.shards.decode import decoder_options
    assert decoder_options("cpu")["device"] == "cpu"
    assert decoder_options("cuda")["device"] == "mixed" and decoder_options("cuda")["jpeg_fancy_upsampling"]


@pytest.mark.parametrize("typed", ["gpu", "cuda"], ids=["typed-gpu", "typed-cuda"])
def test_stats_device_gpu_still_types_and_means_cuda(tmp_path, typed):
    from alexnet_pipe_cli.main import cli
    from helpers.shardgen import make_data_dir, random_images
    make_data_dir(tmp_path, {"train": (random_images(4, 16, 0), np.arange(4) % 2)}, 2, 1, "raw")
    result = CliRunner().invoke(cli, ["stats", "--data", str(tmp_path), "--sample", "2", "--device", typed])
    assert 'device           "cuda"' in result.output, result.output
    assert "Traceback" not in result.output


def test_bench_loader_device_gpu_still_types(tmp_path):
    from alexnet_pipe_cli.main import cli
    result = CliRunner().invoke(cli, ["bench", "loader", "--data", str(tmp_path), "--device", "gpu",
                                      "--no-baseline"])
    assert '"cuda"' in result.output and result.exit_code == 1 and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["bench", "loader", "--device", "tpu"])
    assert result.exit_code == 2 and "--device" in result.output
