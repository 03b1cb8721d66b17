"""prepare: raw ImageNet -> sharded Caffe-compatible LMDB (see docs/format.md).

The shard plan is a pure function of (file list, seed, shard count): items are sorted by
relative path, permuted by a seeded generator, and cut into contiguous shards.  So any run,
on any machine, with any number of workers, writes the same records under the same keys;
resuming after a crash only has to find which shards are already committed.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import functools
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from alexnet_pipe.ingest import claims
from alexnet_pipe.ingest import images
from alexnet_pipe.ingest import owned
from alexnet_pipe.shards import format as shards
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.core.errors import Interrupted, UserError
from alexnet_pipe.core.files import DiskFull, atomic_write, write_json_atomic
from alexnet_pipe.core.outdir import overlap, writable_dir
from alexnet_pipe.core.workers import worker_pool
from alexnet_pipe.ingest.sources import Inventory, Item, ItemList, discover, read_bytes

SPLIT_STREAMS = {"train": 0, "val": 1}
LISTING_EVERY = 1.0  # seconds between "listing" lines in a log: listing ImageNet takes half a minute
CHUNK = 32  # images per task sent to a worker
IN_FLIGHT_PER_WORKER = 4  # chunks queued per worker: enough to hide the parent's LMDB writes, and no more
assert CHUNK * 255 < 1 << 16  # a chunk's pixel sums fit uint16 (see process_chunk)


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
    only_shards: tuple[int, int] | str | None = None  # [A, B): this machine's part; "auto": from the array job
    array_count: int | None = None  # tasks of a Kubernetes indexed job (Slurm says its own count)
    overwrite: bool = False

    def output_settings(self) -> dict:
        """The settings that change what is written (workers and only_shards do not)."""
        return {"size": self.size, "quality": self.quality, "encoding": self.encoding,
                "resize": self.resize, "reduce": self.reduce, "seed": self.seed,
                "shards": self.shards, "shard_size": self.shard_size}


@dataclasses.dataclass(frozen=True, eq=False)
class ShardPlan:
    split: str
    index: int
    start: int                      # global index (key number) of the first item
    items: ItemList                 # a selection of the split's list: Items are made per chunk (see _tasks)

    @property
    def name(self) -> str:
        return shards.shard_name(self.index)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the planned inputs; the plan record, resume and commit all ask for it."""
        h = hashlib.sha256()
        for i in range(len(self.items)):  # f"{relpath}\0{label}\n", without an Item per image
            h.update(self.items.relpath_bytes(i) + b"\0%d\n" % self.items.label(i))
        return h.hexdigest()


def shard_count(n: int, settings: PrepareSettings) -> int:
    if n == 0:
        return 0
    return min(settings.shards, n) if settings.shards else math.ceil(n / settings.shard_size)


