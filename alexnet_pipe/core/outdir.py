"""Checks on a directory a command is about to write into, shared by every command that writes one.

`writable_dir` is the check behind `--data`, `--run`, `-o` and `sample-data DIR`: a path that is a file, a
device or a kernel pseudo-filesystem (/proc, /sys, /dev) is one sentence before anything is created there,
and `overlap` keeps an output directory from being, containing or lying inside the input it is made from.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from alexnet_pipe.core.errors import UserError

# kernel views, never storage: writing there either fails with odd errnos or changes the running system
PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _real(path: Path | str) -> Path:
    """The path with symlinks resolved as far as they go: Path.resolve raises RuntimeError on a symlink loop
    (Python < 3.13), os.path.realpath leaves the loop's name in place."""
    return Path(os.path.realpath(path))


def _refuse_loop(path: Path, what: str) -> None:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a loop of symbolic links: choose another {what}") from None


def _refuse_pseudo(path: Path, what: str) -> None:
    _refuse_loop(path, what)
    resolved = _real(path)
    for pseudo in PSEUDO_FILESYSTEMS:
        if _is_within(resolved, pseudo):
            raise UserError(f"{path} is under {pseudo}, a kernel pseudo-filesystem, not storage: choose another {what}")


def _refuse_below_a_file(path: Path, what: str) -> None:
    """The nearest existing folder above a path still to be created must be a folder, not a file."""
    above = next((p for p in path.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"{path} lies below {above}, which is a file, not a directory: choose another {what}")


def check_place(path: Path | str, what: str = "output directory") -> Path:
    """Refuse, before anything is created, a path that is a file or device, lies below a file, or lies in a
    kernel pseudo-filesystem."""
    path = Path(path)
    _refuse_pseudo(path, what)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory: choose another {what}")
    _refuse_below_a_file(path, what)
    return path


def check_file_place(path: Path | str, what: str = "output file") -> Path:
    """check_place for a file to be written: not in a kernel pseudo-filesystem, not below a file, and where
    something is there already, a regular file (never a directory, device or FIFO). Creates nothing."""
    path = Path(path)
    _refuse_pseudo(path, what)
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise UserError(f"{path} exists and is {kind}: choose another {what}")
    _refuse_below_a_file(path, what)
    return path


def writable_dir(path: Path | str, what: str = "output directory") -> Path:
    """Create `path` if needed and prove it takes a file; every refusal is one UserError sentence."""
    path = check_place(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to {path} ({exc.strerror or exc}): choose another {what}") from None
    return path


def overlap(output: Path | str, source: Path | str) -> str | None:
    """How `output` overlaps `source` ("is", "lies inside", "contains"), or None where they are apart."""
    out, src = _real(output), _real(source)
    if out == src:
        return "is"
    if src in out.parents:
        return "lies inside"
    if out in src.parents:
        return "contains"
    return None
