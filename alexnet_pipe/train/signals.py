"""Preemption: schedulers (Slurm, Kubernetes, spot instances) send SIGTERM some seconds before they kill.

`StopRequest` turns SIGTERM into a flag that the trainer reads; with several processes the ranks agree on it at a
metrics row (one tiny all-reduce), so all of them finish the same step, write one checkpoint and leave with
PREEMPTED_EXIT, which `--resume` and the elastic launcher continue from exactly.
"""
from __future__ import annotations

import signal

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again later", not a failure of the run


class StopRequest:
    def __init__(self):
        self.signal: int | None = None
        self._previous = signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, _frame) -> None:
        self.signal = signum

    def agreed(self, world: int, device) -> bool:
        """True on every rank once any rank has been asked to stop (the same step everywhere)."""
        if world == 1:
            return self.signal is not None
        import torch
        import torch.distributed as dist
        flag = torch.tensor([0.0 if self.signal is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
