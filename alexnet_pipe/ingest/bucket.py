"""prepare into a data dir in a bucket (`--data s3://bucket/alexnet-data`): the same run, on a local mirror.

LMDB needs a local file system, so a run into a bucket works on a mirror in a scratch dir (`--scratch`, default
$TMPDIR): the bucket's small files (prepare.json, manifest.json, rejects.jsonl, each committed shard's meta.json
and rejects.jsonl) are fetched into it first, so binding, resume and finalising read them as on disk. Each shard
is written and committed there as on disk, then uploaded with meta.json LAST: the upload is the commit, a shard
without its meta.json in the bucket is not done and the next run writes it again. Its big files then leave the
scratch dir. A finalising run uploads rejects.jsonl, then manifest.json, last.

A bucket has no flock: `--only-shards` ranges are disjoint by construction and need no claim; a plain run does not
wait for array tasks, it writes every shard that has no meta.json in the bucket yet (the plan is deterministic,
so a shard written twice holds the same records). Run the finalising run after the tasks have finished.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path

from alexnet_pipe.core import remote
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.outdir import writable_dir
from alexnet_pipe.ingest import owned
from alexnet_pipe.shards.manifest import MANIFEST, REJECTS, SHARD_META

KEEP_IN_SCRATCH = (SHARD_META, REJECTS)  # what finalising reads of a shard: the rest leaves after the upload


def owned_name(rel: str) -> bool:
    """Whether an object (its path inside the data dir) is one prepare or stats writes: --overwrite's rule."""
    parts = rel.split("/")
    if len(parts) == 1:
        return bool(owned.TOP_FILE.fullmatch(parts[0]))
    if len(parts) == 2 and parts[0] == "stats":
        return bool(owned.STATS_FILE.fullmatch(parts[1]))
    return (len(parts) == 3 and parts[0] in owned.SPLITS and bool(owned.SHARD_DIR.fullmatch(parts[1]))
            and bool(owned.SHARD_FILE.fullmatch(parts[2])))


def _in_range(rel: str, only: tuple[int, int] | None) -> bool:
    return rel.split("/")[0] in owned.SPLITS and owned.in_range(rel, only)


@dataclasses.dataclass
class Bucket:
    """A data dir in a bucket and its local mirror: what prepare's run calls at its steps (see prepare.py)."""
    url: str
    mirror: Path
    objects: dict = dataclasses.field(default_factory=dict)  # rel -> info, as listed at the start

    def fetch(self) -> None:
        """The bucket's small files into the mirror; a bucket data dir holding files prepare does not write
        in its split folders is refused, as on disk."""
        self.objects = remote.listing(self.url)
        foreign = sorted(r for r in self.objects if r.split("/")[0] in owned.SPLITS and not owned_name(r))
        if foreign:
            raise UserError(f"{self.url} holds {len(foreign)} object(s) in its split folders that prepare did not "
                            f"write ({', '.join(foreign[:3])}); move them away or choose another --data")
        committed = {r.rsplit("/", 1)[0] for r in self.objects if r.endswith("/" + SHARD_META) and "/" in r}
        wanted = [r for r in self.objects if r in (owned.PREPARE_JSON, MANIFEST, REJECTS)
                  or (r.rsplit("/", 1)[0] in committed and r.rsplit("/", 1)[-1] in KEEP_IN_SCRATCH)]
        if not wanted:
            return
        fs, root = remote.filesystem(self.url)
        got = remote.retried(lambda: fs.cat([f"{root}/{r}" for r in wanted]), self.url, "read the state of")
        for rel in wanted:
            local = self.mirror / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(got[f"{root}/{rel}"])

    def bound(self, overwrite: bool, only: tuple[int, int] | None) -> None:
        """After the mirror was bound to this run: --overwrite's deletions in the bucket, then prepare.json."""
        if overwrite:
            self._clear(only)
        remote.put_file(str(self.mirror / owned.PREPARE_JSON), remote.join(self.url, owned.PREPARE_JSON))

    def _clear(self, only: tuple[int, int] | None) -> None:
        """Objects prepare owns (all, or shards A..B-1): the manifest first, then every meta.json, then the
        rest, so a run stopped in between leaves no shard or data dir that looks complete."""
        mine = [r for r in self.objects if owned_name(r) and (only is None or _in_range(r, only))]
        order = sorted(mine, key=lambda r: (r != MANIFEST, not r.endswith("/" + SHARD_META), r))
        fs, root = remote.filesystem(self.url)
        for rel in order:
            remote.retried(lambda: fs.rm_file(f"{root}/{rel}"), remote.join(self.url, rel), "delete")

    def shard_committed(self, shard_dir: Path) -> None:
        """Upload a committed shard, meta.json last; then its big files leave the scratch dir."""
        rel = shard_dir.relative_to(self.mirror).as_posix()
        files = sorted((p for p in shard_dir.iterdir() if p.is_file()), key=lambda p: (p.name == SHARD_META, p.name))
        for path in files:
            remote.put_file(str(path), remote.join(self.url, rel, path.name))
        for path in files:
            if path.name not in KEEP_IN_SCRATCH:
                path.unlink()

    def finalized(self) -> None:
        """rejects.jsonl, then manifest.json (where finalising wrote it): the data dir is complete."""
        for name in (REJECTS, MANIFEST):
            if (self.mirror / name).is_file():
                remote.put_file(str(self.mirror / name), remote.join(self.url, name))


