"""The run's log (runlog.py): metrics rows survive a killed run."""
from __future__ import annotations

import json

import pytest

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.train.runlog import read_metrics


def test_read_metrics_skips_only_a_cut_last_row(tmp_path):
    """A run killed mid-write leaves half a row; resume and viz curves must still read the rest."""
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    assert read_metrics(tmp_path) == rows
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "lo\n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(UserError, match="line 1"):
        read_metrics(tmp_path)


# --- the TensorBoard log (--tensorboard): the same scalars as metrics.jsonl --------------------

def tensorboard_scalars(run) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard's own reader gives them (purged events left out; a tag whose events
    were all purged stays listed, empty, and is dropped here)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    series = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return {tag: values for tag, values in series.items() if values}


def jsonl_scalars(run) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for row in read_metrics(run):
        for key, value in row.items():
            if key != "step":
                out.setdefault(key, []).append((row["step"], value))
    return out


def assert_same_scalars(run):
    import math
    got, want = tensorboard_scalars(run), jsonl_scalars(run)
    assert got.keys() == want.keys()
    for tag in want:  # event files hold float32
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        assert all(math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-30) for (_, g), (_, w) in zip(got[tag], want[tag]))


def test_tensorboard_log_has_the_rows_scalars_and_follows_a_resume(tmp_path):
    from alexnet_pipe.train.config import TrainSettings
    from alexnet_pipe.train.runlog import RunLog
    s = TrainSettings(tensorboard=True)
    log = RunLog(tmp_path, True)
    log.start(s, 0)
    for step in (1, 2, 3, 4):
        log.row(step=step, epoch=step / 4, lr=0.01 * step, loss=2.0 / step, images_per_sec=100.0 + step,
                data_wait_fraction=0.01)
    log.row(step=4, epoch=1.0, top1_error=0.5, top5_error=0.25, images=32)
    assert_same_scalars(tmp_path)
    resumed = RunLog(tmp_path, True)  # a resume from step 2: rows 3 and 4 were after the checkpoint
    resumed.start(s, 2)
    resumed.row(step=3, epoch=0.75, lr=0.5, loss=9.0, images_per_sec=1.0, data_wait_fraction=0.5)
    assert_same_scalars(tmp_path)
    assert tensorboard_scalars(tmp_path)["loss"] == [(1, 2.0), (2, 1.0), (3, 9.0)]


def test_no_tensorboard_log_unless_asked_nor_on_other_ranks(tmp_path):
    from alexnet_pipe.train.config import TrainSettings
    from alexnet_pipe.train.runlog import RunLog
    RunLog(tmp_path / "a", True).start(TrainSettings(), 0)
    RunLog(tmp_path / "b", False).start(TrainSettings(tensorboard=True), 0)
    assert not (tmp_path / "a" / "tensorboard").exists() and not (tmp_path / "b").exists()


def test_training_with_tensorboard_writes_the_jsonl_scalars(tmp_path):
    from alexnet_pipe.train.config import TrainSettings
    from alexnet_pipe.train.entry import run_training
    run = tmp_path / "r"
    s = TrainSettings(loader="synthetic", width=0.0625, crop=64, batch_size=4, num_classes=3, eval_every=1,
                      log_every=2, synthetic_steps=3, epochs=2, max_steps=5, run=str(run), data=str(tmp_path),
                      tensorboard=True)
    run_training(s)
    assert {"loss", "lr", "top1_error"} <= tensorboard_scalars(run).keys()
    assert_same_scalars(run)
