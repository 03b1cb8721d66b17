"""prepare: raw ImageNet -> sharded Caffe-compatible LMDB (see docs/format.md).

The shard plan is a pure function of (file list, seed, shard count): items are sorted by
relative path, permuted by a seeded generator, and cut into contiguous shards.  So any run,
on any machine, with any number of workers, writes the same records under the same keys;
resuming after a crash only has to find which shards are already committed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import images, shards
from .datadir import DataDir
from .files import atomic_write, write_json_atomic
from .errors import Interrupted, UserError
from .sources import Inventory, Item, discover, read_bytes

SPLIT_STREAMS = {"train": 0, "val": 1}
CHUNK = 32  # images per task sent to a worker


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    source: Path
    data: Path
    size: int = 256
    quality: int = 90
    encoding: str = "jpeg"          # "jpeg" | "raw"
    resize: str = "area"            # images.RESIZE_FILTERS
    reduce: bool = True             # DCT-domain downscaling while decoding large JPEGs
    seed: int = 0
    shards: int | None = None       # per split; None: ceil(records / shard_size)
    shard_size: int = 10000
    workers: int = 1
    val_labels: Path | None = None
    only_shards: tuple[int, int] | None = None  # [A, B): this machine's part of a cluster run
    overwrite: bool = False

    def output_settings(self) -> dict:
        """The settings that change what is written (workers and only_shards do not)."""
        return {"size": self.size, "quality": self.quality, "encoding": self.encoding,
                "resize": self.resize, "reduce": self.reduce, "seed": self.seed,
                "shards": self.shards, "shard_size": self.shard_size}


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    start: int                      # global index (key number) of the first item
    items: tuple[Item, ...]

    @property
    def name(self) -> str:
        return shards.shard_name(self.index)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the planned inputs; the plan record, resume and commit all ask for it."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(f"{item.relpath}\0{item.label}\n".encode())
        return h.hexdigest()


def shard_count(n: int, settings: PrepareSettings) -> int:
    if n == 0:
        return 0
    return min(settings.shards, n) if settings.shards else math.ceil(n / settings.shard_size)


def plan_split(split: str, items: list[Item], seed: int, count: int) -> list[ShardPlan]:
    """Seeded global shuffle of the split, cut into `count` contiguous shards."""
    if count == 0:
        return []
    ordered = sorted(items, key=lambda it: it.relpath)
    perm = np.random.default_rng([seed, SPLIT_STREAMS[split]]).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    bounds = [len(shuffled) * s // count for s in range(count + 1)]
    return [ShardPlan(split, s, bounds[s], tuple(shuffled[bounds[s]:bounds[s + 1]])) for s in range(count)]


def make_plan(inv: Inventory, settings: PrepareSettings) -> dict[str, list[ShardPlan]]:
    # every split is listed, an empty one too, so the manifest says "val: 0" rather than nothing
    return {split: plan_split(split, items, settings.seed, shard_count(len(items), settings))
            for split, items in inv.splits.items()}


# --- the worker side -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageJob:
    """What a worker needs to turn inputs into records (small, pickled with every task)."""
    size: int
    quality: int
    encoding: str
    resize: str
    reduce: bool


@dataclasses.dataclass
class ChunkResult:
    records: list[tuple[bytes, bytes]]          # (key, Datum bytes) in key order
    rejects: list[dict]
    stats: shards.ShardStats


def init_worker() -> None:
    import cv2
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads only contend


def to_record(job: ImageJob, index: int, item: Item) -> tuple[bytes, bytes, np.ndarray]:
    """(key, Datum bytes, the pixels as a reader will decode them); raises images.Reject."""
    import cv2
    try:
        data = read_bytes(item)
    except OSError as exc:
        raise images.Reject(f"unreadable ({exc.strerror or exc})") from None
    try:
        bgr = images.decode_bgr(data, job.size if job.reduce else 0)
        square = images.center_square(bgr, job.size, job.resize)
    except cv2.error as exc:
        raise images.Reject(f"undecodable ({str(exc).strip().splitlines()[-1]})") from None
    if job.encoding == "jpeg":
        value = images.encode_jpeg(square, job.quality)
        stored = images.decode_stored_jpeg(value)
    else:  # raw records are HWC RGB (docs/format.md)
        stored = cv2.cvtColor(square, cv2.COLOR_BGR2RGB)
        value = stored.tobytes()
    datum = shards.Datum(value, item.label, job.encoding == "jpeg", 3, job.size, job.size)
    return shards.record_key(index, item.relpath), datum.to_bytes(), stored


def process_chunk(task: tuple[ImageJob, str, list[tuple[int, Item]]]) -> ChunkResult:
    job, split, pairs = task
    result = ChunkResult([], [], shards.ShardStats.zeros(job.size))
    stored_images = []
    for index, item in pairs:
        try:
            key, value, stored = to_record(job, index, item)
        except images.Reject as why:
            where = item.path if item.size < 0 else f"{item.path}!{item.relpath}"
            result.rejects.append({"path": where, "split": split, "reason": str(why), "key_index": index})
            continue
        result.records.append((key, value))
        stored_images.append(stored)
    if stored_images:
        result.stats.add_batch(np.stack(stored_images))
    return result


# --- the data dir ----------------------------------------------------------------------

SHARD_REJECTS = "rejects.jsonl"
PREPARE_JSON = "prepare.json"


def plan_record(plan: dict[str, list[ShardPlan]], settings: PrepareSettings) -> dict:
    """What a data dir is bound to: output settings and the shard plan's fingerprint."""
    fps = {split: hashlib.sha256("".join(p.fingerprint for p in plans).encode()).hexdigest()
           for split, plans in plan.items()}
    return {"format_version": shards.FORMAT_VERSION, "settings": settings.output_settings(),
            "plan": {split: {"shards": len(plan[split]), "fingerprint": fps[split]} for split in plan}}


