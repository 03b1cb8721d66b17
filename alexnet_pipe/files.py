"""Files that readers see whole or not at all: the one way every stage writes what others read.

Shards, manifests, stats and checkpoints all go through `atomic_write` (temp file beside the target, fsync,
rename, fsync of the directory), so a crash or a kill leaves the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


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
