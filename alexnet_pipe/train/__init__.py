"""The trainer: settings, schedule, optimiser, checkpoints, run log, launch, the loop and evaluation.

`from alexnet_pipe.train import resolve_settings, run_training, evaluate` works; names resolve on first use, so
`train --help` (which reads only the settings) does not import torch."""
from alexnet_pipe.core.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "TrainSettings": "config", "resolve_settings": "config",
    "run_training": "entry", "train": "loop",
    "EvalSettings": "evaluation", "evaluate": "evaluation",
    "load_model": "checkpoint",
})
