"""Build the other ImageNet layouts from one sample tree (folders + flat val + Kaggle csv)."""
from __future__ import annotations

import csv
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np


def val_labels(tree: Path) -> dict[str, str]:
    with open(tree / "LOC_val_solution.csv") as f:
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in csv.DictReader(f)}


def kaggle_nested(tree: Path, out: Path) -> Path:
    """ILSVRC/Data/CLS-LOC/{train,val} with the csv and mapping at the top."""
    nest = out / "ILSVRC" / "Data" / "CLS-LOC"
    nest.mkdir(parents=True)
    shutil.copytree(tree / "train", nest / "train")
    shutil.copytree(tree / "val", nest / "val")
    for name in ("LOC_val_solution.csv", "LOC_synset_mapping.txt"):
        shutil.copy(tree / name, out / name)
    return out


def sorted_val(tree: Path, out: Path) -> Path:
    """val/<wnid>/<file>, as the popular valprep.sh leaves it; no csv needed."""
    shutil.copytree(tree / "train", out / "train")
    labels = val_labels(tree)
    for path in sorted((tree / "val").iterdir()):
        dest = out / "val" / labels[path.name.split(".")[0]]
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.name)
    shutil.copy(tree / "LOC_synset_mapping.txt", out / "LOC_synset_mapping.txt")
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def archives(tree: Path, out: Path, seed: int = 0) -> Path:
    """The official tars: train = tar of per-class tars; flat val tar; devkit with shuffled IDs."""
    out.mkdir(parents=True)
    wnids = sorted(p.name for p in (tree / "train").iterdir() if p.is_dir())
    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in wnids:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for f in sorted((tree / "train" / wnid).iterdir()):
                    t.add(f, arcname=f.name)
            _add_bytes(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(out / "ILSVRC2012_img_val.tar", "w") as t:
        for f in sorted((tree / "val").iterdir()):
            t.add(f, arcname=f.name)
    _devkit(out / "ILSVRC2012_devkit_t12.tar.gz", wnids, val_labels(tree), seed)
    return out


def _devkit(path: Path, wnids: list[str], labels: dict[str, str], seed: int) -> None:
    import scipy.io
    ids = np.random.default_rng(seed).permutation(len(wnids)) + 1  # NOT sorted-wnid order
    id_of = dict(zip(wnids, ids.tolist()))
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(id_of[w], w, f"words of {w}", 0) for w in wnids]
    rows.append((len(wnids) + 1, "n99999999", "a non-leaf synset", 3))  # must be ignored
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": np.array(rows, dtype=dtype)})
    truth = "".join(f"{id_of[labels[stem]]}\n" for stem in sorted(labels))
    with tarfile.open(path, "w:gz") as t:
        _add_bytes(t, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add_bytes(t, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth.encode())
