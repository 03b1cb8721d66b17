"""The paper beside the run (paper.py): `train --dry-run` prints every number of the paper with this run's value,
and docs/reproducing.md shows exactly what the command prints for --recipe paper."""
from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from alexnet_pipe_cli.main import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "reproducing.md"
# ImageNet's shape without ImageNet: 1000 classes, 256-pixel inputs (the synthetic loader's size)
ARGS = ["train", "--loader", "synthetic", "--num-classes", "1000", "--cpu", "--dry-run"]


def _report(tmp_path, *extra) -> str:
    result = CliRunner().invoke(cli, [*ARGS, "--run", str(tmp_path / "r"), *extra])
    assert result.exit_code == 0, result.output
    return result.output[result.output.index("the paper beside this run"):]


def _marked(report: str) -> set[str]:
    return {line[4:].split("  ")[0].strip() for line in report.splitlines() if line.startswith("  * ")}


def test_the_reproducing_doc_is_the_table_as_printed(tmp_path):
    block = re.search(r"<!-- printed by: alexnet-pipe train --recipe paper --dry-run[^>]*-->\n```\w*\n(.*?)\n```",
                      DOC.read_text(), re.S)
    assert block is not None
    assert block.group(1).rstrip() == _report(tmp_path, "--recipe", "paper").rstrip()


def test_the_paper_recipe_matches_the_paper_in_every_row(tmp_path):
    report = _report(tmp_path, "--recipe", "paper")
    assert _marked(report) == set()
    assert re.search(r"parameters\s+60,965,224\s+60,965,224", report)
    assert re.search(r"biases\s+lr x2\s+weight decay 0e\+00\s+10,568 parameters", report)
    assert re.search(r"weights\s+lr x1\s+weight decay 5e-04\s+60,954,656 parameters", report)


def test_a_departure_from_the_paper_is_marked(tmp_path):
    marked = _marked(_report(tmp_path, "--recipe", "paper", "--lr", "0.02", "--lrn-alpha", "alpha-as-printed",
                             "--dropout", "0.3", "--bias-decay"))
    assert marked == {"learning rate", "LRN alpha scale (as trained)", "dropout", "bias weight decay (authors' code)"}
    small = _marked(_report(tmp_path, "--recipe", "small"))
    assert {"weight init", "momentum form", "schedule", "normalisation", "parameters"} <= small


# --- issue 20: the run's column is read off the built objects: break one, its row is marked ------------------

