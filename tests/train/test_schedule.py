"""The learning-rate maths (schedule.py): pure functions, no training."""
from __future__ import annotations

import numpy as np
import pytest

from alexnet_pipe.train.schedule import Plateau, lr_at


def test_step_schedule():
    lrs = [lr_at("step", 0.01, e, step_epochs=(30, 60, 80)) for e in (0, 29.99, 30, 59.5, 60, 80, 89)]
    np.testing.assert_allclose(lrs, [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-5, 1e-5])


def test_plateau_lr_follows_drops():
    assert [lr_at("plateau", 0.01, 5.0, drops=d) for d in range(4)] == pytest.approx([0.01, 1e-3, 1e-4, 1e-5])


def test_cosine_and_warmup():
    assert lr_at("cosine", 0.1, 0, epochs=10) == pytest.approx(0.1)
    assert lr_at("cosine", 0.1, 5, epochs=10) == pytest.approx(0.05)
    assert lr_at("cosine", 0.1, 10, epochs=10) == pytest.approx(0.0, abs=1e-12)
    # 2 warm-up epochs of 4 steps: step k (0-based, starting at k/4 epochs) gets (k+1)/8 of the rate
    got = [lr_at("step", 0.08, k / 4, warmup_epochs=2, steps_per_epoch=4, step_epochs=()) for k in range(10)]
    np.testing.assert_allclose(got, [0.01 * (k + 1) for k in range(8)] + [0.08, 0.08])


def test_plateau_rule_drops_at_most_three_times():
    p = Plateau(patience=2, max_drops=3)
    errors = [0.9, 0.8, 0.8, 0.81, 0.7, 0.7, 0.7, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75]
    drops = [p.update(e) for e in errors]
    assert [i for i, d in enumerate(drops) if d] == [3, 6, 8]
    assert p.drops == 3 and p.best == 0.7
    q = Plateau(2, 3)
    q.load_state_dict(p.state_dict())
    assert q == p


# --- issue 20: what mutation testing found unguarded (docs/testing.md) ----------------------------------------

def test_a_warm_up_shorter_than_an_epoch():
    """0.5 warm-up epochs of 4 steps: steps 0 and 1 at 1/2 and 2/2 of the rate, then the rate."""
    got = [lr_at("plateau", 0.1, k / 4, warmup_epochs=0.5, steps_per_epoch=4) for k in range(4)]
    np.testing.assert_allclose(got, [0.05, 0.1, 0.1, 0.1])


def test_the_defaults_are_the_papers_run_without_warm_up_or_drops():
    assert lr_at("plateau", 0.01, 0.0) == 0.01  # no drop yet
    assert lr_at("plateau", 1.0, 0.0, steps_per_epoch=4) == 1.0  # no warm-up
    assert lr_at("cosine", 1.0, 45.0) == pytest.approx(0.5)  # over 90 epochs
    assert lr_at("plateau", 1.0, 0.0, warmup_epochs=2) == 0.5  # one step per epoch: (0 + 1) / 2
    with pytest.raises(ValueError, match="schedule must be one of .* not 'linear'"):
        lr_at("linear", 0.01, 0.0)
