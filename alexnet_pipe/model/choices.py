"""The model's choices, the first of each tuple the default: plain tuples, so the settings and `train --help` need no torch."""

ARCHS = ("alexnet", "alexnet-owt")
INITS = ("paper", "kaiming")
# alpha-over-n: alpha / n on the window sum, what trained the paper's network (cuda-convnet's cross-map norm) and
# what Caffe and torch.nn.LocalResponseNorm compute; alpha-as-printed: the paper's formula as printed, 5x stronger.
LRN_CONVENTIONS = ("alpha-over-n", "alpha-as-printed")
LRN_IMPLS = ("fused", "reference", "compiled")
CONV_IMPLS = ("grouped", "split")  # cuDNN's grouped kernel, or one dense convolution per half
_LRN_OLD_NAMES = {"caffe": "alpha-over-n", "paper": "alpha-as-printed"}  # settings saved before the rename
MIN_CROP = 63  # below this the third 3x3/2 max pool sees less than 3x3


def lrn_convention(name: str) -> str:
    """A convention name, old ones ("paper", "caffe" in settings saved before the rename) mapped to today's."""
    name = _LRN_OLD_NAMES.get(name, name)
    if name not in LRN_CONVENTIONS:
        raise ValueError(f"LRN convention must be one of {LRN_CONVENTIONS}, not {name!r}")
    return name
