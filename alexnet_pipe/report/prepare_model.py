"""`bench prepare --model`: prepare's throughput against its number of workers, predicted from measured parts.

prepare is one parent process that lists, plans and writes every record into LMDB (the single writer), and N
spawned workers that decode, resize, encode and sum the statistics of 32-image chunks.  A machine with few
cores cannot run 64 workers, so the curve is built from what it can measure:

  * p, the parent's CPU per image: the writer alone (ShardWriter puts, the record checksum, the shard commits)
    fed by workers that only hand over ready-made chunk results of the right size (so the receiving, unpickling
    and statistics merge of each chunk count too), at a given record size;
  * a(n), a worker's CPU per image when n workers run at once (`process_chunk` on the same pictures): memory
    bandwidth and shared caches make it grow with n; measured for n up to the cores here, and beyond that
    extrapolated with the slowdown of the largest doubling measured (an assumption; docs/performance.md);
  * s(n), the pool's start-up (spawned interpreters importing numpy and OpenCV), and the listing and plan.

With K cores the writing phase runs at rate(n) = min(n / a(n), 1 / p, K / (a(n) + p)): what the workers make,
what the single writer takes, and what the cores can run (an image costs a + p of CPU in all).  The whole
command's rate is N / (listing + s(n) + N / rate(n)).
"""
from __future__ import annotations

import dataclasses
import math
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 32  # prepare's chunk (ingest.prepare.CHUNK): checked against it in the tests


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    images: int = 600          # generated pictures for the worker measurements
    size: int = 256
    quality: int = 90
    writer_records: int = 4000  # records written per writer measurement
    max_workers: int | None = None  # most workers measured at once [default: the cores here]
    cores: int | None = None    # cores of the machine predicted for [default: one per worker, as prepare runs]


# --- the parent: the writer alone ------------------------------------------------------------------

_CANNED: bytes = b""


def _set_canned(blob: bytes) -> None:
    global _CANNED
    _CANNED = blob


def _canned_chunk(_task) -> bytes:
    """A worker that does no image work: it hands back a pickled chunk result, as process_chunk's would travel."""
    return _CANNED


def canned_result(record_bytes: int, size: int, seed: int = 0):
    """A ChunkResult of CHUNK records of `record_bytes` random bytes (JPEG data does not compress either),
    with uint16 statistics of a `size` px image, as a worker sends it."""
    from alexnet_pipe.ingest.chunks import ChunkResult
    from alexnet_pipe.shards import Datum, ShardStats
    rng = np.random.default_rng(seed)
    records = [(b"", Datum(rng.bytes(record_bytes), 0, True, 3, size, size).to_bytes()) for _ in range(CHUNK)]
    stats = ShardStats.zeros(size)
    stats.pixel_sum = rng.integers(0, 1 << 13, (size, size, 3)).astype(np.uint16)
    return ChunkResult(records, [], stats)


def writer_alone(record_bytes: int, size: int, records: int, shard_size: int = 10_000) -> dict:
    """Records/s of the parent's write loop alone, fed by two workers with ready chunk results; and its parts
    per chunk, timed in this process: unpickling a result, merging its statistics."""
    from alexnet_pipe.core.workers import worker_pool
    from alexnet_pipe.shards import ShardStats, ShardWriter, record_key
    blob = pickle.dumps(canned_result(record_bytes, size), protocol=pickle.HIGHEST_PROTOCOL)
    chunks = math.ceil(records / CHUNK)
    work = Path(tempfile.mkdtemp(prefix="bench-writer-"))
    try:
        with worker_pool(2, initializer=_set_canned_init(blob)) as pool:
            list(pool.map(_canned_chunk, range(4)))  # started and warm before the clock
            t0, c0 = time.perf_counter(), time.process_time()
            writer, written = None, 0
            for future in [pool.submit(_canned_chunk, k) for k in range(chunks)]:
                result = pickle.loads(future.result())
                if writer is None:
                    writer = ShardWriter(work / f"shard-{written // shard_size:05d}", size)
                for _key, value in result.records:
                    writer.put(record_key(written, "train/n0/x.JPEG"), value)
                    written += 1
                writer.stats.merge(result.stats)
                if written % shard_size < CHUNK or written >= chunks * CHUNK:
                    writer.commit({})
                    writer = None
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loads = _time(lambda: pickle.loads(blob), 20)
    target, stats = ShardStats.zeros(size), pickle.loads(blob).stats
    merge = _time(lambda: target.merge(stats), 20)
    return {"record_bytes": record_bytes, "size": size, "records": written, "records_per_sec": written / wall,
            "parent_cpu_us_per_record": cpu / written * 1e6, "unpickle_us_per_chunk": loads * 1e6,
            "merge_us_per_chunk": merge * 1e6}


