"""An object store prefix (s3://bucket/imagenet, gs://..., any fsspec URL) as the tree the layout rules walk.

The rules of folders.py, archives.py and labels.py are written once, against the few pathlib.Path operations they
use (/, name, suffix, parent, parts through relative_to, is_dir, is_file, iterdir, rglob, read_bytes). A
local source is a pathlib.Path itself, so local listing is unchanged. A URL is a RemotePath: the same operations
answered from a snapshot of ONE recursive listing of the prefix (ListObjectsV2 pages), so that walking 1.28 M
images costs ~1,300 list requests, not a request per is_dir() or stat() as universal_pathlib's UPath can make
(its is_dir/is_file/stat call fsspec's isdir/isfile/info per path, answered without a request only where
fsspec's directory cache happens to hold the folder). An object store has no FIFOs, devices or symlinks:
every object is a regular file. Each file keeps its listed size, which the reader checks (items.read_bytes).
"""
from __future__ import annotations

import fnmatch
from pathlib import PurePosixPath

from alexnet_pipe.core import remote
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.ingest.items import no_tick


class Snapshot:
    """The objects under url as of one listing: sizes by relative key, and each folder's child names."""

    def __init__(self, url: str, sizes: dict[str, int]):
        self.url, self.sizes = url.rstrip("/"), sizes
        self.children: dict[str, set[str]] = {"": set()}
        for key in sizes:
            node = key
            while node:  # each key's folders, up to the first one already known
                parent, _, name = node.rpartition("/")
                kids = self.children.setdefault(parent, set())
                if name in kids:
                    break
                kids.add(name)
                node = parent


class RemotePath:
    """A key of a Snapshot (key '' is the listed prefix, None the place above it) with pathlib's answers."""

    __slots__ = ("snap", "key", "_parts")

    def __init__(self, snap: Snapshot, key: str | None):
        self.snap, self.key, self._parts = snap, key, None

    def __str__(self) -> str:
        if self.key is None:
            return self.snap.url + "/.."
        return f"{self.snap.url}/{self.key}" if self.key else self.snap.url

    __repr__ = __str__

    def _child(self, name: str) -> RemotePath:
        return RemotePath(self.snap, f"{self.key}/{name}" if self.key else name)

    def __truediv__(self, part) -> RemotePath:
        out = self
        for name in str(part).split("/"):
            if name == "..":
                out = out.parent
            elif name not in ("", "."):
                out = out._child(name)
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.snap is self.snap and other.key == self.key

    def __hash__(self) -> int:
        return hash((id(self.snap), self.key))

    def _order(self) -> tuple[str, ...]:
        if self._parts is None:  # made once: sorted() compares each path ~log2(n) times
            self._parts = tuple((self.key or "").split("/"))
        return self._parts

    def __lt__(self, other: RemotePath) -> bool:
        return self._order() < other._order()  # pathlib orders by parts too: 'a/x' before 'a-b/x'

    @property
    def name(self) -> str:
        return (self.key or self.snap.url).rpartition("/")[2]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> RemotePath:
        if not self.key:
            return RemotePath(self.snap, None)
        return RemotePath(self.snap, self.key.rpartition("/")[0])

    def resolve(self) -> RemotePath:
        return self

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        if other.key == "":
            return PurePosixPath(self.key)
        if not (self.key or "").startswith(f"{other.key}/"):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key[len(other.key) + 1:])

    def is_dir(self) -> bool:
        return self.key in self.snap.children

    def is_file(self) -> bool:
        return self.key in self.snap.sizes

    def exists(self) -> bool:
        return self.is_dir() or self.is_file()

    def is_symlink(self) -> bool:
        return False

    @property
    def size(self) -> int:
        """The size the listing gave (-1: not an object)."""
        return self.snap.sizes.get(self.key, -1)

    def iterdir(self):
        return (self._child(name) for name in self.snap.children.get(self.key, ()))

    def rglob(self, pattern: str):
        """Every entry below, at any depth, whose name matches pattern (pathlib's rglob of a one-part pattern,
        case-sensitive as on a POSIX disk)."""
        if "/" in pattern or not pattern:
            raise ValueError(f"rglob takes one name pattern here, not {pattern!r}")
        stack = [self]
        while stack:
            for child in stack.pop().iterdir():
                if fnmatch.fnmatchcase(child.name, pattern):
                    yield child
                if child.is_dir():
                    stack.append(child)

    def read_bytes(self) -> bytes:
        return remote.read_range(str(self))


def listed_size(path) -> int:
    """A remote file's listed size, which its reader checks; -1 for a local file (its reader takes what is
    there, and listing never stats it: 1.28 M stat calls)."""
    return path.size if isinstance(path, RemotePath) else -1


def open_tree(url: str, tick=no_tick) -> RemotePath:
    """The tree under url, from one paged listing (tick(n) per n objects listed). A URL naming one object (a
    label file) is a tree of that object alone."""
    sizes: dict[str, int] = {}
    for page in remote.listing_pages(url):
        sizes.update(page)
        if page:
            tick(len(page))
    if sizes:
        snap = Snapshot(url, sizes)
        _refuse_clashes(snap)
        return RemotePath(snap, "")
    found = remote.info(url)
    if found.get("type") == "file":
        parent, _, name = url.rstrip("/").rpartition("/")
        return RemotePath(Snapshot(parent, {name: int(found.get("size") or 0)}), name)
    raise UserError(f"found no objects under {url}")


def _refuse_clashes(snap: Snapshot) -> None:
    """A key that is an object and also the folder of other keys (a store allows `a` beside `a/b`, a disk does
    not): walked as a folder, the object would be skipped unseen, so it is refused by name."""
    clash = sorted(set(snap.sizes).intersection(snap.children))
    if clash:
        more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
        raise UserError(f"{snap.url}/{clash[0]} is both an object and the folder of other objects{more}: a file "
                        "system cannot hold both; rename or remove the object")