import dataclasses  # noqa: E402
from collections import OrderedDict  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from alexnet_pipe.train import paper  # noqa: E402
from alexnet_pipe.train.config import resolve_settings  # noqa: E402
from alexnet_pipe.train.entry import finalize  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The paper recipe's model, optimiser and loader settings at ImageNet's shape, built once (60 M weights)."""
    run = tmp_path_factory.mktemp("paper") / "r"
    s = finalize(resolve_settings("paper", loader="synthetic", num_classes=1000, run=str(run)), 1)
    return (s, *paper.built(s))


def _marked_by(s, model, opt, ls) -> set[str]:
    return _marked(paper.table(paper.rows(s, model, opt, ls, 256)))


def _marked_rows(rows) -> set[str]:
    return _marked(paper.table(rows))


def test_the_built_paper_run_marks_nothing(built):
    assert _marked_by(*built) == set()


def _model_change(model, path: str, attr: str, value):
    """Set one attribute of one module (restored after the test by the caller's `undo`)."""
    module = model.get_submodule(path)
    old = getattr(module, attr)
    setattr(module, attr, value)
    return lambda: setattr(module, attr, old)


@pytest.mark.parametrize("path, attr, value, row", [
    ("features.norm1", "k", 1.0, "LRN k, n, alpha, beta"),  # Caffe's k
    ("features.norm2", "size", 3, "LRN k, n, alpha, beta"),
    ("features.norm1", "alpha", 1e-3, "LRN k, n, alpha, beta"),
    ("features.norm2", "beta", 0.5, "LRN k, n, alpha, beta"),
    ("features.norm1", "convention", "alpha-as-printed", "LRN alpha scale (as trained)"),
    ("features.norm2", "groups", 1, "LRN window within"),
    ("classifier.drop7", "p", 0.3, "dropout"),
])
def test_a_module_that_departs_from_the_paper_is_marked(built, path, attr, value, row):
    s, model, opt, ls = built
    undo = _model_change(model, path, attr, value)
    try:
        assert _marked_rows(paper.model_rows(model, ls.crop)) == {row}
    finally:
        undo()


def test_dropout_in_torchvisions_place_is_marked(built):
    s, model, opt, ls = built
    c = model.classifier
    before = c
    model.classifier = nn.Sequential(OrderedDict(drop6=c.drop6, fc6=c.fc6, relu6=c.relu6, drop7=c.drop7, fc7=c.fc7,
                                                 relu7=c.relu7, fc8=c.fc8))
    try:
        assert _marked_rows(paper.model_rows(model, ls.crop)) == {"dropout"}
    finally:
        model.classifier = before


@pytest.mark.parametrize("layer, change, row", [
    ("classifier.fc6", lambda w: w.mul_(1.5), "weight init"),     # N(0, 0.015)
    ("features.conv1", lambda w: w.mul_(1.05), "weight init"),    # 5% off, in 34,848 weights
    ("features.conv3", lambda w: w.add_(0.002), "weight init"),   # a mean of 0.2 sigma
])
def test_weights_drawn_off_the_papers_distribution_are_marked(built, layer, change, row):
    s, model, opt, ls = built
    weight = model.get_submodule(layer).weight
    saved = weight.detach().clone()
    with torch.no_grad():
        change(weight)
    try:
        assert _marked_rows(paper.model_rows(model, ls.crop)) == {row}
    finally:
        with torch.no_grad():
            weight.copy_(saved)


@pytest.mark.parametrize("layer, value, row", [
    ("features.conv3", 1.0, "bias init conv1/3, fc8"),  # the summary's "conv2, conv3, conv5"
    ("features.conv4", 0.1, "bias init conv2/4/5, fc6/7"),  # Caffe's 0.1
    ("classifier.fc7", 0.0, "bias init conv2/4/5, fc6/7"),
])
def test_biases_drawn_off_the_paper_are_marked(built, layer, value, row):
    s, model, opt, ls = built
    bias = model.get_submodule(layer).bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(value)
    try:
        assert _marked_rows(paper.model_rows(model, ls.crop)) == {row}
    finally:
        with torch.no_grad():
            bias.copy_(saved)


@pytest.mark.parametrize("group, key, factor, rows", [
    (0, "lr", 2.0, {"learning rate", "bias lr multiplier (authors' code)"}),
    (1, "lr", 0.5, {"bias lr multiplier (authors' code)"}),
    (0, "momentum", 0.5, {"momentum"}),
    (0, "weight_decay", 0.2, {"weight decay (weights)"}),
])
def test_an_optimiser_group_off_the_paper_is_marked(built, group, key, factor, rows):
    s, model, opt, ls = built
    old = opt.param_groups[group][key]
    opt.param_groups[group][key] = old * factor
    try:
        assert _marked_rows(paper.optimiser_rows(opt, 128)) == rows
    finally:
        opt.param_groups[group][key] = old


def test_decayed_biases_and_torchs_momentum_are_marked(built):
    s, model, opt, ls = built
    opt.param_groups[1]["weight_decay"] = 5e-4
    try:
        assert _marked_rows(paper.optimiser_rows(opt, 128)) == {"bias weight decay (authors' code)"}
    finally:
        opt.param_groups[1]["weight_decay"] = 0.0
    sgd = torch.optim.SGD([{k: v for k, v in g.items() if k != "foreach"} for g in opt.param_groups], lr=0.01)
    assert _marked_rows(paper.optimiser_rows(sgd, 128)) == {"momentum form"}


@pytest.mark.parametrize("change, row", [
    (dict(lighting=0.05), "PCA lighting sigma"), (dict(lighting_scale="fbresnet"), "PCA lighting scale"),
    (dict(color_jitter=0.4), "colour jitter"), (dict(normalize="channel"), "normalisation"),
    (dict(crops="random-resized"), "train crops"),
])
def test_loader_settings_off_the_paper_are_marked(built, change, row):
    s, model, opt, ls = built
    assert _marked_rows(paper.data_rows(dataclasses.replace(ls, **change), s)) == {row}


def test_a_plateau_rule_that_drops_once_more_is_marked(built, monkeypatch):
    from alexnet_pipe.train import schedule
    update = schedule.Plateau.update

    def one_more(self, error):  # a mutant's `drops <= max_drops`
        self.max_drops += 1
        try:
            return update(self, error)
        finally:
            self.max_drops -= 1
    assert _marked_rows(paper.schedule_rows(built[0])) == set()
    monkeypatch.setattr(schedule.Plateau, "update", one_more)
    assert _marked_rows(paper.schedule_rows(built[0])) == {"lr drops"}
    monkeypatch.setattr(schedule, "lr_at", lambda *a, drops=0, **k: 0.5 ** drops)
    assert _marked_rows(paper.schedule_rows(built[0])) == {"lr drops", "lr drop factor"}


def test_fewer_distinct_test_views_are_marked(built, monkeypatch):
    from alexnet_pipe.loaders import augment
    ten = augment.ten_crop_offsets
    assert _marked_rows([paper.views_row(256, 224)]) == set()
    monkeypatch.setattr(augment, "ten_crop_offsets", lambda size, crop: (ten(size, crop)[0], ten(size, crop)[1] * 0))
    assert _marked_rows([paper.views_row(256, 224)]) == {"test views"}


@pytest.mark.parametrize("change, shown", [(dict(precision="bf16"), "bf16"), (dict(precision="fp16"), "fp16"),
                                           (dict(device="cuda", precision="auto"), "bf16 (auto)"), (dict(precision="fp32"), "fp32")])
def test_the_precision_row_shows_the_arithmetic_used(built, change, shown):
    s, model, opt, ls = built
    s = dataclasses.replace(s, **change)
    assert dict((what, ours) for what, _, ours in paper.data_rows(ls, s))["precision"] == shown
    assert _marked_rows(paper.data_rows(ls, s)) == ({"precision"} if shown != "fp32" else set())


def test_caffes_227_and_the_whole_lrn_window_in_the_dry_run(tmp_path):
    report = _report(tmp_path, "--recipe", "paper", "--crop", "227", "--lrn-span", "whole")
    assert _marked(report) == {"input crop", "LRN window within"}  # conv1 still 96x55x55: Caffe's geometry
    assert re.search(r"LRN window within\s+48, 128 maps\s+96, 256 maps \(all maps\)", report)
