"""Pictures of a trained network (the paper's qualitative results) and of a run's curves.

Pure functions take arrays and write PNGs at fixed, documented pixel sizes; the `render_*` functions
load a checkpoint / a run dir and call them. matplotlib (Agg) and torch are imported inside functions.

Sizes:
  * filters: the grid itself, no axes: `scale` px per kernel pixel, `pad` px between tiles, `gap` px
    between the row blocks of the two conceptual GPUs; `filter_grid_size` gives (width, height).
    The paper's 96 kernels of 11x11 at scale 4: 16 columns x 3 rows per block -> 738 x 286 px.
  * neighbors: NEIGHBOR_CELL_IN (1.5 x 1.6 in) per image at 100 dpi: (k + 1) * 150 x queries * 160 px.
  * curves: CURVES_FIGSIZE (12 x 4 in) at 100 dpi = 1200 x 400 px.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np

from alexnet_pipe.core.errors import UserError

DPI = 100
FILTER_COLS = 16  # the paper's Figure 3: 16 kernels a row, 3 rows per GPU
NEIGHBOR_CELL_IN = (1.5, 1.6)
CURVES_FIGSIZE = (12.0, 4.0)
# -o suffix -> the format both matplotlib writers (Figure.savefig, image.imsave) take; no suffix: PNG
IMAGE_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "tif": "tiff", "tiff": "tiff", "webp": "webp",
                 "gif": "gif", "pdf": "pdf", "svg": "svg", "eps": "eps", "ps": "ps"}


# ---------------------------------------------------------------- shared

def _figure(figsize):
    """A pyplot-free Agg figure: no global state, safe in tests and threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def image_format(path: Path | str) -> str:
    """The format a picture is written in, from its suffix (none: PNG, at exactly that path); a suffix no
    writer here knows is one sentence listing those it does."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in IMAGE_FORMATS:
        raise UserError(f"{path}: cannot write .{suffix} pictures; end the name in one of "
                        f"{', '.join('.' + s for s in IMAGE_FORMATS)} (no suffix: PNG)")
    return IMAGE_FORMATS[suffix]


@contextlib.contextmanager
def _writing(path: Path):
    """Create the PNG's folder; an unwritable place (read-only, full, not a folder) becomes one sentence."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): choose another -o/--output") from None


def _save(fig, path: Path) -> tuple[int, int]:
    with _writing(path):
        # no bbox_inches="tight": the size stays figsize * dpi
        fig.savefig(Path(path), dpi=DPI, format=image_format(path))
    width, height = fig.canvas.get_width_height()
    return width, height


def write_image(canvas: np.ndarray, path: Path) -> tuple[int, int]:
    """An (H, W, 3) uint8 array as a PNG of exactly W x H pixels."""
    from matplotlib import image as mpimg
    with _writing(path):
        mpimg.imsave(Path(path), canvas, format=image_format(path))
    return canvas.shape[1], canvas.shape[0]


# ---------------------------------------------------------------- conv1 filters