def _clear(dd: DataDir) -> None:
    for path in (dd.split("train"), dd.split("val"), dd.stats):
        shutil.rmtree(path, ignore_errors=True)
    for path in (dd.manifest, dd.rejects, dd.root / PREPARE_JSON):
        path.unlink(missing_ok=True)


def _differences(old: dict, new: dict) -> str:
    diffs = [f"{k} {old['settings'].get(k)} -> {v}" for k, v in new["settings"].items()
             if old.get("settings", {}).get(k) != v]
    if not diffs and old.get("plan") != new["plan"]:
        diffs.append("the input files changed")
    return ", ".join(diffs)


def claim_data_dir(dd: DataDir, record: dict, overwrite: bool) -> None:
    """Bind the data dir to these settings, or refuse where it holds shards made otherwise."""
    if dd.root.exists() and not dd.root.is_dir():
        raise UserError(f"{dd.root} exists and is not a directory")
    try:
        dd.root.mkdir(parents=True, exist_ok=True)
        probe = dd.root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to {dd.root} ({exc.strerror or exc})") from None
    path = dd.root / PREPARE_JSON
    old = json.loads(path.read_text()) if path.is_file() else None
    if overwrite:
        _clear(dd)
    elif old is not None and (diff := _differences(old, record)):
        raise UserError(f"{dd.root} holds shards made differently ({diff}); "
                        f"use --overwrite to replace them, or another --data dir")
    elif old is None and (dd.split("train").exists() or dd.split("val").exists()):
        raise UserError(f"{dd.root} already has train/ or val/ that prepare did not write; use --overwrite")
    write_json_atomic(path, record)


