"""AlexNet (grouped, as in the paper, and the one-weird-trick variant) and its local response normalisation.

Names resolve on first use (torch is imported then), so the settings can read `model.choices` without torch."""
from alexnet_pipe.core.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "AlexNet": "alexnet", "build_model": "alexnet", "init_weights": "alexnet", "count_parameters": "alexnet",
    "layer_table": "alexnet", "LocalResponseNorm": "alexnet", "SplitConv2d": "alexnet", "conv1_padding": "alexnet",
    "lrn": "lrn", "lrn_reference": "lrn",
})
