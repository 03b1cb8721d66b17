"""`alexnet-pipe stats`: every output against a numpy brute force over the decoded records."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe.shards.decode import iter_decoded
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.shards import Datum, ShardStats, iter_records, record_key, shard_dirs
from alexnet_pipe.stats.compute import StatsSettings, run_stats
from alexnet_pipe.stats.moments import compute, exact_moments, principal_axes
from alexnet_pipe.stats.readers import load_stats
from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images

SIZE = 20
N_IMAGES = 29  # not a multiple of the shard count or of any batch size used here
FB_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
FB_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def make_images(n: int = N_IMAGES, seed: int = 3) -> np.ndarray:
    """Random colour images with a wide bright bar near the top: a transposed H/W shows."""
    images = random_images(n, SIZE, seed).copy()
    images[:, 2:6, 1:SIZE - 1] = np.clip(images[:, 2:6, 1:SIZE - 1].astype(int) + [90, 40, 0], 0, 255)
    return images


def build(root: Path, encoding: str, shards: int = 3, images: np.ndarray | None = None) -> Path:
    images = make_images() if images is None else images
    labels = np.arange(len(images)) % 4
    return make_data_dir(root, {"train": (images, labels), "val": (images[:5], labels[:5])}, 4,
                         shards=shards, encoding=encoding)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("stats")
    return {enc: build(base / enc, enc) for enc in ("raw", "jpeg")}


@pytest.fixture
def jpeg_copy(dirs, tmp_path) -> Path:
    return Path(shutil.copytree(dirs["jpeg"], tmp_path / "data"))


def settings(data: Path, **kw) -> StatsSettings:
    return StatsSettings(**{"data": data, "pca": True, "recompute": False, "sample": None, "plot": False, **kw})


def decoded_records(data: Path) -> np.ndarray:
    """Reference decode: OpenCV over every train record, in manifest shard order and key order."""
    images = []
    for shard in shard_dirs(data, "train"):
        for _key, value in iter_records(shard):
            datum = Datum.from_bytes(value)
            buf = np.frombuffer(datum.data, np.uint8)
            if datum.encoded:
                images.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
            else:
                images.append(buf.reshape(datum.height, datum.width, 3))
    return np.stack(images)


def brute_force(images: np.ndarray) -> dict:
    """Two-pass float64 statistics over every pixel of every image."""
    x = images.reshape(-1, 3).astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / len(x)
    values, vectors = np.linalg.eigh(cov)
    return {"mean_image": images.astype(np.float64).mean(axis=0), "mean_rgb": mean,
            "std_rgb": np.sqrt(np.diag(cov)), "cov": cov, "eigval": values[::-1], "eigvec": vectors[:, ::-1]}


def read_outputs(data: Path) -> tuple[np.ndarray, dict]:
    return np.load(data / "stats" / "mean.npy"), json.loads((data / "stats" / "pca.json").read_text())


def assert_matches_reference(mean: np.ndarray, doc: dict, ref: dict, rtol: float) -> None:
    assert mean.dtype == np.float32 and mean.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(mean, ref["mean_image"], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(doc["mean_rgb"], ref["mean_rgb"], rtol=rtol)
    np.testing.assert_allclose(doc["std_rgb"], ref["std_rgb"], rtol=rtol)
    np.testing.assert_allclose(doc["covariance"], ref["cov"], rtol=rtol, atol=rtol * ref["cov"].max())
    np.testing.assert_allclose(doc["eigval"], ref["eigval"], rtol=rtol)
    eigvec = np.array(doc["eigvec"])
    for j in range(3):  # same directions up to sign
        assert abs(eigvec[:, j] @ ref["eigvec"][:, j]) == pytest.approx(1.0, abs=1e-6)


def assert_sign_convention(eigvec: np.ndarray) -> None:
    for j in range(3):
        assert eigvec[np.argmax(np.abs(eigvec[:, j])), j] > 0


# --- the merged statistics against the brute force -----------------------------------

@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_merged_stats_match_brute_force(dirs, tmp_path, encoding):
    data = Path(shutil.copytree(dirs[encoding], tmp_path / "data"))
    run = run_stats(settings(data))
    mean, doc = read_outputs(data)
    ref = brute_force(decoded_records(data))
    assert_matches_reference(mean, doc, ref, rtol=1e-9)
    eigvec = np.array(doc["eigvec"])
    assert_sign_convention(eigvec)
    np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.array(doc["covariance"]) @ eigvec, eigvec * doc["eigval"], atol=1e-8)
    np.testing.assert_allclose(doc["explained_variance"], ref["eigval"] / ref["eigval"].sum(), rtol=1e-9)
    np.testing.assert_allclose(doc["fbresnet"]["eigval"], ref["eigval"] / 255 ** 2, rtol=1e-9)
    assert doc["fbresnet"]["eigvec"] == doc["eigvec"]
    assert (doc["source"], doc["images"], doc["pixels"]) == ("shard-stats", N_IMAGES, N_IMAGES * SIZE * SIZE)
    assert doc["size"] == [SIZE, SIZE] and doc["pca"] is True
    assert [s["name"] for s in doc["shards"]] == ["shard-00000", "shard-00001", "shard-00002"]
    assert run.result.images == N_IMAGES
    saved = json.loads((data / "stats" / "stats_settings.json").read_text())
    assert saved["pca"] is True and saved["data"] == str(data)


def test_exact_covariance_survives_cancellation():
    """Nearly constant pixels over ImageNet's pixel count: E[x^2] - m^2 in float64 would keep ~3 digits."""
    count, size, k = 1_281_167, 256, 1000  # k pixels of value 251, every other one 250
    n = count * size * size
    pixel_sum = np.full((size, size, 3), 250 * count, np.int64)
    pixel_sum[0, 0, :] += k
    outer = np.full((3, 3), 250 * 250 * n, np.int64) + 2 * 250 * k + k  # the k pixels are (251, 251, 251)
    _mean, cov, pixels = exact_moments(ShardStats(pixel_sum, outer, count))
    p = k / n
    assert pixels == n
    assert float(cov[0][0]) == pytest.approx(p * (1 - p), rel=1e-12)
    naive = outer[0, 0] / n - (pixel_sum[..., 0].sum() / n) ** 2
    assert abs(naive - p * (1 - p)) / (p * (1 - p)) > 1e-6  # what the exact path avoids


