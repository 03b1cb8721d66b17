"""What in a data dir prepare wrote, and so what `prepare --overwrite` may remove: nothing else.

A data dir is often a folder users keep other things in (runs/, notes, a stats plot they edited), and a
wrong `--data` can point at anything.  So removal goes by name, file by file, never a recursive delete:
shard dirs hold only the files ShardWriter writes, stats/ only what `stats` writes, and a folder is
removed only once it is empty.  Anything else found inside a split or a shard dir stops the run instead
(prepare would otherwise write shards beside, or over, files it does not know).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from alexnet_pipe.core.errors import ShardFormatError, UserError
from alexnet_pipe.core.files import rmdir_if_empty, write_json_atomic
from alexnet_pipe.ingest.claims import CLAIM_SUFFIX, CLAIMS_LOCK
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.keyindex import KEY_INDEX
from alexnet_pipe.shards.lmdbfile import DATA_MDB, LOCK_MDB
from alexnet_pipe.shards.manifest import MANIFEST, REJECTS, SHARD_META, read_manifest, read_rejects
from alexnet_pipe.shards.shardstats import SHARD_STATS

SPLITS = ("train", "val")
PREPARE_JSON = "prepare.json"  # what a data dir is bound to: prepare's output settings and its plan


def _names(*names: str) -> str:
    return "|".join(re.escape(n) for n in names)


# the ".NAME.tmp-PID" suffix is files.atomic_write's temp file, left behind only by a kill
_TMP = r"(\.tmp-\d+)?"
SHARD_DIR = re.compile(r"shard-\d{5}")
SHARD_ENTRY = re.compile(rf"(shard-\d{{5}}|\.shard-\d{{5}}\.tmp-.+|\.shard-\d{{5}}{re.escape(CLAIM_SUFFIX)}"
                         rf"|{re.escape(CLAIMS_LOCK)})")
SHARD_FILE = re.compile(rf"\.?({_names(DATA_MDB, LOCK_MDB, SHARD_META, SHARD_STATS, KEY_INDEX, REJECTS)}){_TMP}")
# What `stats` writes (stats.readers.OUTPUTS): the stats wing sits above this one, so the names cannot be imported
# from their owner here; tests/test_prepare_safety.py holds the two lists equal.
STATS_FILE = re.compile(rf"\.?(mean\.npy|mean\.binaryproto|stats_settings\.json|pca\.json|mean\.png|pca_axes\.png)"
                        rf"{_TMP}")
TOP_FILE = re.compile(rf"\.?({_names(MANIFEST, REJECTS, PREPARE_JSON)}){_TMP}")


def _foreign_in_shard(shard_dir: Path) -> list[Path]:
    if shard_dir.is_symlink() or not shard_dir.is_dir():
        return [] if shard_dir.name.startswith(".") and shard_dir.is_file() else [shard_dir]
    return [p for p in shard_dir.iterdir() if not (SHARD_FILE.fullmatch(p.name) and p.is_file())]


def foreign_entries(dd: DataDir) -> list[Path]:
    """Files and folders inside train/ and val/ (and inside their shard dirs) that prepare does not write."""
    found = []
    for split in SPLITS:
        folder = dd.split(split)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            found.append(folder)
            continue
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            found.extend(_foreign_in_shard(entry) if SHARD_ENTRY.fullmatch(entry.name) else [entry])
    return found


def _foreign_top_file(dd: DataDir) -> str | None:
    """Why the data dir's manifest.json or rejects.jsonl is not prepare's, or None: a user's file of the same
    name is never ours to replace (it is ours only where it reads back as the format prepare writes)."""
    for name, read in ((MANIFEST, lambda: read_manifest(dd.root)), (REJECTS, lambda: read_rejects(dd.rejects))):
        if (dd.root / name).is_file() or (dd.root / name).is_symlink():
            try:
                read()
            except ShardFormatError as exc:
                return str(exc).split(": run `alexnet-pipe prepare`")[0]
    return None


def refuse_foreign(dd: DataDir) -> None:
    top = _foreign_top_file(dd)
    if top:
        raise UserError(f"{top}, so prepare did not write it and will not replace it; move it away or choose "
                        "another --data dir")
    found = foreign_entries(dd)
    if found:
        names = ", ".join(str(p.relative_to(dd.root)) for p in found[:3])
        raise UserError(f"{dd.root} holds {len(found)} file(s) in its split folders that prepare did not write "
                        f"({names}); move them away or choose another --data dir")


def has_shards(dd: DataDir) -> bool:
    return any(dd.split(s).is_dir() and any(SHARD_DIR.fullmatch(p.name) for p in dd.split(s).iterdir())
               for s in SPLITS)


def _remove_matching(folder: Path, pattern: re.Pattern) -> None:
    for entry in folder.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink()
    rmdir_if_empty(folder)


def remove_shard_dir(shard_dir: Path) -> None:
    """A shard dir, file by file; a file prepare does not write keeps it (and itself) in place."""
    if shard_dir.is_dir() and not shard_dir.is_symlink():
        _remove_matching(shard_dir, SHARD_FILE)
    elif shard_dir.is_file() and SHARD_ENTRY.fullmatch(shard_dir.name):
        shard_dir.unlink()


def in_range(name: str, only: tuple[int, int] | None) -> bool:
    """Whether a shard entry (shard-00012, its temp dir or claim) is one of shards [A, B); all where only is None."""
    number = re.search(r"shard-(\d{5})", name)
    return only is None or (number is not None and only[0] <= int(number.group(1)) < only[1])


def clear(dd: DataDir, only: tuple[int, int] | None = None) -> None:
    """Remove everything prepare (and stats) wrote in the data dir; the user's own files stay. With only =
    (A, B) (--only-shards on one machine of several), shards A..B-1 of each split and nothing else: the other
    machines' shards, the manifest and the statistics are theirs to replace."""
    for split in SPLITS:
        folder = dd.split(split)
        if folder.is_dir() and not folder.is_symlink():
            for entry in folder.iterdir():
                if SHARD_ENTRY.fullmatch(entry.name) and entry.name != CLAIMS_LOCK and in_range(entry.name, only):
                    remove_shard_dir(entry)
            rmdir_if_empty(folder)
    if only is not None:
        return
    if dd.stats.is_dir() and not dd.stats.is_symlink():
        _remove_matching(dd.stats, STATS_FILE)
    for entry in dd.root.iterdir():
        if TOP_FILE.fullmatch(entry.name) and entry.is_file():
            entry.unlink()


def read_prepare_record(dd: DataDir) -> tuple[dict | None, str | None]:
    """The data dir's prepare.json: (record, None); (None, None) where there is none; (None, why) where the file
    is not one prepare wrote."""
    try:
        old = json.loads((dd.root / PREPARE_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON and bad UTF-8 alike
        return None, str(exc)
    if not (isinstance(old, dict) and isinstance(old.get("settings"), dict)):
        return None, "it is JSON, but not the record prepare writes"
    return old, None


def write_prepare_record(dd: DataDir, record: dict) -> None:
    write_json_atomic(dd.root / PREPARE_JSON, record)
