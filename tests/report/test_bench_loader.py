"""`bench loader --repeats`: contenders in alternating rounds, medians, and each ratio from one round's pair."""
from __future__ import annotations

import json
import statistics

import pytest
from click.testing import CliRunner


def _bench(args: list[str]):
    """The command in a process of its own: it forks DataLoader workers after DALI's decode-only pipeline ran,
    and after the rest of the suite's OpenCV, torch and DALI threads in this process a fork hung once."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "alexnet_pipe", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.dali  # the decode-only contender is DALI's
def test_bench_loader_rounds_give_medians_and_spreads(dirs):
    result = _bench(["bench", "loader", "--data", str(dirs["jpeg"]), "--crop", "32", "--loader",
                                      "torch", "--batch-size", "8", "--batches", "1", "--warmup", "1", "--json",
                                      "--crops", "random-resized", "--color-jitter", "0.4", "--lighting", "0",
                                      "--repeats", "3"])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    runs = out["runs"]
    assert sorted(runs) == ["baseline", "decode_only", "loader", "paper"]
    assert all(len(rates) == 3 and min(rates) > 0 for rates in runs.values())
    assert out["images_per_sec"] == statistics.median(runs["loader"])
    ratios = [a / b for a, b in zip(runs["paper"], runs["baseline"])]
    assert out["paper_speedup_vs_baseline"] == pytest.approx(statistics.median(ratios))
    assert out["paper_speedup_vs_baseline_spread"] == pytest.approx([min(ratios), max(ratios)])
    assert out["ratio_to_paper_spread"][0] <= out["ratio_to_paper"] <= out["ratio_to_paper_spread"][1]
    assert all(len(v) == 3 and min(v) > 0 for v in out["cpu_runs"].values())
    assert out["cpu_us_per_image"]["paper"] == statistics.median(out["cpu_runs"]["paper"])
    assert out["cpu_ratio_to_paper"] > 0
    whole = out["startup_included"]  # each whole call's rate, start-up included, by the same rounds
    assert sorted(whole["runs"]) == sorted(runs) and all(len(v) == 3 for v in whole["runs"].values())
    assert whole["images_per_sec"]["loader"] == statistics.median(whole["runs"]["loader"])
    ratios = [a / b for a, b in zip(whole["runs"]["paper"], whole["runs"]["baseline"])]
    assert whole["paper_speedup_vs_baseline"] == pytest.approx(statistics.median(ratios))
    assert whole["paper_speedup_vs_baseline_spread"] == pytest.approx([min(ratios), max(ratios)])
    text = _bench(["bench", "loader", "--data", str(dirs["jpeg"]), "--crop", "32", "--loader",
                                    "torch", "--batch-size", "8", "--batches", "1", "--warmup", "1",
                                    "--no-baseline", "--repeats", "2"])
    assert text.returncode == 0 and "decode-only" in text.stdout and "paper's aug" not in text.stdout
    assert "whole calls, start-up included: loader" in text.stdout
