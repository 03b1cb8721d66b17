"""The model's choices, the first of each tuple the default: plain tuples, so the settings and `train --help` need no torch."""

ARCHS = ("alexnet", "alexnet-owt")
INITS = ("paper", "kaiming")
# alpha-over-n: alpha / n on the window sum, what trained the paper's network (cuda-convnet's cross-map norm) and
# what Caffe and torch.nn.LocalResponseNorm compute; alpha-as-printed: the paper's formula as printed, 5x stronger.
LRN_CONVENTIONS = ("alpha-over-n", "alpha-as-printed")
# half: each GPU's half of the maps normalised on its own, as the paper's two-GPU network (the authors' layer files
# give rnorm1a/rnorm1b 48 channels each); whole: one window across all maps (Caffe's bvlc_alexnet, torchvision).
LRN_SPANS = ("half", "whole")
LRN_IMPLS = ("fused", "reference", "compiled")
CONV_IMPLS = ("grouped", "split")  # cuDNN's grouped kernel, or one dense convolution per half
_LRN_OLD_NAMES = {"caffe": "alpha-over-n", "paper": "alpha-as-printed"}  # settings saved before the rename
MIN_CROP = 63  # below this the third 3x3/2 max pool sees less than 3x3
CAFFE_CROP = 227  # Caffe's input: conv1 unpadded gives 55x55, as conv1 padded by 2 does at 224


def lrn_convention(name: str) -> str:
    """A convention name, old ones ("paper", "caffe" in settings saved before the rename) mapped to today's."""
    name = _LRN_OLD_NAMES.get(name, name)
    if name not in LRN_CONVENTIONS:
        raise ValueError(f"LRN convention must be one of {LRN_CONVENTIONS}, not {name!r}")
    return name
