"""The model against ALEXNET.md: parameter counts, shapes, init, and LRN against a numpy version of the formula."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from alexnet_pipe.model.alexnet import (CONV_DEFAULT, CONV_IMPLS, LRN_CONVENTIONS, LRN_DEFAULT, LocalResponseNorm,
                                        SplitConv2d, build_model, count_parameters, init_weights, layer_table,
                                        lrn_convention, scaled)
from helpers.lrn import lrn_reference


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


# --- issue 11: dropout where the paper put it, the LRN scale, the layer table --------------------------------

# The state-dict keys of both archs as the code at 4c95b3f (torchvision's dropout placement) wrote them:
# checkpoints from before the dropout move must load into today's model.
_KEYS_BEFORE = [f"{part}.{layer}.{kind}" for part, layers in
                (("features", ("conv1", "conv2", "conv3", "conv4", "conv5")), ("classifier", ("fc6", "fc7", "fc8")))
                for layer in layers for kind in ("weight", "bias")]


def test_alexnet_drops_the_outputs_of_fc6_and_fc7_after_their_relus():
    model = build_model("alexnet", 1000)
    assert [n for n, _ in model.classifier.named_children()] == [
        "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
    assert model.classifier.drop6.p == model.classifier.drop7.p == 0.5


def test_owt_keeps_torchvisions_dropout_placement():
    model = build_model("alexnet-owt", 1000)
    assert [n for n, _ in model.classifier.named_children()] == [
        "drop6", "fc6", "relu6", "drop7", "fc7", "relu7", "fc8"]


@pytest.mark.parametrize("arch", ["alexnet", "alexnet-owt"])
def test_state_dict_keys_unchanged_so_old_checkpoints_load(arch):
    assert list(build_model(arch, 10, width=0.125).state_dict()) == _KEYS_BEFORE


def test_old_checkpoint_evaluates_the_same():
    """The old layout (dropout on pool5 and fc6's output) rebuilt around the same Linear layers: equal in eval."""
    torch.manual_seed(0)
    old = build_model("alexnet", 7, width=0.125).eval()
    c = old.classifier
    old.classifier = nn.Sequential(OrderedDict([
        ("drop6", nn.Dropout(0.5)), ("fc6", c.fc6), ("relu6", nn.ReLU()), ("drop7", nn.Dropout(0.5)),
        ("fc7", c.fc7), ("relu7", nn.ReLU()), ("fc8", c.fc8)])).eval()
    new = build_model("alexnet", 7, width=0.125).eval()
    new.load_state_dict(old.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)


def test_dropout_masks_hit_fc7_outputs_in_training():
    """With fc8 the identity on fc7's units, a dropped fc7 unit reaches the logits as an exact zero."""
    torch.manual_seed(0)
    model = build_model("alexnet", 8, width=0.00195)  # fc width 8: fc8 can be the identity
    with torch.no_grad():
        model.classifier.fc8.weight.copy_(torch.eye(8))
        model.classifier.fc8.bias.zero_()
        model.classifier.fc7.bias.fill_(1.0)  # every fc7 output positive before dropout
        model.classifier.fc7.weight.zero_()
    out = model.train()(torch.randn(64, 3, 64, 64))
    assert set(out.unique().tolist()) == {0.0, 2.0}  # dropped, or 1 scaled by 1 / (1 - 0.5)


@pytest.mark.parametrize("name", LRN_CONVENTIONS)
def test_lrn_conventions_against_numpy(name):
    a = torch.randn(2, 11, 4, 3, dtype=torch.float64) * 40
    alpha = {"alpha-over-n": 1e-4 / 5, "alpha-as-printed": 1e-4}[name]
    np.testing.assert_allclose(LocalResponseNorm(convention=name)(a).numpy(), lrn_reference(a.numpy(), alpha=alpha),
                               rtol=1e-6)


def test_lrn_default_is_alpha_over_n_as_torch():
    assert LRN_DEFAULT == "alpha-over-n" and LRN_DEFAULT in LRN_CONVENTIONS
    a = torch.randn(2, 9, 5, 5) * 30
    torch_lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    torch.testing.assert_close(LocalResponseNorm()(a), torch_lrn(a))
    model = build_model("alexnet", 5, width=0.0625, lrn_span="whole")  # (the default normalises each half)
    torch.testing.assert_close(model.features.norm1(a), torch_lrn(a))


@pytest.mark.parametrize("old, new", [("paper", "alpha-as-printed"), ("caffe", "alpha-over-n")])
def test_old_lrn_names_from_saved_settings_map_to_the_same_formula(old, new):
    assert lrn_convention(old) == new and lrn_convention(new) == new
    a = torch.randn(2, 9, 3, 3) * 30
    torch.testing.assert_close(LocalResponseNorm(convention=old)(a), LocalResponseNorm(convention=new)(a))
    with pytest.raises(ValueError, match="alpha-over-n"):
        lrn_convention("torch")


def test_layer_table_at_the_papers_size():
    table = layer_table(build_model("alexnet", 1000), crop=224)
    shapes = {row["name"]: row["shape"] for row in table["layers"]}
    assert shapes["conv1"] == (96, 55, 55) and shapes["pool1"] == (96, 27, 27) and shapes["norm2"] == (256, 27, 27)
    assert shapes["conv5"] == (256, 13, 13) and shapes["pool5"] == (256, 6, 6)
    assert shapes["fc6"] == shapes["fc7"] == (4096,) and shapes["fc8"] == (1000,)
    params = {row["name"]: row["parameters"] for row in table["layers"] if row["parameters"]}
    # 11*11*3*96 + 96, 5*5*48*256 + 256, ...: the paper's table by hand
    assert params == {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936, "conv5": 442_624,
                      "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}
    assert table["parameters"] == sum(params.values()) == 60_965_224


def test_layer_table_leaves_the_model_as_it_was():
    model = build_model("alexnet", 5, width=0.0625).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = layer_table(model, crop=112)
    assert model.training and not model.features._forward_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert dict((r["name"], r["shape"]) for r in table["layers"])["pool5"] == (16, 2, 2)


# --- issue 13: cuDNN's grouped convolution or two dense convolutions on the halves ----------------------------

def test_conv_choices_exported():
    assert CONV_IMPLS == ("grouped", "split") and CONV_DEFAULT == "grouped"
    assert build_model("alexnet", 5, width=0.0625).features.conv2.groups == 2
    with pytest.raises(ValueError, match="grouped"):
        build_model("alexnet", 5, width=0.0625, conv="dense")


def test_split_convs_give_the_grouped_outputs_and_gradients():
    torch.manual_seed(0)
    grouped = build_model("alexnet", 6, width=0.125, dropout=0.0, conv="grouped").double()
    split = build_model("alexnet", 6, width=0.125, dropout=0.0, conv="split").double()
    assert list(split.state_dict()) == list(grouped.state_dict()) == _KEYS_BEFORE
    split.load_state_dict(grouped.state_dict())
    assert any(type(m) is not type(g) for m, g in zip(split.modules(), grouped.modules()))  # not the same code
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    outs = [m(x) for m in (grouped, split)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    for out in outs:
        out.square().sum().backward()
    for (name, g), (_, s) in zip(grouped.named_parameters(), split.named_parameters()):
        torch.testing.assert_close(s.grad, g.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_split_conv_is_not_a_dense_conv():
    """Each half sees only its own half of the input channels: a change in the second half leaves the first alone."""
    conv = build_model("alexnet", 5, width=0.125, conv="split").features.conv4
    x = torch.randn(1, conv.in_channels, 7, 7)
    y = x.clone()
    y[:, conv.in_channels // 2:] += 1.0
    half = conv.out_channels // 2
    a, b = conv(x), conv(y)
    torch.testing.assert_close(a[:, :half], b[:, :half])
    assert not torch.allclose(a[:, half:], b[:, half:])


# --- issue 20: Caffe's 227 is Caffe's geometry ---------------------------------------------------------------

def test_caffe_227_is_conv1_without_padding_and_gives_55x55():
    model = build_model("alexnet", 5, width=0.0625, crop=227).eval()
    shapes, out = _shapes(model, 227)
    assert shapes["conv1"][1:] == (55, 55) and shapes["pool1"][1:] == (27, 27) and shapes["pool5"][1:] == (6, 6)
    conv1 = model.features.conv1
    x = torch.randn(1, 3, 227, 227)
    torch.testing.assert_close(conv1(x), nn.functional.conv2d(x, conv1.weight, conv1.bias, stride=4))  # Caffe's
    paper = build_model("alexnet", 5, width=0.0625).eval()  # 224: padded by 2 for the same 55x55
    assert _shapes(paper, 224)[0]["conv1"][1:] == (55, 55)
    torch.testing.assert_close(paper.features.conv1(x[..., :224, :224]), nn.functional.conv2d(
        x[..., :224, :224], paper.features.conv1.weight, paper.features.conv1.bias, stride=4, padding=2))


def test_a_227_run_builds_and_reloads_caffes_geometry(tmp_path):
    from alexnet_pipe.train.checkpoint import load_model
    from alexnet_pipe.train.config import TrainSettings, model_for
    s = TrainSettings(crop=227, width=0.0625, num_classes=5)
    model = model_for(s, 5)
    assert model.features.conv1.padding == (0, 0)
    torch.save({"model": model.state_dict(), "settings": dataclasses.asdict(s), "num_classes": 5}, tmp_path / "c.pt")
    loaded, _ = load_model(tmp_path / "c.pt")
    assert loaded.features.conv1.padding == (0, 0)
    assert model_for(dataclasses.replace(s, crop=224), 5).features.conv1.padding == (2, 2)


# --- issue 20: what mutation testing found unguarded (docs/testing.md) ----------------------------------------

@pytest.mark.parametrize("bias, dilation", [(False, 1), (True, 2)])
def test_split_conv_is_the_grouped_conv_without_bias_and_dilated(bias, dilation):
    torch.manual_seed(0)
    grouped = nn.Conv2d(4, 6, 3, padding=2, dilation=dilation, groups=2, bias=bias)
    split = SplitConv2d(4, 6, 3, padding=2, dilation=dilation, groups=2, bias=bias)
    split.load_state_dict(grouped.state_dict())
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(split(x), grouped(x))


def test_layer_table_names_every_layer_and_defaults_to_the_papers_crop():
    model = build_model("alexnet", 5, width=0.0625)
    table = layer_table(model)
    assert [r["name"] for r in table["layers"]] == [
        "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3", "conv4", "relu4",
        "conv5", "relu5", "pool5", "avgpool", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
    assert table["layers"][0]["shape"] == (6, 55, 55)


def test_layer_table_runs_on_the_models_device():
    """A model on the meta device (shapes only): the zero image must be made where the weights are."""
    table = layer_table(build_model("alexnet", 5, width=0.0625).to("meta"), crop=112)
    assert dict((r["name"], r["shape"]) for r in table["layers"])["pool5"] == (16, 2, 2)


@pytest.mark.parametrize("make, says", [
    (lambda: build_model("vgg", 5), "arch must be one of"), (lambda: build_model(conv="dense"), "conv must be one of"),
    (lambda: build_model(lrn_span="third"), "LRN span must be one of"),
    (lambda: LocalResponseNorm(impl="triton"), "LRN impl must be one of"),
    (lambda: init_weights(nn.Linear(2, 2), "he"), "init must be one of .*'he'")])
def test_a_bad_choice_names_the_option_it_is_for(make, says):
    with pytest.raises(ValueError, match=says):
        make()


def test_the_defaults_are_the_papers_network():
    model = build_model()
    assert count_parameters(model) == 60_965_224 and model.features.conv1.padding == (2, 2)
    assert model.features.norm1.groups == 2
    small = nn.Sequential(OrderedDict(conv2=nn.Conv2d(3, 4, 3), conv3=nn.Conv2d(4, 4, 3)))
    init_weights(small)  # paper init: biases 1 in conv2, 0 in conv3
    assert torch.all(small.conv2.bias == 1.0) and torch.all(small.conv3.bias == 0.0)
    assert abs(small.conv2.weight.std().item() - 0.01) < 0.005
    assert scaled(95, 1.0) == 95 and scaled(95, 1.0, 2) == 96


def test_owt_channels_are_not_rounded_to_even_and_only_grouped_layers_split():
    assert build_model("alexnet-owt", 5, width=0.1).features.conv2.out_channels == scaled(192, 0.1) == 19
    split = build_model("alexnet", 5, width=0.0625, conv="split").features
    assert [type(getattr(split, c)) for c in ("conv1", "conv2", "conv3", "conv4", "conv5")] == \
        [nn.Conv2d, SplitConv2d, nn.Conv2d, SplitConv2d, SplitConv2d]
    grouped = build_model("alexnet", 5, width=0.0625).features
    assert all(type(getattr(grouped, c)) is nn.Conv2d for c in ("conv1", "conv2", "conv3", "conv4", "conv5"))


def test_init_weights_finds_the_paper_s_layers_inside_a_wrapper():
    """init_weights goes by a layer's own name (the last part of its dotted path): a network wrapped one level
    deeper (as DDP's `module.` does) gets the paper's biases in the same layers."""
    wrapped = nn.Sequential(OrderedDict(module=build_model("alexnet", 4, width=0.0625)))
    init_weights(wrapped, bias_init=0.5)
    biases = {name.split(".")[-2]: p for name, p in wrapped.named_parameters() if name.endswith("bias")}
    assert {n for n, b in biases.items() if torch.all(b == 0.5)} == {"conv2", "conv4", "conv5", "fc6", "fc7"}
    assert {n for n, b in biases.items() if torch.all(b == 0)} == {"conv1", "conv3", "fc8"}


def test_the_memory_check_weighs_four_bytes_a_weight_and_says_so(monkeypatch):
    """build_model compares the float32 weights with the memory available before making them: the paper's
    60,965,224 weights (docs/paper.md) need exactly 4 bytes each; a byte less is one sentence naming them."""
    import alexnet_pipe.core.memory as memory
    from alexnet_pipe.core.errors import UserError
    paper = 60_965_224
    monkeypatch.setattr(memory, "available_bytes", lambda: 4 * paper - 1)
    with pytest.raises(UserError) as refused:
        build_model()
    said = str(refused.value)
    assert said.startswith("an alexnet of width 1 with 60,965,224 weights needs 0.227 GiB of memory"), said
    assert said.endswith(": choose a smaller width"), said
    monkeypatch.setattr(memory, "available_bytes", lambda: 4 * paper)
    assert count_parameters(build_model()) == paper
