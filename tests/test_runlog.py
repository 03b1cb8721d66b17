"""The run's log (runlog.py): metrics rows survive a killed run."""
from __future__ import annotations

import json

import pytest

from alexnet_pipe.errors import UserError
from alexnet_pipe.runlog import read_metrics


def test_read_metrics_skips_only_a_cut_last_row(tmp_path):
    """A run killed mid-write leaves half a row; resume and viz curves must still read the rest."""
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    assert read_metrics(tmp_path) == rows
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "lo\n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(UserError, match="line 1"):
        read_metrics(tmp_path)
