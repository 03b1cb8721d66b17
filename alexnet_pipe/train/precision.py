"""The one precision rule, of the training steps and of every evaluation (docs/training.md, "Precision").

A run computes in one precision, its setting `precision`: fp32, bf16 or fp16 autocast (torch.autocast: matrix
products and convolutions in the low precision, reductions and the loss in fp32), or "auto", bf16 on CUDA and fp32
on the CPU, what the trainer ran before the setting existed. "auto" is resolved once, when the run starts, and the
resolved value is what settings.json and every checkpoint record; the trainer's evaluations (which decide the
plateau drops and best.pt) and `evaluate` (by default) compute in that same precision, so the errors a run
reports and the ones `evaluate` reports are the same numbers. fp16's narrow range needs loss scaling: a
GradScaler, whose state the checkpoints carry.
"""
from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def resolved(precision: str, device_type: str) -> str:
    """"auto" -> bf16 on CUDA, fp32 on the CPU; the others are themselves."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" else "fp32"


def autocast(precision: str, device):
    """The context every forward pass of a run runs in; fp32 switches autocast off (also inside an outer one)."""
    import torch
    name = resolved(precision, device.type)
    if name == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, getattr(torch, _DTYPES[name]))


def grad_scaler(precision: str, device):
    """fp16's loss scaler (its gradients underflow unscaled); None for fp32 and bf16, which keep fp32's range."""
    if resolved(precision, device.type) != "fp16":
        return None
    import torch
    return torch.amp.GradScaler(device.type)
