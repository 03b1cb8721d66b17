"""Process-group set-up from the environment torchrun / the elastic launcher provide (RANK, WORLD_SIZE, ...)."""
from __future__ import annotations

import os
import signal


def init(device: str = "cpu") -> tuple[int, int, int, "torch.device"]:
    """-> (rank, world_size, local_rank, device). One process, no env vars: no process group at all."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if under_launcher():  # Ctrl-C reaches a worker twice (terminal, then launcher): act on the first only
        signal.signal(signal.SIGINT, _interrupt_once)
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


def under_launcher() -> bool:
    """True inside torchrun / elastic-launch workers (they set these), so train must not launch again."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
