"""Forward + backward time of the LRN implementations, and of the two grouped-convolution choices, at the
paper's shapes, all measured in the same run (alternating, best of --repeats), as ratios to the reference.

    python benchmarks/lrn_speed.py                          # CPU, fp32, batch 32
    python benchmarks/lrn_speed.py --device cuda --dtype bfloat16 --batch 256 --channels-last
"""
from __future__ import annotations

import argparse
import time

import torch

from alexnet_pipe.model.lrn import LRN_IMPLS
from alexnet_pipe.model.alexnet import LocalResponseNorm, SplitConv2d

LRN_SHAPES = {"norm1": (96, 55, 55), "norm2": (256, 27, 27)}
# (in, out, kernel, padding, input size) of the paper's two-group convolutions
CONV_SHAPES = {"conv2": (96, 256, 5, 2, 27), "conv4": (384, 384, 3, 1, 13), "conv5": (384, 256, 3, 1, 13)}


def _time(fn, x, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn(x).float().sum().backward()
    sync()
    return time.perf_counter() - start


def compare(modules: dict, x: torch.Tensor, repeats: int) -> dict:
    """Best forward+backward seconds of each module on the same input, runs alternating between modules."""
    for module in modules.values():  # warm-up (and torch.compile's compilation) outside the timing
        _time(module, x.detach().requires_grad_(), x.device)
    best = {name: float("inf") for name in modules}
    for _ in range(repeats):
        for name, module in modules.items():
            best[name] = min(best[name], _time(module, x.detach().requires_grad_(), x.device))
    return best


def _input(batch, shape, args, device):
    x = torch.relu(torch.randn(batch, *shape, device=device) * 40).to(getattr(torch, args.dtype))
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


def _report(layer: str, best: dict, baseline: str) -> None:
    cells = ", ".join(f"{name} {t * 1e3:.2f} ms ({best[baseline] / t:.2f}x)" for name, t in best.items())
    print(f"{layer}: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--impls", default=",".join(LRN_IMPLS))
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{device} {args.dtype} batch {args.batch}, forward+backward, best of {args.repeats}; "
          "(speed-up against the first)")
    lrns = {impl: LocalResponseNorm(impl=impl) for impl in ["reference", *args.impls.split(",")] if impl}
    for layer, shape in LRN_SHAPES.items():
        _report(layer, compare(lrns, _input(args.batch, shape, args, device), args.repeats), "reference")
    for layer, (cin, cout, kernel, pad, size) in CONV_SHAPES.items():
        grouped = torch.nn.Conv2d(cin, cout, kernel, 1, pad, groups=2).to(device, getattr(torch, args.dtype))
        split = SplitConv2d(cin, cout, kernel, 1, pad, groups=2).to(device, getattr(torch, args.dtype))
        split.load_state_dict(grouped.state_dict())
        convs = {"grouped": grouped, "split": split}
        _report(layer, compare(convs, _input(args.batch, (cin, size, size), args, device), args.repeats), "grouped")


if __name__ == "__main__":
    main()