def test_sign_convention_on_fbresnet_constants():
    cov = FB_EIGVEC @ np.diag(FB_EIGVAL) @ FB_EIGVEC.T
    eigval, eigvec = principal_axes(cov)
    np.testing.assert_allclose(eigval, FB_EIGVAL, atol=1e-4)
    assert_sign_convention(eigvec)
    assert (eigvec[:, 0] > 0).all()  # p1, the brightness axis, points towards lighter
    # published columns 1 and 3 have the opposite sign, column 2 the same
    np.testing.assert_allclose(eigvec * [-1, 1, -1], FB_EIGVEC, atol=2e-3)


def test_merge_is_independent_of_shard_count_and_order(dirs, tmp_path):
    reference_mean, reference = None, None
    for name, shards, reverse in [("one", 1, False), ("four", 4, False), ("four-reversed", 4, True)]:
        data = build(tmp_path / name, "raw", shards=shards)
        if reverse:  # list the shards in the manifest in the opposite order
            manifest = json.loads((data / "manifest.json").read_text())
            manifest["splits"]["train"]["shards"].reverse()
            (data / "manifest.json").write_text(json.dumps(manifest))
        run_stats(settings(data))
        mean, doc = read_outputs(data)
        numbers = {k: doc[k] for k in ("mean_rgb", "std_rgb", "covariance", "eigval", "eigvec", "images")}
        if reference is None:
            reference_mean, reference = mean, numbers
        assert np.array_equal(mean, reference_mean) and numbers == reference


