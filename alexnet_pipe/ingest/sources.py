"""Finding the inputs: every ImageNet layout users have, turned into one list of items per split.

An item is where an image's bytes are (a file, or a byte range inside an uncompressed tar),
the relative path its record key will carry, and its label.  Archives are never extracted:
their members are located once by reading the tar headers, then read in place by offset,
which also lets many workers read one archive in parallel.
"""
from __future__ import annotations

import array
import collections
import csv
import dataclasses
import io
import os
import stat
import tarfile
from pathlib import Path

import numpy as np

from alexnet_pipe.core.errors import UserError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
KAGGLE_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
NESTINGS = (".", "ILSVRC/Data/CLS-LOC", "Data/CLS-LOC", "CLS-LOC")
# names that say "image"; a split none of whose files has one is sniffed before it is called empty
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                            ".ppm", ".pgm", ".pnm", ".jp2"})


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    relpath: str      # train/<wnid>/<file> or val/<file>: the key's path part
    label: int
    path: str         # the file, or the archive holding it
    offset: int = 0   # start of the member's bytes inside the archive
    size: int = -1    # -1: the whole file


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

    def add(self, relpath: str, label: int, src: str | None = None, offset: int = 0, size: int = -1) -> None:
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
        return Item(rel, self._labels[j], f"{self.base}/{src.decode('utf-8', 'surrogateescape') if src else rel}")

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
    with open(item.path, "rb") as f:
        if item.size < 0:
            return f.read()
        f.seek(item.offset)
        return f.read(item.size)


@dataclasses.dataclass
class Inventory:
    layout: str                              # "folders" | "kaggle" | "archives"
    classes: list[tuple[str, str]]           # (wnid, name), label order
    splits: dict[str, ItemList]
    rejects: list[dict]                      # inputs refused before decoding: {"path", "split", "reason"}
    val_labels_from: str | None = None


@dataclasses.dataclass
class ValLabels:
    by_stem: dict[str, str]                  # "ILSVRC2012_val_00000001" -> wnid
    names: dict[str, str]                    # wnid -> words (may be empty)
    source: str


# --- label files ------------------------------------------------------------------------