def _set_canned_init(blob: bytes):
    import functools
    return functools.partial(_set_canned, blob)


def _time(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


# --- the workers: a worker's throughput beside others --------------------------------------------

def _chunks_of(src: Path, size: int, quality: int) -> list:
    from alexnet_pipe.ingest.chunks import ImageJob
    from alexnet_pipe.ingest.items import Item
    files = sorted(p for p in (src / "train").rglob("*") if p.is_file())
    job = ImageJob(size, quality, "jpeg", "area", True)
    items = [(i, Item(f"train/{p.parent.name}/{p.name}", 0, str(p))) for i, p in enumerate(files)]
    return [(job, "train", items[k:k + CHUNK]) for k in range(0, len(items), CHUNK)]


def _work_through(chunks) -> tuple[float, int]:
    """One worker's pass over the chunks: (CPU seconds, images)."""
    from alexnet_pipe.ingest.chunks import init_worker, process_chunk
    init_worker()
    process_chunk(chunks[0])  # imports and first-call costs out of the clock
    c0 = time.process_time()
    images = sum(len(process_chunk(c).records) for c in chunks)
    return time.process_time() - c0, images


def worker_rates(src: Path, size: int, quality: int, counts) -> dict[int, float]:
    """n -> one worker's images per CPU second while n workers work through the same chunks at once (page cache
    warm).  CPU time, not wall: on a machine shared with other jobs the wall clock says how much of a core the
    worker was given; the CPU time (stalls on memory included) what an image costs it beside n - 1 others."""
    from alexnet_pipe.core.workers import worker_pool
    chunks = _chunks_of(src, size, quality)
    out = {}
    for n in counts:
        with worker_pool(n) as pool:
            runs = list(pool.map(_work_through, [chunks] * n))
        out[n] = sum(images / cpu for cpu, images in runs) / n
    return out


def pool_start_seconds(n: int) -> float:
    """Seconds until n spawned workers have each imported prepare's worker code and run a task (0 for one:
    prepare then works in its own process)."""
    from alexnet_pipe.core.workers import worker_pool
    if n == 1:
        return 0.0
    t0 = time.perf_counter()
    with worker_pool(n) as pool:
        list(pool.map(_import_worker, range(n)))
    return time.perf_counter() - t0


def _import_worker(_i) -> int:
    from alexnet_pipe.ingest.chunks import init_worker
    init_worker()
    return os.getpid()


# --- the model -------------------------------------------------------------------------------------

def worker_rate(n: int, measured: dict[int, float]) -> float:
    """One worker's images/s beside n - 1 others: measured where it was; beyond, each doubling of n costs what
    the largest measured doubling cost (nothing if only n = 1 was measured, or if the worker came out faster
    beside others: noise, not a gain to extrapolate)."""
    if n in measured:
        return measured[n]
    top = max(measured)
    half = max((k for k in measured if k <= top // 2), default=top)
    per_doubling = min(1.0, measured[top] / measured[half]) if half < top else 1.0
    return measured[top] * per_doubling ** math.log2(n / top)


def predict(n: int, measured: dict[int, float], parent_rate: float, cores: int | None = None) -> dict:
    """Images/s of the writing phase with n workers on `cores` cores (None: n, prepare's default of one worker
    per core): the least of what the workers make (n w(n)), what the parent writes (1 / p), and what the
    cores can run (workers and parent share them: cores / (a(n) + p) per image, a = 1 / w, p = 1 / parent_rate)."""
    cores = cores or n
    w = worker_rate(n, measured)
    workers, parent = n * w, parent_rate
    shared = cores / (1.0 / w + 1.0 / parent_rate)
    rate = min(workers, parent, shared)
    bound = "parent (the single writer)" if rate == parent else "workers" if rate == workers else "cores"
    return {"workers": n, "images_per_sec": rate, "per_worker": w, "bound": bound}


def whole_rate(images: int, rate: float, listing: float, start: float) -> float:
    """The whole command's images/s: listing and plan, the pool's start, then the writing phase."""
    return images / (listing + start + images / rate)


PREDICT_FOR = (1, 2, 4, 8, 16, 32, 64)
# the 16-core H100 machine (docs/performance.md, 2026-11-22): bare decode 552 img/s on one core there,
# `prepare --workers 16` 2,067 img/s on 9,600 pictures at 256 px
H100 = {"cores": 16, "bare_decode": 552.0, "images": 9600, "workers": 16, "measured": 2067.0}


def run_model(s: ModelSettings) -> dict:
    """Measure the parts here, the whole command at 1..max_workers workers, and predict 1..64 (and the H100)."""
    from alexnet_pipe.report.bench_prepare import bare_decode, inputs, make_tree
    cores = s.cores
    counts = list(range(1, (s.max_workers or os.cpu_count() or 1) + 1))
    work = Path(tempfile.mkdtemp(prefix="bench-model-"))
    try:
        src = make_tree(work / "src", s.images)
        files = [item for item in inputs(src) if item.relpath.startswith("train/")]  # as prepare lists them
        bare_decode(files)  # once to warm the page cache, as for every contender
        c0 = time.process_time()
        bare_decode(files)
        bare = len(files) / (time.process_time() - c0)  # per CPU second, as the workers' rates
        rates = worker_rates(src, s.size, s.quality, counts)
        sizes = {"imagenet": 110_000, f"{s.size}px": _record_bytes(src, s.size, s.quality),
                 "32px": _record_bytes(src, 32, s.quality)}
        writer = {name: writer_alone(b, 32 if name == "32px" else s.size, s.writer_records)
                  for name, b in sizes.items()}
        measured = {n: _prepare_rate(src, work / f"out{n}", s, n) for n in counts}
        starts = {n: pool_start_seconds(n) for n in counts}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    parent = 1e6 / writer[f"{s.size}px"]["parent_cpu_us_per_record"]  # on a core of its own
    listing = statistics_listing(measured)
    curve = [dict(predict(n, rates, parent, cores), whole=whole_rate(s.images, predict(n, rates, parent, cores)[
        "images_per_sec"], listing, starts.get(n, max(starts.values()))), measured=measured.get(n, {}).get("rate"))
             for n in sorted(set(PREDICT_FOR) | set(counts))]
    return {"cores": cores or "one per worker", "images": s.images, "size": s.size, "bare_decode_one_core": bare,
            "worker_images_per_sec": rates, "writer": writer, "pool_start_seconds": starts,
            "listing_seconds": listing, "measured": measured, "curve": curve,
            "h100": _h100_check(rates, parent, bare, listing, max(starts.values()))}


def statistics_listing(measured: dict) -> float:
    """The listing + plan seconds of the measured runs (prepare reports them), their median."""
    import statistics
    return statistics.median(m["listing"] for m in measured.values())


def _record_bytes(src: Path, size: int, quality: int) -> int:
    """Mean record size of the first chunks of the tree prepared at `size` px."""
    from alexnet_pipe.ingest.chunks import process_chunk
    records = [v for c in _chunks_of(src, size, quality)[:4] for _k, v in process_chunk(c).records]
    return int(np.mean([len(v) for v in records]))


def _prepare_rate(src: Path, data: Path, s: ModelSettings, workers: int) -> dict:
    """The whole prepare command at `workers` workers: images/s, and its listing seconds."""
    from alexnet_pipe.ingest.prepare import PrepareSettings, run as prepare_run
    t0 = time.perf_counter()
    out = prepare_run(PrepareSettings(source=src, data=data, size=s.size, quality=s.quality, workers=workers),
                      echo=lambda *_: None)
    wall = time.perf_counter() - t0
    shutil.rmtree(data, ignore_errors=True)
    return {"rate": s.images / wall, "listing": float(out.get("listing_seconds", 0.0))}


def _h100_check(rates: dict, parent: float, bare: float, listing: float, start: float) -> dict:
    """This machine's parts scaled by the two machines' bare-decode rates per core, for the H100 machine's run."""
    scale = H100["bare_decode"] / bare
    scaled = {n: r * scale for n, r in rates.items()}
    p = predict(H100["workers"], scaled, parent * scale, H100["cores"])
    whole = whole_rate(H100["images"], p["images_per_sec"], listing / scale, start / scale)
    return {"scale": scale, "predicted_writing": p["images_per_sec"], "predicted_whole": whole,
            "bound": p["bound"], "measured_whole": H100["measured"]}
