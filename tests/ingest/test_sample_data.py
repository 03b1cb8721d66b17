"""The synthetic sample tree: layout, labels, determinism, every pathology, and that classes are learnable."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.ingest.sample_data import (SampleSettings, source_image, write_cmyk_jpeg, write_gray_jpeg,
                                             write_jpeg, write_png, write_sample_tree, write_truncated_jpeg)
from alexnet_pipe.ingest.sample_drawing import class_name, draw_image, make_wnids
from alexnet_pipe_cli.main import cli

SMALL = SampleSettings(classes=4, train_per_class=8, val_per_class=3, seed=5)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def default_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample") / "tree"
    return write_sample_tree(root, SampleSettings())


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _close(decoded: np.ndarray, drawn: np.ndarray, tol: float = 4) -> bool:
    """Equal up to JPEG loss: the pixel noise is compared after 4x4 averaging."""
    assert decoded.shape == drawn.shape
    size = (drawn.shape[1] // 4, drawn.shape[0] // 4)
    small = [cv2.resize(x, size, interpolation=cv2.INTER_AREA).astype(float) for x in (decoded, drawn)]
    return float(np.abs(small[0] - small[1]).mean()) < tol


def _read_val_csv(root: Path) -> list[tuple[str, list[str]]]:
    with open(root / "LOC_val_solution.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "PredictionString"]
    return [(image_id, pred.split()) for image_id, pred in rows[1:]]


# ---------------------------------------------------------------------------------------------- layout

def test_default_layout_and_counts(default_tree):
    s, root = default_tree, default_tree.root
    assert s.train_count == 800 and s.val_count == 200
    assert s.wnids == sorted(s.wnids) and len(set(s.wnids)) == 10
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in s.wnids)
    assert sorted(p.name for p in (root / "train").iterdir()) == s.wnids
    for k, wnid in enumerate(s.wnids):
        names = sorted(p.name for p in (root / "train" / wnid).iterdir())
        assert names == sorted(f"{wnid}_{i}.JPEG" for i in range(80))
    val = sorted(p.name for p in (root / "val").iterdir())
    assert val == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 201)]
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["train", "val", "LOC_val_solution.csv", "LOC_synset_mapping.txt", "README.txt"])
    readme = (root / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "not imagenet" in readme.lower() and "procedurally" in readme
    assert len(s.labels) == 1000


def test_val_csv_and_mapping_parse_back(default_tree):
    s, root = default_tree, default_tree.root
    rows = _read_val_csv(root)
    assert [image_id for image_id, _ in rows] == [f"ILSVRC2012_val_{n:08d}" for n in range(1, 201)]
    labels = []
    for image_id, tokens in rows:
        assert len(tokens) % 5 == 0 and tokens[0] in s.wnids
        label = s.wnids.index(tokens[0])
        assert s.labels[f"val/{image_id}.JPEG"] == label
        labels.append(label)
        with Image.open(root / "val" / f"{image_id}.JPEG") as im:
            width, height = im.size
        x0, y0, x1, y1 = map(int, tokens[1:5])
        assert 0 <= x0 < x1 < width and 0 <= y0 < y1 < height
    assert np.bincount(labels).tolist() == [20] * 10
    assert labels != sorted(labels)                     # interleaved, not grouped
    lines = (root / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == s.wnids
    assert [line.split(" ", 1)[1].split(",")[0] for line in lines] == s.names
    assert s.names[:2] == ["red discs", "green squares"]


def test_varied_sizes(default_tree):
    shorts, aspects = [], []
    for path in default_tree.root.rglob("*.JPEG"):
        rel = path.relative_to(default_tree.root).as_posix()
        if rel in default_tree.expected_rejects:
            continue
        with Image.open(path) as im:
            width, height = im.size
        shorts.append(min(width, height))
        aspects.append(width / height)
    shorts, aspects = np.array(shorts), np.array(aspects)
    assert len(shorts) == 997
    assert np.mean((shorts >= 140) & (shorts <= 400)) > 0.99
    assert (shorts >= 600).sum() >= 2 and (shorts < 128).sum() >= 2
    assert aspects.min() < 0.6 and aspects.max() > 1.7 and np.all((aspects >= 0.49) & (aspects <= 2.01))
    assert np.std(shorts) > 50


# ---------------------------------------------------------------------------------------------- determinism

def test_same_settings_give_identical_bytes(tmp_path):
    a = write_sample_tree(tmp_path / "a", SMALL)
    b = write_sample_tree(tmp_path / "b", SMALL)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert files_a == files_b and len(files_a) == 4 * 8 + 4 * 3 + 3
    assert a.pathological == b.pathological and a.labels == b.labels
    c = write_sample_tree(tmp_path / "c", SampleSettings(**{**SMALL.__dict__, "seed": 6}))
    files_c = _files(tmp_path / "c")
    assert files_c.keys() == files_a.keys()
    assert sum(files_a[k] != files_c[k] for k in files_a) > 30   # the seed really changes the images
    assert c.wnids == a.wnids                                    # but not the class list


def test_refuses_non_empty_dir_and_overwrite_replaces_only_its_own(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "keep.txt").write_text("user file")
    with pytest.raises(UserError, match="not empty"):
        write_sample_tree(root, SMALL)
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt"]
    write_sample_tree(root, SampleSettings(classes=5, train_per_class=8, val_per_class=1), overwrite=True)
    summary = write_sample_tree(root, SMALL, overwrite=True)
    assert (root / "keep.txt").read_text() == "user file"
    assert sorted(p.name for p in (root / "train").iterdir()) == summary.wnids   # no 5th class left over
    assert len(list((root / "val").iterdir())) == 12
    with pytest.raises(UserError):
        write_sample_tree(tmp_path / "x", SampleSettings(classes=2, train_per_class=3))
    assert not (tmp_path / "x").exists()                         # refused before touching the disk


# ---------------------------------------------------------------------------------------------- pathologies

def test_every_pathology_is_what_it_claims(default_tree):
    s, root = default_tree, default_tree.root
    kinds = sorted(s.pathological.values())
    assert kinds == sorted(["gray", "gray", "cmyk", "cmyk", "png", "rgba", "png16", "truncated", "empty",
                            "not-image", "cmyk"])
    assert sorted(s.expected_rejects) == sorted(p for p, k in s.pathological.items()
                                                if k in ("truncated", "empty", "not-image"))
    assert [p for p, k in s.pathological.items() if p.startswith("val/")] != []
    for rel, kind in s.pathological.items():
        assert rel.endswith(".JPEG")
        data = (root / rel).read_bytes()
        if kind in ("gray", "cmyk"):
            assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == "JPEG" and im.mode == {"gray": "L", "cmyk": "CMYK"}[kind]
        elif kind in ("png", "rgba", "png16"):
            assert data[:8] == PNG_SIGNATURE
            bit_depth, colour_type = data[24], data[25]          # IHDR fields
            assert (bit_depth, colour_type) == {"png": (8, 2), "rgba": (8, 6), "png16": (16, 2)}[kind]
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            assert decoded.dtype == (np.uint16 if kind == "png16" else np.uint8)
            assert decoded.shape[2] == (4 if kind == "rgba" else 3)
        elif kind == "truncated":
            assert data[:2] == b"\xff\xd8" and not data.endswith(b"\xff\xd9") and len(data) > 1000
        elif kind == "empty":
            assert data == b""
        else:
            assert kind == "not-image" and data.decode().startswith("This file is deliberately not an image")
            assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None


def test_writers_round_trip_to_the_same_picture(tmp_path):
    rgb = draw_image(0, np.random.default_rng(1), 150, 200)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    write_jpeg(tmp_path / "a.JPEG", rgb)
    write_cmyk_jpeg(tmp_path / "cmyk.JPEG", rgb)
    write_gray_jpeg(tmp_path / "gray.JPEG", rgb)
    write_png(tmp_path / "png.JPEG", rgb)
    write_png(tmp_path / "rgba.JPEG", rgb, alpha=True)
    write_png(tmp_path / "png16.JPEG", rgb, bits16=True)
    assert _close(_rgb(tmp_path / "a.JPEG"), rgb) and _close(_rgb(tmp_path / "cmyk.JPEG"), rgb)
    # CMYK must not come back inverted (the classic Adobe-marker mistake) through OpenCV either
    assert _close(cv2.imread(str(tmp_path / "cmyk.JPEG"), cv2.IMREAD_COLOR)[..., ::-1], rgb)
    assert not _close(255 - rgb, rgb)
    assert _close(_rgb(tmp_path / "gray.JPEG")[..., :1], gray[..., None])
    assert np.array_equal(_rgb(tmp_path / "png.JPEG"), rgb)
    with Image.open(tmp_path / "rgba.JPEG") as im:
        assert im.mode == "RGBA" and np.all(np.asarray(im)[..., 3] == 255)
    sixteen = cv2.imread(str(tmp_path / "png16.JPEG"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert np.array_equal(sixteen >> 8, rgb) and sixteen.max() > 255
    write_truncated_jpeg(tmp_path / "t.JPEG", rgb, fraction=0.6)
    full = (tmp_path / "a.JPEG").read_bytes()
    cut = (tmp_path / "t.JPEG").read_bytes()
    assert cut == full[:len(cut)] and abs(len(cut) - 0.6 * len(full)) < 3


def test_valid_pathological_files_decode_to_the_drawn_picture(default_tree):
    s, root = default_tree, default_tree.root
    for rel, kind in s.pathological.items():
        if rel in s.expected_rejects:
            continue
        path = root / rel
        rgb = _rgb(path) if kind != "png16" else cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1] >> 8
        expected = source_image(SampleSettings(), rel)
        if kind == "gray":
            expected = np.repeat(cv2.cvtColor(expected, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        if kind in ("png", "rgba", "png16"):
            assert np.array_equal(rgb, expected), rel
        else:
            assert _close(rgb, expected), rel
    regular = next(rel for rel in s.labels if rel not in s.pathological)
    assert _close(_rgb(root / regular), source_image(SampleSettings(), regular))


# ---------------------------------------------------------------------------------------------- classes

def test_class_names_and_wnids_scale_to_many_classes():
    names = [class_name(k) for k in range(200)]
    assert len(set(names)) == 200 and names[0] == "red discs"
    wnids = make_wnids(1000)
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000 and all(len(w) == 9 for w in wnids)
    img = draw_image(130, np.random.default_rng(0), 128, 160)    # a multi-object variant class
    assert img.shape == (128, 160, 3) and img.dtype == np.uint8


def _hue_and_orientation(img: np.ndarray) -> np.ndarray:
    """Saturation-weighted hue histogram + sorted (rotation-invariant) gradient orientation histogram."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    weight = (hsv[:, 1] / 255) ** 2 * (hsv[:, 2] / 255)
    hue = np.bincount((hsv[:, 0] // 15).astype(int), weights=weight, minlength=12) / len(weight)
    gray = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), (5, 5), 1.5)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0).ravel(), cv2.Sobel(gray, cv2.CV_32F, 0, 1).ravel()
    magnitude = np.hypot(gx, gy)
    bins = (np.arctan2(gy, gx) % np.pi / np.pi * 8).astype(int) % 8
    orient = np.sort(np.bincount(bins, weights=magnitude, minlength=8)) / (magnitude.sum() + 1e-6)
    return np.concatenate([hue, orient, [magnitude.mean()]])


