"""Shards -> augmented (images, labels) batches for the trainer and evaluate.

`make_loader(LoaderSettings(...))` is the one place that knows both backends: DALI (dali.py, the default) and the
torch DataLoader fallback (fallback.py).  They share the settings, the plan and the float work (base.py) and the
record access (records.py), and never import each other.
"""
from __future__ import annotations

import dataclasses

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.loaders.base import LOADERS, LoaderSettings, validate
from alexnet_pipe.shards.decode import dali_available
from alexnet_pipe.loaders.records import release_shards

__all__ = ["LOADERS", "LoaderSettings", "make_loader", "release_shards", "resolve_loader"]


def resolve_loader(name: str) -> str:
    """"auto" -> "dali" where NVIDIA DALI is installed, else "torch"; an explicit "dali" without DALI is one
    sentence (said before any worker starts). Other names pass through."""
    if name == "auto":
        return "dali" if dali_available() else "torch"
    if name == "dali" and not dali_available():
        raise UserError("--loader dali: NVIDIA DALI is not installed here (it installs on Linux: "
                        "pip install nvidia-dali-cuda130); use --loader torch or --loader auto")
    return name


def make_loader(settings: LoaderSettings):
    """The loader the settings ask for (DALI, torch, or auto: DALI where installed), ready for `.epoch(e)`."""
    settings = dataclasses.replace(settings, loader=resolve_loader(settings.loader))
    validate(settings)
    if settings.loader == "torch":
        from alexnet_pipe.loaders.fallback import TorchLoader
        return TorchLoader(settings)
    from alexnet_pipe.loaders.dali import DaliLoader
    return DaliLoader(settings)
