"""AlexNet as in the NIPS 2012 paper (grouped two-GPU layout), and torchvision's one-weird-trick variant.

Input is 224x224: conv1 uses padding 2 so that 224 gives 55x55 as in the paper's table. A 227 crop is Caffe's
geometry, conv1 without padding: (224 + 2*2 - 11) // 4 + 1 = 55 = (227 - 11) // 4 + 1 (with padding 2, 227 would
give 56). An adaptive average pool to 6x6 sits before fc6: at 224 it is the identity, and smaller crops (down to
63, e.g. 112 from 128-pixel shards) run through the same layers.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F

from alexnet_pipe.model.choices import (ARCHS, CAFFE_CROP, CONV_IMPLS, INITS, LRN_CONVENTIONS,  # noqa: F401 (API)
                                        LRN_IMPLS, LRN_SPANS, MIN_CROP, lrn_convention)
from alexnet_pipe.core.memory import check_fits
from alexnet_pipe.model.lrn import lrn, lrn_reference

LRN_DEFAULT = LRN_CONVENTIONS[0]
LRN_IMPL_DEFAULT = LRN_IMPLS[0]
LRN_SPAN_DEFAULT = LRN_SPANS[0]
CONV_DEFAULT = CONV_IMPLS[0]

# (name, out channels, kernel, stride, padding, groups) per conv layer; pools/LRN placed by build_model.
_CONVS = {
    "alexnet": [("conv1", 96, 11, 4, 2, 1), ("conv2", 256, 5, 1, 2, 2), ("conv3", 384, 3, 1, 1, 1),
                ("conv4", 384, 3, 1, 1, 2), ("conv5", 256, 3, 1, 1, 2)],
    "alexnet-owt": [("conv1", 64, 11, 4, 2, 1), ("conv2", 192, 5, 1, 2, 1), ("conv3", 384, 3, 1, 1, 1),
                    ("conv4", 256, 3, 1, 1, 1), ("conv5", 256, 3, 1, 1, 1)],
}
# The paper's layers with bias 1 ("conv2, conv4, conv5 and the fully-connected hidden layers").
_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")


def _choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{kind} must be one of {choices}, not {value!r}")
    return value


class LocalResponseNorm(nn.Module):
    """Across-channel LRN: b_i = a_i / (k + alpha' * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta, window clipped at the edges.

    convention "alpha-over-n": alpha' = alpha / n (cuda-convnet2, Caffe, torch.nn.LocalResponseNorm);
    "alpha-as-printed": alpha' = alpha. `groups`: the maps split into that many equal groups, each normalised on its
    own (the window clipped at its group's edges too): 2 is the paper's per-GPU LRN. impl: "fused" (analytic
    backward, alexnet_pipe.model.lrn), "compiled" (the same, torch.compile'd) or "reference" (plain autograd);
    equal within float rounding.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 convention: str = LRN_DEFAULT, impl: str = LRN_IMPL_DEFAULT, groups: int = 1):
        super().__init__()
        self.convention = lrn_convention(convention)
        self.impl = _choice("LRN impl", impl, LRN_IMPLS)
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    @property
    def window_alpha(self) -> float:
        """alpha', the factor on the window's sum of squares."""
        return self.alpha if self.convention == "alpha-as-printed" else self.alpha / self.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.groups:
            raise ValueError(f"LRN in {self.groups} groups needs a multiple of {self.groups} maps, not {x.shape[1]}")
        constants = (self.size, self.window_alpha, self.beta, self.k)
        if self.impl == "reference":
            return lrn_reference(x, *constants, groups=self.groups)
        return lrn(x, *constants, compiled=self.impl == "compiled", groups=self.groups)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha:g} ({self.convention}), beta={self.beta}, k={self.k}, "
                f"groups={self.groups}, impl={self.impl}")


class SplitConv2d(nn.Conv2d):
    """A grouped convolution run as one dense convolution per group on its slice of the input channels: the same
    parameters (and state-dict keys) as nn.Conv2d(groups=g), another kernel choice on the GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x.chunk(self.groups, dim=1)
        weights = self.weight.chunk(self.groups, dim=0)
        biases = self.bias.chunk(self.groups) if self.bias is not None else [None] * self.groups
        return torch.cat([F.conv2d(part, w, b, self.stride, self.padding, self.dilation)
                          for part, w, b in zip(inputs, weights, biases)], dim=1)


def scaled(channels: int, width: float, multiple: int = 1) -> int:
    """channels * width, rounded to a positive multiple of `multiple` (grouped convs need even counts)."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