def pending_shards(dd: DataDir, plan: dict[str, list[ShardPlan]],
                   only: tuple[int, int] | None) -> list[ShardPlan]:
    """Shards of this run not yet committed; leftovers of killed runs are removed."""
    todo = []
    for split, plans in plan.items():
        folder = dd.split(split)
        folder.mkdir(exist_ok=True)
        for p in plans:
            if only and not only[0] <= p.index < only[1]:
                continue
            for tmp in folder.glob(f".{p.name}.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
            meta = shards.read_shard_meta(folder / p.name)
            if meta is None:
                shutil.rmtree(folder / p.name, ignore_errors=True)
                todo.append(p)
            elif meta.get("fingerprint") != p.fingerprint:
                raise UserError(f"{folder / p.name} was written from other inputs; use --overwrite")
    return todo


# --- writing -----------------------------------------------------------------------------

def _tasks(job: ImageJob, todo: list[ShardPlan]):
    """(shard, is its last chunk, task) in shard order; the executor's map keeps this order."""
    for p in todo:
        pairs = list(enumerate(p.items, start=p.start))
        chunks = [pairs[i:i + CHUNK] for i in range(0, len(pairs), CHUNK)] or [[]]
        for n, chunk in enumerate(chunks):
            yield p, n == len(chunks) - 1, (job, p.split, chunk)


def worker_pool(workers: int, initializer=None):
    """Processes started with spawn: fork would copy locks held by OpenCV's or BLAS's threads in
    this process (a demo or notebook has used them already) and hang the workers. An executor,
    unlike multiprocessing.Pool, reports a worker that died instead of replacing it forever."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer)


def _results(tasks: list, workers: int):
    if workers == 1:
        init_worker()
        yield from map(process_chunk, (t for *_, t in tasks))
        return
    from concurrent.futures.process import BrokenProcessPool
    try:
        with worker_pool(workers, init_worker) as pool:
            yield from pool.map(process_chunk, (t for *_, t in tasks))
    except BrokenProcessPool:
        raise UserError("a worker process died (killed, out of memory, or it could not start: run prepare "
                        "from the CLI or a script file); run the same command again to resume") from None


def write_shards(dd: DataDir, todo: list[ShardPlan], job: ImageJob, workers: int, progress) -> None:
    """One writer (this process) per shard; workers decode/resize/encode in parallel."""
    tasks = list(_tasks(job, todo))
    writer, rejects = None, []
    try:
        for (plan, last, _task), result in zip(tasks, _results(tasks, workers)):
            if writer is None:
                writer = shards.ShardWriter(dd.split(plan.split) / plan.name, job.size)
            for key, value in result.records:
                writer.put(key, value)
            writer.stats.merge(result.stats)
            rejects.extend(result.rejects)
            progress.update(len(result.records) + len(result.rejects))
            if last:
                _write_jsonl(writer.tmp_dir / SHARD_REJECTS, rejects)
                writer.commit({"split": plan.split, "first_index": plan.start,
                               "last_index": plan.start + len(plan.items) - 1, "rejects": len(rejects),
                               "fingerprint": plan.fingerprint})
                writer, rejects = None, []
    finally:
        if writer is not None:
            writer.abort()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- finishing -------------------------------------------------------------------------

def finalize(dd: DataDir, inv: Inventory, plan: dict[str, list[ShardPlan]], settings: PrepareSettings) -> dict:
    """Once every shard is committed: rejects.jsonl, then manifest.json (atomically, last)."""
    manifest = {"format_version": shards.FORMAT_VERSION, "settings": settings.output_settings(),
                "source": {"layout": inv.layout, "val_labels": inv.val_labels_from},
                "classes": [{"wnid": w, "name": n} for w, n in inv.classes], "splits": {}}
    rejects = list(inv.rejects)
    for split, plans in plan.items():
        entries, written = [], 0
        for p in plans:
            meta = shards.read_shard_meta(dd.split(split) / p.name)
            if meta is None:
                raise UserError(f"{split}/{p.name} is not written yet; run prepare without --only-shards")
            rejects.extend(_read_jsonl(dd.split(split) / p.name / SHARD_REJECTS))
            written += meta["records"]
            if meta["records"]:  # an all-rejected shard stays on disk for resume, but is not data
                entries.append({k: meta[k] for k in ("name", "records", "bytes", "checksum")})
        manifest["splits"][split] = {"count": written, "shards": entries,
                                     "rejects": sum(r["split"] == split for r in rejects)}
    _write_jsonl(dd.rejects, [{k: v for k, v in r.items() if k != "key_index"} for r in rejects])
    write_json_atomic(dd.manifest, manifest)
    return manifest


def run(settings: PrepareSettings, echo=print) -> dict:
    """The whole command; returns a summary dict (also what the CLI prints)."""
    from .progress import Progress
    t0 = time.perf_counter()
    dd = DataDir(Path(settings.data))
    inv = discover(settings.source, settings.val_labels)
    plan = make_plan(inv, settings)
    claim_data_dir(dd, plan_record(plan, settings), settings.overwrite)
    todo = pending_shards(dd, plan, settings.only_shards)
    total = sum(len(p.items) for p in todo)
    echo(f"{inv.layout} layout: " + ", ".join(f"{s} {len(v)} images" for s, v in inv.splits.items())
         + f", {len(inv.classes)} classes; {len(todo)} shards to write ({total} images)")
    job = ImageJob(settings.size, settings.quality, settings.encoding, settings.resize, settings.reduce)
    progress = Progress(total, "prepare")
    try:
        write_shards(dd, todo, job, settings.workers, progress)
    except KeyboardInterrupt:  # write_shards has dropped the shard it was writing; committed ones stay
        progress.close()
        kept = sum(shards.read_shard_meta(dd.split(p.split) / p.name) is not None for p in todo)
        raise Interrupted(f"interrupted: {kept} of the {len(todo)} shards of this run are complete and kept, "
                          "no partial shard is left; run the same command again to write the rest") from None
    rate = progress.close()
    summary = {"written_now": total, "images_per_sec": rate, "seconds": time.perf_counter() - t0,
               "shards_written_now": len(todo), "manifest": None}
    if settings.only_shards is None:
        summary["manifest"] = finalize(dd, inv, plan, settings)
    return summary
