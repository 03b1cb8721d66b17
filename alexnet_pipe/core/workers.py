"""The one kind of worker pool the CPU stages (prepare, verify) use."""
from __future__ import annotations


def worker_pool(workers: int, initializer=None):
    """Processes started with spawn: fork would copy locks held by OpenCV's or BLAS's threads in
    this process (a demo or notebook has used them already) and hang the workers. An executor,
    unlike multiprocessing.Pool, reports a worker that died instead of replacing it forever."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer)