class AlexNet(nn.Module):
    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    def fc7(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (fc7 after ReLU, 4096-d at width 1): the paper's nearest-neighbour feature."""
        h = torch.flatten(self.avgpool(self.features(x)), 1)
        for name, layer in self.classifier.named_children():
            if name == "fc8":
                break
            h = layer(h)
        return h


def conv1_padding(crop: int) -> int:
    """2, so that 224 gives the paper's 55x55; none at Caffe's 227, its own geometry (also 55x55)."""
    return 0 if crop == CAFFE_CROP else 2


def _features(arch: str, width: float, lrn: str, lrn_impl: str, conv: str, lrn_span: str,
              crop: int) -> tuple[nn.Sequential, int]:
    layers: list[tuple[str, nn.Module]] = []
    channels = 3
    lrn_groups = 2 if lrn_span == "half" else 1  # the two GPUs' halves, as the grouped convolutions
    for name, out, kernel, stride, pad, groups in _CONVS[arch]:
        out = scaled(out, width, 2 if arch == "alexnet" else 1)
        pad = conv1_padding(crop) if name == "conv1" else pad
        conv_type = SplitConv2d if conv == "split" and groups > 1 else nn.Conv2d
        layers += [(name, conv_type(channels, out, kernel, stride, pad, groups=groups)),
                   (f"relu{name[-1]}", nn.ReLU(inplace=True))]
        if arch == "alexnet" and name in ("conv1", "conv2"):  # the paper: LRN before the pool
            layers.append((f"norm{name[-1]}", LocalResponseNorm(convention=lrn, impl=lrn_impl, groups=lrn_groups)))
        if name in ("conv1", "conv2", "conv5"):
            layers.append((f"pool{name[-1]}", nn.MaxPool2d(3, 2)))
        channels = out
    return nn.Sequential(OrderedDict(layers)), channels


def _classifier(arch: str, in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """alexnet: the paper's (and Caffe's) dropout on the outputs of fc6 and fc7, after their ReLUs;
    alexnet-owt: torchvision's, on the inputs of fc6 and fc7. Dropout has no weights: the keys are the same."""
    fc6, fc7 = [("fc6", nn.Linear(in_features, hidden)), ("relu6", nn.ReLU(inplace=True))], \
        [("fc7", nn.Linear(hidden, hidden)), ("relu7", nn.ReLU(inplace=True))]
    drop6, drop7 = ("drop6", nn.Dropout(dropout)), ("drop7", nn.Dropout(dropout))
    hidden_layers = [*fc6, drop6, *fc7, drop7] if arch == "alexnet" else [drop6, *fc6, drop7, *fc7]
    return nn.Sequential(OrderedDict([*hidden_layers, ("fc8", nn.Linear(hidden, num_classes))]))


def init_weights(model: nn.Module, init: str = "paper", bias_init: float = 1.0) -> None:
    """paper: weights N(0, 0.01); biases `bias_init` in conv2, conv4, conv5, fc6, fc7, 0 elsewhere.

    kaiming: He-normal weights (fan_in, ReLU gain) for conv/fc, fc8 N(0, 0.01); same bias rule.
    """
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if init == "paper" or short == "fc8":
            nn.init.normal_(module.weight, 0.0, 0.01)
        elif init == "kaiming":
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        else:
            raise ValueError(f"init must be one of {INITS}, not {init!r}")
        nn.init.constant_(module.bias, bias_init if short in _BIAS_ONE else 0.0)


def build_model(arch: str = "alexnet", num_classes: int = 1000, width: float = 1.0, lrn_alpha: str = LRN_DEFAULT,
                bias_init: float = 1.0, dropout: float = 0.5, init: str = "paper", lrn_impl: str = LRN_IMPL_DEFAULT,
                conv: str = CONV_DEFAULT, lrn_span: str = LRN_SPAN_DEFAULT, crop: int = 224) -> AlexNet:
    """The network of docs/paper.md's table (arch "alexnet", 60,965,224 parameters at 1000 classes, width 1)
    or torchvision's layout ("alexnet-owt", 61,100,840). `width` scales every channel count and fc width.
    `lrn_span` (alexnet): "half" normalises each GPU's half of the maps on its own, "whole" across all of them.
    `crop` sets conv1's padding only (conv1_padding): no parameter depends on it.
    `lrn_impl` and `conv` choose kernels only: the parameters and the function computed stay the same."""
    _choice("arch", arch, ARCHS)
    _choice("conv", conv, CONV_IMPLS)
    _choice("LRN span", lrn_span, LRN_SPANS)

    def network() -> AlexNet:
        features, channels = _features(arch, width, lrn_alpha, lrn_impl, conv, lrn_span, crop)
        return AlexNet(features, _classifier(arch, channels * 36, scaled(4096, width), num_classes, dropout))

    with torch.device("meta"):  # the shapes alone, no memory: a width far too large is a sentence, not "Killed"
        weights = count_parameters(network()) * 4
    check_fits(weights, f"an {arch} of width {width:g} with {weights // 4:,} weights", "choose a smaller width")
    model = network()
    init_weights(model, init, bias_init)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_table(model: AlexNet, crop: int = 224) -> dict:
    """{"layers": [{"name", "shape" (one sample's output), "parameters"}, ...], "parameters": total}, from one
    forward pass of a zero image through `model` (left as it was: mode, weights, hooks)."""
    rows, hooks = [], []
    named = [*model.features.named_children(), ("avgpool", model.avgpool), *model.classifier.named_children()]
    for name, layer in named:
        count = count_parameters(layer)
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, name=name, count=count: rows.append(
                {"name": name, "shape": tuple(o.shape[1:]), "parameters": count})))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, crop, crop, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return {"layers": rows, "parameters": count_parameters(model)}