def plan_split(split: str, items: ItemList, seed: int, count: int) -> list[ShardPlan]:
    """Seeded global shuffle of the split (sorted by relative path first), cut into `count` contiguous shards."""
    if count == 0:
        return []
    ordered = items.sorted_order()
    shuffled = ordered[np.random.default_rng([seed, SPLIT_STREAMS[split]]).permutation(len(ordered))]
    bounds = [len(shuffled) * s // count for s in range(count + 1)]
    return [ShardPlan(split, s, bounds[s], items.take(shuffled[bounds[s]:bounds[s + 1]])) for s in range(count)]


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
    # uint16 holds a chunk's sums exactly (assert at CHUNK) in a quarter of int64's bytes; the parent
    # merges them into the shard's int64 totals as they arrive
    result.stats.pixel_sum = result.stats.pixel_sum.astype(np.uint16)
    return result


# --- the data dir ----------------------------------------------------------------------

SHARD_REJECTS = owned.SHARD_REJECTS
PREPARE_JSON = owned.PREPARE_JSON


def plan_record(plan: dict[str, list[ShardPlan]], settings: PrepareSettings) -> dict:
    """What a data dir is bound to: output settings and the shard plan's fingerprint."""
    fps = {split: hashlib.sha256("".join(p.fingerprint for p in plans).encode()).hexdigest()
           for split, plans in plan.items()}
    return {"format_version": shards.FORMAT_VERSION, "settings": settings.output_settings(),
            "plan": {split: {"shards": len(plan[split]), "fingerprint": fps[split]} for split in plan}}


def _bound_record(path: Path) -> tuple[dict | None, str | None]:
    """(record, None); (None, None) where there is none; (None, why) where the file is not one prepare wrote."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON and bad UTF-8 alike
        return None, str(exc)
    if not (isinstance(old, dict) and isinstance(old.get("settings"), dict)):
        return None, "it is JSON, but not the record prepare writes"
    return old, None


def _differences(old: dict, new: dict) -> str:
    diffs = [f"{k} {old['settings'].get(k)} -> {v}" for k, v in new["settings"].items()
             if old["settings"].get(k) != v]
    if not diffs and old.get("plan") != new["plan"]:
        diffs.append("the input files changed")
    return ", ".join(diffs)


def claim_data_dir(dd: DataDir, record: dict, overwrite: bool) -> None:
    """Bind the data dir to these settings, or refuse where it holds shards made otherwise.
    --overwrite removes only what prepare and stats wrote (owned.py); the hints never suggest more."""
    owned.refuse_foreign(dd)
    path = dd.root / PREPARE_JSON
    old, damage = _bound_record(path)
    if overwrite:
        owned.clear(dd)
    elif damage:
        raise UserError(f"{path} is unreadable ({damage}); pass --overwrite to replace what prepare wrote in "
                        f"{dd.root} (files it did not write stay)")
    elif old is not None and (diff := _differences(old, record)):
        raise UserError(f"{dd.root} holds shards made differently ({diff}); pass --overwrite to replace them "
                        "(files prepare did not write stay), or choose another --data dir")
    elif old is None and owned.has_shards(dd):
        raise UserError(f"{dd.root} holds shards but no {PREPARE_JSON} saying how they were made; pass --overwrite "
                        "to replace them (files prepare did not write stay)")
    write_json_atomic(path, record)


def pending_shards(dd: DataDir, plan: dict[str, list[ShardPlan]],
                   only: tuple[int, int] | None) -> list[ShardPlan]:
    """Shards of this run not yet committed (leftovers are removed once a shard is claimed, see _take)."""
    todo = []
    for split, plans in plan.items():
        folder = dd.split(split)
        folder.mkdir(exist_ok=True)
        for p in plans:
            if only and not only[0] <= p.index < only[1]:
                continue
            meta = shards.read_shard_meta(folder / p.name)
            if meta is None:
                todo.append(p)
                continue
            claims.clear_stale(_claim_path(dd, p))
            if meta.get("fingerprint") != p.fingerprint:
                raise UserError(f"{folder / p.name} was written from other inputs; pass --overwrite to replace "
                                "the shards (files prepare did not write stay)")
    return todo


def resolve_only_shards(settings: PrepareSettings, plan: dict[str, list[ShardPlan]]) -> tuple[int, int] | None:
    """This run's [A, B) of every split, or None for all; a range that selects nothing is refused."""
    most = max((len(p) for p in plan.values()), default=0)
    if settings.only_shards == "auto":
        from alexnet_pipe.ingest.arrayjob import auto_range
        return auto_range(os.environ, settings.array_count, most)
    if settings.only_shards is not None and settings.only_shards[0] >= most:
        a, b = settings.only_shards
        raise UserError(f"--only-shards {a}:{b} selects no shard: the plan has at most {most} shards per split "
                        f"(0:{most} is all of them)")
    return settings.only_shards


# --- writing -----------------------------------------------------------------------------

class NoSpace(Exception):
    """The device under `path` is full; run() turns this into one sentence with the space needed."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


def _no_space(exc: BaseException, writer: shards.ShardWriter | None = None) -> bool:
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


def _claim_path(dd: DataDir, p: ShardPlan) -> Path:
    return dd.split(p.split) / f".{p.name}.claim"


def _take(dd: DataDir, p: ShardPlan) -> bool:
    """Claim shard p for this process; False where another writer has it or has committed it meanwhile."""
    folder = dd.split(p.split)
    if not claims.try_claim(_claim_path(dd, p)):
        return False
    if shards.read_shard_meta(folder / p.name) is not None:
        claims.release(_claim_path(dd, p))
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


def _abort(writer: shards.ShardWriter) -> None:
    """Drop a half-written shard; after a failed LMDB commit its transaction is gone and abort may raise."""
    try:
        writer.abort()
    except Exception:
        owned.remove_shard_dir(writer.tmp_dir)  # by name, as everywhere: never a recursive delete


def write_shards(dd: DataDir, todo: list[ShardPlan], job: ImageJob, workers: int,
                 progress) -> tuple[list[ShardPlan], list[ShardPlan]]:
    """One writer (this process) per shard; workers decode/resize/encode in parallel.
    Returns (shards written, shards left to another writer that had claimed them)."""
    taken, skipped = [], []
    writer, rejects = None, []
    try:
        for plan, last, result in _results(_tasks(dd, job, todo, taken, skipped), workers):
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
                claims.release(_claim_path(dd, plan))
                writer, rejects = None, []
    except Exception as exc:
        if _no_space(exc, writer):
            raise NoSpace(writer.tmp_dir.parent if writer else dd.root) from None
        raise
    finally:
        if writer is not None:
            _abort(writer)
        for p in taken:
            claims.release(_claim_path(dd, p))
    return taken, skipped


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- finishing -------------------------------------------------------------------------

def _missing(dd: DataDir, split: str, p: ShardPlan) -> UserError:
    claim = _claim_path(dd, p)
    if claim.exists():
        return UserError(f"{split}/{p.name} is being written by {claims.describe(claim)}; run prepare again "
                         "once that writer has finished")
    return UserError(f"{split}/{p.name} is not written yet; run prepare without --only-shards")


def _nothing_written(dd: DataDir, rejects: list[dict]) -> UserError:
    common = collections.Counter(r["reason"].split(" (")[0] for r in rejects).most_common(1)
    why = f", most as {common[0][0]!r}" if common else ""
    return UserError(f"no image could be written: all {len(rejects)} inputs were rejected{why}; "
                     f"the reason for each is in {dd.rejects}")


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
                raise _missing(dd, split, p)
            rejects.extend(_read_jsonl(dd.split(split) / p.name / SHARD_REJECTS))
            written += meta["records"]
            if meta["records"]:  # an all-rejected shard stays on disk for resume, but is not data
                entries.append({k: meta[k] for k in ("name", "records", "bytes", "checksum")})
        manifest["splits"][split] = {"count": written, "shards": entries,
                                     "rejects": sum(r["split"] == split for r in rejects)}
    _write_jsonl(dd.rejects, [{k: v for k, v in r.items() if k != "key_index"} for r in rejects])
    if not any(s["count"] for s in manifest["splits"].values()):
        raise _nothing_written(dd, rejects)
    write_json_atomic(dd.manifest, manifest)
    return manifest


def _space_needed(dd: DataDir, todo: list[ShardPlan], settings: PrepareSettings) -> tuple[int, int]:
    """(shards kept, bytes still to write): from this data dir's own records per image where it has
    some, else a JPEG's typical tenth of the raw pixels; plus each shard's int64 sums (stats.npz)."""
    read = [(p, shards.read_shard_meta(dd.split(p.split) / p.name)) for p in todo]  # each meta.json once
    metas = [m for _, m in read if m]
    records = sum(m.get("records", 0) for m in metas)
    raw = settings.size * settings.size * 3
    per_image = (sum(m.get("bytes", 0) for m in metas) / records if records else
                 raw / 10 if settings.encoding == "jpeg" else raw)
    left = [p for p, m in read if m is None]
    lmdb_overhead = 1.15  # page headers, the B-tree, half-full last pages
    need = sum(len(p.items) for p in left) * per_image * lmdb_overhead + len(left) * (raw * 8 + 65536)
    return len(metas), int(need)


def _disk_full(dd: DataDir, path: Path, todo: list[ShardPlan], settings: PrepareSettings) -> UserError:
    kept, need = _space_needed(dd, todo, settings)
    free = shutil.disk_usage(path).free
    return UserError(f"no space left on the device of {path}: about {need / 1e6:.0f} MB more is needed "
                     f"({free / 1e6:.0f} MB free now); {kept} of the {len(todo)} shards of this run are complete "
                     "and kept, no partial shard is left: free space and run the same command again")


def _refuse_overlap(settings: PrepareSettings) -> None:
    """A data dir may hold the source (the demo keeps DATA/demo/sample) but not where prepare writes and
    --overwrite removes: the source inside its train/, val/ or stats/, or the data dir inside the source."""
    data, how = DataDir(Path(settings.data)), overlap(settings.data, settings.source)
    if how == "contains" and not any(overlap(place, settings.source) for place in
                                     (data.split("train"), data.split("val"), data.stats)):
        return
    if how:
        raise UserError(f"the data dir {settings.data} {how} the source {settings.source}: prepare writes and "
                        "--overwrite removes files there, so choose a --data dir outside the source")


def _list(settings: PrepareSettings, echo, stream) -> Inventory:
    """discover, with a count of the files found so far (the total is unknown until the end)."""
    from alexnet_pipe.core.progress import Progress
    echo(f"listing {settings.source} ...")
    listing = Progress(None, "listing", unit=" files", stream=stream, every=LISTING_EVERY)
    try:
        return discover(settings.source, settings.val_labels, tick=listing.update)
    finally:
        listing.close()


def run(settings: PrepareSettings, echo=print, stream=None) -> dict:
    """The whole command; returns a summary dict (also what the CLI prints). Progress goes to stream
    (stderr by default). images_per_sec is over the whole run, listing included."""
    t0 = time.perf_counter()
    _refuse_overlap(settings)
    dd = DataDir(Path(settings.data))
    inv = _list(settings, echo, stream)
    listed = time.perf_counter() - t0
    plan = make_plan(inv, settings)
    only = resolve_only_shards(settings, plan)
    if settings.only_shards == "auto":
        from alexnet_pipe.ingest.arrayjob import task_note
        echo(task_note(os.environ, settings.array_count, only))
    writable_dir(dd.root, "--data dir")
    # a whole run may clear and finalises: it waits for every other writer; --only-shards workers share
    with claims.data_dir_lock(dd.root, exclusive=only is None or settings.overwrite, echo=echo):
        summary = _run_locked(dd, inv, plan, only, settings, echo, stream)
    summary["seconds"] = time.perf_counter() - t0
    summary["listing_seconds"] = listed
    summary["images_per_sec"] = summary["written_now"] / max(summary["seconds"], 1e-9)
    return summary


def _run_locked(dd: DataDir, inv: Inventory, plan: dict[str, list[ShardPlan]], only, settings, echo,
                stream=None) -> dict:
    from alexnet_pipe.core.progress import Progress
    todo = []
    try:
        claim_data_dir(dd, plan_record(plan, settings), settings.overwrite)
        todo = pending_shards(dd, plan, only)
        total = sum(len(p.items) for p in todo)
        echo(f"{inv.layout} layout: " + ", ".join(f"{s} {len(v)} images" for s, v in inv.splits.items())
             + f", {len(inv.classes)} classes; {len(todo)} shards to write ({total} images)")
        job = ImageJob(settings.size, settings.quality, settings.encoding, settings.resize, settings.reduce)
        progress = Progress(total, "prepare", stream=stream)
        written, skipped = _write_all(dd, todo, job, settings.workers, progress)
        rate = progress.close()
        summary = {"written_now": sum(len(p.items) for p in written), "writing_images_per_sec": rate,
                   "shards_written_now": len(written), "manifest": None,
                   "written_shards": [f"{p.split}/{p.name}" for p in written],
                   "left_to_others": [f"{p.split}/{p.name}" for p in skipped]}
        if only is None:
            summary["manifest"] = finalize(dd, inv, plan, settings)
        return summary
    except NoSpace as exc:
        raise _disk_full(dd, exc.path, todo, settings) from None
    except Exception as exc:
        if _no_space(exc):  # prepare.json, rejects.jsonl or the manifest
            raise _disk_full(dd, dd.root, todo, settings) from None
        raise


def _write_all(dd: DataDir, todo: list[ShardPlan], job: ImageJob, workers: int, progress):
    try:
        return write_shards(dd, todo, job, workers, progress)
    except KeyboardInterrupt:  # write_shards has dropped the shard it was writing; committed ones stay
        progress.close()
        kept = sum(shards.read_shard_meta(dd.split(p.split) / p.name) is not None for p in todo)
        raise Interrupted(f"interrupted: {kept} of the {len(todo)} shards of this run are complete and kept, "
                          "no partial shard is left; run the same command again to write the rest") from None
