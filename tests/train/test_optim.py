"""The optimiser as the authors ran it (issue 11): bias parameter groups and the paper's momentum form, against
numpy loops written from ALEXNET.md's update rule."""
from __future__ import annotations

import copy as copy_module

import numpy as np
import pytest
import torch
from torch import nn

from alexnet_pipe.model.alexnet import build_model
from alexnet_pipe.train.optim import (MOMENTUM_FORMS, PaperSGD, describe_param_groups, format_param_groups,
                                make_optimizer, param_groups, set_lr)

BIASES = 96 + 256 + 384 + 384 + 256 + 4096 + 4096 + 1000  # one per kernel or unit of the paper's table


def _ids(group):
    return {id(p) for p in group["params"]}


def test_biases_get_twice_the_lr_and_no_decay_by_default():
    model = build_model("alexnet", 1000)
    groups = param_groups(model, weight_decay=5e-4)
    assert [(g["name"], g["lr_mult"], g["weight_decay"]) for g in groups] == [
        ("weights", 1.0, 5e-4), ("biases", 2.0, 0.0)]
    biases = {id(m.bias) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert _ids(groups[1]) == biases and not _ids(groups[0]) & biases
    assert _ids(groups[0]) | _ids(groups[1]) == {id(p) for p in model.parameters()}
    rows = describe_param_groups(groups)
    assert [r["parameters"] for r in rows] == [60_965_224 - BIASES, BIASES]


def test_switching_the_authors_conventions_off():
    groups = param_groups(build_model("alexnet", 5, width=0.0625), 5e-4, bias_lr_mult=1.0, bias_decay=True)
    assert [(g["lr_mult"], g["weight_decay"]) for g in groups] == [(1.0, 5e-4), (1.0, 5e-4)]


def test_set_lr_multiplies_each_group_and_the_description_reads_it():
    model = build_model("alexnet", 5, width=0.0625)
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.5, momentum=0.9)
    set_lr(opt, 0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.02]
    text = format_param_groups(describe_param_groups(opt.param_groups))
    assert "weights" in text and "biases" in text and "x2" in text and "5e-04" in text


def _numpy_paper_sgd(w0: dict, lrs, momentum, decays, mults, grad_fn):
    """ALEXNET.md: v <- m v - wd eps w - eps g; w <- w + v, with eps = lr * the group's multiplier."""
    w = {k: v.copy() for k, v in w0.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for step, lr in enumerate(lrs):
        grads = grad_fn(w, step)
        for k in w:
            eps = lr * mults[k]
            v[k] = momentum * v[k] - decays[k] * eps * w[k] - eps * grads[k]
            w[k] = w[k] + v[k]
    return w


def _grad_np(w, step):  # depends on w, so a wrong update also changes later gradients
    return {k: np.sin(x) + 0.1 * (step + 1) for k, x in w.items()}


def _run_torch(opt_factory, w0, lrs):
    params = {k: torch.tensor(v, requires_grad=True) for k, v in w0.items()}
    opt = opt_factory([{"params": [params["w"]], "lr_mult": 1.0, "weight_decay": 0.05},
                       {"params": [params["b"]], "lr_mult": 2.0, "weight_decay": 0.0}])
    history = []
    for step, lr in enumerate(lrs):
        set_lr(opt, lr)
        grads = _grad_np({k: p.detach().numpy() for k, p in params.items()}, step)
        for k, p in params.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
        history.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return history


W0 = {"w": np.linspace(-2, 2, 12).reshape(3, 4), "b": np.linspace(0.5, 1.5, 3)}
LRS = [0.1] * 5 + [0.01] * 5  # one drop, as at the paper's plateaus


@pytest.mark.parametrize("foreach", [True, False])
def test_paper_sgd_is_the_papers_update_across_an_lr_drop(foreach):
    got = _run_torch(lambda g: PaperSGD(g, lr=0.1, momentum=0.9, foreach=foreach), W0, LRS)
    want = _numpy_paper_sgd(W0, LRS, 0.9, {"w": 0.05, "b": 0.0}, {"w": 1.0, "b": 2.0}, _grad_np)
    for k in W0:
        np.testing.assert_allclose(got[-1][k], want[k], rtol=1e-12, atol=1e-14)


def test_torch_sgd_equals_it_until_the_drop_and_not_after():
    paper = _run_torch(lambda g: PaperSGD(g, lr=0.1, momentum=0.9), W0, LRS)
    torch_sgd = _run_torch(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), W0, LRS)
    for step in range(5):
        for k in W0:
            np.testing.assert_allclose(torch_sgd[step][k], paper[step][k], rtol=1e-12, atol=1e-14)
    # torch multiplies the whole momentum buffer by the new lr: right after the drop its step is 10x smaller
    step_paper = np.abs(paper[5]["w"] - paper[4]["w"]).max()
    step_torch = np.abs(torch_sgd[5]["w"] - torch_sgd[4]["w"]).max()
    assert step_paper > 5 * step_torch


