"""The one kind of worker pool the CPU stages (prepare, verify) use, and how its processes end.

Workers never outlive the command: when the parent stops (Ctrl-C, SIGTERM, SIGHUP: core.stopping) or fails, the
pool kills them instead of waiting; their tasks only compute what the parent writes, so nothing is lost that a
later run does not redo. Should the parent die without a clean-up (SIGKILL, the OOM killer), each worker notices
that its parent changed and exits, instead of waiting on the task queue forever.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import time

PARENT_CHECK_SECONDS = 1.0


@functools.cache
def _pool_class():
    """The pool class, made on first use: the CLI reads MAX_PROCESSES from here, and `--help` should not pay for
    importing multiprocessing."""
    from concurrent.futures import ProcessPoolExecutor

    class WorkerPool(ProcessPoolExecutor):
        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:  # stopped or failed: the tasks in flight are of no use any more
                self.kill_workers()
            return super().__exit__(exc_type, exc, tb)

        def kill_workers(self) -> None:
            """Kill every worker and drop the queued tasks (Python 3.14 has this as kill_workers; earlier ones
            keep the processes in _processes)."""
            for process in list((getattr(self, "_processes", None) or {}).values()):
                process.kill()
            try:
                self.shutdown(wait=True, cancel_futures=True)
            except OSError:  # its pipes already closed (a stop during interpreter exit): the workers are dead
                pass

    return WorkerPool


def worker_pool(workers: int, initializer=None):
    """Processes started with spawn: fork would copy locks held by OpenCV's or BLAS's threads in
    this process (a demo or notebook has used them already) and hang the workers. An executor,
    unlike multiprocessing.Pool, reports a worker that died instead of replacing it forever."""
    import multiprocessing as mp
    return _pool_class()(workers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                         initargs=(os.getpid(), initializer))


def _start_worker(parent: int, initializer) -> None:
    from alexnet_pipe.core.stopping import ignore_in_worker
    ignore_in_worker()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
    if initializer is not None:
        initializer()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


@contextlib.contextmanager
def forking():
    """Around code that forks workers (torch's DataLoader): every object the collector tracks, garbage included,
    is frozen out of the children's collector. A forked child that collects an inherited DALI pipeline runs its
    destructor, which waits on executor threads the child does not have: a worker hung that way in the suite
    (gdb: dali::Executor2::~Executor2). Frozen, inherited garbage is never collected in a child; the parent's
    collector is unfrozen once the workers are started and collects it there.  No collection first: a full one
    took ~170 ms with torch loaded (seconds in a long-lived process), at every DataLoader made."""
    import gc
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
