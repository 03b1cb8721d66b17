"""The demo: a shortened end-to-end run through the real code paths (2 gloo processes, DALI CPU)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from alexnet_pipe.report.demo import MARKER, DemoSettings, run
from alexnet_pipe.core.errors import UserError
from alexnet_pipe_cli.main import cli


@pytest.mark.slow
def test_shortened_demo_runs_every_step_and_learns(tmp_path):
    s = DemoSettings(data=tmp_path, classes=4, train_per_class=30, val_per_class=8, epochs=8)
    lines = []
    summary = run(s, echo=lines.append)
    assert [k for k in summary["steps"]] == ["sample data (synthetic)", "prepare", "stats --pca", "train",
                                             "evaluate", "pictures"]
    for views in ("centre", "ten-crop"):
        err = summary["errors"][views]
        assert err["images"] == 4 * 8 and err["views"] == (10 if views == "ten-crop" else 1)
    # chance is 75% top-1 error; "far better than chance": at most half of it
    assert summary["errors"]["centre"]["top1_error"] <= 0.375, summary["errors"]
    for name in ("filters", "curves", "neighbors", "augment"):
        with Image.open(s.root / "pictures" / f"{name}.png") as img:
            assert img.size[0] > 100 and img.size[1] > 100
    assert json.loads((s.root / "demo.json").read_text())["errors"]["centre"] == summary["errors"]["centre"]
    assert any("top-1 error" in line for line in lines)
    assert all(p.is_relative_to(s.root) for p in tmp_path.rglob("*") if p != s.root)  # nothing outside DATA/demo


def test_demo_replaces_only_its_own_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "precious.txt").write_text("user data")
    with pytest.raises(UserError, match="was not made by the demo"):
        run(DemoSettings(data=tmp_path))
    assert (tmp_path / "demo" / "precious.txt").exists()
    r = CliRunner().invoke(cli, ["demo", "--data", str(tmp_path)])
    assert r.exit_code == 1 and "not made by the demo" in r.output and "Traceback" not in r.output


def test_marker_is_what_allows_a_rerun(tmp_path):
    from alexnet_pipe.report.demo import _fresh_root
    root = tmp_path / "demo"
    _fresh_root(root)
    (root / "demo.json").write_text("x")  # an old output of the demo
    _fresh_root(root)
    assert (root / MARKER).exists() and not (root / "demo.json").exists()
