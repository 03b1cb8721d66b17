"""Start N local worker processes through torch's elastic launcher (the API behind torchrun --standalone).

The launcher sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for each worker, watches them, and when one dies
it stops the group and starts it again (up to `max_restarts` times) with TORCHELASTIC_RESTART_COUNT
raised; the trainer then resumes from the newest checkpoint in its run dir.
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Callable

from alexnet_pipe.core.errors import Preempted, UserError
from alexnet_pipe.train.signals import PREEMPTED_EXIT


def launch(fn: Callable, args: tuple, nproc: int, max_restarts: int = 0) -> dict[int, Any]:
    """Run fn(*args) in `nproc` processes on this machine; returns {rank: return value}.

    fn must be a module-level function (workers are spawned and import it by name).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Workers of a restarted group must not meet the dead group's keys (gloo/NCCL addresses) in a store
    # shared across attempts: have each attempt's rank 0 host a fresh store instead of reusing the
    # rendezvous store (with the shared one, restarts on CPU failed or hung about half the time).
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc,
        run_id=str(uuid.uuid4()), rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # = --standalone
        max_restarts=max_restarts, monitor_interval=0.5, start_method="spawn")
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as exc:
        first = exc.get_first_failure()[1]
        if first.exitcode == PREEMPTED_EXIT:
            raise Preempted("stopped by SIGTERM after a whole step and a checkpoint; continue with "
                            "`alexnet-pipe train --run RUN --resume`") from None
        raise UserError(f"worker rank {first.local_rank} failed (exit code {first.exitcode}) after "
                        f"{max_restarts} restart(s); its error is printed above") from None


def visible_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(requested: int) -> None:
    """--gpus N needs N CUDA devices on this node: say what was found instead."""
    import torch
    found = visible_gpus()
    if found >= requested:
        return
    if found:
        what, hint = f"only {found} CUDA device(s)", f"use --gpus {found}"
    else:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
        what, hint = f"no CUDA device (torch {torch.__version__}, built with {build})", "use --cpu --nproc N"
    raise UserError(f"--gpus {requested} needs {requested} GPU(s) but this machine has {what}; {hint}.")
