"""The one device vocabulary of the library and the commands: "cpu" and "cuda", torch's own names.

Why torch's names and not DALI's ("cpu", "gpu", "mixed"): the trainer, evaluate and viz hand the name straight to
``torch.device`` and to the process group; every run's settings.json and checkpoints already say "cpu" or "cuda";
and only the DALI graphs need other words, for which `dali_device` is the one translation. "gpu", which
`bench loader --device` and `stats --device` offered, stays accepted where users type a device (`device_name`).
"""
from __future__ import annotations

from alexnet_pipe.core.errors import UserError

DEVICES = ("cpu", "cuda")
TYPED = (*DEVICES, "gpu")  # what a command accepts: the vocabulary and the older spelling
_OLD_NAMES = {"gpu": "cuda"}


def device_name(value: str) -> str:
    """A device as a user types it ("cpu", "cuda", or the older "gpu") -> "cpu" | "cuda"."""
    name = _OLD_NAMES.get(value, value)
    if name not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, not {value!r}")
    return name


def dali_device(device: str, *, decoder: bool = False) -> str:
    """DALI's name for where an operator of a graph on `device` runs: "cpu", or "gpu" on CUDA, where an image
    decoder is "mixed" (it reads host bytes and writes device pixels)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    if device == "cpu":
        return "cpu"
    return "mixed" if decoder else "gpu"
