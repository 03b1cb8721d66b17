"""The fused LRN (issue 13): its analytic backward against float64 finite differences, and against the unfused
reference in fp32 and bf16. The reference itself is checked against numpy and torch in test_model.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from alexnet_pipe.model.lrn import LRN_IMPLS, lrn, lrn_reference
from alexnet_pipe.model.alexnet import LRN_IMPL_DEFAULT, LocalResponseNorm, build_model
from helpers.lrn import lrn_reference as lrn_numpy

CONSTANTS = dict(size=5, alpha=1e-4 / 5, beta=0.75, k=2.0)
# Larger alpha than AlexNet's so that the sum term, and with it the cross-channel part of the gradient, is of the
# same order as k: a backward that dropped it or mis-shifted the window would show.
STRONG = dict(size=5, alpha=0.05, beta=0.75, k=2.0)


def _inputs(shape, dtype=torch.float64, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()


@pytest.mark.parametrize("size", [5, 4, 1])
def test_reference_passes_gradcheck_in_float64(size):
    x = _inputs((2, 7, 3, 3))
    assert torch.autograd.gradcheck(lambda t: lrn_reference(t, **{**STRONG, "size": size}), (x,))


@pytest.mark.parametrize("size, channels", [(5, 7), (4, 7), (5, 3), (3, 1)])
def test_fused_backward_passes_gradcheck_in_float64(size, channels):
    x = _inputs((2, channels, 3, 4))
    assert torch.autograd.gradcheck(lambda t: lrn(t, **{**STRONG, "size": size}), (x,))


@pytest.mark.parametrize("size", [5, 4])
def test_fused_forward_is_the_numpy_formula(size):
    x = _inputs((2, 9, 3, 3)).detach()
    want = lrn_numpy(x.numpy(), n=size, k=STRONG["k"], alpha=STRONG["alpha"], beta=STRONG["beta"])
    np.testing.assert_allclose(lrn(x, **{**STRONG, "size": size}).numpy(), want, rtol=1e-12)


def _forward_backward(fn, x, g, **constants):
    x = x.detach().clone().requires_grad_()
    out = fn(x, **constants)
    out.backward(g)
    return out.detach(), x.grad


@pytest.mark.parametrize("constants", [CONSTANTS, STRONG], ids=["alexnet", "strong"])
def test_fused_matches_reference_in_fp32(constants):
    x = torch.relu(_inputs((4, 96, 13, 13), torch.float32, scale=40.0)).detach()  # conv1's post-ReLU range
    g = _inputs((4, 96, 13, 13), torch.float32, seed=1).detach()
    out, grad = _forward_backward(lrn, x, g, **constants)
    ref_out, ref_grad = _forward_backward(lrn_reference, x, g, **constants)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_bf16_in_and_out_with_fp32_arithmetic():
    """bf16 tolerance: both round one fp32 result to bf16 (8 significant bits), so they may differ by one bf16 step
    of the value: rtol 2^-7. The reference is fed the same bf16 values, upcast."""
    x = torch.relu(_inputs((4, 32, 9, 9), torch.float32, scale=40.0)).detach().bfloat16()
    g = _inputs((4, 32, 9, 9), torch.float32, seed=1).detach().bfloat16()
    out, grad = _forward_backward(lrn, x, g, **STRONG)
    assert out.dtype == grad.dtype == torch.bfloat16
    ref_out, ref_grad = _forward_backward(lrn_reference, x.float(), g.float(), **STRONG)
    torch.testing.assert_close(out.float(), ref_out, rtol=2 ** -7, atol=1e-3)
    torch.testing.assert_close(grad.float(), ref_grad, rtol=2 ** -7, atol=1e-3 * ref_grad.abs().max().item())


def test_channels_last_and_non_contiguous_inputs():
    x = _inputs((2, 12, 5, 6), torch.float32, scale=20.0).detach()
    want = lrn_reference(x, **STRONG)
    torch.testing.assert_close(lrn(x.contiguous(memory_format=torch.channels_last), **STRONG), want)
    wide = _inputs((2, 24, 5, 6), torch.float32, scale=20.0).detach()
    torch.testing.assert_close(lrn(wide[:, ::2], **STRONG), lrn_reference(wide[:, ::2], **STRONG))


def _saved(fn, x):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(x, **CONSTANTS)
    return saved


def test_fused_keeps_only_its_input_for_backward():
    """One saved tensor in the input's dtype (bf16 under autocast) instead of the reference's fp32 intermediates."""
    x = _inputs((2, 16, 5, 5), torch.bfloat16)
    fused, reference = _saved(lrn, x), _saved(lrn_reference, x)
    assert len(fused) == 1 and fused[0].dtype == torch.bfloat16 and fused[0].shape == x.shape
    assert sum(t.numel() * t.element_size() for t in reference) > 4 * x.numel() * x.element_size()


def test_model_switch():
    assert LRN_IMPLS == ("fused", "reference", "compiled") and LRN_IMPL_DEFAULT == "fused"
    assert build_model("alexnet", 5, width=0.0625).features.norm1.impl == "fused"
    with pytest.raises(ValueError, match="fused"):
        LocalResponseNorm(impl="triton")


def test_models_with_either_lrn_train_alike():
    torch.manual_seed(0)
    models = [build_model("alexnet", 6, width=0.125, dropout=0.0, lrn_impl=impl) for impl in ("reference", "fused")]
    models[1].load_state_dict(models[0].state_dict())
    x, y = torch.randn(4, 3, 64, 64) * 50, torch.tensor([0, 1, 2, 3])
    for model in models:
        nn.functional.cross_entropy(model(x), y).backward()
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("groups", [1, 2])
def test_compiled_region_matches_reference(groups):
    """torch.compile of the same forward and backward formulas (Inductor, a C++ compiler on CPU)."""
    x = torch.relu(_inputs((2, 16, 7, 7), torch.float32, scale=40.0)).detach()
    g = _inputs((2, 16, 7, 7), torch.float32, seed=1).detach()
    out, grad = _forward_backward(lambda t, **c: lrn(t, compiled=True, groups=groups, **c), x, g, **STRONG)
    ref_out, ref_grad = _forward_backward(lambda t, **c: lrn_reference(t, groups=groups, **c), x, g, **STRONG)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fused_function_inside_a_compiled_model():
    """--compile traces the whole model, the autograd.Function included."""
    x = torch.relu(_inputs((2, 16, 7, 7), torch.float32, scale=40.0)).detach()
    g = _inputs((2, 16, 7, 7), torch.float32, seed=1).detach()
    compiled = torch.compile(LocalResponseNorm(impl="fused"), fullgraph=True)
    out, grad = _forward_backward(lambda t, **c: compiled(t), x, g)
    ref_out, ref_grad = _forward_backward(lrn_reference, x, g, **CONSTANTS)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


# --- issue 20: the paper's LRN normalises each GPU's half of the maps on its own ------------------------------

def _torch_per_half(x: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """torch's own nn.LocalResponseNorm, applied to each group of maps separately (it divides alpha by n)."""
    torch_lrn = nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)
    return torch.cat([torch_lrn(part) for part in x.chunk(groups, dim=1)], dim=1)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("constants", [CONSTANTS, STRONG], ids=["alexnet", "strong"])