def _said_here(exc: UserError, bucket: Bucket, scratch: Path) -> UserError:
    """A message naming the mirror names the bucket instead; a full disk is the scratch dir's."""
    text = str(exc)
    if text.startswith("no space left"):  # the device is the scratch dir's, wherever in the mirror it was met
        return type(exc)(re.sub(re.escape(str(bucket.mirror)) + r"[^\s:]*", str(scratch), text))
    return type(exc)(text.replace(str(bucket.mirror), bucket.url))


def _refuse_overlap(url: str, source) -> None:
    a, b = str(url).rstrip("/") + "/", str(source).rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        raise UserError(f"the data dir {url} and the source {source} overlap: choose a --data outside the source")


MIRROR = ".alexnet-pipe-mirror-{pid}-"
STALE_MIRROR = re.compile(r"\.alexnet-pipe-mirror-(\d+)-\w+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _remove_stale_mirrors(scratch: Path) -> None:
    """Mirrors left by runs killed on this host (SIGKILL skips their clean-up), which may hold a whole shard:
    ours by name, and their process is gone."""
    for entry in scratch.iterdir():
        m = STALE_MIRROR.fullmatch(entry.name)
        if m and entry.is_dir() and not entry.is_symlink() and not _alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def run_into_bucket(settings, echo, stream, run) -> dict:
    """prepare's run(settings) on a fresh mirror in the scratch dir, the bucket updated at each step."""
    url = str(settings.data)
    _refuse_overlap(url, settings.source)
    scratch = writable_dir(settings.scratch or tempfile.gettempdir(), "--scratch dir")
    _remove_stale_mirrors(scratch)
    bucket = Bucket(url, Path(tempfile.mkdtemp(prefix=MIRROR.format(pid=os.getpid()), dir=scratch)))
    try:
        bucket.fetch()
        summary = run(dataclasses.replace(settings, data=bucket.mirror), echo, stream, store=bucket)
    except UserError as exc:
        raise _said_here(exc, bucket, Path(scratch)) from None
    finally:
        shutil.rmtree(bucket.mirror, ignore_errors=True)  # our own mkdtemp: nothing of the user's is inside
    summary["data"] = url
    return summary


@contextlib.contextmanager
def reasons_file(data, local: Path | None):
    """A local copy of a data dir's rejects.jsonl for the summary's reasons: the file itself on disk, a
    download from a bucket."""
    if not remote.is_url(data):
        yield local
        return
    with tempfile.TemporaryDirectory() as tmp:
        remote.get_file(remote.join(str(data), REJECTS), f"{tmp}/{REJECTS}")
        yield Path(tmp) / REJECTS