def normalize_kernels(weights: np.ndarray) -> np.ndarray:
    """(K, 3, h, w) float -> (K, h, w, 3) uint8, each kernel min-max scaled to 0..255 on its own
    (over all three channels together, so its colour is kept); a constant kernel becomes mid grey."""
    w = np.asarray(weights, np.float64)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    scaled = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1.0), 0.5)
    return np.round(scaled * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def filter_layout(count: int, groups: int) -> tuple[int, int, int]:
    """(kernels per group, columns, rows per group block)."""
    if groups < 1 or count % groups:
        raise ValueError(f"{count} kernels do not split into {groups} groups")
    per = count // groups
    cols = min(FILTER_COLS, per)
    return per, cols, math.ceil(per / cols)


def filter_grid_size(count: int, groups: int, kh: int, kw: int, scale: int = 4, pad: int = 2,
                     gap: int = 8) -> tuple[int, int]:
    """(width, height) in px of filter_grid's output."""
    _, cols, rows = filter_layout(count, groups)
    return (cols * (kw * scale + pad) + pad,
            groups * rows * (kh * scale + pad) + pad + (groups - 1) * gap)


def filter_origin(i: int, count: int, groups: int, kh: int, kw: int, scale: int = 4, pad: int = 2,
                  gap: int = 8) -> tuple[int, int]:
    """(x, y) of kernel i's top-left pixel: group block i // per, then row-major within the block."""
    per, cols, rows = filter_layout(count, groups)
    block, j = divmod(i, per)
    r, c = divmod(j, cols)
    return (pad + c * (kw * scale + pad),
            pad + block * (rows * (kh * scale + pad) + gap) + r * (kh * scale + pad))


def filter_grid(weights: np.ndarray, groups: int, scale: int = 4, pad: int = 2, gap: int = 8) -> np.ndarray:
    """The paper's Figure 3: conv1 kernels (K, 3, h, w) as an (H, W, 3) uint8 grid on white.

    Each kernel is min-max normalised on its own (normalize_kernels) and drawn `scale` px per
    weight. Kernels [0, K/groups) form the top block (the paper's GPU 1), the next K/groups the
    block below, `gap` px further down.
    """
    count, _, kh, kw = weights.shape
    tiles = normalize_kernels(weights).repeat(scale, axis=1).repeat(scale, axis=2)
    width, height = filter_grid_size(count, groups, kh, kw, scale, pad, gap)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        x, y = filter_origin(i, count, groups, kh, kw, scale, pad, gap)
        canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return canvas


def conv1_groups(arch: str) -> int:
    """The paper's net splits conv1 across two GPUs (48 + 48 kernels); alexnet-owt is one block."""
    return 2 if arch == "alexnet" else 1


@dataclasses.dataclass(frozen=True)
class FiltersSettings:
    checkpoint: Path
    output: Path
    scale: int = 4


def render_filters(s: FiltersSettings) -> dict:
    """-> {"output", "width", "height", "kernels", "groups"}."""
    from alexnet_pipe.train.checkpoint import load_model
    model, ts = load_model(s.checkpoint)
    weights = model.features.conv1.weight.detach().float().cpu().numpy()
    groups = conv1_groups(ts.arch)
    width, height = write_image(filter_grid(weights, groups, s.scale), s.output)
    return {"output": str(s.output), "width": width, "height": height, "kernels": len(weights),
            "groups": groups, "kernel_size": list(weights.shape[2:])}


# ---------------------------------------------------------------- nearest neighbours by fc7

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
    fig = _figure(((k + 1) * NEIGHBOR_CELL_IN[0], count * NEIGHBOR_CELL_IN[1]))
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
    return _save(fig, path)


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


# ---------------------------------------------------------------- training curves

def read_run_metrics(run: Path) -> list[dict]:
    """RUN/metrics.jsonl rows (train.read_metrics), or one sentence saying what is wrong."""
    from alexnet_pipe.train.runlog import read_metrics
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run} has no metrics.jsonl: pass the run dir that `alexnet-pipe train` wrote")
    rows = read_metrics(Path(run))
    if not rows:
        raise UserError(f"{path} holds no rows yet: train for at least one logged step")
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r["epoch"]), float(r[key])) for r in rows if key in r and "epoch" in r]
    return [e for e, _ in pairs], [v for _, v in pairs]


