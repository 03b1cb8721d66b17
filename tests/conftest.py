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


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