def test_grouped_lrn_is_torchs_lrn_on_each_half_forward_and_backward(impl, constants):
    fn = lrn if impl == "fused" else lrn_reference
    x = torch.relu(_inputs((3, 16, 4, 5), scale=40.0)).detach()
    g = _inputs((3, 16, 4, 5), seed=1).detach()
    out, grad = _forward_backward(lambda t, **c: fn(t, groups=2, **c), x, g, **constants)
    want, want_grad = _forward_backward(lambda t, **c: _torch_per_half(t, 2, **c), x, g, **constants)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    halves = [lrn_numpy(h, n=constants["size"], k=constants["k"], alpha=constants["alpha"], beta=constants["beta"])
              for h in np.split(x.numpy(), 2, axis=1)]
    np.testing.assert_allclose(out.numpy(), np.concatenate(halves, axis=1), rtol=1e-12)


@pytest.mark.parametrize("size, channels, groups", [(5, 8, 2), (4, 9, 3), (3, 4, 4)])
def test_grouped_fused_backward_passes_gradcheck_in_float64(size, channels, groups):
    x = _inputs((2, channels, 3, 2))
    assert torch.autograd.gradcheck(lambda t: lrn(t, **{**STRONG, "size": size}, groups=groups), (x,))


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_the_window_never_crosses_from_one_half_into_the_other(impl):
    """A change in the second half's maps leaves every output of the first half alone (not so across all maps)."""
    module = LocalResponseNorm(alpha=0.25, impl=impl, groups=2)
    x = torch.relu(_inputs((2, 12, 3, 3), torch.float32, scale=20.0)).detach()
    y = x.clone()
    y[:, 6:] *= 3.0
    torch.testing.assert_close(module(y)[:, :6], module(x)[:, :6], rtol=0, atol=0)
    whole = LocalResponseNorm(alpha=0.25, impl=impl)
    assert not torch.allclose(whole(y)[:, 4:6], whole(x)[:, 4:6])


def test_grouped_lrn_in_bf16_and_channels_last_matches_the_reference():
    x = torch.relu(_inputs((2, 16, 5, 6), torch.float32, scale=40.0)).detach()
    want = _torch_per_half(x, 2, **STRONG)
    torch.testing.assert_close(lrn(x.contiguous(memory_format=torch.channels_last), **STRONG, groups=2), want)
    got = lrn(x.bfloat16(), **STRONG, groups=2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), _torch_per_half(x.bfloat16().float(), 2, **STRONG), rtol=2 ** -7, atol=1e-3)


