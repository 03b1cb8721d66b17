"""Every number of the paper beside this run's value: what `train --dry-run` prints and docs/reproducing.md shows.

The run's side is read off the objects the run builds, never restated: the model the trainer builds (its LRN
modules, its dropout modules, the statistics of its freshly drawn weights and biases), the optimiser the trainer
makes (its parameter groups), the plateau rule, the training loader's settings and the evaluation's views. A change
anywhere that moves the run away from the paper, in a setting or in the code that turns settings into objects,
shows up here as a marked row (docs/reproducing.md is the table as printed; tests/train/test_paper.py keeps the two equal).
"""
from __future__ import annotations

import math
from pathlib import Path

from alexnet_pipe.train.config import TrainSettings
from alexnet_pipe.train.precision import resolved as resolved_precision

# (layer, the paper's output shape as channels x height x width), from its architecture table (docs/paper.md)
PAPER_SHAPES = [("conv1", "96x55x55"), ("pool1", "96x27x27"), ("conv2", "256x27x27"), ("pool2", "256x13x13"),
                ("conv3", "384x13x13"), ("conv4", "384x13x13"), ("conv5", "256x13x13"), ("pool5", "256x6x6"),
                ("fc6", "4096"), ("fc7", "4096"), ("fc8", "1000")]
PAPER_STD = 0.01  # weights N(0, 0.01)
BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")  # the paper's layers with bias 1 (0 in the others)


def _classes(s: TrainSettings) -> int:
    if s.num_classes:
        return s.num_classes
    if s.loader == "synthetic":
        return 10
    from alexnet_pipe.shards.manifest import read_manifest
    return len(read_manifest(Path(s.data))["classes"])


def _size(s: TrainSettings) -> int:
    if s.loader == "synthetic":
        return 256
    from alexnet_pipe.shards.manifest import read_manifest
    return int(read_manifest(Path(s.data))["settings"]["size"])


