"""Who writes what in a data dir: a lock for whole runs, and claim files that hand each shard to one writer.

Whole runs hold an exclusive `flock` on DATA/.prepare.lock, `--only-shards` workers a shared one, so a plain
run (which clears, finalises and may overwrite) never overlaps a worker on this host, and two plain runs take
turns.  Workers on several hosts meet only in the claim files: `.shard-NNNNN.claim` beside the shard,
created with O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+), holding host, PID and the PID's start
time.  A claim whose process is gone from this host is stale (killed with SIGKILL, or its PID reused) and
is taken over; a claim of another host is never second-guessed.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK = ".prepare.lock"
CLAIMS_LOCK = ".claims.lock"
CLAIM_SUFFIX = ".claim"
YOUNG_CLAIM_S = 30.0   # an empty claim file this young is one being written, not a leftover


def claim_path(folder: Path, shard: str) -> Path:
    """The claim file of shard `shard` (its dir name) in a split folder."""
    return Path(folder) / f".{shard}{CLAIM_SUFFIX}"


@contextlib.contextmanager
def data_dir_lock(root: Path, exclusive: bool, echo=print):
    """Hold the data dir for a whole run (exclusive) or for one --only-shards worker (shared)."""
    fd = os.open(Path(root) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"another prepare is writing {root}; waiting for it to finish (Ctrl-C to stop waiting)")
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _start_time(pid: int) -> str | None:
    """The PID's start time in clock ticks after boot: tells a live process from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _alive_here(owner: dict) -> bool:
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    now = _start_time(int(owner["pid"]))
    return owner.get("start") is None or now is None or now == owner["start"]


def read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def describe(path: Path) -> str:
    owner = read_owner(path)
    return f"pid {owner['pid']} on {owner.get('host')}" if owner else "another writer"


def _stale(path: Path) -> bool:
    owner = read_owner(path)
    if owner is None:  # empty or damaged: a writer between open() and write(), or a crash right there
        try:
            return time.time() - path.stat().st_mtime > YOUNG_CLAIM_S
        except FileNotFoundError:
            return True
    return owner.get("host") == socket.gethostname() and not _alive_here(owner)


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(me(), f)
        f.flush()
        os.fsync(f.fileno())
    return True


@contextlib.contextmanager
def _judging(folder: Path):
    """Judging and removing a stale claim happen under one local lock, so two recoverers never remove each
    other's fresh claim; processes on other hosts never judge this host's claims."""
    fd = os.open(Path(folder) / CLAIMS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def try_claim(path: Path) -> bool:
    """Create the claim file at `path`; False where a live writer holds it. Stale claims are taken over."""
    path = Path(path)
    if _create(path):
        return True
    with _judging(path.parent):
        if not _stale(path):
            return False
        path.unlink(missing_ok=True)
        return _create(path)


def clear_stale(path: Path) -> None:
    """Remove the claim at `path` if its writer is gone: one killed after committing its shard, before
    letting go of the claim, leaves it behind for a shard nobody will write again."""
    path = Path(path)
    if path.exists():
        with _judging(path.parent):
            if _stale(path):
                path.unlink(missing_ok=True)


def release(path: Path) -> None:
    owner = read_owner(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        Path(path).unlink(missing_ok=True)
