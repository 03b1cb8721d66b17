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
    """mount_tmpfs, or a failure that says why and how to leave these tests out on purpose (`-m "not mount"`):
    never a skip, so a full-disk or read-only test cannot vanish from a run that did not ask to leave it out
    (CI and the development machines run as root, where the mount must work)."""
    why = mount_tmpfs(mnt, size)
    if why is None:
        return
    who = "root" if os.geteuid() == 0 else "this user (mounting needs root or CAP_SYS_ADMIN)"
    pytest.fail(f"{who} could not mount a {size} tmpfs at {mnt}: {why}; run the suite as root, or leave the "
                'full-disk and read-only tests out explicitly with -m "not mount"')


def unmount(mnt: Path) -> None:
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def read_only_copy(mnt: Path, src: Path, name: str) -> Path:
    """A copy of `src` at mnt/name on a tmpfs remounted read-only (root writes through permissions, so a mount it
    is); mnt is made here. A mount that fails fails the test, as require_tmpfs says. unmount(mnt) when done."""
    import shutil
    mnt.mkdir()
    require_tmpfs(mnt, "8M")
    shutil.copytree(src, mnt / name)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    return mnt / name
