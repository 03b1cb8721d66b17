"""The trainer's wiring, tested through train() itself (issue 20): what a mutation test found unguarded.

Each test goes through the trainer as a run would (tests/helpers/wiring.py watches it from outside, as faults.py does),
so that deleting or miswiring one call in the loop fails here: per-rank dropout streams that replay on resume,
the plateau schedule's state across a resume, and random-resized crops that reach both edges.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from alexnet_pipe.loaders import augment
from alexnet_pipe.train.entry import run_training
from alexnet_pipe.train.runlog import read_metrics
from helpers.training import tiny


# ---------------------------------------------------------------- dropout: one stream per rank, replayed

@pytest.mark.slow
def test_two_ranks_through_train_draw_their_own_masks_that_replay_on_resume(tmp_path):
    """Two gloo ranks, the same batch on both: three steps straight, then step 3 again from the step-2
    checkpoint. Ranks must drop different units, every step anew, and the resumed step the same units again.
    The evaluation at the end counts both ranks' images (2 steps of 4 each)."""
    from helpers import wiring
    s = tiny(tmp_path / "a", max_steps=3, ckpt_every=2, keep=5, nproc=2, dropout=0.5, eval_every=1)
    resumed = dataclasses.replace(s, run=str(tmp_path / "b"), resume=str(tmp_path / "a" / "ckpt-00000002.pt"))
    results = wiring.run_ranks(2, [(s, str(tmp_path / "straight")), (resumed, str(tmp_path / "resumed"))])
    assert [r["images"] for r in results] == [16, 16] and results[0]["top1_error"] == results[1]["top1_error"]
    straight = [torch.load(tmp_path / f"straight.{rank}.pt") for rank in (0, 1)]
    again = [torch.load(tmp_path / f"resumed.{rank}.pt") for rank in (0, 1)]
    assert [len(steps) for steps in straight] == [3, 3] and [len(steps) for steps in again] == [1, 1]
    for step in range(3):
        for layer in ("drop6", "drop7"):
            masks = [straight[rank][step][layer] for rank in (0, 1)]
            assert masks[0].any() and masks[1].any()
            assert not torch.equal(masks[0], masks[1]), (step, layer)  # each rank its own draw
    for rank in (0, 1):
        assert not torch.equal(straight[rank][0]["drop6"], straight[rank][1]["drop6"])  # each step anew
        for step in (2,):
            for layer in ("drop6", "drop7"):
                torch.testing.assert_close(again[rank][step - 2][layer], straight[rank][step][layer], rtol=0, atol=0)



def test_dropout_on_a_gpu_is_seeded_on_that_gpu_s_generator(monkeypatch):
    """Dropout on CUDA draws from the device's own generator: the step's seed must go there (seeding the CPU's
    would leave every rank's GPU masks as torch.manual_seed made them, alike, and a resume unable to replay
    them). Stand-ins for the CUDA generators: this runs without a GPU."""
    from alexnet_pipe.train.loop import seed_dropout

    class Generator:
        def __init__(self):
            self.seeds = []

        def manual_seed(self, seed):
            self.seeds.append(seed)

    gpus = [Generator(), Generator()]
    monkeypatch.setattr(torch.cuda, "default_generators", gpus, raising=False)
    cpu = torch.default_generator.get_state()
    seed_dropout(12345, torch.device("cuda", 1))
    assert gpus[0].seeds == [] and gpus[1].seeds == [12345]
    assert torch.equal(torch.default_generator.get_state(), cpu)


# ---------------------------------------------------------------- the plateau schedule across a resume

def _lrs(run) -> list[tuple[int, float]]:
    return [(r["step"], r["lr"]) for r in read_metrics(run) if "loss" in r]


def test_a_resumed_run_makes_the_plateau_drops_of_the_uninterrupted_one(tmp_path):
    """lr 1e-9: the weights barely move, so the val error stays where it is and the plateau rule (patience 1)
    drops after every evaluation but the first until its two drops are spent. A run stopped after epoch 2 (its
    best and one drop on record) and resumed must drop at the same steps as the run that never stopped."""
    common = dict(schedule="plateau", eval_every=1, patience=1, max_drops=2, lr=1e-9, synthetic_steps=1)
    run_training(tiny(tmp_path / "straight", epochs=4, **common))
    run_training(tiny(tmp_path / "resumed", epochs=2, **common))
    run_training(tiny(tmp_path / "resumed", epochs=4, resume="latest", **common))
    straight = _lrs(tmp_path / "straight")
    assert [step for step, _ in straight] == [1, 2, 3, 4]
    np.testing.assert_allclose([lr for _, lr in straight], [1e-9, 1e-9, 1e-10, 1e-11], rtol=1e-9)
    assert _lrs(tmp_path / "resumed") == straight
    evals = [[r["top1_error"] for r in read_metrics(tmp_path / run) if "top1_error" in r]
             for run in ("straight", "resumed")]
    assert evals[0] == evals[1] and len(evals[0]) == 4



