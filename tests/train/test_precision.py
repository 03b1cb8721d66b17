"""One precision rule (train/precision.py): the setting reaches the training step and every evaluation, each
path computes what torch's own autocast computes, the run records it, and a resume cannot change it silently."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.model.alexnet import build_model
from alexnet_pipe.train.checkpoint import latest_checkpoint, load_checkpoint
from alexnet_pipe.train.config import settings_from_dict
from alexnet_pipe.train.entry import run_training
from alexnet_pipe.train.evaluation import error_rates
from alexnet_pipe.train.loop import train_step
from alexnet_pipe.train.precision import autocast, grad_scaler, resolved
from alexnet_pipe.train.runlog import read_metrics
from alexnet_pipe_cli.main import cli
from helpers.training import assert_same_weights, tiny, weights

CPU = torch.device("cpu")
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


def test_auto_is_bf16_on_cuda_and_fp32_on_the_cpu():
    assert resolved("auto", "cuda") == "bf16" and resolved("auto", "cpu") == "fp32"
    assert [resolved(p, "cuda") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert grad_scaler("fp16", CPU) is not None and grad_scaler("bf16", CPU) is None and grad_scaler("fp32", CPU) is None


def test_each_precision_gives_torchs_own_logits_and_they_differ():
    torch.manual_seed(0)
    model = build_model("alexnet", 10, 0.125, dropout=0.0).eval()
    x = torch.randn(4, 3, 64, 64) * 50
    with torch.no_grad():
        plain = model(x)
        with autocast("fp32", CPU):
            fp32 = model(x)
        with torch.autocast("cpu", torch.bfloat16), autocast("fp32", CPU):  # fp32 also inside an outer autocast
            inner = model(x)
        assert torch.equal(fp32, plain) and torch.equal(inner, plain) and fp32.dtype == torch.float32
        for name, dtype in LOW.items():
            with autocast(name, CPU):
                got = model(x)
            with torch.autocast("cpu", dtype):
                want = model(x)
            assert got.dtype == dtype and torch.equal(got, want)
            assert not torch.equal(got.float(), plain)
            assert (got.float() - plain).abs().max() <= 0.05 * plain.abs().max()  # the same net, rounded


def test_fp16_step_is_a_scaled_backward_then_the_plain_step():
    """train_step in fp16 = loss * scale backward, gradients / scale, then SGD's step (torch's pieces by hand)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    ref.load_state_dict(net.state_dict())
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 5, (8,))
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (net, ref))
    scaler = grad_scaler("fp16", CPU)
    loss = train_step(net, opt, x, y, "fp16", 0.0, scaler)
    with torch.autocast("cpu", torch.float16):
        want = F.cross_entropy(ref(x), y)
    (want * 65536.0).backward()
    for p in ref.parameters():
        p.grad /= 65536.0
    ref_opt.step()
    assert torch.equal(loss, want.detach())
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert scaler.get_scale() == 65536.0  # no overflow: the scale stays until its growth interval


