"""Shared fixtures: everything is generated here, nothing is downloaded."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _has_dali() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        return False


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; `dali` tests need NVIDIA DALI, which installs on Linux only (macOS, Windows and
    CPU-only installs run the rest of the suite)."""
    missing = {"gpu": None if _has_cuda() else "needs CUDA",
               "dali": None if _has_dali() else "needs NVIDIA DALI (pip install nvidia-dali-cuda130; Linux only)"}
    for item in items:
        for marker, reason in missing.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