def test_without_pca_writes_mean_and_channel_stats_only(dirs, tmp_path):
    data = Path(shutil.copytree(dirs["raw"], tmp_path / "data"))
    run_stats(settings(data, pca=False))
    mean, doc = read_outputs(data)
    ref = brute_force(decoded_records(data))
    np.testing.assert_allclose(mean, ref["mean_image"], rtol=1e-6)
    np.testing.assert_allclose(doc["std_rgb"], ref["std_rgb"], rtol=1e-9)
    assert doc["pca"] is False
    assert not {"eigval", "eigvec", "explained_variance", "fbresnet"} & set(doc)
    assert (data / "stats" / "mean.binaryproto").is_file()
    assert load_stats(data, need_pca=False)["images"] == N_IMAGES
    with pytest.raises(UserError, match="stats --pca"):
        load_stats(data, need_pca=True)


def test_stats_without_pca_keeps_current_eigenpairs_and_drops_stale_ones(dirs, tmp_path):
    data = Path(shutil.copytree(dirs["raw"], tmp_path / "data"))
    run_stats(settings(data))
    _, with_pca = read_outputs(data)
    run_stats(settings(data, pca=False))  # e.g. re-run for the plots: the PCA must not be lost
    _, after = read_outputs(data)
    assert after["pca"] is True and after["eigvec"] == with_pca["eigvec"]
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][1]["checksum"] = "0" * 64  # other shards now
    (data / "manifest.json").write_text(json.dumps(manifest))
    meta_path = data / "train" / manifest["splits"]["train"]["shards"][1]["name"] / "meta.json"
    meta = json.loads(meta_path.read_text())  # the shard agrees: re-prepared, not swapped (that is refused)
    meta_path.write_text(json.dumps({**meta, "checksum": "0" * 64}))
    run_stats(settings(data, pca=False))
    assert read_outputs(data)[1]["pca"] is False


def test_load_stats_notices_stale_statistics(dirs, tmp_path):
    data = Path(shutil.copytree(dirs["raw"], tmp_path / "data"))
    run_stats(settings(data))
    assert load_stats(data, need_pca=True)["pca"] is True
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][1]["checksum"] = "0" * 64
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="other train shards"):
        load_stats(data, need_pca=True)