def read_text(path: Path) -> str:
    """A label file's text: only a regular file is opened (a FIFO would block forever), and it must be UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a regular file; give the label file itself")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc})") from None


def read_kaggle_csv(path: Path) -> ValLabels:
    by_stem, line_of = {}, {}
    for line, row in enumerate(csv.DictReader(io.StringIO(read_text(path), newline="")), start=2):
        try:
            stem, wnid = row["ImageId"].strip(), row["PredictionString"].split()[0]
        except (KeyError, IndexError, AttributeError):
            raise UserError(f"{path} is not a Kaggle {KAGGLE_CSV} (expected columns ImageId,PredictionString)") from None
        if by_stem.get(stem, wnid) != wnid:
            raise UserError(f"{path} gives ImageId {stem} two labels: {by_stem[stem]} on line {line_of[stem]} "
                            f"and {wnid} on line {line}; keep one of the rows")
        by_stem[stem] = wnid
        line_of.setdefault(stem, line)
    return ValLabels(by_stem, {}, str(path))


def read_synset_mapping(path: Path) -> dict[str, str]:
    names = {}
    for line in read_text(path).splitlines():
        wnid, _, words = line.strip().partition(" ")
        if wnid:
            names[wnid] = words.strip()
    return names


def _parse_meta(meta_bytes: bytes, where: str) -> tuple[dict[int, str], dict[str, str]]:
    """ILSVRC2012_ID -> wnid, and wnid -> words, for the 1000 leaf synsets of meta.mat."""
    import scipy.io
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        rows = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"]), int(s["num_children"]))
                for s in synsets]
    except Exception as exc:  # scipy raises several types for a bad .mat; all mean the same to the user
        raise UserError(f"{where} is not a readable devkit meta.mat ({exc})") from None
    leaves = [r for r in rows if r[3] == 0]
    return {r[0]: r[1] for r in leaves}, {r[1]: r[2] for r in leaves}


def _labels_from_devkit(meta_bytes: bytes, truth_text: str, meta_where: str, where: str) -> ValLabels:
    id_to_wnid, names = _parse_meta(meta_bytes, meta_where)
    by_stem = {}
    for i, line in enumerate(truth_text.split(), start=1):
        try:
            by_stem[f"ILSVRC2012_val_{i:08d}"] = id_to_wnid[int(line)]
        except (ValueError, KeyError):
            raise UserError(f"{where}: ground-truth line {i} ({line!r}) is not an ILSVRC2012_ID of meta.mat") from None
    return ValLabels(by_stem, names, where)


def read_devkit_archive(path: Path) -> ValLabels:
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            meta_member, truth_member = members["meta.mat"], members["ILSVRC2012_validation_ground_truth.txt"]
            meta = tar.extractfile(meta_member).read()
            truth = tar.extractfile(truth_member).read().decode()
    except UnicodeDecodeError:
        raise UserError(f"{path}!{truth_member.name} is not UTF-8 text") from None
    except KeyError as exc:
        raise UserError(f"{path} has no {exc.args[0]}: is it the ILSVRC2012 devkit?") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable devkit archive ({exc})") from None
    return _labels_from_devkit(meta, truth, f"{path}!{meta_member.name}", str(path))


def read_devkit_files(truth: Path) -> ValLabels:
    meta = truth.parent / "meta.mat"
    if not meta.is_file():
        raise UserError(f"{truth} needs the devkit's meta.mat beside it to map its IDs to wnids")
    truth_text = read_text(truth)
    return _labels_from_devkit(meta.read_bytes(), truth_text, str(meta), str(truth))


def read_val_labels(path: Path) -> ValLabels:
    """Any supported label file: Kaggle csv, devkit archive, devkit dir, or ground-truth txt."""
    path = Path(path)
    if not path.is_dir() and not path.is_file():
        raise UserError(f"{path} is neither a regular file nor a directory; give the label file or the devkit dir")
    if path.is_dir():
        return read_devkit_files(path / "data" / "ILSVRC2012_validation_ground_truth.txt")
    if path.suffix == ".csv":
        return read_kaggle_csv(path)
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return read_devkit_archive(path)
    if path.suffix == ".txt":
        return read_devkit_files(path)
    raise UserError(f"{path}: val labels must be a {KAGGLE_CSV}, the devkit archive or dir, or its ground-truth .txt")


def _upwards(root: Path, src: Path) -> list[Path]:
    """root and its parents up to src's parent: where label files sit in the known layouts."""
    out, cur = [], root.resolve()
    stop = src.resolve().parent
    while cur != stop and cur != cur.parent:
        out.append(cur)
        cur = cur.parent
    return out or [root]


def find_val_labels(root: Path, src: Path) -> ValLabels | None:
    for folder in _upwards(root, src):
        for name, reader in ((KAGGLE_CSV, read_kaggle_csv), (DEVKIT_TAR, read_devkit_archive)):
            if (folder / name).is_file():
                return reader(folder / name)
        if (folder / DEVKIT_DIR).is_dir():
            return read_val_labels(folder / DEVKIT_DIR)
    return None


def find_class_names(root: Path, src: Path) -> dict[str, str]:
    for folder in _upwards(root, src):
        if (folder / SYNSET_MAPPING).is_file():
            return read_synset_mapping(folder / SYNSET_MAPPING)
    return {}


# --- listing the images -----------------------------------------------------------------

TICK = 256  # files counted between two calls of the listing's progress callback


def _counted(found, tick):
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


def _no_tick(n: int) -> None:
    pass


def _files_under(folder: Path, tick=_no_tick) -> list[Path]:
    # every non-directory: FIFOs, sockets and devices are listed too, so that they are rejected, not lost
    return sorted(_counted((p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir()), tick))


def _reject(rejects: list[dict], path, split: str, reason: str) -> None:
    rejects.append({"path": str(path), "split": split, "reason": reason})


