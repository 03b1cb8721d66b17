"""Loader start-up: RecordIndex(data, "train") with and without the shards' key files, cold and warm.

    .venv/bin/python benchmarks/key_index_startup.py --records 1281167 [--value-bytes 16] [--repeats 2]

Writes --records tiny records straight through ShardWriter (10,000 a shard, as prepare does; keys as prepare
names ImageNet's: `%08d_train/<wnid>/<wnid>_<n>.JPEG`) into DIR/new, then DIR/old: the same data.mdb files
(hard links) with meta.json as shards were written before key files (no keys.bin, no digest), so the old path is
the cursor scan over the very same LMDB files. Cold: every file of both data dirs is dropped from the page cache
first (fsync, then posix_fadvise(DONTNEED): no root needed); warm: the same construction again straight after.
Prints one JSON line per run, then the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alexnet_pipe.loaders.records import RecordIndex  # noqa: E402
from alexnet_pipe.shards.codec import Datum  # noqa: E402
from alexnet_pipe.shards.keyindex import KEY_INDEX  # noqa: E402
from alexnet_pipe.shards.lmdbfile import DATA_MDB  # noqa: E402
from alexnet_pipe.shards.manifest import (FORMAT_VERSION, MANIFEST, load_shard_meta, write_manifest,  # noqa: E402
                                          write_shard_meta)
from alexnet_pipe.shards.records import record_key, shard_name  # noqa: E402
from alexnet_pipe.shards.writer import ShardWriter  # noqa: E402

SHARD_SIZE = 10_000
CLASSES = 1000


def generate(new: Path, records: int, value_bytes: int) -> None:
    value = Datum(b"\xff" * value_bytes, 0, True, 3, 32, 32).to_bytes()
    entries = []
    for s, start in enumerate(range(0, records, SHARD_SIZE)):
        writer = ShardWriter(new / "train" / shard_name(s), 1)
        for i in range(start, min(start + SHARD_SIZE, records)):
            wnid = f"n{1440764 + i % CLASSES:08d}"
            writer.put(record_key(i, f"train/{wnid}/{wnid}_{i}.JPEG"), value)
        meta = writer.commit({"split": "train"})
        entries.append({k: meta[k] for k in ("name", "records", "bytes", "checksum")})
    write_manifest(new, {
        "format_version": FORMAT_VERSION, "settings": {"size": 32, "encoding": "jpeg", "quality": 90, "seed": 0},
        "classes": [{"wnid": f"n{1440764 + c:08d}", "name": f"class {c}"} for c in range(CLASSES)],
        "splits": {"train": {"count": records, "rejects": 0, "shards": entries}}})


def old_copy(new: Path, old: Path) -> None:
    """The same shards as written before key files: data.mdb shared (hard link), no keys.bin, no digest."""
    for shard in sorted((new / "train").iterdir()):
        dst = old / "train" / shard.name
        dst.mkdir(parents=True)
        os.link(shard / DATA_MDB, dst / DATA_MDB)
        meta = load_shard_meta(shard)
        del meta["keys_sha256"]
        write_shard_meta(dst, meta)
    shutil.copy(new / MANIFEST, old / MANIFEST)


def evict(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)  # DONTNEED drops clean pages only
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def timed(data: Path) -> tuple[float, RecordIndex]:
    t = time.perf_counter()
    index = RecordIndex(data, "train")
    return time.perf_counter() - t, index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=640_000)
    ap.add_argument("--value-bytes", type=int, default=16, help="JPEG bytes per record (tiny: fast to write)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", type=Path, help="keep the data here (reused when it holds --records already)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="keyindex-"))
    new, old = root / "new", root / "old"
    marker = root / f"records-{args.records}-{args.value_bytes}"
    if not marker.exists():
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        t = time.perf_counter()
        generate(new, args.records, args.value_bytes)
        old_copy(new, old)
        marker.touch()
        print(json.dumps({"generated": args.records, "seconds": round(time.perf_counter() - t, 1)}), flush=True)
    sizes = {DATA_MDB: sum(p.stat().st_size for p in (new / "train").glob(f"*/{DATA_MDB}")),
             KEY_INDEX: sum(p.stat().st_size for p in (new / "train").glob(f"*/{KEY_INDEX}"))}
    print(json.dumps({"bytes": sizes, "shards": len(list((new / "train").iterdir()))}), flush=True)
    runs: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for name, data in (("old", old), ("new", new)):
            evict(new, old)
            cold, a = timed(data)
            warm, b = timed(data)
            assert len(a) == len(b) == args.records
            runs.setdefault(f"{name} cold", []).append(cold)
            runs.setdefault(f"{name} warm", []).append(warm)
            print(json.dumps({"run": r + 1, "path": name, "cold_s": round(cold, 3), "warm_s": round(warm, 3)}),
                  flush=True)
    # the two paths list the same keys (hard-linked data.mdb: the very same records)
    assert list(RecordIndex(old, "train").keys) == list(RecordIndex(new, "train").keys)
    medians = {k: round(statistics.median(v), 3) for k, v in runs.items()}
    medians["cold old/new"] = round(medians["old cold"] / medians["new cold"], 1)
    print(json.dumps({"median_s": medians}))
    if not args.dir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
