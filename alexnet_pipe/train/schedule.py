"""The learning-rate maths, pure: the rate at a fractional epoch, and the paper's divide-by-10-on-plateau rule."""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("plateau", "step", "cosine")


def lr_at(schedule: str, base_lr: float, epoch: float, *, epochs: int = 90, step_epochs=(30, 60, 80),
          warmup_epochs: float = 0.0, drops: int = 0, steps_per_epoch: int = 1, gamma: float = 0.1) -> float:
    """Learning rate for the step that starts at fractional `epoch` (epoch index + step / steps_per_epoch).

    plateau: base * gamma^drops (drops decided by Plateau); step: base * gamma^(milestones passed);
    cosine: half cosine from base to 0 over `epochs`. Warm-up scales linearly up to 1 over warmup_epochs,
    counting the step itself, so the first step is never at lr 0.
    """
    if schedule == "plateau":
        lr = base_lr * gamma ** drops
    elif schedule == "step":
        lr = base_lr * gamma ** sum(epoch >= m for m in step_epochs)
    elif schedule == "cosine":
        lr = 0.5 * base_lr * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    if warmup_epochs > 0:
        lr *= min(1.0, (epoch + 1.0 / steps_per_epoch) / warmup_epochs)
    return lr


@dataclass
class Plateau:
    """The paper's rule: divide the lr by 10 when the validation error stops improving, at most max_drops times."""
    patience: int = 2
    max_drops: int = 3
    best: float = math.inf
    bad: int = 0
    drops: int = 0

    def update(self, error: float) -> bool:
        """Record one evaluation; True when the learning rate is to drop now."""
        if error < self.best:
            self.best, self.bad = error, 0
            return False
        self.bad += 1
        if self.bad >= self.patience and self.drops < self.max_drops:
            self.drops, self.bad = self.drops + 1, 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "drops": self.drops}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad, self.drops = float(state["best"]), int(state["bad"]), int(state["drops"])
