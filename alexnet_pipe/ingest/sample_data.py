"""The built-in sample data: a small ImageNet-layout tree of synthetic images, drawn procedurally.

Nothing here comes from ImageNet. Each class is a shape or texture family in one colour family
("red discs", "green stripes"); inside a class the position, size, rotation, background, clutter,
noise and colour vary, so a small CNN has something to learn that mean colour alone does not give
away. The tree also carries the awkward files real ImageNet has (CMYK, grayscale, PNG named .JPEG)
plus a few broken ones that `prepare` must reject.

Layout (the Kaggle flavour of the extracted download):

    root/train/<wnid>/<wnid>_<i>.JPEG
    root/val/ILSVRC2012_val_%08d.JPEG      flat, classes interleaved
    root/LOC_val_solution.csv              ImageId,PredictionString ("wnid xmin ymin xmax ymax ...")
    root/LOC_synset_mapping.txt            "wnid words, more words", sorted wnids
    root/README.txt                        says that all of this is synthetic

The writers (`write_jpeg`, `write_cmyk_jpeg`, ...) are public so that tests can build other layouts,
and `source_image(settings, rel)` redraws the picture behind any file, so tests of prepare can
compare what it stored against what was drawn.
The pictures are drawn by sample_drawing.py; this module lays out the tree and writes the files.
Only numpy, OpenCV and Pillow: no torch.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.files import rmdir_if_empty
from alexnet_pipe.core.outdir import check_place, writable_dir
from alexnet_pipe.ingest.sample_drawing import class_name, draw, make_wnids, synset_words
from alexnet_pipe.shards.pixels import encode_jpeg

JPEG_QUALITY = 92

# Pathological train files, in the order they are placed (round-robin over the classes).
TRAIN_PATHOLOGIES = ("gray", "gray", "cmyk", "cmyk", "png", "rgba", "png16", "truncated", "empty", "not-image")
REJECT_KINDS = ("truncated", "empty", "not-image")
# (height, width) of a few train images at the extremes: two large enough for DCT-domain
# downscaling (shorter side >= 600), two smaller than a 128 crop (prepare upscales them).
EXTREME_SIZES = ((640, 860), (1000, 620), (96, 120), (150, 100))
TREE_ENTRIES = ("train", "val", "LOC_val_solution.csv", "LOC_synset_mapping.txt", "README.txt")
README_MARK = "SYNTHETIC SAMPLE DATA -- NOT IMAGENET"
WNID = re.compile(r"n\d{8}")
VAL_FILE = re.compile(r"ILSVRC2012_val_\d{8}\.JPEG")


@dataclass(frozen=True)
class SampleSettings:
    classes: int = 10
    train_per_class: int = 80
    val_per_class: int = 20
    seed: int = 0
    pathologies: bool = True


@dataclass
class SampleSummary:
    root: Path
    wnids: list[str]
    names: list[str]
    train_count: int                       # files under train/, broken ones included
    val_count: int                         # files under val/
    expected_rejects: list[str] = field(default_factory=list)     # relative paths prepare must reject
    pathological: dict[str, str] = field(default_factory=dict)    # relative path -> kind
    labels: dict[str, int] = field(default_factory=dict)          # relative path -> class index, every file


# ----------------------------------------------------------------------------------------------
# writers (every one writes real bytes of the claimed kind)

def _encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB (or grayscale) image, by the image codec's encoder."""
    return encode_jpeg(np.ascontiguousarray(rgb[..., ::-1] if rgb.ndim == 3 else rgb), int(quality))

def write_jpeg(path: Path, rgb: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    """Baseline 3-component (YCbCr) JPEG."""
    Path(path).write_bytes(_encode_jpeg(rgb, quality))


def write_cmyk_jpeg(path: Path, rgb: np.ndarray) -> None:
    """4-component Adobe CMYK JPEG, like the 22 in the ImageNet train set."""
    Image.fromarray(rgb).convert("CMYK").save(path, "JPEG", quality=JPEG_QUALITY)


def write_gray_jpeg(path: Path, rgb: np.ndarray) -> None:
    """1-component (grayscale) JPEG."""
    Path(path).write_bytes(_encode_jpeg(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)))


