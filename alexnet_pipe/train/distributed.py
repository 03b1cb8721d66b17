"""Process-group set-up from the environment torchrun / the elastic launcher provide (RANK, WORLD_SIZE, ...)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import os
import signal

from alexnet_pipe.core.errors import UserError

if TYPE_CHECKING:  # annotations only: the module imports it where it is used
    import torch


def init(device: str = "cpu") -> tuple[int, int, int, "torch.device"]:
    """-> (rank, world_size, local_rank, device). One process, no env vars: no process group at all."""
    import torch
    import torch.distributed as dist

    if under_launcher():  # Ctrl-C reaches a worker twice (terminal, then launcher): act on the first only
        signal.signal(signal.SIGINT, _interrupt_once)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                device_id=dev if device == "cuda" else None)
    return rank, world, local_rank, dev


def _interrupt_once(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def cleanup() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # torchrun and the elastic launcher set all three
RESTART_VAR = "TORCHELASTIC_RESTART_COUNT"  # set by the elastic launcher; above 0 train resumes its run


def under_launcher() -> bool:
    """True inside torchrun / elastic-launch workers (they set these), so train must not launch again.

    Checked first, so that a stray variable in a plain shell is named instead of acted on: WORLD_SIZE alone made
    the process wait for ranks that never come, RANK=abc was a ValueError traceback, and a stray
    TORCHELASTIC_RESTART_COUNT resumed a run silently."""
    present = [name for name in LAUNCHER_VARS if name in os.environ]
    stray = [name for name in (*LAUNCHER_VARS, RESTART_VAR) if name in os.environ]
    fix = f"unset {' '.join(stray)} to train in this shell, or start train under torchrun, which sets them"
    for name in stray:
        text = os.environ[name].strip()
        if not (text.isascii() and text.isdigit()):
            raise UserError(f"the environment sets {_shown([name])}, which is not a whole number 0 or more: {fix}")
    if present and len(present) < len(LAUNCHER_VARS):
        missing = [name for name in LAUNCHER_VARS if name not in present]
        raise UserError(f"the environment sets {_shown(present)} but not {', '.join(missing)}, which torchrun "
                        f"sets together: {fix}")
    if not present:
        if stray:
            raise UserError(f"the environment sets {_shown(stray)} but train was not started by torchrun, and a "
                            f"stray value would resume a run unasked: {fix}")
        return False
    if int(os.environ["WORLD_SIZE"]) < 1 or int(os.environ["RANK"]) >= int(os.environ["WORLD_SIZE"]):
        raise UserError(f"the environment sets {_shown(['RANK', 'WORLD_SIZE'])}, but RANK must lie below "
                        f"WORLD_SIZE: {fix}")
    return True


def _shown(names: list[str]) -> str:
    return ", ".join(f"{name}={os.environ[name]!r}" for name in names)
