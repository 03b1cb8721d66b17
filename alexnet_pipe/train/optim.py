"""The optimiser as the paper's authors ran it.

Where the paper is silent, their code decides: cuda-convnet2's ImageNet layer parameters give biases twice the
weights' learning rate (epsB 0.02 against epsW 0.01) and weight decay on weights only; Caffe's bvlc_alexnet does the
same (lr_mult 2, decay_mult 0). `param_groups` builds those two groups; each carries `lr_mult`, and `set_lr` gives
each group the scheduled learning rate times its multiplier.

The paper's momentum form, v <- m v - wd eps w - eps g; w <- w + v, keeps eps inside the velocity. torch's SGD keeps
it outside (buf <- m buf + g + wd w; w <- w - eps buf): the same steps while eps is constant, but at a drop of eps
torch rescales the whole accumulated velocity at once, while the paper's velocity carries the old steps and decays
them by m per step. `PaperSGD` is the paper's form; cuda-convnet and Caffe's SGD solver update this way too.
"""
from __future__ import annotations

import torch
from torch import nn

from alexnet_pipe.train.config import MOMENTUM_FORMS


def param_groups(model: nn.Module, weight_decay: float, bias_lr_mult: float = 2.0,
                 bias_decay: bool = False) -> list[dict]:
    """[weights, biases]: the weights at lr x1 with `weight_decay`; the biases (every 1-D parameter) at lr
    x`bias_lr_mult`, decayed only with `bias_decay`. Two groups always, so optimiser states keep one layout."""
    weights, biases = [], []
    for param in model.parameters():
        (biases if param.dim() == 1 else weights).append(param)
    return [{"name": "weights", "params": weights, "lr_mult": 1.0, "weight_decay": weight_decay},
            {"name": "biases", "params": biases, "lr_mult": float(bias_lr_mult),
             "weight_decay": weight_decay if bias_decay else 0.0}]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled learning rate, times each group's multiplier (1 for groups without one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def describe_param_groups(groups: list[dict]) -> list[dict]:
    """One row per group for --dry-run: name, lr multiplier, weight decay, number of parameters."""
    return [{"name": g.get("name", f"group{i}"), "lr_mult": g.get("lr_mult", 1.0),
             "weight_decay": g.get("weight_decay", 0.0), "parameters": sum(p.numel() for p in g["params"])}
            for i, g in enumerate(groups)]


def format_param_groups(rows: list[dict]) -> str:
    return "\n".join(f"{r['name']:<8} lr x{r['lr_mult']:g}  weight decay {r['weight_decay']:.0e}  "
                     f"{r['parameters']:,} parameters" for r in rows)


class PaperSGD(torch.optim.Optimizer):
    """SGD with the paper's momentum form: v <- momentum v - weight_decay lr w - lr g; w <- w + v.
    Per-group lr and weight_decay; `foreach` (default: on when every parameter is on a GPU) batches the
    updates of a group into a few multi-tensor kernels."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            velocity = [self.state[p].setdefault("velocity", torch.zeros_like(p)) for p in params]
            foreach = group["foreach"]
            if foreach is None:
                foreach = bool(params) and all(p.is_cuda for p in params)
            (_foreach_update if foreach else _loop_update)(params, [p.grad for p in params], velocity, group)
        return loss


def _foreach_update(params, grads, velocity, group) -> None:
    if not params:
        return
    lr, decay = group["lr"], group["weight_decay"]
    torch._foreach_mul_(velocity, group["momentum"])
    if decay:
        torch._foreach_add_(velocity, params, alpha=-lr * decay)
    torch._foreach_add_(velocity, grads, alpha=-lr)
    torch._foreach_add_(params, velocity)


def _loop_update(params, grads, velocity, group) -> None:
    lr, decay = group["lr"], group["weight_decay"]
    for p, g, v in zip(params, grads, velocity):
        v.mul_(group["momentum"])
        if decay:
            v.add_(p, alpha=-lr * decay)
        v.add_(g, alpha=-lr)
        p.add_(v)


def make_optimizer(model: nn.Module, form: str, lr: float, momentum: float, weight_decay: float,
                   bias_lr_mult: float = 2.0, bias_decay: bool = False) -> torch.optim.Optimizer:
    """The trainer's optimiser: `form` "paper" (PaperSGD) or "torch" (torch.optim.SGD), on `param_groups`,
    each group's lr already set to lr x its multiplier."""
    if form not in MOMENTUM_FORMS:
        raise ValueError(f"momentum form must be one of {MOMENTUM_FORMS}, not {form!r}")
    groups = param_groups(model, weight_decay, bias_lr_mult, bias_decay)
    kind = PaperSGD if form == "paper" else torch.optim.SGD
    optimizer = kind(groups, lr=lr, momentum=momentum)
    set_lr(optimizer, lr)
    return optimizer
