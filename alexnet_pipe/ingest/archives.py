"""The official archives: ILSVRC2012_img_train.tar (one inner tar per class) and ILSVRC2012_img_val.tar, read in
place: their members are located once from the tar headers, then read by offset."""
from __future__ import annotations

import tarfile
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.ingest import remote_tars
from alexnet_pipe.ingest.items import Inventory, ItemList, counted, no_tick, reject
from alexnet_pipe.ingest.labels import class_list, find_class_names, labels_for
from alexnet_pipe.ingest.remote_tree import RemotePath

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed: members keep their byte offsets
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{path} is not a readable uncompressed tar ({exc})") from None


def _inner_listing(outer: tarfile.TarFile, m: tarfile.TarInfo):
    """[(name, offset, size)] of a per-class tar's files, or the TarError that makes it unreadable."""
    try:
        with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as inner:
            return [(Path(im.name).name, m.offset_data + im.offset_data, im.size) for im in inner if im.isfile()]
    except tarfile.TarError as exc:
        return exc


def list_train_archive(path: Path, rejects: list[dict],
                       tick=no_tick) -> tuple[list[str], list[tuple[str, str, int, int]]]:
    """The official train tar: one inner tar per class. Returns classes and (wnid, name, offset, size)."""
    if isinstance(path, RemotePath):  # the same rules over the headers read in place, per-class tars in parallel
        entries = remote_tars.members(path, tick, block=remote_tars.HEADER_BLOCK)
        return _train_members(path, entries, remote_tars.inner_members(path, _per_class(entries), tick), rejects)
    with _open_tar(path) as outer:
        entries = [m for m in counted(outer, tick) if m.isfile()]
        return _train_members(path, entries, (_inner_listing(outer, m) for m in _per_class(entries)), rejects)


def _per_class(entries: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    return [m for m in entries if m.name.endswith(".tar")]


def _train_members(path, entries: list[tarfile.TarInfo], listings, rejects: list[dict]):
    """(classes, sorted (wnid, name, offset, size)) from the outer tar's file members and, for each per-class
    one in order, its listing."""
    members = []
    for m in entries:
        if not m.name.endswith(".tar"):
            reject(rejects, f"{path}!{m.name}", "train", "not a per-class tar")
            continue
        found = next(listings)
        if isinstance(found, tarfile.TarError):
            reject(rejects, f"{path}!{m.name}", "train", f"unreadable per-class tar ({found})")
            continue
        wnid = Path(m.name).name[:-4]
        members.extend((wnid, *f) for f in found)
    classes = sorted({w for w, *_ in members})
    return classes, sorted(members)


def list_val_archive(path: Path, tick=no_tick) -> list[tuple[str, int, int]]:
    if isinstance(path, RemotePath):
        return sorted((Path(m.name).name, m.offset_data, m.size) for m in remote_tars.members(path, tick))
    with _open_tar(path) as tar:
        return sorted((Path(m.name).name, m.offset_data, m.size) for m in counted(tar, tick) if m.isfile())


def discover_archives(src: Path, val_labels: Path | None, tick=no_tick) -> Inventory:
    rejects: list[dict] = []
    train_tar, val_tar = src / TRAIN_TAR, src / VAL_TAR
    classes, members = list_train_archive(train_tar, rejects, tick) if train_tar.is_file() else ([], [])
    labels = labels_for(val_labels, src, src, needed=val_tar.is_file() or not classes)
    names = find_class_names(src, src) or (labels.names if labels else {})
    wnids = class_list(classes, names, labels)
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
            reject(rejects, f"{val_tar}!{name}", "val", why)
    return Inventory("archives", [(w, names.get(w, w)) for w in wnids], {"train": train, "val": val},
                     rejects, labels.source if labels else None)
