"""prepare: raw ImageNet -> sharded Caffe-compatible LMDB (see docs/format.md), as a run.

List the inputs (sources.py), plan the shards (plan.py), bind the data dir to the plan (binding.py), write the
shards that are left (writing.py, workers in chunks.py), then the rejects and, last, the manifest.
"""
from __future__ import annotations

import collections
import os
import shutil
import time
from pathlib import Path

from alexnet_pipe.core.errors import Interrupted, UserError
from alexnet_pipe.core.outdir import overlap, writable_dir
from alexnet_pipe.core.remote import is_url
from alexnet_pipe.ingest import claims
from alexnet_pipe.ingest.binding import claim_data_dir, pending_shards, resolve_only_shards, shard_claim
from alexnet_pipe.ingest.chunks import ImageJob
from alexnet_pipe.ingest.items import Inventory
from alexnet_pipe.ingest.plan import PrepareSettings, ShardPlan, make_plan, plan_record
from alexnet_pipe.ingest.sources import discover
from alexnet_pipe.ingest.writing import NoSpace, no_space, write_shards
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.manifest import (FORMAT_VERSION, read_shard_meta, read_shard_rejects, write_manifest,
                                          write_rejects)

LISTING_EVERY = 1.0  # seconds between "listing" lines in a log: listing ImageNet takes half a minute


def _missing(dd: DataDir, split: str, p: ShardPlan) -> UserError:
    claim = shard_claim(dd, p)
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
    manifest = {"format_version": FORMAT_VERSION, "settings": settings.output_settings(),
                "source": {"layout": inv.layout, "val_labels": inv.val_labels_from},
                "classes": [{"wnid": w, "name": n} for w, n in inv.classes], "splits": {}}
    rejects = list(inv.rejects)
    for split, plans in plan.items():
        entries, written = [], 0
        for p in plans:
            meta = read_shard_meta(dd.split(split) / p.name)
            if meta is None:
                raise _missing(dd, split, p)
            rejects.extend(read_shard_rejects(dd.split(split) / p.name))
            written += meta["records"]
            if meta["records"]:  # an all-rejected shard stays on disk for resume, but is not data
                entries.append({k: meta[k] for k in ("name", "records", "bytes", "checksum")})
        manifest["splits"][split] = {"count": written, "shards": entries,
                                     "rejects": sum(r["split"] == split for r in rejects)}
    write_rejects(dd.rejects, [{k: v for k, v in r.items() if k != "key_index"} for r in rejects])
    if not any(s["count"] for s in manifest["splits"].values()):
        raise _nothing_written(dd, rejects)
    write_manifest(dd.root, manifest)
    return manifest


def _space_needed(dd: DataDir, todo: list[ShardPlan], settings: PrepareSettings) -> tuple[int, int]:
    """(shards kept, bytes still to write): from this data dir's own records per image where it has
    some, else a JPEG's typical tenth of the raw pixels; plus each shard's int64 sums (stats.npz)."""
    read = [(p, read_shard_meta(dd.split(p.split) / p.name)) for p in todo]  # each meta.json once
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
    if is_url(settings.source):  # a bucket cannot hold a local data dir
        return
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


def run(settings: PrepareSettings, echo=print, stream=None, store=None) -> dict:
    """The whole command; returns a summary dict (also what the CLI prints). Progress goes to stream
    (stderr by default). images_per_sec is over the whole run, listing included. A --data URL: the same run on
    a local mirror, `store` (bucket.py) updating the bucket at each step."""
    if is_url(settings.data):
        from alexnet_pipe.ingest.bucket import run_into_bucket
        return run_into_bucket(settings, echo, stream, run)
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
        summary = _run_locked(dd, inv, plan, only, settings, echo, stream, store)
    summary["seconds"] = time.perf_counter() - t0
    summary["listing_seconds"] = listed
    summary["images_per_sec"] = summary["written_now"] / max(summary["seconds"], 1e-9)
    return summary


def _run_locked(dd: DataDir, inv: Inventory, plan: dict[str, list[ShardPlan]], only, settings, echo,
                stream=None, store=None) -> dict:
    from alexnet_pipe.core.progress import Progress
    todo = []
    try:
        claim_data_dir(dd, plan_record(plan, settings), settings.overwrite, only)
        if store:
            store.bound(settings.overwrite, only)
        todo = pending_shards(dd, plan, only)
        total = sum(len(p.items) for p in todo)
        echo(f"{inv.layout} layout: " + ", ".join(f"{s} {len(v)} images" for s, v in inv.splits.items())
             + f", {len(inv.classes)} classes; {len(todo)} shards to write ({total} images)")
        job = ImageJob(settings.size, settings.quality, settings.encoding, settings.resize, settings.reduce,
                   settings.max_pixels)
        progress = Progress(total, "prepare", stream=stream)
        written, skipped = _write_all(dd, todo, job, settings.workers, progress, store)
        rate = progress.close()
        summary = {"written_now": sum(len(p.items) for p in written), "writing_images_per_sec": rate,
                   "shards_written_now": len(written), "manifest": None,
                   "written_shards": [f"{p.split}/{p.name}" for p in written],
                   "left_to_others": [f"{p.split}/{p.name}" for p in skipped]}
        if only is None:
            try:
                summary["manifest"] = finalize(dd, inv, plan, settings)
            finally:  # rejects.jsonl too where no image could be written: the sentence points at it
                if store:
                    store.finalized()
        return summary
    except NoSpace as exc:
        raise _disk_full(dd, exc.path, todo, settings) from None
    except Exception as exc:
        if no_space(exc):  # prepare.json, rejects.jsonl or the manifest
            raise _disk_full(dd, dd.root, todo, settings) from None
        raise


def _write_all(dd: DataDir, todo: list[ShardPlan], job: ImageJob, workers: int, progress, store=None):
    try:
        return write_shards(dd, todo, job, workers, progress, store.shard_committed if store else None)
    except KeyboardInterrupt:  # write_shards has dropped the shard it was writing; committed ones stay
        progress.close()
        kept = sum(read_shard_meta(dd.split(p.split) / p.name) is not None for p in todo)
        raise Interrupted(f"interrupted: {kept} of the {len(todo)} shards of this run are complete and kept, "
                          "no partial shard is left; run the same command again to write the rest") from None