def write_png(path: Path, rgb: np.ndarray, *, alpha: bool = False, bits16: bool = False) -> None:
    """PNG whatever the file name says. alpha: RGBA, fully opaque so that every sane conversion
    to RGB agrees; bits16: 16 bits per channel, value * 257 so that the top byte is the 8-bit value."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if alpha:
        bgr = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    if bits16:
        bgr = bgr.astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    Path(path).write_bytes(buf.tobytes())


def write_truncated_jpeg(path: Path, rgb: np.ndarray, fraction: float = 0.6) -> None:
    """A valid JPEG cut to `fraction` of its bytes: no end-of-image marker (FFD9)."""
    data = _encode_jpeg(rgb)
    cut = data[:max(2, int(len(data) * fraction))]
    while cut.endswith(b"\xff\xd9"):                 # vanishingly rare, but then it would look complete
        cut = cut[:-1]
    Path(path).write_bytes(cut)


def write_empty(path: Path) -> None:
    Path(path).write_bytes(b"")


def write_not_image(path: Path) -> None:
    Path(path).write_text("This file is deliberately not an image: alexnet-pipe's sample data checks "
                          "that prepare rejects it instead of crashing or writing a record.\n")


def _write_kind(path: Path, kind: str, rgb: np.ndarray) -> None:
    writers = {
        "jpeg": write_jpeg, "gray": write_gray_jpeg, "cmyk": write_cmyk_jpeg, "png": write_png,
        "rgba": lambda p, x: write_png(p, x, alpha=True), "png16": lambda p, x: write_png(p, x, bits16=True),
        "truncated": write_truncated_jpeg, "empty": lambda p, x: write_empty(p),
        "not-image": lambda p, x: write_not_image(p),
    }
    writers[kind](path, rgb)


# ----------------------------------------------------------------------------------------------
# the tree

def _random_size(rng: np.random.Generator) -> tuple[int, int]:
    """Shorter side 140..400, aspect ratio (width/height) log-uniform in 0.5..2."""
    short = int(rng.integers(140, 401))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2)))
    return (short, int(round(short * aspect))) if aspect >= 1 else (int(round(short / aspect)), short)


def _train_plan(settings: SampleSettings) -> tuple[dict, dict]:
    """(extreme sizes, pathology kinds), each keyed by (class, index within class)."""
    c, n = settings.classes, settings.train_per_class
    sizes = {(j % c, j // c): hw for j, hw in enumerate(EXTREME_SIZES) if j // c < n}
    kinds = {}
    if settings.pathologies:
        first_free = math.ceil(len(EXTREME_SIZES) / c)
        need = first_free + math.ceil(len(TRAIN_PATHOLOGIES) / c) + 1
        if n < need:
            raise UserError(f"With {c} classes the pathological files need --train-per-class of at least "
                            f"{need}; raise it or pass --no-pathologies.")
        kinds = {(j % c, n - 1 - j // c): kind for j, kind in enumerate(TRAIN_PATHOLOGIES)}
    return sizes, kinds


def _check_settings(settings: SampleSettings) -> None:
    if not 1 <= settings.classes <= 1000:
        raise UserError(f"The sample data supports 1 to 1000 classes, not {settings.classes}.")
    if settings.train_per_class < 1 or settings.val_per_class < 1:
        raise UserError("The sample data needs at least one train and one val image per class.")


def _written_here_before(root: Path) -> bool:
    """Whether root's README.txt is the one this module writes: the mark that its tree may be replaced."""
    try:
        with open(root / "README.txt", "rb") as f:
            return f.read(len(README_MARK)) == README_MARK.encode()
    except OSError:
        return False


def _remove_matching(folder: Path, pattern: re.Pattern) -> None:
    """The files of `folder` named as this module names them; the folder too once it is empty."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for path in folder.iterdir():
        if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()
    rmdir_if_empty(folder)


def _remove_own_tree(root: Path) -> None:
    """Remove, file by file, what an earlier sample-data run wrote; a user's files (and their folders) stay."""
    train = root / "train"
    for folder in sorted(train.iterdir()) if train.is_dir() and not train.is_symlink() else []:
        if WNID.fullmatch(folder.name):
            _remove_matching(folder, re.compile(rf"{folder.name}_\d+\.JPEG"))
    rmdir_if_empty(train)
    _remove_matching(root / "val", VAL_FILE)
    for name in ("LOC_val_solution.csv", "LOC_synset_mapping.txt", "README.txt"):
        if (root / name).is_file() and not (root / name).is_symlink():
            (root / name).unlink()


def _prepare_root(root: Path, overwrite: bool) -> None:
    check_place(root, "directory for the sample data")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise UserError(f"{root} is not empty; choose an empty directory or pass --overwrite.")
        present = [name for name in TREE_ENTRIES if (root / name).exists() or (root / name).is_symlink()]
        if present and not _written_here_before(root):
            raise UserError(f"{root} holds {', '.join(present)} that sample-data did not write (its README.txt "
                            "is not the sample data's); choose an empty directory.")
        _remove_own_tree(root)
    writable_dir(root, "directory for the sample data")


def _train_image(settings: SampleSettings, k: int, i: int, sizes: dict):
    rng = np.random.default_rng([settings.seed, 0, k, i])
    height, width = sizes.get((k, i)) or _random_size(rng)
    return draw(k, rng, height, width)


