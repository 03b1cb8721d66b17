"""The official tars in an object store, listed in place from their headers through fsspec file objects: nothing
is downloaded whole. archives.py applies the same rules to what this finds as to a local tar.

What a member costs (docs/performance.md has the measured figures): tarfile seeks from header to header, and
each seek lands in a new ranged GET, so a tar whose members are larger than a request is ONE request per member.
- ILSVRC2012_img_train.tar: its 1,000 per-class tars are listed from the outer headers (one request each), then
  the 1.28 M headers inside them with small requests (~12 KB: tarfile's 8 KB buffer plus HEADER_BLOCK), the
  per-class tars THREADS at a time: the latency of 1.28 M requests is paid THREADS-fold in parallel, and ~15 GB
  of the 147 GB are transferred.
- ILSVRC2012_img_val.tar (50,000 members, 6.4 GB): one tar, so no parallelism; it is read in sequence with
  STREAM_BLOCK requests (~800 of them) instead of 50,000 latencies in a row.
Each tar is retried whole on a transient error (core.remote's policy); a damaged tar is the same reject or
sentence as on disk.
"""
from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

from alexnet_pipe.core import remote
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.ingest.items import counted, no_tick
from alexnet_pipe.ingest.remote_tree import RemotePath

HEADER_BLOCK = 4096        # read ahead past tarfile's 8 KB buffer: small images share a request
STREAM_BLOCK = 8 << 20     # a tar read in sequence: few large requests
THREADS = 32               # per-class tars listed at once


def _listed(path: RemotePath, block: int, within: tarfile.TarInfo | None, tick=no_tick):
    """The file members of the tar at path, or of the tar inside its member `within`, as TarInfos (offsets
    relative to path's object); a TarError where the tar is damaged. Retried whole."""
    url = str(path)

    def attempt():
        with remote.open_file(url, path.size if path.size >= 0 else None, block) as f:
            try:
                with tarfile.open(fileobj=f, mode="r:") as tar:
                    if within is None:
                        return [m for m in counted(tar, tick) if m.isfile()]
                    with tarfile.open(fileobj=tar.extractfile(within), mode="r:") as inner:
                        return [_shifted(m, within.offset_data) for m in inner if m.isfile()]
            except tarfile.TarError as exc:
                return exc
    return remote.retried(attempt, url, "read the tar headers of")


def _shifted(member: tarfile.TarInfo, by: int) -> tarfile.TarInfo:
    member.offset_data += by
    return member


def members(path: RemotePath, tick=no_tick, block: int = STREAM_BLOCK) -> list[tarfile.TarInfo]:
    """A tar's file members; a damaged tar is a sentence, as a local one is (archives._open_tar)."""
    found = _listed(path, block, None, tick)
    if isinstance(found, tarfile.TarError):
        raise UserError(f"{path} is not a readable uncompressed tar ({found})")
    return found


def inner_members(path: RemotePath, tars: list[tarfile.TarInfo], tick=no_tick):
    """For each per-class tar member of the tar at path, in order: [(name, offset, size)] of its files
    (offsets into path's object), or the TarError that makes it unreadable."""
    def listed(m):
        return _listed(path, HEADER_BLOCK, m)
    with ThreadPoolExecutor(THREADS, thread_name_prefix="tar-headers") as pool:
        for found in pool.map(listed, tars):
            if not isinstance(found, tarfile.TarError):
                tick(len(found))
                found = [(PurePosixPath(m.name).name, m.offset_data, m.size) for m in found]
            yield found