# --- the Caffe mean file --------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def parse_message(buf: bytes) -> dict[int, list]:
    """A minimal protobuf reader: field number -> values (varints as ints, the rest as bytes)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.setdefault(key >> 3, []).append(value)
    return fields


def test_binaryproto_is_the_mean_in_bgr_chw(dirs, tmp_path):
    data = Path(shutil.copytree(dirs["jpeg"], tmp_path / "data"))
    run_stats(settings(data, pca=False))
    blob = parse_message((data / "stats" / "mean.binaryproto").read_bytes())
    assert (blob[1], blob[2], blob[3], blob[4]) == ([1], [3], [SIZE], [SIZE])
    dims, pos, packed = [], 0, parse_message(blob[7][0])[1][0]
    while pos < len(packed):
        dim, pos = _varint(packed, pos)
        dims.append(dim)
    assert dims == [1, 3, SIZE, SIZE]
    values = np.frombuffer(b"".join(blob[5]), "<f4").reshape(3, SIZE, SIZE)
    ref = brute_force(decoded_records(data))["mean_image"]
    for c, rgb_channel in enumerate((2, 1, 0)):  # B, G, R planes
        np.testing.assert_allclose(values[c], ref[..., rgb_channel], rtol=1e-6)


# --- the decoding pass ----------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
@pytest.mark.dali
def test_iter_decoded_reads_every_record_once_in_key_order(dirs, encoding):
    data = dirs[encoding]
    ref = decoded_records(data)
    labels = np.arange(N_IMAGES) % 4
    for backend in ("dali", "opencv"):
        for batch_size, limit in [(8, None), (5, 13), (64, None)]:
            batches = list(iter_decoded(shard_dirs(data, "train"), batch_size=batch_size, limit=limit,
                                        backend=backend))
            images = np.concatenate([b[0] for b in batches])
            got_labels = np.concatenate([b[1] for b in batches])
            n = limit or N_IMAGES
            assert images.dtype == np.uint8 and images.shape == (n, SIZE, SIZE, 3)
            assert all(len(b[0]) <= batch_size for b in batches)
            assert np.array_equal(got_labels, labels[:n])
            # the contract: within half a grey level of the reference decode (identical here)
            assert np.abs(images.astype(np.int16) - ref[:n]).mean() <= 0.5


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_recompute_equals_merged(dirs, tmp_path, encoding):
    data = Path(shutil.copytree(dirs[encoding], tmp_path / "data"))
    run_stats(settings(data))
    merged_mean, merged = read_outputs(data)
    run_stats(settings(data, recompute=True))
    mean, doc = read_outputs(data)
    assert doc["source"] == "recompute" and doc["images"] == N_IMAGES
    assert np.abs(mean - merged_mean).max() <= (0 if encoding == "raw" else 0.5)
    for key in ("mean_rgb", "std_rgb", "eigval"):
        np.testing.assert_allclose(doc[key], merged[key], rtol=0 if encoding == "raw" else 1e-3)


def test_sample_uses_exactly_the_first_n_records(dirs, tmp_path):
    data = Path(shutil.copytree(dirs["raw"], tmp_path / "data"))
    n = 12  # more than the first shard holds
    run = run_stats(settings(data, recompute=True, sample=n))
    mean, doc = read_outputs(data)
    assert (doc["source"], doc["sample"], doc["images"], run.result.images) == ("sample", n, n, n)
    ref = brute_force(decoded_records(data)[:n])
    assert_matches_reference(mean, doc, ref, rtol=1e-9)


def test_recompute_reads_caffe_lmdbs_without_a_manifest(tmp_path):
    """convert_imageset's raw Datums: planar BGR, one LMDB, no manifest."""
    import lmdb
    images = make_images(7)
    root = tmp_path / "ilsvrc12_train_lmdb"
    env = lmdb.open(str(root), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, rgb in enumerate(images):
            chw_bgr = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1))
            txn.put(record_key(i, f"img_{i}.JPEG"), Datum(chw_bgr.tobytes(), i % 2, False, 3, SIZE, SIZE).to_bytes())
    env.close()
    with pytest.raises(UserError, match="--recompute"):
        run_stats(settings(root))
    run_stats(settings(root, recompute=True))
    mean, doc = read_outputs(root)
    assert_matches_reference(mean, doc, brute_force(images), rtol=1e-9)
    assert doc["shards"] == []


@pytest.mark.gpu
def test_gpu_decoding_pass_matches_cpu(dirs):
    shards = shard_dirs(dirs["jpeg"], "train")
    cpu = np.concatenate([b[0] for b in iter_decoded(shards, device="cpu")])
    gpu = np.concatenate([b[0] for b in iter_decoded(shards, device="cuda")])
    assert gpu.shape == cpu.shape and np.abs(gpu.astype(np.int16) - cpu).mean() <= 0.5


# --- missing or damaged shard statistics ----------------------------------------------

def _drop(shard: Path) -> None:
    (shard / "stats.npz").unlink()


def _garbage(shard: Path) -> None:
    (shard / "stats.npz").write_bytes(b"not a zip file")