def test_the_plateau_schedule_stops_dropping_at_the_run_s_max_drops(tmp_path):
    """--max-drops 1: the same flat val error as above drops the lr once (after the second evaluation) and never
    again; the default of 3 would drop it again after the third."""
    run_training(tiny(tmp_path / "r", epochs=4, schedule="plateau", eval_every=1, patience=1, max_drops=1, lr=1e-9,
                      synthetic_steps=1))
    np.testing.assert_allclose([lr for _, lr in _lrs(tmp_path / "r")], [1e-9, 1e-9, 1e-10, 1e-10], rtol=1e-9)


# ---------------------------------------------------------------- random-resized crops reach both edges

@pytest.mark.parametrize("height, width, side", [(40, 40, 24), (37, 50, 20)])
def test_random_resized_windows_reach_every_offset_both_edges_included(height, width, side):
    """A fixed window (one area, aspect ratio 1): x must take every value 0..width-side, y every 0..height-side."""
    area = side * side / (height * width)
    windows = augment.random_resized_windows(np.random.default_rng(0), 4000, height, width, scale=(area, area),
                                             ratio=(1.0, 1.0))
    assert (windows[:, 2:] == side).all()
    assert set(windows[:, 0].tolist()) == set(range(width - side + 1))
    assert set(windows[:, 1].tolist()) == set(range(height - side + 1))


def test_the_epoch_plan_s_resized_windows_touch_each_edge_as_often_as_the_other():
    """Windows of any size, as a training epoch draws them: a window touches the right edge (x + w = width) as
    often as the left one (x = 0), the bottom as often as the top."""
    plan = augment.train_plan(20000, seed=1, epoch=0, size=64, crop=32, sigma=0.0, crops="random-resized")
    x, y, w, h = plan.window.T
    inside = (w < 64) & (h < 64)  # windows narrower than the image, whose position is drawn
    for start, extent in ((x, w), (y, h)):
        low, high = np.sum(inside & (start == 0)), np.sum(inside & (start + extent == 64))
        assert low > 300 and high > 300 and abs(low - high) < 5 * np.sqrt(low + high), (low, high)


# ---------------------------------------------------------------- what a resume restores, what a row measures

def test_a_resumed_run_keeps_the_best_error_of_the_evaluations_before_it(tmp_path):
    """Epoch 1 ends with an evaluation; a checkpoint in epoch 2 must hold its error as the best so far, whether
    the run went straight on or was resumed from the end of epoch 1 (a resume that forgot it would mark the next
    evaluation best, and best.pt with it, however bad)."""
    from alexnet_pipe.train.checkpoint import load_checkpoint
    common = dict(eval_every=1, ckpt_every=1, keep=20)
    run_training(tiny(tmp_path / "straight", epochs=2, **common))
    run_training(tiny(tmp_path / "resumed", epochs=1, **common))
    run_training(tiny(tmp_path / "resumed", epochs=2, resume="latest", **common))
    best = [load_checkpoint(tmp_path / run / "ckpt-00000005.pt")["best"] for run in ("straight", "resumed")]
    assert 0 <= best[0] <= 1 and best[1] == best[0]


def test_the_data_wait_is_a_part_of_each_row_s_time(tmp_path):
    """The wait for the next batch is measured around the loader alone: a fraction of the row's time, below 1
    (the step's own work takes the rest)."""
    run_training(tiny(tmp_path / "r", max_steps=3))
    rows = [r for r in read_metrics(tmp_path / "r") if "loss" in r]
    assert len(rows) == 3 and all(0 <= r["data_wait_fraction"] < 1 for r in rows)


def test_the_step_schedule_drops_at_the_milestones_the_run_was_given(tmp_path):
    """--step-epochs reaches the lr of every step: a milestone after epoch 1 of 4-step epochs drops the lr by 10
    from step 5 on (a schedule that fell back to the paper's 30/60/80 would keep it)."""
    run_training(tiny(tmp_path / "r", epochs=2, schedule="step", step_epochs=(1,), lr=0.01))
    np.testing.assert_allclose([lr for _, lr in _lrs(tmp_path / "r")], [0.01] * 4 + [0.001] * 4, rtol=1e-9)


