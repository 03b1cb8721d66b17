"""The paper's Figure 4: query images and the training images nearest to them in a trained network's fc7 space.

`find_neighbors` streams the eval pipeline's features through a running top-k; `neighbors_figure` draws one row
per query, NEIGHBOR_CELL_IN (1.5 x 1.6 in) per image at 100 dpi: (k + 1) * 150 x queries * 160 px.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from alexnet_pipe.report.pictures import figure, save_figure

NEIGHBOR_CELL_IN = (1.5, 1.6)


def fc7_batches(model, loader, device, limit: int = 0):
    """(float64 CPU features (B, D), record indices (B,)) per batch of an eval loader built with
    with_params=True; at most `limit` images when limit > 0."""
    import torch
    seen, epoch = 0, loader.epoch(0)
    try:
        with torch.no_grad():
            for images, _labels, params in epoch:
                take = len(params["index"]) if not limit else min(len(params["index"]), limit - seen)
                features = model.fc7(images[:take].to(device).float())
                yield features.double().cpu(), np.asarray(params["index"][:take], np.int64)
                seen += take
                if limit and seen >= limit:
                    return
    finally:
        epoch.close()  # stopping early: let the loader drop its pipeline now, not at garbage collection


def nearest(queries, batches, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Running top-k (smallest Euclidean distance) of every query over streamed (features, index)
    batches; memory O(queries * k), not O(dataset). -> (distances (Q, k'), indices (Q, k'), searched),
    k' = min(k, searched), each row nearest first."""
    import torch
    queries = torch.as_tensor(queries, dtype=torch.float64)
    best_d = torch.empty(len(queries), 0, dtype=torch.float64)
    best_i = torch.empty(len(queries), 0, dtype=torch.int64)
    searched = 0
    for features, index in batches:
        # the difference form, not the |a|^2 + |b|^2 - 2ab expansion: exact 0 for an image against itself
        d = torch.cdist(queries, torch.as_tensor(features, dtype=torch.float64),
                        compute_mode="donot_use_mm_for_euclid_dist")
        best_d = torch.cat([best_d, d], dim=1)
        best_i = torch.cat([best_i, torch.as_tensor(index, dtype=torch.int64).expand(len(queries), -1)], dim=1)
        keep = torch.topk(best_d, min(k, best_d.shape[1]), dim=1, largest=False, sorted=True).indices
        best_d, best_i = best_d.gather(1, keep), best_i.gather(1, keep)
        searched += len(index)
    return best_d.numpy(), best_i.numpy(), searched


def centre_crops(index, records, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, crop, crop, 3) uint8 centre crops decoded from the stored records, and their labels."""
    from alexnet_pipe.loaders.augment import centre_offset
    from alexnet_pipe.loaders.records import decode_rgb, release_shards
    at = centre_offset(index.size, crop)
    images, labels = [], []
    for i in records:
        datum = index.read(int(i))
        images.append(decode_rgb(datum, index, int(i))[at:at + crop, at:at + crop])
        labels.append(datum.label)
    release_shards()
    return np.stack(images), np.asarray(labels, np.int64)


def neighbors_figure(queries: np.ndarray, neighbours: np.ndarray, distances: np.ndarray, path: Path,
                     query_titles=None, neighbour_titles=None) -> tuple[int, int]:
    """The paper's Figure 4: one row per query, the query first, then its neighbours nearest first.

    queries (Q, h, w, 3) uint8, neighbours (Q, k, h, w, 3) uint8, distances (Q, k). The figure is
    (k + 1) * 1.5 x Q * 1.6 in at 100 dpi; each neighbour's title is its distance (plus a title line
    given in neighbour_titles[q][j]).
    """
    count, k = distances.shape
    fig = figure(((k + 1) * NEIGHBOR_CELL_IN[0], count * NEIGHBOR_CELL_IN[1]))
    axes = fig.subplots(count, k + 1, squeeze=False)
    for q in range(count):
        cells = [(queries[q], "query" + (f"\n{query_titles[q]}" if query_titles else ""))]
        cells += [(neighbours[q, j], f"d {distances[q, j]:.4g}"
                   + (f"\n{neighbour_titles[q][j]}" if neighbour_titles else "")) for j in range(k)]
        for ax, (image, title) in zip(axes[q], cells):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / (count * NEIGHBOR_CELL_IN[1]),
                        wspace=0.08, hspace=0.45)
    return save_figure(fig, path)


@dataclasses.dataclass(frozen=True)
class NeighborsSettings:
    checkpoint: Path
    data: Path
    output: Path
    split: str = "val"        # where the queries come from
    query: int = 6
    k: int = 5
    limit: int = 0            # training images searched; 0: all
    batch_size: int = 64
    loader: str = "auto"
    device: str = "cpu"
    num_threads: int = 2


def _eval_loader(s: NeighborsSettings, ts, split: str, device):
    from alexnet_pipe.train.evaluation import eval_loader
    return eval_loader(s.data, split, ts, device, batch_size=s.batch_size, loader=s.loader,
                       num_threads=s.num_threads, with_params=True)


def _check_data(s: NeighborsSettings, model, ts) -> list[str]:
    from alexnet_pipe.train.evaluation import check_eval_data
    manifest = check_eval_data(s.data, s.split, " to take queries from", checkpoint=s.checkpoint, model=model, ts=ts)
    return [c.get("name", c.get("wnid", "?")) for c in manifest.get("classes", [])]


def find_neighbors(s: NeighborsSettings):
    """-> dict with the query records, neighbour records (Q, k), distances (Q, k), searched count,
    the two loaders' record indices (for the pixels) and the class names."""
    import torch
    device = torch.device(s.device)
    from alexnet_pipe.train.checkpoint import load_model
    model, ts = load_model(s.checkpoint, device)
    names = _check_data(s, model, ts)
    query_loader = _eval_loader(s, ts, s.split, device)
    feats = list(fc7_batches(model, query_loader, device, s.query))
    query_loader.close()
    queries = torch.cat([f for f, _ in feats])
    train_loader = _eval_loader(s, ts, "train", device)
    distances, records, searched = nearest(queries, fc7_batches(model, train_loader, device, s.limit), s.k)
    train_loader.close()
    return {"query_records": np.concatenate([i for _, i in feats]), "records": records, "distances": distances,
            "searched": searched, "train_total": len(train_loader.index), "query_index": query_loader.index,
            "train_index": train_loader.index, "crop": ts.crop, "names": names}


def render_neighbors(s: NeighborsSettings) -> dict:
    """-> {"output", "width", "height", "queries", "k", "searched", "train_total"}."""
    found = find_neighbors(s)
    crop, names = found["crop"], found["names"]
    queries, query_labels = centre_crops(found["query_index"], found["query_records"], crop)
    records = found["records"]
    flat, flat_labels = centre_crops(found["train_index"], records.reshape(-1), crop)
    neighbours = flat.reshape(*records.shape, crop, crop, 3)

    def name(label):
        from alexnet_pipe.report.titles import short_title
        return short_title(names[label]) if 0 <= label < len(names) else str(label)
    titles = [[name(int(v)) for v in row] for row in flat_labels.reshape(records.shape)]
    width, height = neighbors_figure(queries, neighbours, found["distances"], s.output,
                                     [name(int(v)) for v in query_labels], titles)
    return {"output": str(s.output), "width": width, "height": height, "queries": len(queries),
            "k": records.shape[1], "searched": found["searched"], "train_total": found["train_total"],
            "distances": found["distances"].tolist()}