def test_paper_sgd_skips_parameters_without_gradients_and_resumes_from_its_state():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    opt = PaperSGD(param_groups(a, 1e-3) + [{"params": list(b.parameters())}], lr=0.1, momentum=0.9)
    frozen = [p.detach().clone() for p in b.parameters()]
    x = torch.randn(4, 3)

    def step(model, optimizer):
        optimizer.zero_grad()
        model(x).square().sum().backward()
        optimizer.step()

    step(a, opt)
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), frozen))
    copy = nn.Linear(3, 3)
    copy.load_state_dict(a.state_dict())
    resumed = PaperSGD(param_groups(copy, 1e-3) + [{"params": list(b.parameters())}], lr=0.1, momentum=0.9)
    resumed.load_state_dict(copy_module.deepcopy(opt.state_dict()))  # as torch.save + torch.load would
    step(a, opt)
    step(copy, resumed)
    torch.testing.assert_close(copy.weight, a.weight, rtol=0, atol=0)


@pytest.mark.parametrize("form, kind", [("paper", PaperSGD), ("torch", torch.optim.SGD)])
def test_make_optimizer(form, kind):
    assert MOMENTUM_FORMS == ("paper", "torch")
    opt = make_optimizer(build_model("alexnet", 5, width=0.0625), form, lr=0.01, momentum=0.9, weight_decay=5e-4)
    assert type(opt) is kind and [g["lr"] for g in opt.param_groups] == [0.01, 0.02]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    with pytest.raises(ValueError, match="paper"):
        make_optimizer(build_model("alexnet", 5, width=0.0625), "adam", lr=0.01, momentum=0.9, weight_decay=0)


# --- issue 20: what mutation testing found unguarded (docs/testing.md) ----------------------------------------

def _one_step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


@pytest.mark.parametrize("form", ["paper", "torch"])
def test_make_optimizer_passes_momentum_and_bias_decay_on(form):
    """Every setting reaches the optimiser: a momentum other than either class's default, and --bias-decay."""
    model = nn.Linear(3, 2)
    opt = make_optimizer(model, form, lr=0.1, momentum=0.5, weight_decay=0.01, bias_lr_mult=1.0, bias_decay=True)
    assert [g["momentum"] for g in opt.param_groups] == [0.5, 0.5]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]
    params = [model.weight, model.bias]
    w0 = [p.detach().clone() for p in params]
    grads = [torch.ones_like(p) for p in params]
    for _ in range(2):  # the second step carries the momentum: v = m v - wd lr w - lr g (both forms, lr constant)
        _one_step(opt, params, grads)
    for p, w, g in zip(params, w0, grads):
        v1 = -0.01 * 0.1 * w - 0.1 * g
        w1 = w + v1
        want = w1 + 0.5 * v1 - 0.01 * 0.1 * w1 - 0.1 * g
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)


def test_paper_sgd_defaults_and_group_fallbacks():
    """PaperSGD(params, lr): momentum 0.9 and no decay unless told; a group without its own weight decay or
    foreach takes the optimiser's."""
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = PaperSGD([w], lr=0.1)
    _one_step(opt, [w], [torch.ones(2)])
    _one_step(opt, [w], [torch.ones(2)])
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0]) - 0.1 - (0.9 * 0.1 + 0.1))
    u = torch.tensor([1.0, -2.0], requires_grad=True)
    decayed = PaperSGD([u], lr=0.1, momentum=0.0, weight_decay=0.5, foreach=True)
    assert decayed.param_groups[0]["foreach"] is True
    _one_step(decayed, [u], [torch.zeros(2)])
    torch.testing.assert_close(u.detach(), torch.tensor([1.0, -2.0]) * (1 - 0.5 * 0.1))


def test_set_lr_and_the_description_of_groups_without_the_authors_keys():
    """Groups built elsewhere (no name, lr_mult or weight decay): lr x1, described as group0.. with decay 0."""
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    set_lr(opt, 0.03)
    assert [g["lr"] for g in opt.param_groups] == [0.03, 0.03]
    rows = describe_param_groups([{"params": [a]}, {"params": [b], "lr_mult": 2.0}])
    assert rows == [{"name": "group0", "lr_mult": 1.0, "weight_decay": 0.0, "parameters": 3},
                    {"name": "group1", "lr_mult": 2.0, "weight_decay": 0.0, "parameters": 4}]
    assert format_param_groups(rows) == ("group0   lr x1  weight decay 0e+00  3 parameters\n"
                                         "group1   lr x2  weight decay 0e+00  4 parameters")
