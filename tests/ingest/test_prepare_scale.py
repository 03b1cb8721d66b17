"""prepare at ImageNet scale: the parent's memory per input, progress while listing and verifying, the rate."""
from __future__ import annotations

import io
import re
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np

from alexnet_pipe.ingest import prepare
from alexnet_pipe.ingest.prepare import PrepareSettings, make_plan
from alexnet_pipe.ingest.items import TICK, Item, ItemList
from alexnet_pipe.ingest.sources import discover


def _flat_tree(root: Path, n: int, classes: int = 10) -> Path:
    for i in range(n):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"n{i % classes:08d}_{i}.JPEG").touch()
    return root


def test_the_listing_and_plan_hold_under_150_bytes_per_input(tmp_path):
    src = _flat_tree(tmp_path / "src", 4000)
    settings = PrepareSettings(source=src, data=tmp_path / "d", shard_size=1000)
    make_plan(discover(_flat_tree(tmp_path / "warm", 20)), settings)  # the modules it imports are not the list
    tracemalloc.start()
    try:
        inv = discover(src)
        plan = make_plan(inv, settings)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(len(p.items) for p in plan["train"]) == 4000
    # an Item with two path strings per image, and the sorted and shuffled lists, took ~700 bytes
    assert held / 4000 < 150, f"{held / 4000:.0f} bytes per input"


def test_item_order_is_the_order_of_the_names_as_strings():
    # non-ASCII sorts by code point, an undecodable name (escaped bytes) as its str, duplicates stably
    names = ["val/b.JPEG", "val/\u00e9.JPEG", "val/a.JPEG", "val/z\u4e2d.JPEG", "val/a.JPEG", "val/ab.JPEG"]
    for extra in ([], [os.fsdecode(b"val/\xff.JPEG")]):
        items = ItemList("/base")
        for label, name in enumerate(names + extra):
            items.add(name, label)
        got = [(items[int(i)].relpath, items[int(i)].label) for i in items.sorted_order()]
        assert got == sorted(((n, k) for k, n in enumerate(names + extra)), key=lambda x: x[0])


def test_items_give_back_what_was_added():
    items = ItemList("/root")
    items.add("train/w/a.JPEG", 3)
    items.add("val/x.JPEG", 1, src="val/w/x.JPEG")
    items.add("val/y.JPEG", 2, src="val/y.JPEG")
    assert [(it.relpath, it.label, it.path) for it in items] == [
        ("train/w/a.JPEG", 3, "/root/train/w/a.JPEG"), ("val/x.JPEG", 1, "/root/val/w/x.JPEG"),
        ("val/y.JPEG", 2, "/root/val/y.JPEG")]
    tar = ItemList("/t.tar", archive=True)
    tar.add("val/v.JPEG", 0, offset=512, size=9)
    picked = tar.take(np.array([0, 0]))
    assert picked[1:] == [Item("val/v.JPEG", 0, "/t.tar", 512, 9)] and len(picked) == 2


class Log(io.StringIO):
    """A log file (not a terminal) that notes, with every line, whether the listing had ended by then."""

    def __init__(self):
        super().__init__()
        self.listed, self.lines = False, []

    def write(self, text):
        self.lines.append((self.listed, text))
        return super().write(text)


def _images(root: Path, n: int = 6) -> Path:
    from alexnet_pipe.ingest.sample_data import write_jpeg
    from alexnet_pipe.ingest.sample_drawing import draw_image
    for i in range(n):
        (root / "train" / f"n{i % 2:08d}").mkdir(parents=True, exist_ok=True)
        write_jpeg(root / "train" / f"n{i % 2:08d}" / f"{i}.JPEG", draw_image(i % 8, np.random.default_rng(i), 40, 48))
    return root


def test_listing_shows_the_files_found_while_it_lists(tmp_path, monkeypatch):
    src = _images(tmp_path / "src")
    _flat_tree(src, TICK * 3, classes=2)  # empty files: listed, then rejected
    log, make_plan_now = Log(), prepare.make_plan
    monkeypatch.setattr(prepare, "LISTING_EVERY", 0.0)
    monkeypatch.setattr(prepare, "make_plan", lambda *a: (setattr(log, "listed", True), make_plan_now(*a))[1])
    prepare.run(PrepareSettings(source=src, data=tmp_path / "d", size=32), echo=lambda *_: None, stream=log)
    during = [text for listed, text in log.lines if not listed and text.startswith("listing")]
    assert len(during) >= 3 and f"{TICK} files" in during[0]


def test_the_rate_is_over_the_whole_run_listing_included(tmp_path, monkeypatch):
    src, discover_now = _images(tmp_path / "src"), prepare.discover
    monkeypatch.setattr(prepare, "discover", lambda *a, **k: (time.sleep(1.0), discover_now(*a, **k))[1])
    summary = prepare.run(PrepareSettings(source=src, data=tmp_path / "d", size=32), echo=lambda *_: None,
                          stream=io.StringIO())
    assert summary["written_now"] == 6 and summary["listing_seconds"] >= 1.0
    assert summary["images_per_sec"] == summary["written_now"] / summary["seconds"]
    assert summary["writing_images_per_sec"] > summary["images_per_sec"]


def test_verify_shows_each_shard_verified(tmp_path, monkeypatch):
    from alexnet_pipe.shards import verify
    src = _images(tmp_path / "src")
    prepare.run(PrepareSettings(source=src, data=tmp_path / "d", size=32, shards=3), echo=lambda *_: None,
                stream=io.StringIO())
    monkeypatch.setattr(verify, "VERIFY_EVERY", 0.0)
    for workers in (1, 2):
        log = io.StringIO()
        assert not any(r.problems for r in verify.verify(tmp_path / "d", workers=workers, stream=log))
        counts = [re.search(r"\d+/\d+", line)[0] for line in log.getvalue().splitlines()]
        assert counts == ["1/3", "2/3", "3/3"], log.getvalue()
