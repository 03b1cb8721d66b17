"""Issue 19, mechanism 5: the input tree's one rule (docs/format.md). Hidden names are never a class nor an
image (each file noted in rejects.jsonl), an empty class folder is refused, a stray folder never drops a split;
truncated JPEGs are rejected with the reason and decompression bombs refused from the header."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe.ingest.sample_data import SampleSettings, write_jpeg, write_sample_tree
from alexnet_pipe_cli.main import cli

TINY = SampleSettings(classes=2, train_per_class=3, val_per_class=1, seed=3, pathologies=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree") / "src"
    write_sample_tree(root, TINY)
    return root


@pytest.fixture()
def src(tree, tmp_path):
    return Path(shutil.copytree(tree, tmp_path / "src"))


def prepare(src, data, *extra):
    result = CliRunner().invoke(cli, ["prepare", str(src), "--data", str(data), "--size", "16", "--workers", "1",
                                      *map(str, extra)])
    assert "Traceback" not in result.output, result.output
    return result


def manifest_and_rejects(data):
    rejects = [json.loads(line) for line in (data / "rejects.jsonl").read_text().splitlines() if line.strip()]
    return json.loads((data / "manifest.json").read_text()), rejects


def a_jpeg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(path, np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_a_notebook_checkpoint_folder_is_no_class_and_shifts_no_label(src, tmp_path):
    real = sorted(p.name for p in (src / "train").iterdir())
    a_jpeg(src / "train" / ".ipynb_checkpoints" / "x-checkpoint.JPEG")
    a_jpeg(src / "train" / real[0] / ".hidden.JPEG")
    result = prepare(src, tmp_path / "d")
    assert result.exit_code == 0, result.output
    manifest, rejects = manifest_and_rejects(tmp_path / "d")
    assert [c["wnid"] for c in manifest["classes"]] == real
    assert manifest["splits"]["train"]["count"] == 6
    hidden = sorted(Path(r["path"]).name for r in rejects if "hidden" in r["reason"])
    assert hidden == [".hidden.JPEG", "x-checkpoint.JPEG"]


@pytest.mark.parametrize("stray", [".ipynb_checkpoints", "extra"])
def test_a_stray_folder_in_a_flat_val_drops_no_image(src, tmp_path, stray):
    a_jpeg(src / "val" / stray / "ILSVRC2012_val_00000001.JPEG")
    result = prepare(src, tmp_path / "d")
    assert result.exit_code == 0, result.output
    manifest, rejects = manifest_and_rejects(tmp_path / "d")
    assert manifest["splits"]["val"]["count"] == 2
    assert [r["split"] for r in rejects if stray in r["path"]] == ["val"]


def test_an_empty_class_folder_is_refused(src, tmp_path):
    (src / "train" / "n09999999").mkdir()
    (src / "train" / "n09999999" / ".DS_Store").write_bytes(b"\0")
    result = prepare(src, tmp_path / "d")
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: the class folder") and "n09999999 holds no files" in last


# --- damaged JPEGs and decompression bombs -------------------------------------------------------

def _jpeg_bytes(seed=0, side=64):
    import io
    from PIL import Image
    rgb = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_a_jpeg_whose_data_ends_early_is_rejected_with_the_reason():
    from alexnet_pipe.shards.pixels import Reject, decode_bgr
    data = _jpeg_bytes()
    cut = data[:len(data) // 2] + b"\xff\xd9"  # an end marker after half the data: OpenCV fills grey
    with pytest.raises(Reject, match="damaged JPEG.*premature end"):
        decode_bgr(cut)


def test_harmless_extraneous_bytes_keep_the_image_and_its_pixels():
    import cv2
    from alexnet_pipe.shards.pixels import decode_bgr
    data = _jpeg_bytes(1)
    padded = data[:-2] + b"\x00\x00\x00\xff\xd9"  # libjpeg: "3 extraneous bytes before marker 0xd9"
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decode_bgr(padded), reference)
    assert np.array_equal(decode_bgr(data, 16), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_4))


def _png_header_only(width, height):
    """A PNG whose IHDR claims width x height (its data is irrelevant: the header alone must refuse it)."""
    import struct
    import zlib
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_from_its_header(monkeypatch):
    import cv2
    from alexnet_pipe.shards import pixels
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    with pytest.raises(pixels.Reject, match="20000x20000 pixels, over the --max-pixels limit"):
        pixels.decode_bgr(_png_header_only(20000, 20000))
    with pytest.raises(pixels.Reject, match="--max-pixels"):
        pixels.decode_bgr(_jpeg_bytes(2), max_pixels=64 * 64 - 1)


def test_prepare_lists_damaged_and_oversized_inputs_in_the_rejects(src, tmp_path):
    cls = sorted(p.name for p in (src / "train").iterdir())[0]
    data = _jpeg_bytes(3)
    (src / "train" / cls / "cut.JPEG").write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    (src / "train" / cls / "big.JPEG").write_bytes(_jpeg_bytes(4, side=1024))
    result = prepare(src, tmp_path / "d", "--max-pixels", 1024 * 1024 - 1)
    assert result.exit_code == 0, result.output
    reasons = {Path(r["path"]).name: r["reason"] for r in manifest_and_rejects(tmp_path / "d")[1]}
    assert "premature end" in reasons["cut.JPEG"] and "--max-pixels" in reasons["big.JPEG"]


def test_the_cli_default_pixel_limit_is_the_codecs():
    from alexnet_pipe.shards.pixels import MAX_PIXELS
    from alexnet_pipe_cli.prepare import MAX_PIXELS as CLI_DEFAULT
    assert CLI_DEFAULT == MAX_PIXELS