class Probe(torch.nn.Module):
    """Fixed logits, and the autocast state each forward pass ran under."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.seen = logits, []

    def forward(self, x):
        self.seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return self.logits[x[:, 0, 0, 0].long()]


class Batches:
    def __init__(self, batches):
        self.batches = batches

    def epoch(self, _epoch):
        return iter(self.batches)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_one_evaluation_loop_runs_every_model_in_the_precision(precision):
    """Two models, ten views per image: softmax averaged over both, top-1/top-5 as numpy counts them."""
    rng = np.random.default_rng(2)
    n, classes = 12, 7
    logits = [torch.from_numpy(rng.normal(size=(n * 10, classes)).astype(np.float32)) for _ in range(2)]
    models = [Probe(lg) for lg in logits]
    ids = torch.arange(n * 10, dtype=torch.float32).view(n, 10, 1, 1, 1).expand(n, 10, 3, 1, 1)
    labels = torch.from_numpy(rng.integers(0, classes, n))
    got = error_rates(models, Batches([(ids[:5], labels[:5]), (ids[5:], labels[5:])]), CPU, precision)
    probs = np.mean([np.exp(lg.numpy()) / np.exp(lg.numpy()).sum(1, keepdims=True) for lg in logits], axis=0)
    probs = probs.reshape(n, 10, classes).mean(1)
    rank = (probs > probs[np.arange(n), labels.numpy()][:, None]).sum(1)
    assert got["images"] == n
    assert got["top1_error"] == pytest.approx(1 - (rank < 1).mean()) and got["top5_error"] == pytest.approx(
        1 - (rank < 5).mean())
    assert {d for m in models for d in m.seen} == {LOW.get(precision, torch.float32)}


def test_the_run_records_its_precision_and_a_resume_keeps_it(tmp_path):
    run_training(tiny(tmp_path / "auto", max_steps=1))
    assert load_checkpoint(latest_checkpoint(tmp_path / "auto"))["settings"]["precision"] == "fp32"  # auto on CPU
    first = tiny(tmp_path / "b", max_steps=2, precision="bf16")
    run_training(first)
    assert json.loads((tmp_path / "b" / "settings.json").read_text())["precision"] == "bf16"
    assert load_checkpoint(latest_checkpoint(tmp_path / "b"))["settings"]["precision"] == "bf16"
    with pytest.raises(UserError, match=r"--precision bf16 \(now fp32\)"):
        run_training(dataclasses.replace(first, max_steps=3, resume="latest", precision="fp32"))
    run_training(dataclasses.replace(first, max_steps=3, resume="latest", precision="auto"))  # the run's own
    assert load_checkpoint(latest_checkpoint(tmp_path / "b"))["settings"]["precision"] == "bf16"
    assert [r["step"] for r in read_metrics(tmp_path / "b") if "loss" in r] == [1, 2, 3]
    events = [r["changed"] for r in read_metrics(tmp_path / "b") if "event" in r]
    assert events == [{"max_steps": [2, 3]}]  # the precision did not change


def test_settings_saved_before_the_setting_computed_as_auto_did():
    assert settings_from_dict({"device": "cuda"}).precision == "bf16"
    assert settings_from_dict({"device": "cpu"}).precision == "fp32"
    assert settings_from_dict({"device": "cuda", "precision": "fp32"}).precision == "fp32"


def test_fp16_resume_replays_the_loss_scale(tmp_path):
    """3 steps, resume to 6 == 6 steps straight, in fp16: the GradScaler's state rides in the checkpoint."""
    run_training(tiny(tmp_path / "a", max_steps=6, precision="fp16"))
    first = tiny(tmp_path / "b", max_steps=3, precision="fp16")
    run_training(first)
    assert "scaler" in load_checkpoint(latest_checkpoint(tmp_path / "b"))
    run_training(dataclasses.replace(first, max_steps=6, resume="latest"))
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"), atol=0)


def test_evaluate_computes_in_the_checkpoints_precision(tmp_path, data_dir):  # noqa: F811
    """The trainer's last evaluation and `evaluate`'s default are the same numbers; --precision overrides."""
    run = tmp_path / "r"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", str(data_dir), "--run", str(run), "--cpu", "--loader", "torch",
                                 "--width", "0.0625", "--crop", "64", "--batch-size", "8", "--max-steps", "2",
                                 "--num-threads", "0", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    trained = [r for r in read_metrics(run) if "top1_error" in r][-1]
    last = latest_checkpoint(run)
    common = ["--data", str(data_dir), "--loader", "torch", "--batch-size", "8", "--json"]  # the trainer's batches
    out = runner.invoke(cli, ["evaluate", str(last), *common])
    report = json.loads(out.output.strip().splitlines()[-1])
    assert report["precision"] == "bf16"
    assert (report["top1_error"], report["top5_error"]) == (trained["top1_error"], trained["top5_error"])
    out = runner.invoke(cli, ["evaluate", str(last), *common, "--precision", "fp32"])
    assert json.loads(out.output.strip().splitlines()[-1])["precision"] == "fp32"
    state = load_checkpoint(last)
    state["settings"]["precision"] = "fp32"
    torch.save(state, tmp_path / "fp32.pt")
    out = runner.invoke(cli, ["evaluate", str(last), str(tmp_path / "fp32.pt"), *common])
    assert out.exit_code == 1 and "different precisions" in out.output and "--precision" in out.output
    out = runner.invoke(cli, ["evaluate", str(last), str(tmp_path / "fp32.pt"), *common, "--precision", "bf16"])
    assert out.exit_code == 0, out.output


def test_a_run_started_on_cuda_computes_and_records_bf16_for_auto(tmp_path, monkeypatch):
    """start() resolves "auto" by the device the process got, as train() hands it over: bf16 on CUDA, in the run's
    settings and in settings.json (finalize resolves it first on the CLI's path; a direct train() relies on start).
    No CUDA here: the process is told it has cuda:0, and stand-ins for build and make_loaders keep the weights and
    the synthetic batches on the CPU (the two parts of start that put tensors on the device)."""
    import alexnet_pipe.train.loop as trainer
    build, make_loaders = trainer.build, trainer.make_loaders
    monkeypatch.setattr(trainer, "build", lambda s, classes, device: build(s, classes, CPU))
    monkeypatch.setattr(trainer, "make_loaders", lambda s, rank, world, device: make_loaders(s, rank, world, CPU))
    run = trainer.start(tiny(tmp_path / "r", precision="auto"), 0, 1, 0, torch.device("cuda", 0))
    assert run.s.precision == "bf16" and run.scaler is None
    assert json.loads((tmp_path / "r" / "settings.json").read_text())["precision"] == "bf16"
