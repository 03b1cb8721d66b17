"""info and verify: what a data dir holds, and whether every record is intact."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from alexnet_pipe.core.errors import ShardFormatError, UserError
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.keyindex import KEY_INDEX, key_index_problem
from alexnet_pipe.shards.lmdbfile import iter_records
from alexnet_pipe.shards.manifest import SHARD_META, load_shard_meta, read_manifest
from alexnet_pipe.shards.records import DamagedRecord, RecordChecksum, read_datum, record_pixels
from alexnet_pipe.shards.strips import has_row_restarts

VERIFY_EVERY = 1.0  # seconds between progress lines in a log: a shard of 10,000 records takes seconds


@dataclasses.dataclass
class ShardReport:
    split: str
    name: str
    records: int
    problems: list[str]


def check_shard(shard_dir: Path, expected: dict, size: int, num_classes: int) -> list[str]:
    """Decode every record of one shard; compare count and checksum with the manifest."""
    problems, keys = [], []
    check, count = RecordChecksum(), 0
    try:
        for key, value in iter_records(shard_dir):
            check.update(key, value)
            keys.append(key)
            count += 1
            problem = record_problem(shard_dir, key, value, size, num_classes)
            if problem:
                problems.append(f"{key.decode(errors='replace')}: {problem}")
    except ShardFormatError as exc:  # iter_records turns every lmdb failure into this
        return [f"unreadable LMDB ({getattr(exc, 'reason', exc)})"]
    if count != expected["records"]:
        problems.append(f"{count} records, manifest says {expected['records']}")
    if check.hexdigest() != expected["checksum"]:
        problems.append("checksum differs from the manifest")
    problems += key_index_problems(shard_dir, keys)
    return problems[:20]


def key_index_problems(shard_dir: Path, keys: list[bytes]) -> list[str]:
    """keys.bin against the records: the loaders list a shard's keys from it without reading LMDB."""
    try:
        index, problem = key_index_problem(shard_dir, load_shard_meta(shard_dir))
    except ShardFormatError as exc:
        return [f"{SHARD_META} is unreadable ({exc})"]
    if problem:
        return [f"{problem} (the loaders then list the keys from LMDB, slower)"]
    if index is not None and list(index) != keys:
        return [f"{KEY_INDEX} does not hold the shard's keys"]
    return []


def check_record(shard_dir: Path, key: bytes, value: bytes, size: int, num_classes: int) -> None:
    """DamagedRecord where one record is not a Datum of this data dir: the loaders' own checks."""
    record_pixels(shard_dir, key, read_datum(shard_dir, key, value, num_classes), size)


def record_problem(shard_dir: Path, key: bytes, value: bytes, size: int, num_classes: int) -> str | None:
    try:
        check_record(shard_dir, key, value, size, num_classes)
    except DamagedRecord as exc:
        return exc.reason
    return None


def verify(data: Path, workers: int = 1, stream=None, show: bool = True) -> list[ShardReport]:
    """Every shard's problems, in manifest order; shards verified so far go to stream (stderr by default)."""
    from alexnet_pipe.core.progress import Progress
    dd = DataDir(Path(data))
    manifest = read_manifest(dd.root)
    size, ncls = manifest["settings"]["size"], len(manifest["classes"])
    jobs = [(split, entry) for split, info in manifest["splits"].items() for entry in info["shards"]]
    args = [(dd.split(split) / e["name"], e, size, ncls) for split, e in jobs]
    progress = Progress(len(args), "verify", unit="shard", stream=stream, every=VERIFY_EVERY, enabled=show)
    checked = _in_workers(args, workers) if workers > 1 and len(args) > 1 else (check_shard(*a) for a in args)
    try:
        found = []
        for (split, e), problems in zip(jobs, checked):
            found.append(ShardReport(split, e["name"], e["records"], problems))
            progress.update(1, f"{split}/{e['name']}")
    finally:  # a stop between two shards: the pool's generator ends here, not at exit when its pipes are gone
        checked.close()
        progress.close()
    return found


def _in_workers(args: list[tuple], workers: int):
    """check_shard of each, in order, as each is done."""
    from concurrent.futures.process import BrokenProcessPool

    from alexnet_pipe.core.workers import worker_pool
    try:
        with worker_pool(workers) as pool:
            yield from pool.map(check_shard, *zip(*args))
    except BrokenProcessPool:  # a shard damaged in a way that crashes LMDB itself, or memory ran out
        raise UserError("a verify worker process died (a shard damaged so that LMDB crashed reading it, or "
                        "memory ran out): run `alexnet-pipe verify --workers 1` to see which shard") from None


def rows_note(dd: DataDir, manifest: dict) -> str | None:
    """A one-line note where the first training record is a JPEG without a restart marker per MCU row (prepared
    before they were written): the torch loader then decodes every record whole, not a view's rows.  None where
    it has them, is raw, or cannot be read here (verify says why)."""
    names = [e["name"] for e in manifest["splits"].get("train", {}).get("shards", [])]
    shard = next((dd.split("train") / n for n in names if (dd.split("train") / n).is_dir()), None)
    if shard is None:
        return None
    try:
        with contextlib.closing(iter_records(shard)) as records:  # the shard closed now, not when collected
            key, value = next(records, (None, None))
        datum = read_datum(shard, key, value) if key is not None else None
    except ShardFormatError:
        return None
    if datum is None or not datum.encoded or has_row_restarts(datum.data, manifest["settings"]["size"]):
        return None
    return (f"note: the JPEG records of {dd.root} have no restart marker per MCU row (prepared before "
            "2026-12-04): the torch loader decodes each whole; `alexnet-pipe prepare SRC --overwrite` writes them "
            "so that it decodes only a view's rows (~0.73 of a record for random-resized crops)")


def class_note(manifest: dict, data: Path | str | None = None) -> str | None:
    """A one-line warning where the data dir holds fewer than 2 classes (training reaches loss 0 at once and
    every error is 0, which says nothing); None otherwise. train and info print it."""
    count = len(manifest["classes"])
    if count >= 2:
        return None
    where = f"{data} holds" if data is not None else "this data dir holds"
    return (f"note: {where} {count} class{'' if count == 1 else 'es'}: the loss is 0 from the start and every "
            "error is 0; prepare images of 2 or more classes to train anything")


def info(data: Path) -> dict:
    dd = DataDir(Path(data))
    manifest = read_manifest(dd.root)
    out = {"data": str(dd.root), "settings": manifest["settings"], "classes": len(manifest["classes"]),
           "splits": {}, "stats": sorted(p.name for p in dd.stats.glob("*")) if dd.stats.is_dir() else [],
           "runs": sorted(p.name for p in dd.runs.iterdir()) if dd.runs.is_dir() else []}
    for split, s in manifest["splits"].items():
        out["splits"][split] = {"records": s["count"], "rejects": s["rejects"], "shards": len(s["shards"]),
                                "bytes": sum(e["bytes"] for e in s["shards"]),
                                "missing": [e["name"] for e in s["shards"] if not (dd.split(split) / e["name"]).is_dir()]}
    out["example_classes"] = [f"{c['wnid']} {c['name']}" for c in manifest["classes"][:3]]
    out["notes"] = [note for note in (class_note(manifest, dd.root), rows_note(dd, manifest)) if note]
    return out
