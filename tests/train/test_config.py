"""The train settings (config.py): recipes, explicit options, and the checks of settings read from files."""
from __future__ import annotations

import dataclasses

import pytest

from alexnet_pipe.train.config import TrainSettings, check, resolve_settings
from alexnet_pipe.core.errors import UserError


def test_recipes_and_explicit_options():
    small = resolve_settings("small")
    assert (small.init, small.schedule, small.bias_init, small.width) == ("kaiming", "cosine", 0.0, 0.25)
    assert resolve_settings("small", lr=0.05, width=None).lr == 0.05  # explicit beats recipe, None is "not given"
    paper = resolve_settings("paper")
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.batch_size, paper.epochs, paper.schedule) == \
        (0.01, 0.9, 5e-4, 128, 90, "plateau")
    with pytest.raises(UserError, match="recipe"):
        resolve_settings("fast")


def test_settings_file_values_are_checked_with_the_option_rules():
    for bad in (dict(lr=float("nan")), dict(width=0.0), dict(schedule="linear"), dict(dropout=1.0),
                dict(step_epochs=(30, -5)), dict(epochs=1.5), dict(compile=1)):
        with pytest.raises(UserError):
            check(dataclasses.replace(TrainSettings(), **bad))
    assert check(TrainSettings()) == TrainSettings()


def test_settings_saved_before_the_lrn_span_option_normalise_across_all_maps():
    """Runs from before issue 20 trained with the window across the halves: a resume or an evaluation of one
    must build that model, not today's default."""
    from alexnet_pipe.train.config import settings_from_dict
    saved = dataclasses.asdict(TrainSettings())
    assert settings_from_dict(saved).lrn_span == "half" == TrainSettings().lrn_span
    del saved["lrn_span"]
    assert settings_from_dict(saved).lrn_span == "whole"
    with pytest.raises(UserError, match="--lrn-span"):
        check(dataclasses.replace(TrainSettings(), lrn_span="third"))
