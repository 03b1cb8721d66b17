"""The labels of the inputs: val labels from any label file users have (Kaggle csv, the devkit archive or dir, its
ground-truth .txt), the class names, and the class list labels index into."""
from __future__ import annotations

import csv
import dataclasses
import io
import tarfile
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.remote import is_url
from alexnet_pipe.ingest.remote_tree import RemotePath, open_tree

DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
KAGGLE_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"


@dataclasses.dataclass
class ValLabels:
    by_stem: dict[str, str]                  # "ILSVRC2012_val_00000001" -> wnid
    names: dict[str, str]                    # wnid -> words (may be empty)
    source: str


def _as_path(path) -> Path | RemotePath:
    """A path, or a label file or devkit dir in a store (a URL, or a key of a listed tree)."""
    if isinstance(path, RemotePath):
        return path
    return open_tree(str(path)) if is_url(path) else Path(path)


def read_text(path: Path) -> str:
    """A label file's text: only a regular file is opened (a FIFO would block forever), and it must be UTF-8."""
    path = _as_path(path)
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
        opened = {"fileobj": io.BytesIO(path.read_bytes())} if isinstance(path, RemotePath) else {"name": path}
        with tarfile.open(mode="r:*", **opened) as tar:
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
    path = _as_path(path)
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


def class_list(train_classes: list[str], names: dict[str, str], labels: ValLabels | None) -> list[str]:
    """Labels are indexes into the sorted wnids of train; without train, of the label files."""
    if train_classes:
        return train_classes
    return sorted(names) if names else sorted(set(labels.by_stem.values())) if labels else []


def labels_for(val_labels: Path | None, root: Path, src: Path, needed: bool) -> ValLabels | None:
    if val_labels is not None:
        return read_val_labels(val_labels)
    return find_val_labels(root, src) if needed else None
