"""A full disk while writing statistics or a checkpoint: one sentence naming the file and the space, and what was
written before stays whole (issue 12). Needs a small tmpfs (root): a failure saying so where it cannot mount."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from alexnet_pipe.train.checkpoint import checkpoints, load_checkpoint
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.train.entry import run_training
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images
from helpers.training import tiny


def _fill(mnt, leave_mb: float) -> None:
    """Leave about `leave_mb` MB free on the tmpfs."""
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    (mnt / "ballast").write_bytes(b"\0" * max(0, int(free - leave_mb * 2**20)))


def test_a_checkpoint_that_does_not_fit_stops_the_run_and_keeps_the_earlier_ones(small_disk):  # noqa: F811
    run = small_disk / "run"
    s = tiny(run, max_steps=30, ckpt_every=1, keep=30, width=0.0625)
    run_training(tiny(small_disk / "probe", max_steps=1, width=0.0625))
    size = max(p.stat().st_size for p in (small_disk / "probe").glob("ckpt-*.pt"))
    _fill(small_disk, 4.5 * size / 2**20)
    with pytest.raises(UserError, match=r"no space left for .*ckpt-0+\d+\.pt.*MB free now") as caught:
        run_training(s)
    assert "\n" not in str(caught.value)
    kept = checkpoints(run)
    assert 2 <= len(kept) <= 5 and not [p for p in run.iterdir() if ".tmp-" in p.name]
    for path in kept:  # every earlier checkpoint loads, whole
        assert all(torch.isfinite(v).all() for v in load_checkpoint(path)["model"].values())


def test_stats_on_a_full_disk_is_one_sentence_and_keeps_the_earlier_files(small_disk):  # noqa: F811
    images = random_images(24, 64, seed=3)
    data = make_data_dir(small_disk / "d", {"train": (images, np.arange(24) % 3)}, 3, 2, "raw")
    runner = CliRunner()
    assert runner.invoke(cli, ["stats", "--pca", "--data", str(data)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (data / "stats").iterdir()}
    _fill(small_disk, 0.02)
    result = runner.invoke(cli, ["stats", "--pca", "--recompute", "--device", "cpu", "--data", str(data)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no space left for" in result.output and "MB free now" in result.output
    after = {p.name: p.read_bytes() for p in (data / "stats").iterdir()}
    assert after == before  # nothing half-written, nothing lost


@pytest.mark.parametrize("uid", [0, 1000])
def test_a_tmpfs_that_cannot_be_mounted_fails_instead_of_skipping(tmp_path, monkeypatch, uid):
    """The full-disk and read-only tests never skip, for root (CI) or another user: a mount that fails is a
    failure naming how to leave them out on purpose (-m "not mount")."""
    from helpers.mounts import require_tmpfs
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    try:
        require_tmpfs(tmp_path / "no-such-dir", "1M")
    except BaseException as exc:  # noqa: BLE001 - a skip must not end this test as a skip
        got = exc
    else:
        got = None
    assert type(got) is pytest.fail.Exception and "tmpfs" in str(got) and '-m "not mount"' in str(got), repr(got)


def test_every_test_that_mounts_is_marked_mount_and_only_those():
    """-m "not mount" leaves out exactly the tests whose fixtures mount (the hostile sweep's read-only paths too),
    so that leaving them out is a choice the run states, never a draw quietly narrowed."""
    import subprocess
    import sys
    files = ["tests/test_hostile_generated.py", "tests/core/test_error_boundary.py", "tests/test_disk_full.py"]
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m",
                             "mount", *files], capture_output=True, text=True, cwd=Path(__file__).parents[1]).stdout
    marked = {line.split("::")[1].split("[")[0] for line in listed.splitlines() if "::" in line}
    assert {"test_option_values", "test_file_kinds_where_a_path_is_expected", "test_environment",
            "test_stats_on_a_read_only_data_dir_is_one_sentence",
            "test_a_checkpoint_that_does_not_fit_stops_the_run_and_keeps_the_earlier_ones"} <= marked, listed
    assert "test_every_command_has_a_tiny_run" not in marked and not any("cannot_be_mounted" in t for t in marked)
