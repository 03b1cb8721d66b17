"""Every number of the paper beside this run's value: what `train --dry-run` prints and docs/reproducing.md shows.

The run's side is read off what the run will use (the resolved settings, the model it builds, its optimiser's
parameter groups), never restated, so a change anywhere that moves the run away from the paper shows up here as
a marked row (docs/reproducing.md is the table as printed; tests/train/test_paper.py keeps the two equal).
"""
from __future__ import annotations

from pathlib import Path

from alexnet_pipe.train.config import TrainSettings

# (layer, the paper's output shape as channels x height x width), from its architecture table (docs/paper.md)
PAPER_SHAPES = [("conv1", "96x55x55"), ("pool1", "96x27x27"), ("conv2", "256x27x27"), ("pool2", "256x13x13"),
                ("conv3", "384x13x13"), ("conv4", "384x13x13"), ("conv5", "256x13x13"), ("pool5", "256x6x6"),
                ("fc6", "4096"), ("fc7", "4096"), ("fc8", "1000")]


def _classes(s: TrainSettings) -> int:
    if s.num_classes:
        return s.num_classes
    if s.loader == "synthetic":
        return 10
    from alexnet_pipe.shards.manifest import read_manifest
    return len(read_manifest(Path(s.data))["classes"])


def _model_rows(s: TrainSettings) -> tuple[list[tuple[str, str, str]], object]:
    from alexnet_pipe.model.alexnet import build_model, layer_table
    model = build_model(s.arch, _classes(s), s.width, lrn_alpha=s.lrn_alpha, dropout=s.dropout, init=s.init,
                        bias_init=s.bias_init)
    table = layer_table(model, s.crop)
    shapes = {r["name"]: "x".join(map(str, r["shape"])) for r in table["layers"]}
    rows = [(f"{name} output", paper, shapes.get(name, "-")) for name, paper in PAPER_SHAPES]
    names = [r["name"] for r in table["layers"]]
    after = [names[i - 1] for i, n in enumerate(names) if n.startswith("drop")]
    rows += [("parameters", "60,965,224", f"{table['parameters']:,}"),
             ("dropout", "0.5 after relu6, relu7", f"{s.dropout:g} after {', '.join(after) or '-'}")]
    return rows, model


def _groups(s: TrainSettings, model) -> list[dict]:
    from alexnet_pipe.train.optim import describe_param_groups, param_groups
    return describe_param_groups(param_groups(model, s.weight_decay, s.bias_lr_mult, s.bias_decay))


def _optimiser_rows(s: TrainSettings, groups: list[dict]) -> list[tuple[str, str, str]]:
    weights, biases = ({g["name"]: g for g in groups}[name] for name in ("weights", "biases"))
    return [("batch", "128", str(s.batch_size)), ("learning rate", "0.01", f"{s.lr:g}"),
            ("momentum", "0.9", f"{s.momentum:g}"), ("momentum form", "paper", s.momentum_form),
            ("weight decay (weights)", "0.0005", f"{weights['weight_decay']:g}"),
            ("bias lr multiplier (authors' code)", "2", f"{biases['lr_mult']:g}"),
            ("bias weight decay (authors' code)", "0", f"{biases['weight_decay']:g}")]


def rows(s: TrainSettings, model_rows: list, groups: list[dict]) -> list[tuple[str, str, str]]:
    """(what, the paper, this run) for every number the paper gives; `s` as finalize() resolved it."""
    return [("input crop", "224", str(s.crop)), *model_rows,
            ("LRN k, n, alpha, beta", "2, 5, 1e-4, 0.75", "2, 5, 1e-4, 0.75"),
            ("LRN alpha scale (as trained)", "alpha-over-n", s.lrn_alpha),
            ("weight init", "N(0, 0.01)", "N(0, 0.01)" if s.init == "paper" else s.init),
            ("bias init conv2/4/5, fc6/7", "1", f"{s.bias_init:g}"),
            *_optimiser_rows(s, groups),
            ("schedule", "plateau", s.schedule), ("lr drops (x0.1)", "3", str(s.max_drops)),
            ("epochs", "90", str(s.epochs)),
            ("train crops", "translate", getattr(s, "crops", "translate")),
            ("PCA lighting sigma", "0.1", f"{s.lighting:g}"),
            ("PCA lighting scale", "convnet2", s.lighting_scale),
            ("colour jitter", "0", f"{getattr(s, 'color_jitter', 0.0):g}"),
            ("label smoothing", "0", f"{getattr(s, 'label_smoothing', 0.0):g}"),
            ("normalisation", "mean-image", s.normalize),
            ("test views", "10", "10 (evaluate --ten-crop)")]


def report(s: TrainSettings) -> str:
    """The table (the paper beside this run, '*' where they differ), then the optimiser's parameter groups."""
    from alexnet_pipe.train.optim import format_param_groups
    model_rows, model = _model_rows(s)
    groups = _groups(s, model)
    return (f"the paper beside this run ('*': differs):\n{table(rows(s, model_rows, groups))}\n"
            f"optimiser parameter groups:\n" + "\n".join("  " + line for line in format_param_groups(groups).splitlines()))


def table(body: list[tuple[str, str, str]]) -> str:
    """The rows as text; '*' marks a value that differs from the paper's."""
    width = max(len(what) for what, _, _ in body)
    lines = [f"  {'':1} {'':<{width}}  {'the paper':<24} this run"]
    for what, paper, ours in body:
        mark = " " if ours.split(" (")[0] == paper else "*"
        lines.append(f"  {mark} {what:<{width}}  {paper:<24} {ours}")
    return "\n".join(lines)