def _sci(x: float) -> str:
    """LRN's alpha as the paper writes it: 1e-4, not 0.0001."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}" if 0 < abs(x) < 1e-3 else f"{x:g}"


def _values(values) -> str:
    return ", ".join(v if isinstance(v, str) else f"{v:g}" for v in sorted(set(values))) or "-"


def _shape_rows(table: dict) -> list[tuple[str, str, str]]:
    shapes = {r["name"]: "x".join(map(str, r["shape"])) for r in table["layers"]}
    return [(f"{name} output", paper, shapes.get(name, "-")) for name, paper in PAPER_SHAPES]


def _dropout_row(model) -> tuple[str, str, str]:
    """Where the dropout modules sit (the layer each follows) and their p."""
    from torch import nn
    names = [name for name, _ in model.classifier.named_children()]
    drops = [(names[i - 1] if i else "-", m.p) for i, (_, m) in enumerate(model.classifier.named_children())
             if isinstance(m, nn.Dropout)]
    after = ", ".join(place for place, _ in drops) or "-"
    return ("dropout", "0.5 after relu6, relu7", f"{_values(p for _, p in drops)} after {after}")


def _lrn_rows(model, table: dict) -> list[tuple[str, str, str]]:
    """The LRN modules' constants, how their alpha scales the window sum, and how many maps each window sees."""
    from alexnet_pipe.model.alexnet import LocalResponseNorm
    norms = [(name, m) for name, m in model.features.named_children() if isinstance(m, LocalResponseNorm)]
    maps = {r["name"]: r["shape"][0] for r in table["layers"]}
    constants = sorted({f"{m.k:g}, {m.size}, {_sci(m.alpha)}, {m.beta:g}" for _, m in norms})
    within = ", ".join(str(maps[name] // m.groups) for name, m in norms)
    where = "each GPU's half" if norms and all(m.groups == 2 for _, m in norms) else "all maps"
    return [("LRN k, n, alpha, beta", "2, 5, 1e-4, 0.75", "; ".join(constants) or "-"),
            ("LRN alpha scale (as trained)", "alpha-over-n", _values(m.convention for _, m in norms)),
            ("LRN window within", "48, 128 maps", f"{within} maps ({where})" if norms else "-")]


def _init_row(model) -> tuple[str, str, str]:
    """'N(0, 0.01)' when every conv and fc weight tensor is consistent with it (mean and std within 5 standard
    errors: a real departure shows at any width, sampling noise does not); else the range of the stds drawn."""
    import torch
    from torch import nn
    stats = [(*(t.item() for t in torch.std_mean(m.weight.detach())), m.weight.numel())
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if all(abs(mean) <= 5 * PAPER_STD / math.sqrt(n) and abs(std - PAPER_STD) <= 5 * PAPER_STD / math.sqrt(2 * n)
           for std, mean, n in stats):
        return ("weight init", "N(0, 0.01)", "N(0, 0.01)")
    stds = [std for std, _, _ in stats]
    return ("weight init", "N(0, 0.01)", f"N(0, {min(stds):.2g}..{max(stds):.2g})")


def _bias_rows(model) -> list[tuple[str, str, str]]:
    from torch import nn
    layers = [(name.rsplit(".", 1)[-1], m) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))]
    one = [v for name, m in layers if name in BIAS_ONE for v in m.bias.detach().unique().tolist()]
    zero = [v for name, m in layers if name not in BIAS_ONE for v in m.bias.detach().unique().tolist()]
    return [("bias init conv2/4/5, fc6/7", "1", _values(one)), ("bias init conv1/3, fc8", "0", _values(zero))]


def model_rows(model, crop: int) -> list[tuple[str, str, str]]:
    """The rows read off a built model: shapes, parameters, dropout, LRN, weight and bias init."""
    from alexnet_pipe.model.alexnet import layer_table
    table = layer_table(model, crop)
    return [*_shape_rows(table), ("parameters", "60,965,224", f"{table['parameters']:,}"), _dropout_row(model),
            *_lrn_rows(model, table), _init_row(model), *_bias_rows(model)]


def optimiser_rows(opt, batch: int) -> list[tuple[str, str, str]]:
    """The rows read off the optimiser the trainer makes (its lr as set at the start of the run)."""
    from alexnet_pipe.train.optim import PaperSGD
    weights, biases = ({g.get("name"): g for g in opt.param_groups}[name] for name in ("weights", "biases"))
    form = "paper" if isinstance(opt, PaperSGD) else "torch"
    return [("batch", "128", str(batch)), ("learning rate", "0.01", f"{weights['lr']:g}"),
            ("momentum", "0.9", f"{weights['momentum']:g}"), ("momentum form", "paper", form),
            ("weight decay (weights)", "0.0005", f"{weights['weight_decay']:g}"),
            ("bias lr multiplier (authors' code)", "2", f"{biases['lr'] / weights['lr']:g}"),
            ("bias weight decay (authors' code)", "0", f"{biases['weight_decay']:g}")]


def schedule_rows(s: TrainSettings) -> list[tuple[str, str, str]]:
    """The plateau rule run on an error that never improves: how many drops it makes, and by what factor."""
    from alexnet_pipe.train.schedule import Plateau, lr_at
    drops, factor = "-", "-"
    if s.schedule == "plateau":
        plateau = Plateau(s.patience, s.max_drops)
        for _ in range(s.patience * (s.max_drops + 2)):
            plateau.update(1.0)
        drops, factor = str(plateau.drops), f"{lr_at('plateau', 1.0, 0.0, drops=1):g}"
    return [("schedule", "plateau", s.schedule), ("lr drops", "3", drops), ("lr drop factor", "0.1", factor),
            ("epochs", "90", str(s.epochs))]


def data_rows(ls, s: TrainSettings) -> list[tuple[str, str, str]]:
    """The rows read off the training loader's settings, the loss and the arithmetic."""
    return [("train crops", "translate", ls.crops), ("PCA lighting sigma", "0.1", f"{ls.lighting:g}"),
            ("PCA lighting scale", "convnet2", ls.lighting_scale), ("colour jitter", "0", f"{ls.color_jitter:g}"),
            ("label smoothing", "0", f"{s.label_smoothing:g}"), ("normalisation", "mean-image", ls.normalize),
            ("precision", "fp32", resolved_precision(s.precision, s.device) + (" (auto)" if s.precision == "auto" else ""))]


def views_row(size: int, crop: int) -> tuple[str, str, str]:
    """How many distinct views the ten-crop evaluation takes of one image."""
    from alexnet_pipe.loaders.augment import ten_crop_offsets
    offsets, flips = ten_crop_offsets(size, crop)
    views = {(int(x), int(y), bool(f)) for (x, y), f in zip(offsets, flips)}
    return ("test views", "10", f"{len(views)} (evaluate --ten-crop)")


def built(s: TrainSettings):
    """(model, optimiser, training loader settings) as the trainer makes them for rank 0, weights seeded as
    train() seeds them."""
    import torch
    from alexnet_pipe.train.loop import build, loader_settings, make_opt
    device = torch.device("cpu")  # the same objects on any device; a dry run needs none
    torch.manual_seed(s.seed)
    model = build(s, _classes(s), device)
    return model, make_opt(s, model), loader_settings(s, 0, s.nproc, device)


def rows(s: TrainSettings, model, opt, ls, size: int) -> list[tuple[str, str, str]]:
    """(what, the paper, this run) for every number the paper gives, read off the built objects; `s` as
    finalize() resolved it, `size` the stored image size."""
    return [("input crop", "224", str(ls.crop)), *model_rows(model, ls.crop),
            *optimiser_rows(opt, ls.batch_size * ls.world_size), *schedule_rows(s), *data_rows(ls, s),
            views_row(size, ls.crop)]


def report(s: TrainSettings) -> str:
    """The table (the paper beside this run, '*' where they differ), then the optimiser's parameter groups."""
    from alexnet_pipe.train.optim import describe_param_groups, format_param_groups
    model, opt, ls = built(s)
    groups = format_param_groups(describe_param_groups(opt.param_groups))
    return (f"the paper beside this run ('*': differs):\n{table(rows(s, model, opt, ls, _size(s)))}\n"
            f"optimiser parameter groups:\n" + "\n".join("  " + line for line in groups.splitlines()))


def table(body: list[tuple[str, str, str]]) -> str:
    """The rows as text; '*' marks a value that differs from the paper's."""
    width = max(len(what) for what, _, _ in body)
    lines = [f"  {'':1} {'':<{width}}  {'the paper':<24} this run"]
    for what, paper, ours in body:
        mark = " " if ours.split(" (")[0] == paper else "*"
        lines.append(f"  {mark} {what:<{width}}  {paper:<24} {ours}")
    return "\n".join(lines)