def test_paper_model_normalises_each_half_and_whole_is_an_option():
    torch_lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    a = torch.relu(torch.randn(2, 96, 5, 5)) * 60
    half = build_model("alexnet", 5)
    assert half.features.norm1.groups == half.features.norm2.groups == 2
    torch.testing.assert_close(half.features.norm1(a), torch.cat([torch_lrn(h) for h in a.chunk(2, 1)], 1))
    whole = build_model("alexnet", 5, lrn_span="whole")
    assert whole.features.norm1.groups == whole.features.norm2.groups == 1
    torch.testing.assert_close(whole.features.norm1(a), torch_lrn(a))
    assert not torch.allclose(half.features.norm1(a), torch_lrn(a))  # the default changes results
    with pytest.raises(ValueError, match="LRN span"):
        build_model("alexnet", 5, width=0.0625, lrn_span="third")


# --- issue 20: what mutation testing found unguarded (docs/testing.md) ----------------------------------------

def test_a_width_that_splits_unevenly_into_groups_is_one_sentence():
    with pytest.raises(ValueError, match="LRN in 2 groups needs a multiple of 2 maps, not 9"):
        LocalResponseNorm(groups=2)(torch.ones(1, 9, 2, 2))


@pytest.mark.parametrize("impl, compiled", [("fused", False), ("compiled", True), ("reference", None)])
def test_the_impl_option_runs_the_kernel_it_names(impl, compiled, monkeypatch):
    """fused: the Function in eager mode; compiled: the same Function with its forward and backward through
    torch.compile (here a stand-in that records what it is given); reference: plain autograd, no Function."""
    import alexnet_pipe.model.lrn as lrn_module
    given = []
    monkeypatch.setattr(lrn_module, "_compiled", lambda fn: given.append(fn) or fn)
    x = torch.relu(_inputs((2, 8, 3, 3), torch.float32, scale=20.0)).detach().requires_grad_()
    out = LocalResponseNorm(impl=impl, groups=2)(x)
    out.sum().backward()
    assert (type(out.grad_fn).__name__ == "_FusedLRNBackward") == (compiled is not None)
    assert given == ([lrn_module._forward, lrn_module._backward] if compiled else [])
    torch.testing.assert_close(out, _torch_per_half(x.detach(), 2, **CONSTANTS))
    given.clear()
    lrn(x.detach(), **CONSTANTS).sum()  # the function's own default: eager
    assert given == []


@pytest.mark.parametrize("size", [1, 2, 3])
def test_fused_small_windows_are_the_numpy_formula(size):
    x = _inputs((2, 6, 3, 3)).detach()
    for groups in (1, 2):
        want = np.concatenate([lrn_numpy(h, n=size, k=STRONG["k"], alpha=STRONG["alpha"], beta=STRONG["beta"])
                               for h in np.split(x.numpy(), groups, axis=1)], axis=1)
        np.testing.assert_allclose(lrn(x, **{**STRONG, "size": size}, groups=groups).numpy(), want, rtol=1e-12)


def test_fp16_in_and_out_with_fp32_arithmetic_where_squares_overflow_fp16():
    """Activations of a few hundred: their squares pass fp16's 65504, so only fp32 arithmetic gets the window sums
    (fp16 is a --precision choice); both kernels, forward and backward, against torch's LRN in fp32."""
    x = (torch.rand(2, 8, 3, 3, generator=torch.Generator().manual_seed(0)) * 400).half()
    g = _inputs((2, 8, 3, 3), torch.float32, seed=1).detach().half()
    want, want_grad = _forward_backward(lambda t, **c: _torch_per_half(t, 2, **c), x.float(), g.float(), **STRONG)
    for fn in (lrn, lrn_reference):
        out, grad = _forward_backward(lambda t, **c: fn(t, groups=2, **c), x, g, **STRONG)
        assert out.dtype == grad.dtype == torch.float16
        torch.testing.assert_close(out.float(), want, rtol=2 ** -10, atol=1e-3)
        torch.testing.assert_close(grad.float(), want_grad, rtol=2 ** -10, atol=1e-3 * want_grad.abs().max().item())


def test_build_model_passes_the_lrn_choices_to_its_modules():
    model = build_model("alexnet", 5, width=0.0625, lrn_alpha="alpha-as-printed", lrn_impl="reference")
    for norm in (model.features.norm1, model.features.norm2):
        assert (norm.convention, norm.impl, norm.window_alpha) == ("alpha-as-printed", "reference", 1e-4)


def test_the_compiled_kernels_are_compiled_once_each_with_static_shapes(monkeypatch):
    """compiled=True hands _forward and _backward to torch.compile once each (a stand-in here that records what it
    is given: Inductor takes minutes on 2 cores, and the slow tests check its kernels), then reuses them: a
    recompile per call would cost its compile time at every step, dynamic shapes slower generic kernels."""
    import alexnet_pipe.model.lrn as lrn_module
    given = []

    def compile_stand_in(fn=None, **options):
        given.append((fn, options))
        return fn

    monkeypatch.setattr(lrn_module, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", compile_stand_in)
    x = torch.relu(_inputs((2, 8, 3, 3), torch.float32, scale=20.0)).detach()
    for _ in range(2):
        out = lrn(x.clone().requires_grad_(), **CONSTANTS, compiled=True, groups=2)
        out.sum().backward()
        torch.testing.assert_close(out, _torch_per_half(x, 2, **CONSTANTS))
    assert given == [(lrn_module._forward, {"dynamic": False}), (lrn_module._backward, {"dynamic": False})]
