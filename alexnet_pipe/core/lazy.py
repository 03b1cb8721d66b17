"""Names a wing re-exports from its modules, imported on first use (PEP 562).

The train and model wings re-export their public names (`from alexnet_pipe.train import run_training`), but
importing a light module of the wing (the settings, for `train --help`) runs the wing's `__init__` first: an
eager re-export there would import torch for every command. The exports resolve when first read instead.
"""
from __future__ import annotations

import importlib


def lazy_exports(package: str, table: dict[str, str]):
    """(__getattr__, __dir__) for `package`, whose names are those of `table`: name -> module inside the wing."""
    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{table[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
