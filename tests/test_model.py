"""The model against ALEXNET.md: parameter counts, shapes, init, and LRN against a numpy version of the formula."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from alexnet_pipe.model import LocalResponseNorm, build_model, count_parameters, scaled


def lrn_reference(a: np.ndarray, n=5, k=2.0, alpha=1e-4, beta=0.75) -> np.ndarray:
    """The paper's b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta, channel axis 1."""
    out = np.empty_like(a, dtype=np.float64)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        total = (a[:, lo:hi + 1].astype(np.float64) ** 2).sum(axis=1)
        out[:, i] = a[:, i] / (k + alpha * total) ** beta
    return out


@pytest.mark.parametrize("arch, count", [("alexnet", 60_965_224), ("alexnet-owt", 61_100_840)])
def test_parameter_count(arch, count):
    assert count_parameters(build_model(arch, 1000)) == count


def test_grouped_layers_as_in_the_paper():
    model = build_model("alexnet", 1000)
    f = model.features
    assert tuple(f.conv1.weight.shape) == (96, 3, 11, 11)
    assert tuple(f.conv2.weight.shape) == (256, 48, 5, 5)    # 5x5x48: two groups
    assert tuple(f.conv3.weight.shape) == (384, 256, 3, 3)   # all of layer 2
    assert tuple(f.conv4.weight.shape) == (384, 192, 3, 3)
    assert tuple(f.conv5.weight.shape) == (256, 192, 3, 3)
    assert [name for name, _ in f.named_children()][:4] == ["conv1", "relu1", "norm1", "pool1"]  # LRN, then pool


def _shapes(model, size):
    shapes = {}
    for name, layer in model.features.named_children():
        layer.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    out = model(torch.randn(2, 3, size, size))
    return shapes, tuple(out.shape)


def test_shapes_at_224_match_the_table():
    shapes, out = _shapes(build_model("alexnet", 1000).eval(), 224)
    assert shapes["conv1"] == (96, 55, 55)
    assert shapes["pool1"] == (96, 27, 27)
    assert shapes["conv2"] == (256, 27, 27)
    assert shapes["pool2"] == (256, 13, 13)
    assert shapes["conv3"] == (384, 13, 13) and shapes["conv4"] == (384, 13, 13)
    assert shapes["pool5"] == (256, 6, 6)
    assert out == (2, 1000)


@pytest.mark.parametrize("size, pool5", [(112, 2), (64, 1)])
def test_small_crops_run_through_the_adaptive_pool(size, pool5):
    model = build_model("alexnet", 7, width=0.125).eval()
    shapes, out = _shapes(model, size)
    assert shapes["pool5"][1:] == (pool5, pool5)
    assert out == (2, 7)


def test_width_scales_channels_and_keeps_groups_even():
    model = build_model("alexnet", 10, width=0.1)
    f = model.features
    assert f.conv1.out_channels == scaled(96, 0.1, 2) == 10
    assert all(getattr(f, c).out_channels % 2 == 0 for c in ("conv1", "conv2", "conv3", "conv4", "conv5"))
    assert model.classifier.fc6.out_features == 410
    assert count_parameters(model) < 2_000_000


def test_paper_init_statistics():
    model = build_model("alexnet", 1000)
    w = model.classifier.fc6.weight.detach()
    assert abs(w.mean().item()) < 1e-4 and abs(w.std().item() - 0.01) < 1e-4
    assert abs(model.features.conv1.weight.std().item() - 0.01) < 5e-4
    for name, module in list(model.features.named_children()) + list(model.classifier.named_children()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            want = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert torch.all(module.bias == want), name


def test_caffe_bias_and_kaiming_init():
    model = build_model("alexnet", 10, width=0.25, bias_init=0.1, init="kaiming")
    assert torch.all(model.features.conv2.bias == 0.1) and torch.all(model.features.conv1.bias == 0)
    conv3 = model.features.conv3.weight
    fan_in = conv3.shape[1] * 9
    assert abs(conv3.std().item() - (2 / fan_in) ** 0.5) < 0.1 * (2 / fan_in) ** 0.5
    assert abs(model.classifier.fc8.weight.std().item() - 0.01) < 1e-3


@pytest.mark.parametrize("convention", ["paper", "caffe"])
def test_lrn_against_numpy(convention):
    a = torch.randn(2, 11, 4, 3, dtype=torch.float64) * 40  # large enough that the denominator matters
    got = LocalResponseNorm(convention=convention)(a).numpy()
    alpha = 1e-4 if convention == "paper" else 1e-4 / 5
    want = lrn_reference(a.numpy(), alpha=alpha)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(want, a.numpy() / 2 ** 0.75, rtol=1e-3)  # the sum does matter here


def test_lrn_caffe_convention_is_torch_local_response_norm():
    a = torch.randn(2, 9, 5, 5) * 30
    torch_lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    torch.testing.assert_close(LocalResponseNorm(convention="caffe")(a), torch_lrn(a))


def test_owt_has_no_lrn_and_no_groups():
    model = build_model("alexnet-owt", 1000)
    assert not any(isinstance(m, LocalResponseNorm) for m in model.modules())
    assert all(m.groups == 1 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_fc7_features_feed_fc8():
    model = build_model("alexnet", 6, width=0.0625).eval()
    x = torch.randn(3, 3, 64, 64)
    h = model.fc7(x)
    assert h.shape == (3, model.classifier.fc7.out_features) and torch.all(h >= 0)
    torch.testing.assert_close(model.classifier.fc8(h), model(x))


def test_dropout_option_and_bad_arch():
    assert build_model("alexnet", 5, width=0.0625, dropout=0.0).classifier.drop6.p == 0.0
    with pytest.raises(ValueError, match="arch"):
        build_model("vgg", 5)
