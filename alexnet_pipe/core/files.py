"""Files that readers see whole or not at all: the one way every stage writes what others read.

Shards, manifests, stats and checkpoints all go through `atomic_write` (temp file beside the target, fsync,
rename, fsync of the directory), so a crash or a kill leaves the old file or the new one, never half of one.
Reading goes through `read_regular_bytes`: only regular files, so a FIFO or a device in a file's place is
refused instead of blocking forever or reading without end.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from pathlib import Path

from alexnet_pipe.core.errors import UserError


class UnreadableFile(UserError):
    """A file that exists but is not a regular file, or cannot be read; `reason` says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path} cannot be read ({reason})")
        self.path, self.reason = Path(path), reason


def open_regular(path: Path):
    """A regular file opened for reading in binary ('rb'); FileNotFoundError where it is absent,
    UnreadableFile where it is something else (a FIFO, a device, a directory) or unreadable."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat can refuse it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnreadableFile(path, exc.strerror or str(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableFile(path, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file (at most `limit`); FileNotFoundError where it is absent,
    UnreadableFile where it is something else (a FIFO, a device, a directory) or unreadable."""
    with open_regular(path) as f:
        try:
            return f.read() if limit is None else f.read(limit)
        except OSError as exc:
            raise UnreadableFile(path, exc.strerror or str(exc)) from None


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w"):
    """A file to write that readers see whole or not at all: a temp file beside `path`, synced, then
    renamed over it (the one way every stage writes a file that others read)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = _out_of_space(exc, tmp)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise DiskFull(path, full) from None
        raise
    fsync_path(path.parent)


class DiskFull(UserError):
    """A file could not be written for want of space; the file it would have replaced is untouched."""

    def __init__(self, path: Path, written: int):
        free = shutil.disk_usage(Path(path).parent).free
        super().__init__(f"no space left for {path}: it needed more than the {written / 2**20:.1f} MB written before "
                         f"the disk filled ({free / 2**20:.1f} MB free now); free some space and run the same command "
                         "again (what was written before is intact)")


def _out_of_space(exc: BaseException, tmp: Path) -> int | None:
    """Bytes written to `tmp` when the write failed for want of space, else None. Writers that wrap the OS error
    (torch.save's zip writer raises RuntimeError) are judged by the space left on the device."""
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    try:
        written = tmp.stat().st_size
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        return None
    no_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return written if no_space or free < (1 << 20) else None


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (so that a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rmdir_if_empty(folder: Path) -> None:
    """Remove a folder that is empty; leave anything else as it is: a folder that holds files that are not ours,
    a link, a folder gone already, or one the OS will not remove (a mount point, no permission) stays, and the
    run goes on."""
    try:
        Path(folder).rmdir()  # a link is refused (ENOTDIR), never followed
    except OSError:
        pass