def _wrong_shape(shard: Path) -> None:
    ShardStats.zeros(SIZE // 2).save(shard / "stats.npz")


def _wrong_count(shard: Path) -> None:
    stats = ShardStats.load(shard / "stats.npz")
    stats.count += 1
    stats.save(shard / "stats.npz")


@pytest.mark.parametrize("damage", [_drop, _garbage, _wrong_shape, _wrong_count])
def test_damaged_shard_stats_say_recompute(jpeg_copy, damage):
    shard = shard_dirs(jpeg_copy, "train")[1]
    damage(shard)
    with pytest.raises(UserError, match=r"shard-00001.*alexnet-pipe stats --recompute"):
        run_stats(settings(jpeg_copy))


def test_recompute_repairs_missing_shard_stats(jpeg_copy):
    run_stats(settings(jpeg_copy))
    before_mean, before = read_outputs(jpeg_copy)
    _drop(shard_dirs(jpeg_copy, "train")[2])
    run = run_stats(settings(jpeg_copy, recompute=True))
    assert [p.name for p in run.repaired] == ["shard-00002"]
    run_stats(settings(jpeg_copy))  # the fast path works again
    mean, doc = read_outputs(jpeg_copy)
    assert np.abs(mean - before_mean).max() <= 0.5
    np.testing.assert_allclose(doc["eigval"], before["eigval"], rtol=1e-3)


def test_compute_needs_images():
    with pytest.raises(UserError, match="no images"):
        compute(ShardStats.zeros(4), pca=True)


# --- the command ----------------------------------------------------------------------

def test_cli_help():
    result = CliRunner().invoke(cli, ["stats", "--help"])
    assert result.exit_code == 0
    assert "--pca" in result.output and "--recompute" in result.output and "alexnet-pipe stats" in result.output


def test_cli_success_with_plots(jpeg_copy):
    result = CliRunner().invoke(cli, ["stats", "--data", str(jpeg_copy), "--pca", "--plot"])
    assert result.exit_code == 0, result.output
    for word in ("mean RGB", "std RGB", "eigenvalues", "explained variance", "pca.json"):
        assert word in result.output
    for name in ("mean.npy", "mean.binaryproto", "pca.json", "stats_settings.json", "mean.png", "pca_axes.png"):
        assert (jpeg_copy / "stats" / name).stat().st_size > 0
    assert cv2.imread(str(jpeg_copy / "stats" / "pca_axes.png")) is not None


def test_cli_bad_input(jpeg_copy, tmp_path):
    assert CliRunner().invoke(cli, ["stats", "--data", str(jpeg_copy), "--sample", "0"]).exit_code == 2
    _drop(shard_dirs(jpeg_copy, "train")[0])
    result = CliRunner().invoke(cli, ["stats", "--data", str(jpeg_copy)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "--recompute" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["stats", "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "prepare" in result.output


def test_device_auto_picks_the_cpu_without_a_gpu(dirs, tmp_path):
    from alexnet_pipe.shards.decode import cuda_devices
    data = Path(shutil.copytree(dirs["raw"], tmp_path / "data"))
    result = CliRunner().invoke(cli, ["stats", "--data", str(data), "--sample", "4"])
    assert result.exit_code == 0, result.output
    expected = "cuda" if cuda_devices() else "cpu"
    assert f'device           "{expected}"' in result.output


@pytest.mark.parametrize("when", ["decoding", "writing"])
def test_ctrl_c_in_recompute_says_what_is_intact(jpeg_copy, monkeypatch, when):
    import alexnet_pipe.shards.decode
    import alexnet_pipe.stats.compute
    before = {p.name: p.read_bytes() for p in (jpeg_copy / "stats").glob("*")} if (jpeg_copy / "stats").is_dir() else {}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    if when == "decoding":
        real = alexnet_pipe.shards.decode.iter_decoded

        def one_batch_then_ctrl_c(*args, **kwargs):
            yield next(iter(real(*args, **kwargs)))
            raise KeyboardInterrupt
        monkeypatch.setattr(alexnet_pipe.shards.decode, "iter_decoded", one_batch_then_ctrl_c)
    else:
        monkeypatch.setattr(alexnet_pipe.stats.compute, "write_outputs", interrupted)
    result = CliRunner().invoke(cli, ["stats", "--data", str(jpeg_copy), "--recompute", "--device", "cpu"])
    assert result.exit_code == 130, result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert "interrupted" in result.output and "run the same command again" in result.output
    if when == "decoding":
        assert "nothing was written" in result.output
        after = {p.name: p.read_bytes() for p in (jpeg_copy / "stats").glob("*")} if (jpeg_copy / "stats").is_dir() else {}
        assert after == before
    else:
        assert "each file there is whole" in result.output
