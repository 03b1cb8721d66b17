"""`bench train`'s rounds: the two loops alternate, each round gives its own overhead, medians and spreads."""
from __future__ import annotations

import json

from click.testing import CliRunner


def test_rounds_alternate_and_report_medians_and_spreads(monkeypatch):
    import alexnet_pipe.report.bench_train as bench
    from alexnet_pipe_cli.main import cli
    calls = []
    # (wall, CPU) seconds per step, per round: the trainer 10% slower in wall time in two rounds of three, and
    # a CPU cost of 2%, 4%, 3%
    bare = iter([(0.100, 0.050), (0.200, 0.050), (0.100, 0.050)])
    trainer = iter([(0.110, 0.051), (0.180, 0.052), (0.110, 0.0515)])
    monkeypatch.setattr(bench, "bare_step_time", lambda s, n, w: calls.append("bare") or next(bare))
    monkeypatch.setattr(bench, "trainer_step_time", lambda s, n, w: calls.append("trainer") or next(trainer))
    result = CliRunner().invoke(cli, ["bench", "train", "--cpu", "--repeats", "3", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output.strip().splitlines()[-1])
    assert calls == ["bare", "trainer", "trainer", "bare", "bare", "trainer"]
    assert abs(r["overhead"] - 0.10) < 1e-9 and [round(x, 9) for x in r["overhead_spread"]] == [-0.1, 0.1]
    assert abs(r["cpu_overhead"] - 0.03) < 1e-9 and [round(x, 9) for x in r["cpu_overhead_spread"]] == [0.02, 0.04]
    assert abs(r["bare_step_ms"] - 100.0) < 1e-9 and abs(r["trainer_step_ms"] - 110.0) < 1e-9
    assert r["rounds"]["trainer_ms"] == [110.0, 180.0, 110.0] and r["torch_threads"] == 1
    monkeypatch.setattr(bench, "bare_step_time", lambda s, n, w: (0.1, 0.05))
    monkeypatch.setattr(bench, "trainer_step_time", lambda s, n, w: (0.1, 0.05))
    text = CliRunner().invoke(cli, ["bench", "train", "--cpu", "--repeats", "2"])
    assert text.exit_code == 0 and "overhead    +0.0% (+0.0% to +0.0%)" in text.output, text.output