def _val_labels(settings: SampleSettings) -> list[int]:
    """Class of each val image in file order: every class val_per_class times, interleaved."""
    labels = np.repeat(np.arange(settings.classes), settings.val_per_class)
    np.random.default_rng([settings.seed, 2]).shuffle(labels)
    return labels.tolist()


def _val_image(settings: SampleSettings, n: int, k: int):
    rng = np.random.default_rng([settings.seed, 1, n])
    return draw(k, rng, *_random_size(rng))


def source_image(settings: SampleSettings, rel: str) -> np.ndarray:
    """The RGB picture behind the file at relative path `rel` of the tree these settings write,
    before encoding (and before the grayscale/CMYK/PNG conversion of a pathological file): the
    reference that tests of prepare compare decoded pixels against."""
    parts = Path(rel).stem.split("_")
    if rel.startswith("train/"):
        k, i = make_wnids(settings.classes).index(parts[0]), int(parts[1])
        return _train_image(settings, k, i, _train_plan(settings)[0])[0]
    n = int(parts[-1]) - 1
    return _val_image(settings, n, _val_labels(settings)[n])[0]


def _write_train(root: Path, settings: SampleSettings, wnids: list[str], summary: SampleSummary) -> None:
    sizes, kinds = _train_plan(settings)
    for k, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)  # a user's file may have kept it
        for i in range(settings.train_per_class):
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            kind = kinds.get((k, i), "jpeg")
            _write_kind(root / rel, kind, _train_image(settings, k, i, sizes)[0])
            summary.labels[rel] = k
            if kind != "jpeg":
                summary.pathological[rel] = kind
            if kind in REJECT_KINDS:
                summary.expected_rejects.append(rel)
    summary.train_count = settings.classes * settings.train_per_class


def _write_val(root: Path, settings: SampleSettings, wnids: list[str], summary: SampleSummary) -> None:
    labels = _val_labels(settings)
    cmyk_at = len(labels) // 2 if settings.pathologies else -1
    (root / "val").mkdir(exist_ok=True)
    rows = ["ImageId,PredictionString"]
    for n, k in enumerate(labels):
        image_id = f"ILSVRC2012_val_{n + 1:08d}"
        rgb, boxes = _val_image(settings, n, k)
        rel = f"val/{image_id}.JPEG"
        kind = "cmyk" if n == cmyk_at else "jpeg"
        _write_kind(root / rel, kind, rgb)
        if kind != "jpeg":
            summary.pathological[rel] = kind
        summary.labels[rel] = k
        rows.append(f"{image_id}," + " ".join(f"{wnids[k]} {x0} {y0} {x1} {y1}" for x0, y0, x1, y1 in boxes))
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    summary.val_count = len(labels)


def _readme(settings: SampleSettings) -> str:
    s = settings
    flags = (f"--classes {s.classes} --train-per-class {s.train_per_class} --val-per-class {s.val_per_class} "
             f"--seed {s.seed}" + ("" if s.pathologies else " --no-pathologies"))
    return (
        f"{README_MARK}\n\n"
        "Every image in this tree was drawn procedurally by alexnet-pipe (coloured shapes and textures on\n"
        "noisy, cluttered backgrounds). None of it comes from ImageNet or any photograph. The wnids look\n"
        "like ImageNet's but are made up. The layout copies ImageNet's Kaggle download so that\n"
        "`alexnet-pipe prepare` can be tried end to end.\n\n"
        "Some train files are deliberately unusual (grayscale, CMYK, PNG or 16-bit PNG named .JPEG) and\n"
        "some deliberately broken (a truncated JPEG, an empty file, a text file): prepare must convert the\n"
        "former and reject the latter. One val image is a CMYK JPEG.\n\n"
        f"Regenerate byte-identically with:\n  alexnet-pipe sample-data DIR {flags}\n"
    )


def write_sample_tree(root: Path, settings: SampleSettings = SampleSettings(), *,
                      overwrite: bool = False) -> SampleSummary:
    """Write the synthetic tree under `root` (empty or absent; with overwrite, this module's own
    entries there are replaced and other files are left alone). Same settings -> same bytes."""
    _check_settings(settings)
    root = Path(root)
    _train_plan(settings)                            # refuse impossible settings before touching disk
    _prepare_root(root, overwrite)
    wnids = make_wnids(settings.classes)
    names = [class_name(k) for k in range(settings.classes)]
    summary = SampleSummary(root=root, wnids=wnids, names=names, train_count=0, val_count=0)
    _write_train(root, settings, wnids, summary)
    _write_val(root, settings, wnids, summary)
    mapping = [f"{w} {synset_words(k)}" for k, w in enumerate(wnids)]
    (root / "LOC_synset_mapping.txt").write_text("\n".join(mapping) + "\n")
    (root / "README.txt").write_text(_readme(settings))
    return summary