def curves_figure(rows: list[dict], path: Path, title: str = "") -> tuple[int, int]:
    """Three panels against (fractional) epoch, 12 x 4 in at 100 dpi = 1200 x 400 px: training loss
    (step rows), learning rate on a log axis (step rows), top-1 and top-5 error (eval rows)."""
    fig = _figure(CURVES_FIGSIZE)
    loss_ax, lr_ax, err_ax = fig.subplots(1, 3)
    panels = [(loss_ax, [("loss", "training loss")], "loss", "training loss"),
              (lr_ax, [("lr", "learning rate")], "learning rate", "learning rate (log)"),
              (err_ax, [("top1_error", "top-1 error"), ("top5_error", "top-5 error")], "error",
               "validation error (centre crop)")]
    for ax, series, ylabel, heading in panels:
        ax.set_title(heading, fontsize=10)
        drawn = 0
        for key, label in series:
            x, y = _series(rows, key)
            if key == "lr":  # a log axis cannot show 0 (the first warm-up step never is, the rest may be)
                x, y = [a for a, b in zip(x, y) if b > 0], [b for b in y if b > 0]
            if x:
                ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, f"no {ylabel} rows in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if _series(rows, "lr")[0]:
        lr_ax.set_yscale("log")
    if _series(rows, "top1_error")[0]:
        err_ax.set_ylim(0, 1)
        err_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


@dataclasses.dataclass(frozen=True)
class CurvesSettings:
    run: Path
    output: Path


def render_curves(s: CurvesSettings) -> dict:
    """-> {"output", "width", "height", "rows", "evaluations"}."""
    rows = read_run_metrics(s.run)
    width, height = curves_figure(rows, s.output, title=str(s.run))
    return {"output": str(s.output), "width": width, "height": height, "rows": len(rows),
            "evaluations": sum("top1_error" in r for r in rows)}


# ---------------------------------------------------------------- augment

@dataclasses.dataclass(frozen=True)
class VizAugmentSettings:
    data: Path
    output: Path
    n: int
    seed: int
    crop: int
    lighting: float
    lighting_scale: str
    loader: str
    recipe: str = "paper"  # where the augmentation's defaults came from (paper | modern), for the record
    normalize: str = "mean-image"
    crops: str = "translate"
    color_jitter: float = 0.0
    hue: float = 0.0


def seen_pixels(images, params, loader) -> np.ndarray:
    """(n, crop, crop, 3) uint8: the augmented views with the normalisation undone (lighting, colour jitter
    and the random-resized windows' resize kept: what the network sees)."""
    out = images.float().numpy().transpose(0, 2, 3, 1)
    norm, crop = loader.norm, loader.settings.crop
    if norm.mode == "channel":
        return np.clip(out * norm.std_rgb + norm.mean_rgb, 0, 255).round().astype(np.uint8)
    views = []
    for img, x, y, flip in zip(out, params["crop_x"], params["crop_y"], params["flip"]):
        mean = norm.mean_image[y:y + crop, x:x + crop]
        views.append(img + (mean[:, ::-1] if flip else mean))
    return np.clip(np.stack(views), 0, 255).round().astype(np.uint8)


def augment_grid(views, pad: int = 2) -> np.ndarray:
    """Tiles on a white background: cols = ceil(sqrt(n)), a `pad` px gap around each."""
    n, c = len(views), views.shape[1]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (c + pad) + pad, cols * (c + pad) + pad, 3), 255, np.uint8)
    for i, view in enumerate(views):
        r, q = divmod(i, cols)
        canvas[pad + r * (c + pad):pad + r * (c + pad) + c, pad + q * (c + pad):pad + q * (c + pad) + c] = view
    return canvas


def augment_loader(s: VizAugmentSettings):
    """The training loader of these settings, one batch of `n` views with their parameters."""
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    return make_loader(LoaderSettings(s.data, batch_size=s.n, crop=s.crop, loader=s.loader, lighting=s.lighting,
                                      lighting_scale=s.lighting_scale, seed=s.seed, with_params=True,
                                      normalize=s.normalize, crops=s.crops, color_jitter=s.color_jitter,
                                      hue=s.hue))


def render_augment(s: VizAugmentSettings) -> tuple[int, int]:
    import matplotlib
    matplotlib.use("Agg")

    loader = augment_loader(s)
    images, _labels, params = next(iter(loader.epoch(0)))
    canvas = augment_grid(seen_pixels(images, params, loader))
    return write_image(canvas, s.output)
