"""Every metadata file a stage reads, damaged in shape, type, encoding or kind of file: one UserError
sentence naming the file, never TypeError/KeyError/AttributeError/JSONDecodeError/UnicodeDecodeError,
and never a hang (a FIFO in a file's place)."""
from __future__ import annotations

import copy
import json
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from alexnet_pipe import shards
from alexnet_pipe.stats import readers as statfiles
from alexnet_pipe.stats import compute as stats
from alexnet_pipe.shards import verify
from alexnet_pipe.core.errors import UserError
from helpers.shardgen import make_data_dir, random_images

JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 1 << 70) | st.floats(allow_nan=False)
                    | st.text(max_size=8), lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
MUTATION = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta") / "d"
    images = random_images(8, 16, seed=1)
    make_data_dir(root, {"train": (images[:6], np.arange(6) % 2), "val": (images[6:], np.arange(2))}, 2, 2)
    stats.run_stats(stats.StatsSettings(root, pca=True, recompute=False, sample=None, plot=False))
    return root


def paths(doc, prefix=()):
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield from paths(v, (*prefix, k))


def mutate(doc, path, value, delete):
    if not path:
        return value
    doc = copy.deepcopy(doc)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def damaged(draw, doc):
    path = draw(st.sampled_from(list(paths(doc))))
    return mutate(doc, path, draw(JSON), draw(st.booleans()) and bool(path))


def restoring(path):
    """Run a test body with `path` rewritten, then put the original back (module-scoped data dir)."""
    original = path.read_bytes()

    class Ctx:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            path.write_bytes(original)
    return Ctx()


def _fails_as_one_sentence(read, path, body: bytes) -> None:
    with restoring(path):
        path.write_bytes(body)
        try:
            read()
        except UserError as exc:
            assert str(path.name) in str(exc) and "\n" not in str(exc), str(exc)


def test_manifest_mutations(data):
    doc = json.loads((data / "manifest.json").read_text())

    @MUTATION
    @given(damaged(doc))
    def check(bad):
        _fails_as_one_sentence(lambda: verify.info(data), data / "manifest.json", json.dumps(bad).encode())
    check()


def test_shard_meta_mutations(data):
    shard = data / "train" / "shard-00000"
    doc = json.loads((shard / "meta.json").read_text())

    @MUTATION
    @given(damaged(doc))
    def check(bad):
        def read():
            meta = shards.load_shard_meta(shard)
            assert shards.read_shard_meta(shard) == meta
            return meta["records"] + meta["bytes"], meta["name"].startswith("shard-")
        _fails_as_one_sentence(read, shard / "meta.json", json.dumps(bad).encode())
    check()


def test_pca_json_mutations(data):
    doc = json.loads((data / "stats" / "pca.json").read_text())

    @MUTATION
    @given(damaged(doc))
    def check(bad):
        def read():
            good = statfiles.load_stats(data, need_pca=True)
            np.asarray(good["eigvec"], np.float64).reshape(3, 3)
            assert np.isfinite(np.asarray(good["fbresnet"]["eigval"], np.float64)).all()
        _fails_as_one_sentence(read, data / "stats" / "pca.json", json.dumps(bad).encode())
    check()


def test_rejects_jsonl_mutations(tmp_path):
    good = {"path": "train/n1/a.JPEG", "split": "train", "reason": "empty file"}

    @MUTATION
    @given(st.lists(damaged(good), min_size=1, max_size=3))
    def check(rows):
        path = tmp_path / "rejects.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        try:
            back = shards.read_rejects(path)
        except UserError as exc:
            assert "rejects.jsonl line" in str(exc)
        else:
            assert all(r["reason"].split(" (")[0] is not None for r in back)
    check()
    (tmp_path / "rejects.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    assert shards.read_rejects(tmp_path / "rejects.jsonl") == [good, good]


BAD_BYTES = [b"\xff\xfe{}", b'{"a": NaN}', b"[1, 2]", b"", b"{", b'{"x": Infinity}', "{\"é\": 1}".encode("latin-1")]


@pytest.mark.parametrize("body", BAD_BYTES)
@pytest.mark.parametrize("name", ["manifest.json", "train/shard-00000/meta.json", "stats/pca.json", "rejects.jsonl"])
def test_bad_encoding_and_json(data, name, body):
    path = data / name
    if not path.exists():
        path.write_text("")
    readers = {"manifest.json": lambda: shards.read_manifest(data),
               "train/shard-00000/meta.json": lambda: shards.load_shard_meta(data / "train" / "shard-00000"),
               "stats/pca.json": lambda: statfiles.load_stats(data, need_pca=False),
               "rejects.jsonl": lambda: shards.read_rejects(path)}
    with restoring(path):
        path.write_bytes(body)
        if name == "rejects.jsonl" and body == b"":
            assert readers[name]() == []
            return
        with pytest.raises(UserError, match=path.name):
            readers[name]()


def _finishes(read, seconds=10):
    out = {}

    def run():
        try:
            read()
        except UserError as exc:
            out["error"] = str(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the reader blocked on a FIFO"
    return out.get("error", "")


@pytest.mark.parametrize("name", ["manifest.json", "stats/pca.json", "stats/mean.npy", "train/shard-00000/stats.npz"])
def test_a_fifo_in_place_of_a_metadata_file_is_refused_not_waited_on(data, tmp_path, name):
    import shutil
    copy_ = tmp_path / "d"
    shutil.copytree(data, copy_)
    (copy_ / name).unlink()
    os.mkfifo(copy_ / name)
    readers = {"manifest.json": lambda: shards.read_manifest(copy_),
               "stats/pca.json": lambda: statfiles.load_stats(copy_, need_pca=False),
               "stats/mean.npy": lambda: statfiles.read_mean(copy_ / name),
               "train/shard-00000/stats.npz": lambda: shards.ShardStats.load(copy_ / name)}
    assert "not a regular file" in _finishes(readers[name])


MEANS = {"nan": np.full((16, 16, 3), np.nan, np.float32), "inf": np.full((16, 16, 3), np.inf, np.float32),
         "negative": np.full((16, 16, 3), -1, np.float32), "2d": np.zeros((16, 16), np.float32),
         "wrong size": np.zeros((8, 8, 3), np.float32), "strings": np.array([["a"]]),
         "objects": np.array([{"a": 1}], dtype=object)}


@pytest.mark.parametrize("kind", MEANS)
def test_bad_mean_npy(data, kind):
    path = data / "stats" / "mean.npy"
    with restoring(path):
        with open(path, "wb") as f:
            np.save(f, MEANS[kind], allow_pickle=True)
        with pytest.raises(UserError, match="mean.npy"):
            statfiles.read_mean(path, 16)
    assert statfiles.read_mean(path, 16).shape == (16, 16, 3)


@pytest.mark.parametrize("arrays", [{"pixel_sum": np.zeros((4, 4, 3)), "rgb_outer": np.zeros((3, 3), int), "count": 1},
                                    {"pixel_sum": np.zeros((4, 4, 3), int), "rgb_outer": np.zeros((3, 3), int),
                                     "count": np.zeros(2, int)},
                                    {"pixel_sum": np.zeros((4, 4, 3), int), "rgb_outer": np.zeros((3, 3), int),
                                     "count": np.array(["x"])}])
def test_bad_shard_stats_npz(tmp_path, arrays):
    np.savez(tmp_path / "stats.npz", **arrays)
    with pytest.raises(shards.ShardFormatError, match="stats.npz"):
        shards.ShardStats.load(tmp_path / "stats.npz")
