"""The folder layouts: train/<wnid>/ and a val/ either sorted into class folders or flat with a label file, at the
top of the source or nested as in the Kaggle download (ILSVRC/Data/CLS-LOC/)."""
from __future__ import annotations

import collections
import os
import stat
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.remote import is_url, read_range
from alexnet_pipe.ingest.items import Inventory, ItemList, counted, no_tick, reject
from alexnet_pipe.ingest.labels import ValLabels, class_list, find_class_names, labels_for
from alexnet_pipe.ingest.remote_tree import RemotePath, listed_size

NESTINGS = (".", "ILSVRC/Data/CLS-LOC", "Data/CLS-LOC", "CLS-LOC")
# names that say "image"; a split none of whose files has one is sniffed before it is called empty
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                            ".ppm", ".pgm", ".pnm", ".jp2"})


def find_root(src: Path) -> Path | None:
    """Where train/ and val/ are under src, or None where they are not."""
    for nest in NESTINGS:
        cand = src / nest
        if (cand / "train").is_dir() or (cand / "val").is_dir():
            return cand
    return None


def _files_under(folder: Path, tick=no_tick) -> list[Path]:
    # every non-directory: FIFOs, sockets and devices are listed too, so that they are rejected, not lost
    return sorted(counted((p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir()), tick))


def _not_regular(path: Path) -> bool:
    """A FIFO, socket or device (opening a FIFO blocks forever); a dangling link is left to the reader."""
    if isinstance(path, RemotePath):  # a store's objects are all regular files
        return False
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
            reject(rejects, path(f), split, "not a regular file (a FIFO, socket or device)")
        else:
            kept.append(f)
    return kept


HIDDEN = "a hidden name (starting with '.'): not an image of the dataset, skipped"


def _hidden(rel: Path) -> bool:
    """A name starting with '.' anywhere below the split: a notebook's .ipynb_checkpoints/, .DS_Store, .git/.
    The rule of the input tree (docs/format.md): never a class, never an image, each file noted in the rejects."""
    return any(part.startswith(".") for part in rel.parts)


def _class_folders(train: Path, rejects: list[dict]) -> list[str]:
    """The train class folders, sorted: hidden folders are no class (their files are noted as rejects), and an
    empty class folder is refused: kept, it is a label no image has; dropped, it renumbers every later class."""
    folders, empty = [], []
    for path in sorted(train.iterdir()):
        if _hidden(Path(path.name)):
            for f in [path] if not path.is_dir() else _files_under(path):
                reject(rejects, f, "train", HIDDEN)
        elif not path.is_dir():
            reject(rejects, path, "train", "not inside a class folder")
        else:
            folders.append(path.name)
            if not any(not _hidden(f.relative_to(path)) for f in _files_under(path)):
                empty.append(path)
    if empty and len(empty) < len(folders):  # all empty: the split holds no images, said as such later
        raise UserError(f"the class folder {empty[0]} holds no files: remove it or put its images in (an empty "
                        "class would be a label that no image has)")
    return folders


def list_train_folder(train: Path, rejects: list[dict], tick=no_tick) -> tuple[list[str], object]:
    """(sorted class names, iterator of (class, file)); files outside a class folder, or in a class folder whose
    name is not UTF-8 (it would go into the manifest as the class's wnid), or under a hidden name, are rejected.
    The files are listed one class folder at a time as the iterator is read, so no Path of the whole split is
    held at once."""
    folders = _class_folders(train, rejects)
    classes = [w for w in folders if _utf8(w)]
    for wnid in folders:
        if wnid not in classes:
            for f in _files_under(train / wnid):
                reject(rejects, f, "train", "its class folder's name is not UTF-8 (rename the folder)")
    def files():
        for wnid in classes:
            found = []
            for f in _files_under(train / wnid, tick):
                if _hidden(f.relative_to(train / wnid)):
                    reject(rejects, f, "train", HIDDEN)
                else:
                    found.append((wnid, f))
            yield from _regular_files(found, "train", rejects, path=lambda wf: wf[1])
    return classes, files()


def _sorted_into_classes(val: Path, index: dict[str, int]) -> bool:
    """val/ holds class folders when a visible subfolder is named as a train class; a stray folder (hidden,
    or named otherwise) beside flat files does not turn the split into an unlabelled one."""
    return any(p.is_dir() and not _hidden(Path(p.name)) and p.name in index for p in val.iterdir())


def _val_folder_items(val: Path, index: dict[str, int], labels: ValLabels | None,
                      rejects: list[dict], tick=no_tick) -> ItemList:
    items = ItemList(str(val.parent))
    sorted_into_classes = _sorted_into_classes(val, index)
    for path in _regular_files(_files_under(val, tick), "val", rejects):
        rel = path.relative_to(val)
        if _hidden(rel):
            reject(rejects, path, "val", HIDDEN)
            continue
        if sorted_into_classes:
            wnid = rel.parts[0] if len(rel.parts) > 1 else None
            why = "not inside a class folder" if wnid is None else f"class folder {wnid} is not a train class"
        elif len(rel.parts) > 1:
            wnid, why = None, f"in the folder {rel.parts[0]}, which is not a train class, beside the flat val images"
        else:
            wnid = labels.by_stem.get(path.name.split(".")[0]) if labels else None
            why = (f"no label for it in {labels.source}" if labels else
                   "flat val folder without labels (give --val-labels)")
            if wnid is not None and wnid not in index:
                why, wnid = f"its label {wnid} is not a train class", None
        if wnid is None or wnid not in index:
            reject(rejects, path, "val", why)
            continue
        items.add(f"val/{path.name}", index[wnid], f"val/{rel.as_posix()}", listed=listed_size(path))
    return items


def discover_folders(src: Path, root: Path, val_labels: Path | None, tick=no_tick) -> Inventory:
    rejects: list[dict] = []
    train_dir, val_dir = root / "train", root / "val"
    train_classes, train_files = list_train_folder(train_dir, rejects, tick) if train_dir.is_dir() else ([], [])
    flat_val = val_dir.is_dir() and not _sorted_into_classes(val_dir, dict.fromkeys(train_classes, 0))
    labels = labels_for(val_labels, root, src, needed=flat_val or not train_classes)
    names = find_class_names(root, src) or (labels.names if labels else {})
    wnids = class_list(train_classes, names, labels)
    index = {w: i for i, w in enumerate(wnids)}
    train = ItemList(str(root))
    for w, f in train_files:
        train.add(f"train/{w}/{f.relative_to(train_dir / w).as_posix()}", index[w], listed=listed_size(f))
    val = _val_folder_items(val_dir, index, labels, rejects, tick) if val_dir.is_dir() else ItemList(str(root))
    for split, folder, items in (("train", train_dir, train), ("val", val_dir, val)):
        if folder.is_dir():
            _refuse_imageless(split, folder, items, rejects)
    layout = "folders" if root == src else "kaggle"  # Kaggle's download nests them in ILSVRC/Data/CLS-LOC
    return Inventory(layout, [(w, names.get(w, w)) for w in wnids], {"train": train, "val": val},
                     rejects, labels.source if labels else None)


def _sniffs_as_image(path: str) -> bool:
    from alexnet_pipe.ingest.images import sniff
    if is_url(path):
        return sniff(read_range(path, 0, 64)) is not None
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