def _not_regular(path: Path) -> bool:
    """A FIFO, socket or device (opening a FIFO blocks forever); a dangling link is left to the reader."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # the undecodable bytes of the name, kept as surrogates by os.listdir
        return False
    return True


def _regular_files(files: list, split: str, rejects: list[dict], path=lambda f: f) -> list:
    kept = []
    for f in files:
        if _not_regular(path(f)):
            _reject(rejects, path(f), split, "not a regular file (a FIFO, socket or device)")
        else:
            kept.append(f)
    return kept


def list_train_folder(train: Path, rejects: list[dict], tick=_no_tick) -> tuple[list[str], object]:
    """(sorted class names, iterator of (class, file)); files outside a class folder, or in a class folder whose
    name is not UTF-8 (it would go into the manifest as the class's wnid), are rejected. The files are listed
    one class folder at a time as the iterator is read, so no Path of the whole split is held at once."""
    folders = sorted(p.name for p in train.iterdir() if p.is_dir())
    classes = [w for w in folders if _utf8(w)]
    for path in sorted(train.iterdir()):
        if not path.is_dir():
            _reject(rejects, path, "train", "not inside a class folder")
    for wnid in folders:
        if wnid not in classes:
            for f in _files_under(train / wnid):
                _reject(rejects, f, "train", "its class folder's name is not UTF-8 (rename the folder)")
    def files():
        for wnid in classes:
            found = [(wnid, f) for f in _files_under(train / wnid, tick)]
            yield from _regular_files(found, "train", rejects, path=lambda wf: wf[1])
    return classes, files()


def _val_folder_items(val: Path, index: dict[str, int], labels: ValLabels | None,
                      rejects: list[dict], tick=_no_tick) -> ItemList:
    items = ItemList(str(val.parent))
    sorted_into_classes = any(p.is_dir() for p in val.iterdir())
    for path in _regular_files(_files_under(val, tick), "val", rejects):
        rel = path.relative_to(val)
        if sorted_into_classes:
            wnid = rel.parts[0] if len(rel.parts) > 1 else None
            why = "not inside a class folder" if wnid is None else f"class folder {wnid} is not a train class"
        else:
            wnid = labels.by_stem.get(path.name.split(".")[0]) if labels else None
            why = (f"no label for it in {labels.source}" if labels else
                   "flat val folder without labels (give --val-labels)")
            if wnid is not None and wnid not in index:
                why, wnid = f"its label {wnid} is not a train class", None
        if wnid is None or wnid not in index:
            _reject(rejects, path, "val", why)
            continue
        items.add(f"val/{path.name}", index[wnid], f"val/{rel.as_posix()}")
    return items


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed: members keep their byte offsets
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{path} is not a readable uncompressed tar ({exc})") from None


def list_train_archive(path: Path, rejects: list[dict],
                       tick=_no_tick) -> tuple[list[str], list[tuple[str, str, int, int]]]:
    """The official train tar: one inner tar per class. Returns classes and (wnid, name, offset, size)."""
    members = []
    with _open_tar(path) as outer:
        for m in _counted(outer, tick):
            if not m.isfile():
                continue
            if not m.name.endswith(".tar"):
                _reject(rejects, f"{path}!{m.name}", "train", "not a per-class tar")
                continue
            wnid = Path(m.name).name[:-4]
            try:
                with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as inner:
                    members.extend((wnid, Path(im.name).name, m.offset_data + im.offset_data, im.size)
                                   for im in inner if im.isfile())
            except tarfile.TarError as exc:
                _reject(rejects, f"{path}!{m.name}", "train", f"unreadable per-class tar ({exc})")
    classes = sorted({w for w, *_ in members})
    return classes, sorted(members)


def list_val_archive(path: Path, tick=_no_tick) -> list[tuple[str, int, int]]:
    with _open_tar(path) as tar:
        return sorted((Path(m.name).name, m.offset_data, m.size) for m in _counted(tar, tick) if m.isfile())


def find_root(src: Path) -> Path | None:
    for nest in NESTINGS:
        cand = src / nest
        if (cand / "train").is_dir() or (cand / "val").is_dir():
            return cand
    return None


def _class_list(train_classes: list[str], names: dict[str, str], labels: ValLabels | None) -> list[str]:
    """Labels are indexes into the sorted wnids of train; without train, of the label files."""
    if train_classes:
        return train_classes
    return sorted(names) if names else sorted(set(labels.by_stem.values())) if labels else []


def _labels_for(val_labels: Path | None, root: Path, src: Path, needed: bool) -> ValLabels | None:
    if val_labels is not None:
        return read_val_labels(val_labels)
    return find_val_labels(root, src) if needed else None


def discover_folders(src: Path, root: Path, val_labels: Path | None, tick=_no_tick) -> Inventory:
    rejects: list[dict] = []
    train_dir, val_dir = root / "train", root / "val"
    train_classes, train_files = list_train_folder(train_dir, rejects, tick) if train_dir.is_dir() else ([], [])
    flat_val = val_dir.is_dir() and not any(p.is_dir() for p in val_dir.iterdir())
    labels = _labels_for(val_labels, root, src, needed=flat_val or not train_classes)
    names = find_class_names(root, src) or (labels.names if labels else {})
    wnids = _class_list(train_classes, names, labels)
    index = {w: i for i, w in enumerate(wnids)}
    train = ItemList(str(root))
    for w, f in train_files:
        train.add(f"train/{w}/{f.relative_to(train_dir / w).as_posix()}", index[w])
    val = _val_folder_items(val_dir, index, labels, rejects, tick) if val_dir.is_dir() else ItemList(str(root))
    for split, folder, items in (("train", train_dir, train), ("val", val_dir, val)):
        if folder.is_dir():
            _refuse_imageless(split, folder, items, rejects)
    layout = "folders" if root == src else "kaggle"  # Kaggle's download nests them in ILSVRC/Data/CLS-LOC
    return Inventory(layout, [(w, names.get(w, w)) for w in wnids], {"train": train, "val": val},
                     rejects, labels.source if labels else None)


def _sniffs_as_image(path: str) -> bool:
    from alexnet_pipe.ingest.images import sniff
    try:
        with open(path, "rb") as f:
            return sniff(f.read(64)) is not None
    except OSError:
        return False


def _refuse_imageless(split: str, folder: Path, items: ItemList, rejects: list[dict]) -> None:
    """A split folder that exists but holds no image is a mistake (a wrong path, an unfinished download)."""
    refused = [r["path"] for r in rejects if r["split"] == split]
    # lazily: at ImageNet size the first name answers, and a list of every path would be a GB-sized peak
    if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in (*(it.path for it in items), *refused)):
        return
    found = [it.path for it in items] + refused
    regular = [f for f in found if not _not_regular(Path(f))]
    if any(_sniffs_as_image(f) for f in regular[:20]):  # images without a telling name
        return
    suffixes = collections.Counter(Path(f).suffix.lower() or "no extension" for f in found)
    kinds = ", ".join(s for s, _ in suffixes.most_common(4))
    raise UserError(f"found no images in {folder}, the {split} split: {len(found)} files"
                    + (f" ({kinds})" if kinds else "") + f"; point prepare at the folder whose {split}/ holds them")


def discover_archives(src: Path, val_labels: Path | None, tick=_no_tick) -> Inventory:
    rejects: list[dict] = []
    train_tar, val_tar = src / TRAIN_TAR, src / VAL_TAR
    classes, members = list_train_archive(train_tar, rejects, tick) if train_tar.is_file() else ([], [])
    labels = _labels_for(val_labels, src, src, needed=val_tar.is_file() or not classes)
    names = find_class_names(src, src) or (labels.names if labels else {})
    wnids = _class_list(classes, names, labels)
    index = {w: i for i, w in enumerate(wnids)}
    train, val = ItemList(str(train_tar), archive=True), ItemList(str(val_tar), archive=True)
    for w, name, off, size in members:
        train.add(f"train/{w}/{name}", index[w], offset=off, size=size)
    for name, off, size in (list_val_archive(val_tar, tick) if val_tar.is_file() else []):
        wnid = labels.by_stem.get(name.split(".")[0]) if labels else None
        if wnid in index:
            val.add(f"val/{name}", index[wnid], offset=off, size=size)
        else:
            why = ("no val labels found (give --val-labels)" if labels is None else
                   f"no label for it in {labels.source}" if wnid is None else f"its label {wnid} is not a train class")
            _reject(rejects, f"{val_tar}!{name}", "val", why)
    return Inventory("archives", [(w, names.get(w, w)) for w in wnids], {"train": train, "val": val},
                     rejects, labels.source if labels else None)


def discover(src: Path, val_labels: Path | None = None, tick=_no_tick) -> Inventory:
    """Auto-detect the layout under src and list every input, each either an item or a reject;
    tick(n) is told of every n entries found (a progress display's update)."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src} is not a directory")
    root = find_root(src)
    if root is not None:
        inv = discover_folders(src, root, val_labels, tick)
    elif (src / TRAIN_TAR).is_file() or (src / VAL_TAR).is_file():
        inv = discover_archives(src, val_labels, tick)
    else:
        raise UserError(f"found no ImageNet layout under {src}: expected train/ and val/ folders, "
                        f"ILSVRC/Data/CLS-LOC/, or {TRAIN_TAR} / {VAL_TAR}")
    if not any(inv.splits.values()):
        raise UserError(f"found no images under {src} ({len(inv.rejects)} files refused)")
    return inv
