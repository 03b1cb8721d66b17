"""Fault injection for the restart test, installed from outside the trainer (train() carries no test hook).

`train_dying(settings)` runs train(), except that on rank 1, first attempt only, the training loader kills the
process when asked for a batch after DIE_AFTER steps: a worker dying mid-run, as a lost node would. (A plain
module-level function: the elastic launcher names its workers after the function and spawns them by import.)
"""
from __future__ import annotations

import os

import alexnet_pipe.train.loop as trainer

DIE_AFTER = 3


def _dies_after(epoch_fn, steps: int, served: list):
    def epoch(*args, **kwargs):
        for batch in epoch_fn(*args, **kwargs):
            if served[0] == steps:
                os._exit(17)
            served[0] += 1
            yield batch
    return epoch


def train_dying(settings):
    first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) == 0
    if int(os.environ.get("RANK", 0)) == 1 and first_attempt:
        make_loaders = trainer.make_loaders

        def dying_loaders(*args):
            loader, val = make_loaders(*args)
            loader.epoch = _dies_after(loader.epoch, DIE_AFTER, [0])
            return loader, val
        trainer.make_loaders = dying_loaders
    return trainer.train(settings)
