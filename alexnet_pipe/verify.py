"""info and verify: what a data dir holds, and whether every record is intact."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from . import images, shards
from .datadir import DataDir


@dataclasses.dataclass
class ShardReport:
    split: str
    name: str
    records: int
    problems: list[str]


def check_shard(shard_dir: Path, expected: dict, size: int, num_classes: int) -> list[str]:
    """Decode every record of one shard; compare count and checksum with the manifest."""
    problems = []
    check, count = shards.RecordChecksum(), 0
    try:
        for key, value in shards.iter_records(shard_dir):
            check.update(key, value)
            count += 1
            problems.extend(f"{key.decode(errors='replace')}: {p}" for p in _check_record(value, size, num_classes))
    except shards.ShardFormatError as exc:  # iter_records turns every lmdb failure into this
        return [f"unreadable LMDB ({getattr(exc, 'reason', exc)})"]
    if count != expected["records"]:
        problems.append(f"{count} records, manifest says {expected['records']}")
    if check.hexdigest() != expected["checksum"]:
        problems.append("checksum differs from the manifest")
    return problems[:20]


def _check_record(value: bytes, size: int, num_classes: int) -> list[str]:
    try:
        datum = shards.Datum.from_bytes(value)
    except shards.ShardFormatError as exc:
        return [f"not a Datum ({exc})"]
    problems = [] if 0 <= datum.label < num_classes else [f"label {datum.label} out of range"]
    if datum.encoded:
        try:
            pixels = images.decode_rgb(datum.data)
        except images.Reject as exc:
            return problems + [str(exc)]
        shape = pixels.shape
    else:
        shape = (len(datum.data) // (3 * size), size, 3) if len(datum.data) % (3 * size) == 0 else None
    if shape != (size, size, 3):
        problems.append(f"image shape {shape}, expected {(size, size, 3)}")
    return problems


def verify(data: Path, workers: int = 1) -> list[ShardReport]:
    dd = DataDir(Path(data))
    manifest = shards.read_manifest(dd.root)
    size, ncls = manifest["settings"]["size"], len(manifest["classes"])
    jobs = [(split, entry) for split, info in manifest["splits"].items() for entry in info["shards"]]
    args = [(dd.split(split) / e["name"], e, size, ncls) for split, e in jobs]
    if workers > 1 and len(args) > 1:
        from .prepare import worker_pool
        with worker_pool(workers) as pool:
            found = list(pool.map(check_shard, *zip(*args)))
    else:
        found = [check_shard(*a) for a in args]
    return [ShardReport(split, e["name"], e["records"], p) for (split, e), p in zip(jobs, found)]


def info(data: Path) -> dict:
    dd = DataDir(Path(data))
    manifest = shards.read_manifest(dd.root)
    out = {"data": str(dd.root), "settings": manifest["settings"], "classes": len(manifest["classes"]),
           "splits": {}, "stats": sorted(p.name for p in dd.stats.glob("*")) if dd.stats.is_dir() else [],
           "runs": sorted(p.name for p in dd.runs.iterdir()) if dd.runs.is_dir() else []}
    for split, s in manifest["splits"].items():
        out["splits"][split] = {"records": s["count"], "rejects": s["rejects"], "shards": len(s["shards"]),
                                "bytes": sum(e["bytes"] for e in s["shards"]),
                                "missing": [e["name"] for e in s["shards"] if not (dd.split(split) / e["name"]).is_dir()]}
    out["example_classes"] = [f"{c['wnid']} {c['name']}" for c in manifest["classes"][:3]]
    return out
