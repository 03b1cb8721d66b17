"""`alexnet-pipe pull URL DIR`: a data dir in a bucket -> a local copy that verify, stats and train read.

Training reads local files (LMDB maps them; DALI's Caffe reader opens them by path), so nodes pull first. Each
file is fetched under a temporary name (`.NAME.pull-part`), checked, then renamed: a shard's records against the
manifest's count and checksum before its data.mdb takes its name. The manifest comes last, so a dir with one
is complete. A file already here under its final name is kept where it is the bucket's (a shard by its records'
checksum, a small file by its MD5): a pull stopped midway resumes where it was. A file that differs is never
replaced nor deleted: pull stops with one sentence before fetching anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import time
from pathlib import Path

from alexnet_pipe.core import remote
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.outdir import writable_dir
from alexnet_pipe.ingest.bucket import owned_name
from alexnet_pipe.ingest.owned import PREPARE_JSON
from alexnet_pipe.shards.lmdbfile import DATA_MDB, LOCK_MDB
from alexnet_pipe.shards.manifest import MANIFEST, REJECTS, SHARD_META, read_manifest
from alexnet_pipe.shards.records import RecordChecksum

STAGING = ".pull"       # our own folder in DIR: the bucket's manifest while the rest is fetched
PART = ".{}.pull-part"  # a file being fetched; renamed once checked
_MD5 = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(frozen=True)
class Wanted:
    rel: str                   # path inside the data dir, '/'-separated
    size: int
    etag: str
    entry: dict | None = None  # the manifest's entry of the file's shard


def records_checksum(mdb_file: Path) -> tuple[int, str]:
    """(records, RecordChecksum) of an LMDB data file, read in key order as verify and prepare compute it."""
    import lmdb
    check, count = RecordChecksum(), 0
    env = lmdb.open(os.fsencode(mdb_file), subdir=False, readonly=True, lock=False, readahead=False)
    try:
        with env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                check.update(key, value)
                count += 1
    finally:
        env.close()
    return count, check.hexdigest()


def _shard_problem(mdb_file: Path, entry: dict) -> str | None:
    """Why a data.mdb is not the manifest's shard, or None."""
    import lmdb
    try:
        count, digest = records_checksum(mdb_file)
    except lmdb.Error as exc:
        return f"not a readable LMDB ({exc})"
    if count != entry["records"]:
        return f"{count} records, the manifest says {entry['records']}"
    return None if digest == entry["checksum"] else "its records' checksum differs from the manifest's"


def _wanted(objects: dict, manifest: dict) -> list[Wanted]:
    """What a pull fetches, manifest aside: each listed shard's files (meta.json last), stats/, rejects.jsonl,
    prepare.json. Shards the manifest does not list (all inputs rejected) are not data and stay behind."""
    def one(rel, entry=None):
        info = objects[rel]
        return Wanted(rel, int(info.get("size") or 0), str(info.get("ETag", "")).strip('"'), entry)
    found = []
    for split, info in manifest["splits"].items():
        for entry in info["shards"]:
            prefix = f"{split}/{entry['name']}/"
            names = sorted((r for r in objects if r.startswith(prefix) and owned_name(r)),
                           key=lambda r: (r.endswith("/" + SHARD_META), r))
            if prefix + DATA_MDB not in names:
                raise UserError(f"the bucket's {MANIFEST} lists {split}/{entry['name']}, but it holds no "
                                f"{prefix + DATA_MDB}: run prepare into the bucket again")
            found += [one(r, entry) for r in names]
    extra = sorted(r for r in objects if r.startswith("stats/") and owned_name(r))
    return found + [one(r) for r in extra + [REJECTS, PREPARE_JSON] if r in objects]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_the_buckets(local: Path, want: Wanted, url: str, dest: Path) -> bool:
    """Whether a file already here is the bucket's: then it is kept, not fetched again."""
    name = local.name
    if name == LOCK_MDB:  # LMDB's lock file: every reader that opens the shard rewrites it
        return local.is_file()
    if not local.is_file() or local.is_symlink() or local.stat().st_size != want.size:
        return False
    if name == DATA_MDB:
        return _shard_problem(local, want.entry) is None
    if _MD5.fullmatch(want.etag):  # a single-part upload's ETag is the MD5 of its bytes
        return _md5(local) == want.etag
    probe = dest / STAGING / "compare"
    remote.get_file(remote.join(url, want.rel), str(probe))
    same = probe.read_bytes() == local.read_bytes()
    probe.unlink()
    return same