def _nearest_class_mean_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    mu, sd = features[train].mean(0), features[train].std(0) + 1e-6
    z = (features - mu) / sd
    means = np.stack([z[train & (labels == k)].mean(0) for k in range(labels.max() + 1)])
    pred = np.argmin(((z[~train][:, None] - means[None]) ** 2).sum(-1), axis=1)
    return float(np.mean(pred == labels[~train]))


def test_classes_are_distinguishable_but_not_by_mean_colour():
    classes, per_class = 10, 30
    images = np.stack([draw_image(k, np.random.default_rng([123, k, i]), 96, 96)
                       for k in range(classes) for i in range(per_class)])
    labels = np.repeat(np.arange(classes), per_class)
    train = np.tile(np.arange(per_class) < per_class // 2, classes)
    mean_colour = _nearest_class_mean_accuracy(images.reshape(len(images), -1, 3).mean(1), labels, train)
    simple = _nearest_class_mean_accuracy(np.stack([_hue_and_orientation(x) for x in images]), labels, train)
    assert simple > 0.45                                # chance is 0.1
    assert mean_colour < 0.6 and simple > mean_colour + 0.2


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_help():
    result = CliRunner().invoke(cli, ["sample-data", "--help"])
    assert result.exit_code == 0
    assert "SYNTHETIC" in result.output and "alexnet-pipe sample-data ./sample" in result.output


def test_cli_writes_tree_and_names_the_broken_files(tmp_path):
    root = tmp_path / "s"
    args = ["sample-data", str(root), "--classes", "3", "--train-per-class", "8", "--val-per-class", "2",
            "--seed", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "24 train + 6 val" in result.output and "SYNTHETIC" in result.output
    for rel in write_sample_tree(tmp_path / "again", SampleSettings(3, 8, 2, 1)).expected_rejects:
        assert rel in result.output and (root / rel).exists()
    assert _files(root) == _files(tmp_path / "again")
    plain = CliRunner().invoke(cli, ["sample-data", str(tmp_path / "p"), "--classes", "2",
                                     "--train-per-class", "2", "--val-per-class", "1", "--no-pathologies"])
    assert plain.exit_code == 0, plain.output
    assert "broken" not in plain.output and len(list((tmp_path / "p").rglob("*.JPEG"))) == 6


def test_cli_refuses_non_empty_dir(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["sample-data", str(tmp_path), "--classes", "2"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {tmp_path} is not empty; choose an empty directory or pass --overwrite."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_cli_rejects_bad_class_count(tmp_path):
    result = CliRunner().invoke(cli, ["sample-data", str(tmp_path / "y"), "--classes", "1"])
    assert result.exit_code == 2 and "--classes" in result.output


# ---------------------------------------------------------------------------------------------- one codec

def test_sample_colours_are_the_hsv_colours_they_name():
    """HSV -> RGB without 8-bit rounding of hue, saturation or value on the way (OpenCV's 8-bit HSV moved hues
    by up to 1 degree, 4 grey levels): colorsys is the reference."""
    import colorsys

    from alexnet_pipe.core.colour import hsv_to_rgb
    from alexnet_pipe.ingest.sample_drawing import _hsv_colour
    rng = np.random.default_rng(0)
    hsv = rng.uniform([-20, 0, 0], [380, 1, 1], (500, 3))
    want = np.array([colorsys.hsv_to_rgb(h / 360 % 1, s, v) for h, s, v in hsv])
    assert np.abs(hsv_to_rgb(np.column_stack([hsv[:, 0] / 360 % 1, hsv[:, 1:]])) - want).max() < 1e-12
    assert [_hsv_colour(*c) for c in hsv] == [tuple(int(x) for x in np.round(w * 255)) for w in want]


def test_a_failed_encode_is_an_error_whatever_python_runs_with(tmp_path, monkeypatch):
    """The image codec's encoder raises; an assert would vanish under `python -O` and write garbage."""
    monkeypatch.setattr(cv2, "imencode", lambda *a, **k: (False, None))
    with pytest.raises(RuntimeError, match="failed to encode a JPEG"):
        write_jpeg(tmp_path / "a.JPEG", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(RuntimeError, match="failed to encode a PNG"):
        write_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))

