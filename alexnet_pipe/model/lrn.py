"""Across-channel local response normalisation, b = a * d^-beta with d = k + alpha' * sum_window a^2.

`groups` splits the maps into that many equal groups and keeps every window inside its own group: the paper's
two-GPU network normalises each GPU's half on its own (groups=2); groups=1 is one window across all maps.

Two implementations of the same formula:

* `lrn_reference`: plain autograd over square, pad, 3-D average pool, power and divide. Its backward keeps those
  fp32 intermediates and replays every pass; it is the yardstick the tests hold the others to.
* `lrn`: a custom autograd Function with the analytic backward
      grad_a = g * d^-beta - 2 * alpha' * beta * a * sum_window^T(g * a * d^(-beta-1)),
  where sum_window^T is the window sum reflected (the same window for odd n). It saves only its input, in the
  input's dtype, and recomputes d in backward: on a GPU the op is bound by memory traffic, and reading a bf16 input
  again is cheaper than writing and reading an fp32 d. Arithmetic is in fp32 (fp64 for fp64 input, so that
  gradcheck can test it); the result is returned in the input's dtype (bf16 in, bf16 out under autocast).
  `compiled=True` runs the same forward and backward formulas as regions compiled by torch.compile, so each becomes
  one generated kernel instead of about a dozen eager passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from alexnet_pipe.model.choices import LRN_IMPLS  # noqa: F401 (API: the choices, declared with the settings)


def _window_sum(t: torch.Tensor, size: int, below: int, groups: int) -> torch.Tensor:
    """out_i = sum of t_j for j in [i - below, i - below + size - 1] over the channels of i's group, zero beyond
    the group's edges; a new tensor in t's memory format, which the caller may overwrite. Shifted slices rather
    than a pooling op: exact, any memory format, and fusible by torch.compile; written into one output to spare
    eager mode an allocation per shift."""
    maps = t.shape[1] // groups
    padded = F.pad(t.unflatten(1, (groups, maps)), (0, 0, 0, 0, below, size - 1 - below))  # pads each group
    shifted = [padded[:, :, shift:shift + maps] for shift in range(size)]
    total = torch.empty_like(t)
    view = total.unflatten(1, (groups, maps))
    if size == 1:
        view.copy_(shifted[0])
        return total
    torch.add(shifted[0], shifted[1], out=view)
    for more in shifted[2:]:
        view.add_(more)
    return total


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def lrn_reference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    a = x.to(_compute_dtype(x))
    squares = a.pow(2).unflatten(1, (groups, a.shape[1] // groups))  # (N, G, C/G, H, W): pool each group's maps
    squares = F.pad(squares, (0, 0, 0, 0, size // 2, (size - 1) // 2))  # as a depth axis, padded per group
    window_sum = F.avg_pool3d(squares, (size, 1, 1), stride=1).flatten(1, 2) * size
    return (a / (k + alpha * window_sum).pow(beta)).to(x.dtype)


def _denominator(a: torch.Tensor, size: int, alpha: float, k: float, groups: int) -> torch.Tensor:
    # output i's window: i - n//2 .. i + (n-1)//2
    return _window_sum(a * a, size, size // 2, groups).mul_(alpha).add_(k)


def _forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    a = x.to(_compute_dtype(x))
    return (a * _denominator(a, size, alpha, k, groups).pow_(-beta)).to(x.dtype)


def _backward(x: torch.Tensor, g: torch.Tensor, size: int, alpha: float, beta: float, k: float,
              groups: int) -> torch.Tensor:
    a, g = x.to(_compute_dtype(x)), g.to(_compute_dtype(x))
    d = _denominator(a, size, alpha, k, groups)
    scale = d.pow(-beta)
    # input j feeds the outputs i whose window holds it: i in j - (n-1)//2 .. j + n//2, the reflected window
    # (within j's group, as the forward's windows are)
    cross = _window_sum((g * a).mul_(scale).div_(d), size, (size - 1) // 2, groups)
    return (g * scale).addcmul_(a, cross, value=-2.0 * alpha * beta).to(x.dtype)


_COMPILED: dict = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


class _FusedLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, compiled, groups):
        ctx.save_for_backward(x)
        ctx.constants, ctx.compiled = (size, alpha, beta, k, groups), compiled
        return (_compiled(_forward) if compiled else _forward)(x, size, alpha, beta, k, groups)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        grad = (_compiled(_backward) if ctx.compiled else _backward)(x, g, *ctx.constants)
        return grad, None, None, None, None, None, None


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, compiled: bool = False,
        groups: int = 1) -> torch.Tensor:
    """The fused LRN; `alpha` is the factor on the window sum as used (already divided by n where that applies)."""
    return _FusedLRN.apply(x, size, alpha, beta, k, compiled, groups)
