"""Start N local worker processes through torch's elastic launcher (the API behind torchrun --standalone).

The launcher sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for each worker, watches them, and when one dies
it stops the group and starts it again (up to `max_restarts` times) with TORCHELASTIC_RESTART_COUNT
raised; the trainer then resumes from the newest checkpoint in its run dir.

A worker's UserError reaches the console as the one sentence it is: the worker writes it to a report file and
exits with its status, and the launcher's side raises it again; the launcher's own log of the failure (a
ProcessExitedException traceback per worker) is kept quiet unless ALEXNET_PIPE_DEBUG is set.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
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
    reports = Path(tempfile.mkdtemp(prefix="alexnet-pipe-workers-"))
    try:
        with _launcher_quiet():
            results = elastic_launch(config, reporting)(str(reports), fn, *args)
        return results
    except ChildFailedError as exc:
        raise _failure(exc, reports, max_restarts) from None
    finally:
        shutil.rmtree(reports, ignore_errors=True)


def reporting(reports: str, fn: Callable, *args):
    """What each worker runs: fn(*args), with a UserError written to `reports` for the launcher's side to say,
    and the process's exit status its exit code; any other error prints its traceback here (the launcher's log
    of it is quiet)."""
    try:
        return fn(*args)
    except UserError as exc:
        code = getattr(exc, "exit_code", 1)
        report = {"message": str(exc), "exit_code": code}
        (Path(reports) / f"rank-{int(os.environ.get('RANK', 0)):06d}.json").write_text(json.dumps(report))
        sys.exit(code)
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        raise


def _failure(exc, reports: Path, max_restarts: int) -> UserError:
    """The error to raise for a failed group: a worker's own sentence where one wrote it (the lowest rank's),
    else what the launcher knows."""
    said = sorted(reports.glob("rank-*.json"))
    first = exc.get_first_failure()[1]
    if said:
        report = json.loads(said[0].read_text())
        kind = Preempted if report["exit_code"] == PREEMPTED_EXIT else UserError
        error = kind(report["message"])
        error.exit_code = report["exit_code"]
        return error
    if first.exitcode == PREEMPTED_EXIT:
        return Preempted("stopped by SIGTERM after a whole step and a checkpoint; continue with "
                         "`alexnet-pipe train --run RUN --resume`")
    if first.exitcode < 0:
        return UserError(f"worker rank {first.local_rank} was killed by {signal.Signals(-first.exitcode).name} "
                         f"after {max_restarts} restart(s) (out of memory, or killed from outside)")
    return UserError(f"worker rank {first.local_rank} failed (exit code {first.exitcode}) after "
                     f"{max_restarts} restart(s); its traceback is printed above")


QUIET_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing")


@contextlib.contextmanager
def _launcher_quiet():
    """The elastic launcher logs every failed worker with a traceback of its own machinery
    (ProcessExitedException) and every worker it stops; the worker has said what went wrong already."""
    from alexnet_pipe.core.boundary import debugging
    if debugging():
        yield
        return
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    null, propagate = logging.NullHandler(), [log.propagate for log in loggers]
    for log in loggers:
        log.addHandler(null)
        log.propagate = False
    try:
        yield
    finally:
        for log, before in zip(loggers, propagate):
            log.removeHandler(null)
            log.propagate = before


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