def test_the_warm_up_reaches_every_step_s_lr_one_step_at_a_time(tmp_path):
    """--warmup-epochs 1 over 4-step epochs: the lr climbs by a quarter of the base each step, from the first
    (never 0), then holds (no milestone)."""
    run_training(tiny(tmp_path / "r", epochs=2, schedule="step", step_epochs=(), warmup_epochs=1.0, lr=0.04))
    np.testing.assert_allclose([lr for _, lr in _lrs(tmp_path / "r")], [0.01, 0.02, 0.03] + [0.04] * 5, rtol=1e-9)


def test_an_fp16_run_steps_through_its_loss_scaler(tmp_path):
    """Each fp16 step goes through the GradScaler: after 3 steps without an overflow its growth tracker counts 3
    (a step without it would leave the scaler as it was made: nothing counted, the scale untouched)."""
    from alexnet_pipe.train.checkpoint import latest_checkpoint, load_checkpoint
    run_training(tiny(tmp_path / "r", max_steps=3, precision="fp16"))
    scaler = load_checkpoint(latest_checkpoint(tmp_path / "r"))["scaler"]
    assert scaler["_growth_tracker"] == 3 or scaler["scale"] < 2.0 ** 16, scaler



@pytest.mark.parametrize("compile", [False, True])
def test_the_run_trains_the_compiled_model_only_when_asked(compile, tmp_path, monkeypatch):
    """--compile: the net the steps run is torch.compile's of the model (one process: no DDP wrapper); without it,
    the model itself. A stand-in for torch.compile records what it was given (compiling takes minutes here)."""
    import alexnet_pipe.train.loop as trainer
    asked, compiled = [], object()

    def compile_stand_in(module, *args, **kwargs):
        asked.append(module)
        return compiled

    monkeypatch.setattr(torch, "compile", compile_stand_in)
    run = trainer.start(tiny(tmp_path / "r", compile=compile), 0, 1, 0, torch.device("cpu"))
    assert [module is run.model for module in asked] == ([True] if compile else [])
    assert run.net is (compiled if compile else run.model)


@pytest.mark.parametrize("bias_decay", [True, False])
def test_the_run_s_optimiser_gets_its_bias_lr_and_bias_decay_settings(bias_decay, tmp_path):
    """--bias-lr-mult and --bias-decay reach the optimiser the run trains with: each bias (a 1-D parameter) at
    lr x the multiplier, decayed only when asked; each weight at the lr, decayed (defaults in between would
    train other biases without a word)."""
    from alexnet_pipe.train.loop import make_opt
    from alexnet_pipe.train.optim import set_lr
    s = dataclasses.replace(tiny(tmp_path / "r"), lr=0.1, weight_decay=0.01, bias_lr_mult=3.0, bias_decay=bias_decay)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    opt = make_opt(s, model)
    set_lr(opt, s.lr)
    for param in model.parameters():
        group = next(g for g in opt.param_groups if any(p is param for p in g["params"]))
        bias = param.dim() == 1
        assert group["lr"] == pytest.approx(0.1 * (3.0 if bias else 1.0)), (param.shape, group["lr"])
        assert group["weight_decay"] == (0.01 if (bias_decay or not bias) else 0.0), (param.shape, group)


def test_train_sets_the_process_up_on_the_device_the_settings_name(tmp_path, monkeypatch):
    """train() asks for the settings' device: a run asked for CUDA that got the CPU would train in fp32 (the
    precision follows the device) and slowly, without a word. A stand-in for the process set-up records what it
    was asked for and answers with the CPU, where this test runs."""
    import alexnet_pipe.train.distributed as distributed
    import alexnet_pipe.train.loop as trainer
    asked = []

    def init(device: str = "cpu"):
        asked.append(device)
        return 0, 1, 0, torch.device("cpu")

    monkeypatch.setattr(distributed, "init", init)
    trainer.train(tiny(tmp_path / "r", device="cuda", max_steps=1))
    assert asked == ["cuda"]


def test_the_summary_s_seconds_are_the_run_s_own_time(tmp_path):
    """The summary's seconds are the training loop's time: more than nothing and within the time train() took,
    measured around it here."""
    import time
    from alexnet_pipe.train.loop import train
    t0 = time.perf_counter()
    result = train(tiny(tmp_path / "r", max_steps=1))
    assert 0 < result["seconds"] <= time.perf_counter() - t0
