"""prepare at ImageNet scale: the parent's memory per input, progress while listing and verifying, the rate."""
from __future__ import annotations

import io
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np

from alexnet_pipe import prepare, sources
from alexnet_pipe.prepare import PrepareSettings, make_plan
from alexnet_pipe.sources import ItemList, discover


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
    assert picked[1:] == [sources.Item("val/v.JPEG", 0, "/t.tar", 512, 9)] and len(picked) == 2