def _foreign(local: Path, where: str) -> UserError:
    return UserError(f"{local} exists and differs from {where}: pull never replaces or deletes a file it did not "
                     "write; move it away, or pull into another dir")


def _fetch(url: str, want: Wanted, local: Path) -> None:
    part = local.with_name(PART.format(local.name))
    local.parent.mkdir(parents=True, exist_ok=True)
    remote.get_file(remote.join(url, want.rel), str(part))
    if local.name == DATA_MDB and (problem := _shard_problem(part, want.entry)):
        part.unlink()
        raise UserError(f"{remote.join(url, want.rel)} is not the shard its {MANIFEST} lists ({problem}): "
                        "run prepare into the bucket again")
    os.replace(part, local)


def _manifest(url: str, dest: Path) -> tuple[dict, Path]:
    """The bucket's manifest, checked, in DIR's staging folder; a different one already in DIR is refused."""
    staged = dest / STAGING / MANIFEST
    staged.parent.mkdir(exist_ok=True)
    remote.get_file(remote.join(url, MANIFEST), str(staged))
    manifest = read_manifest(staged.parent)
    here = dest / MANIFEST
    if os.path.lexists(here) and (not here.is_file() or here.read_bytes() != staged.read_bytes()):
        raise _foreign(here, remote.join(url, MANIFEST))
    return manifest, staged


def _already_here(url: str, dest: Path, wanted: list[Wanted]) -> list[str]:
    """The files already in dest that are the bucket's; every one checked before anything is fetched, so a
    file that is not stops the pull before it changes anything."""
    kept = []
    for want in wanted:
        local = dest / want.rel
        if os.path.lexists(local):
            if not _is_the_buckets(local, want, url, dest):
                raise _foreign(local, remote.join(url, want.rel))
            kept.append(want.rel)
    return kept


def _fetch_all(url: str, dest: Path, todo: list[Wanted], jobs: int, progress) -> None:
    """Each file fetched and checked, `jobs` at a time: one stream from a store carries a fraction of a node's
    bandwidth (and a shard's check is CPU), so several files are in flight. The first failure stops the files
    not yet started and is raised once those in flight have ended (each is whole under its name, or a part)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="pull") as pool:
        futures = {pool.submit(_fetch, url, want, dest / want.rel): want for want in todo}
        try:
            for done in as_completed(futures):
                done.result()
                progress.update(1, futures[done].rel)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def pull(url: str, dest: Path, stream=None, jobs: int = 4) -> dict:
    """Fetch the data dir at url into dest, `jobs` files at a time; returns {"fetched": [...], "kept": [...],
    "bytes", "seconds"}."""
    from alexnet_pipe.core.progress import Progress
    t0 = time.perf_counter()
    objects = remote.listing(url)
    if MANIFEST not in objects:
        raise UserError(f"{url} holds no {MANIFEST}: it is no finished data dir (once every array task is done, "
                        "the plain, finalising `alexnet-pipe prepare` into it writes the manifest)")
    dest = writable_dir(dest, "destination dir")
    manifest, staged = _manifest(url, dest)
    wanted = _wanted(objects, manifest)
    kept = _already_here(url, dest, wanted)
    here = set(kept)
    todo = [w for w in wanted if w.rel not in here]
    progress = Progress(len(todo), "pull", unit=" files", stream=stream, every=5.0)
    try:  # each shard's meta.json (what marks a shard written) after every data file, as prepare writes them
        for phase in (False, True):
            _fetch_all(url, dest, [w for w in todo if w.rel.endswith("/" + SHARD_META) == phase], jobs, progress)
    finally:
        progress.close()
    os.replace(staged, dest / MANIFEST)  # last: DIR is a data dir from here on
    shutil.rmtree(dest / STAGING, ignore_errors=True)  # our own folder
    return {"fetched": [w.rel for w in todo], "kept": kept, "bytes": sum(w.size for w in todo),
            "seconds": time.perf_counter() - t0}
