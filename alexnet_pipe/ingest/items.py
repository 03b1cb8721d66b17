"""What listing the inputs finds: items (where an image's bytes are, the relative path its key will carry, its
label) and rejects, counted as they are found.

An item is a file, or a byte range inside an uncompressed tar: archives are never extracted, their members are
read in place by offset, which also lets many workers read one archive in parallel.
"""
from __future__ import annotations

import array
import dataclasses

import numpy as np

from alexnet_pipe.core.remote import is_url


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    relpath: str      # train/<wnid>/<file> or val/<file>: the key's path part
    label: int
    path: str         # the file, or the archive holding it
    offset: int = 0   # start of the member's bytes inside the archive
    size: int = -1    # -1: the whole file
    listed: int = -1  # a remote file's size when it was listed (-1: local, not checked)


def _encode(text: str) -> tuple[bytes, bool]:
    """(the name's bytes, whether it was valid UTF-8); an undecodable name comes back as its bytes on disk."""
    try:
        return text.encode("utf-8"), True
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape"), False


class ItemList:
    """A split's items as arrays, not one object per image (~60 bytes per image instead of ~700: at ImageNet
    size the parent held 0.9 GB of Items otherwise). Relative paths are one bytes blob with start offsets; a
    file's path is `base/<relpath>` unless stored apart (val sorted into class folders); an archive member is
    `base` plus offset and size. Indexing gives an Item, slicing a list of Items: what a worker task needs."""

    def __init__(self, base: str, archive: bool = False):
        self.base, self.archive, self.utf8 = base, archive, True
        self._rel, self._rel_at = bytearray(), array.array("q", [0])
        self._src, self._src_at = None, None           # bytearray, array: only where a path is not base/rel
        self._labels = array.array("i")
        self._pos = array.array("q") if archive else None  # (offset, size) pairs
        self._order = None                             # an index array: this list is a selection of another
        self._listed = None                            # array of remote files' listed sizes, where given

    def add(self, relpath: str, label: int, src: str | None = None, offset: int = 0, size: int = -1,
            listed: int = -1) -> None:
        if listed >= 0 and self._listed is None:
            self._listed = array.array("q", [-1] * len(self._labels))
        if self._listed is not None:
            self._listed.append(listed)
        data, valid = _encode(relpath)
        self.utf8 &= valid
        self._rel += data
        self._rel_at.append(len(self._rel))
        self._labels.append(label)
        if self.archive:
            self._pos.extend((offset, size))
        if src is not None and src != relpath and self._src is None:
            self._src, self._src_at = bytearray(), array.array("q", [0] * len(self._labels))
        if self._src is not None:
            if src is not None and src != relpath:
                self._src += _encode(src)[0]
            self._src_at.append(len(self._src))

    def __len__(self) -> int:
        return len(self._order) if self._order is not None else len(self._labels)

    def _raw(self, i: int) -> int:
        return int(self._order[i]) if self._order is not None else i

    def relpath_bytes(self, i: int) -> bytes:
        j = self._raw(i)
        return bytes(self._rel[self._rel_at[j]:self._rel_at[j + 1]])

    def relpath(self, i: int) -> str:
        return self.relpath_bytes(i).decode("utf-8", "surrogateescape")

    def label(self, i: int) -> int:
        return self._labels[self._raw(i)]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i, j = i % len(self), self._raw(i % len(self))
        rel = self.relpath(i)
        if self.archive:
            return Item(rel, self._labels[j], self.base, self._pos[2 * j], self._pos[2 * j + 1])
        src = self._src[self._src_at[j]:self._src_at[j + 1]] if self._src is not None else b""
        listed = self._listed[j] if self._listed is not None else -1
        return Item(rel, self._labels[j], f"{self.base}/{src.decode('utf-8', 'surrogateescape') if src else rel}",
                    listed=listed)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, order: np.ndarray) -> ItemList:
        """The items at these positions, sharing this list's arrays."""
        out = ItemList.__new__(ItemList)
        out.__dict__.update(self.__dict__)
        out._order = self._order[order] if self._order is not None else np.asarray(order, dtype=np.int64)
        return out

    def sorted_order(self) -> np.ndarray:
        """Positions in order of relpath as str (a stable sort, as sorted() is). For UTF-8 names the bytes sort
        the same way (UTF-8 keeps code point order), so numpy sorts them without a str per image."""
        if not self.utf8:  # an undecodable name's escaped bytes sort otherwise: compare the strings themselves
            return np.array(sorted(range(len(self)), key=self.relpath), dtype=np.int64)
        width = max((self._rel_at[j + 1] - self._rel_at[j] for j in range(len(self._labels))), default=1)
        keys = np.empty(len(self), dtype=f"S{max(width, 1)}")
        for i in range(len(self)):
            keys[i] = self.relpath_bytes(i)
        return np.argsort(keys, kind="stable")


def read_bytes(item: Item) -> bytes:
    if is_url(item.path):
        return _read_remote(item)
    with open(item.path, "rb") as f:
        if item.size < 0:
            return f.read()
        f.seek(item.offset)
        return f.read(item.size)


def _read_remote(item: Item) -> bytes:
    """The object's bytes, or a member's byte range of an archive object; bytes of another length than listed
    mean the object was replaced since the listing: the image is rejected with that reason, naming the object
    (the listing's images and labels no longer describe it), and a new prepare lists it anew."""
    from alexnet_pipe.core.remote import read_range
    from alexnet_pipe.shards.pixels import Reject
    data = read_range(item.path, item.offset, item.size)
    expected = item.size if item.size >= 0 else item.listed
    if 0 <= expected != len(data):
        raise Reject(f"changed since it was listed ({len(data)} bytes read where the listing said {expected}): "
                     "run prepare again to list it anew")
    return data


@dataclasses.dataclass
class Inventory:
    layout: str                              # "folders" | "kaggle" | "archives"
    classes: list[tuple[str, str]]           # (wnid, name), label order
    splits: dict[str, ItemList]
    rejects: list[dict]                      # inputs refused before decoding: {"path", "split", "reason"}
    val_labels_from: str | None = None


# --- while listing ----------------------------------------------------------------------

TICK = 256  # files counted between two calls of the listing's progress callback


def counted(found, tick):
    """found, passed through, telling tick(n) every TICK files: listing ImageNet takes half a minute."""
    n = 0
    for x in found:
        yield x
        n += 1
        if n == TICK:
            tick(n)
            n = 0
    if n:
        tick(n)


def no_tick(n: int) -> None:
    pass


def reject(rejects: list[dict], path, split: str, reason: str) -> None:
    rejects.append({"path": str(path), "split": split, "reason": reason})
