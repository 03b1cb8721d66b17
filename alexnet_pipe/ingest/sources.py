"""Finding the inputs: every ImageNet layout users have, turned into one list of items per split.

Each layout family has its module (folders.py: the folder layouts, archives.py: the official tars); this one
tells which one a source is. What they find is items.py's, their label files labels.py's.
"""
from __future__ import annotations

from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.remote import is_url
from alexnet_pipe.ingest.archives import TRAIN_TAR, VAL_TAR, discover_archives
from alexnet_pipe.ingest.folders import discover_folders, find_root
from alexnet_pipe.ingest.items import Inventory, no_tick
from alexnet_pipe.ingest.remote_tree import open_tree


def discover(src: Path, val_labels: Path | None = None, tick=no_tick) -> Inventory:
    """Auto-detect the layout under src and list every input, each either an item or a reject;
    tick(n) is told of every n entries found (a progress display's update)."""
    if is_url(src):  # the store's listing is the slow part: it ticks; walking its snapshot is not counted again
        src, walk_tick = open_tree(str(src), tick), no_tick
    else:
        src, walk_tick = Path(src), tick
    if not src.is_dir():
        raise UserError(f"{src} is not a directory")
    root = find_root(src)
    if root is not None:
        inv = discover_folders(src, root, val_labels, walk_tick)
    elif (src / TRAIN_TAR).is_file() or (src / VAL_TAR).is_file():
        inv = discover_archives(src, val_labels, tick)
    else:
        raise UserError(f"found no ImageNet layout under {src}: expected train/ and val/ folders, "
                        f"ILSVRC/Data/CLS-LOC/, or {TRAIN_TAR} / {VAL_TAR}")
    if not any(inv.splits.values()):
        raise UserError(f"found no images under {src} ({len(inv.rejects)} files refused)")
    return inv
