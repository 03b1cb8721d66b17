"""Small tmpfs mounts for the tests of full and read-only file systems (root writes through permissions and has
no quota, so a real mount is the only honest way to make a disk full or read-only)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(mnt: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at mnt; None when mounted, else why not."""
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    except FileNotFoundError:
        return "no mount command here"
    if done.returncode:
        return done.stderr.decode().strip() or f"mount exited {done.returncode}"
    return None


def require_tmpfs(mnt: Path, size: str) -> None:
    """mount_tmpfs, or: a skip for a user who may not mount (not root), a failure for root (CI and the development
    machines run as root: there the full-disk tests must run, never vanish as skips)."""
    why = mount_tmpfs(mnt, size)
    if why is None:
        return
    if os.geteuid() == 0:
        pytest.fail(f"root could not mount a {size} tmpfs at {mnt}: {why}")
    pytest.skip(f"mounting a tmpfs needs root or CAP_SYS_ADMIN: {why}")


def unmount(mnt: Path) -> None:
    subprocess.run(["umount", "-l", str(mnt)], check=False)
