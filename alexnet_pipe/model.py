"""AlexNet as in the NIPS 2012 paper (grouped two-GPU layout), and torchvision's one-weird-trick variant.

Input is 224x224: conv1 uses padding 2 so that 224 gives 55x55 as in the paper's table (Caffe feeds 227
with no padding for the same 55x55; (224 + 2*2 - 11) // 4 + 1 = 55 = (227 - 11) // 4 + 1). An adaptive
average pool to 6x6 sits before fc6: at 224 it is the identity, and smaller crops (down to 63, e.g. 112
from 128-pixel shards) run through the same layers.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F

from alexnet_pipe.config import ARCHS, INITS, LRN_ALPHAS as LRN_CONVENTIONS, MIN_CROP  # noqa: F401 (MIN_CROP: API)

# (name, out channels, kernel, stride, padding, groups) per conv layer; pools/LRN placed by build_model.
_CONVS = {
    "alexnet": [("conv1", 96, 11, 4, 2, 1), ("conv2", 256, 5, 1, 2, 2), ("conv3", 384, 3, 1, 1, 1),
                ("conv4", 384, 3, 1, 1, 2), ("conv5", 256, 3, 1, 1, 2)],
    "alexnet-owt": [("conv1", 64, 11, 4, 2, 1), ("conv2", 192, 5, 1, 2, 1), ("conv3", 384, 3, 1, 1, 1),
                    ("conv4", 256, 3, 1, 1, 1), ("conv5", 256, 3, 1, 1, 1)],
}
# The paper's layers with bias 1 ("conv2, conv4, conv5 and the fully-connected hidden layers").
_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")


class LocalResponseNorm(nn.Module):
    """Across-channel LRN: b_i = a_i / (k + alpha' * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta, window clipped at the edges.

    convention "paper": alpha' = alpha (the formula as printed); "caffe": alpha' = alpha / n, which is what
    cuda-convnet2, Caffe and torch.nn.LocalResponseNorm compute.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 convention: str = "paper"):
        super().__init__()
        if convention not in LRN_CONVENTIONS:
            raise ValueError(f"LRN convention must be one of {LRN_CONVENTIONS}, not {convention!r}")
        self.size, self.beta, self.k = size, beta, k
        self.alpha = alpha if convention == "paper" else alpha / size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squares = x.float().pow(2).unsqueeze(1)  # (N, 1, C, H, W): pool over C as a depth axis
        squares = F.pad(squares, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        window_sum = F.avg_pool3d(squares, (self.size, 1, 1), stride=1).squeeze(1) * self.size
        return (x.float() / (self.k + self.alpha * window_sum).pow(self.beta)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha:g}, beta={self.beta}, k={self.k}"


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


def _features(arch: str, width: float, lrn: str) -> tuple[nn.Sequential, int]:
    layers: list[tuple[str, nn.Module]] = []
    channels = 3
    for name, out, kernel, stride, pad, groups in _CONVS[arch]:
        out = scaled(out, width, 2 if arch == "alexnet" else 1)
        layers += [(name, nn.Conv2d(channels, out, kernel, stride, pad, groups=groups)),
                   (f"relu{name[-1]}", nn.ReLU(inplace=True))]
        if arch == "alexnet" and name in ("conv1", "conv2"):
            layers.append((f"norm{name[-1]}", LocalResponseNorm(convention=lrn)))  # paper: LRN before pool
        if name in ("conv1", "conv2", "conv5"):
            layers.append((f"pool{name[-1]}", nn.MaxPool2d(3, 2)))
        channels = out
    return nn.Sequential(OrderedDict(layers)), channels


def _classifier(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("drop6", nn.Dropout(dropout)), ("fc6", nn.Linear(in_features, hidden)), ("relu6", nn.ReLU(inplace=True)),
        ("drop7", nn.Dropout(dropout)), ("fc7", nn.Linear(hidden, hidden)), ("relu7", nn.ReLU(inplace=True)),
        ("fc8", nn.Linear(hidden, num_classes))]))


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


def build_model(arch: str = "alexnet", num_classes: int = 1000, width: float = 1.0, lrn_alpha: str = "paper",
                bias_init: float = 1.0, dropout: float = 0.5, init: str = "paper") -> AlexNet:
    """The network of ALEXNET.md's table (arch "alexnet", 60,965,224 parameters at 1000 classes, width 1)
    or torchvision's layout ("alexnet-owt", 61,100,840). `width` scales every channel count and fc width."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
    features, channels = _features(arch, width, lrn_alpha)
    model = AlexNet(features, _classifier(channels * 36, scaled(4096, width), num_classes, dropout))
    init_weights(model, init, bias_init)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
