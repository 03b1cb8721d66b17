"""Writing the shards: one writer (this process) per shard, workers decoding in parallel, each shard claimed first."""
from __future__ import annotations

import collections
import errno
import math
import os
import shutil
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import DiskFull
from alexnet_pipe.core.workers import worker_pool
from alexnet_pipe.ingest import claims
from alexnet_pipe.ingest import owned
from alexnet_pipe.ingest.binding import shard_claim
from alexnet_pipe.ingest.chunks import CHUNK, ImageJob, init_worker, process_chunk
from alexnet_pipe.ingest.plan import ShardPlan
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.manifest import REJECTS, read_shard_meta, write_rejects
from alexnet_pipe.shards.writer import ShardWriter

IN_FLIGHT_PER_WORKER = 4  # chunks queued per worker: enough to hide the parent's LMDB writes, and no more


class NoSpace(Exception):
    """The device under `path` is full; run() turns this into one sentence with the space needed."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


def no_space(exc: BaseException, writer: ShardWriter | None = None) -> bool:
    if isinstance(exc, DiskFull):  # a shard's own files (meta.json, keys.bin) met the full disk
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not type(exc).__module__.startswith("lmdb"):
        return False
    # lmdb.Error is no OSError and carries only the errno's text; a commit that meets a full tmpfs
    # says EIO, so that one counts where the device cannot take another transaction of this shard
    if any(os.strerror(e) in str(exc) for e in (errno.ENOSPC, errno.EDQUOT)):
        return True
    if writer is None or os.strerror(errno.EIO) not in str(exc):
        return False
    txn_bytes = writer.TXN_RECORDS * writer.bytes / max(writer.records, 1)
    return shutil.disk_usage(writer.tmp_dir.parent).free < 2 * txn_bytes + (1 << 20)


def _take(dd: DataDir, p: ShardPlan) -> bool:
    """Claim shard p for this process; False where another writer has it or has committed it meanwhile."""
    folder = dd.split(p.split)
    if not claims.try_claim(shard_claim(dd, p)):
        return False
    if read_shard_meta(folder / p.name) is not None:
        claims.release(shard_claim(dd, p))
        return False
    # whoever left these is gone: a live writer would still hold the claim
    for leftover in [*folder.glob(f".{p.name}.tmp-*"), folder / p.name]:
        owned.remove_shard_dir(leftover)
    return True


def _tasks(dd: DataDir, job: ImageJob, todo: list[ShardPlan], taken: list, skipped: list):
    """(shard, is its last chunk, task) in shard order, claiming each shard as its first chunk is asked for."""
    for p in todo:
        if not _take(dd, p):
            skipped.append(p)
            continue
        taken.append(p)
        for n in range(max(1, math.ceil(len(p.items) / CHUNK))):
            pairs = list(enumerate(p.items[n * CHUNK:(n + 1) * CHUNK], start=p.start + n * CHUNK))
            yield p, (n + 1) * CHUNK >= len(p.items), (job, p.split, pairs)


def _results(tasks, workers: int):
    """(shard, last, ChunkResult) in task order, with at most IN_FLIGHT_PER_WORKER chunks per worker
    submitted and not yet consumed: the parent's memory does not grow with the number of images."""
    if workers == 1:
        init_worker()
        for plan, last, task in tasks:
            yield plan, last, process_chunk(task)
        return
    from concurrent.futures.process import BrokenProcessPool
    window = collections.deque()
    try:
        with worker_pool(workers, init_worker) as pool:
            try:
                for plan, last, task in tasks:
                    window.append((plan, last, pool.submit(process_chunk, task)))
                    if len(window) >= workers * IN_FLIGHT_PER_WORKER:
                        plan, last, future = window.popleft()
                        yield plan, last, future.result()
                while window:
                    plan, last, future = window.popleft()
                    yield plan, last, future.result()
            finally:  # a stopped run waits for the chunks being decoded, not for the queued ones
                for *_, future in window:
                    future.cancel()
    except BrokenProcessPool:
        raise UserError("a worker process died (killed, out of memory, or it could not start: run prepare "
                        "from the CLI or a script file); run the same command again to resume") from None


def _abort(writer: ShardWriter) -> None:
    """Drop a half-written shard; after a failed LMDB commit its transaction is gone and abort may raise."""
    try:
        writer.abort()
    except Exception:
        owned.remove_shard_dir(writer.tmp_dir)  # by name, as everywhere: never a recursive delete


def write_shards(dd: DataDir, todo: list[ShardPlan], job: ImageJob, workers: int,
                 progress, on_commit=None) -> tuple[list[ShardPlan], list[ShardPlan]]:
    """One writer (this process) per shard; workers decode/resize/encode in parallel. on_commit(shard dir): after
    each commit (a data dir in a bucket uploads the shard there). Returns (shards written, shards left to another
    writer that had claimed them)."""
    taken, skipped = [], []
    writer, rejects = None, []
    results = _results(_tasks(dd, job, todo, taken, skipped), workers)
    try:
        for plan, last, result in results:
            if writer is None:
                writer = ShardWriter(dd.split(plan.split) / plan.name, job.size)
            for key, value in result.records:
                writer.put(key, value)
            writer.stats.merge(result.stats)
            rejects.extend(result.rejects)
            progress.update(len(result.records) + len(result.rejects))
            if last:
                write_rejects(writer.tmp_dir / REJECTS, rejects)
                writer.commit({"split": plan.split, "first_index": plan.start,
                               "last_index": plan.start + len(plan.items) - 1, "rejects": len(rejects),
                               "fingerprint": plan.fingerprint})
                claims.release(shard_claim(dd, plan))
                committed, writer, rejects = writer.final_dir, None, []
                if on_commit:
                    on_commit(committed)
    except Exception as exc:
        if no_space(exc, writer):
            raise NoSpace(writer.tmp_dir.parent if writer else dd.root) from None
        raise
    finally:  # the pool ends where the stop is met, not at exit when its pipes are gone (verify's test)
        results.close()
        if writer is not None:
            _abort(writer)
        for p in taken:
            claims.release(shard_claim(dd, p))
    return taken, skipped
