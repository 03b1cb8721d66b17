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
