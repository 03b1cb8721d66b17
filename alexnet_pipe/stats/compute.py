"""The training set's mean image and the eigenpairs of its RGB pixel covariance.

The fast path merges the exact integer sums that prepare stores in every train shard
(``stats.npz``, docs/format.md), so the result does not depend on shard count or order and
ImageNet takes well under a second.  ``recompute`` gets the same sums from one decoding pass
(decode.iter_decoded).  The 3x3 covariance is formed from the integer sums with exact
rational arithmetic: ``E[xx^T] - m m^T`` in float64 would lose digits to cancellation.

Conventions (also written into pca.json):
- population covariance (divide by the pixel count N), 0..255 scale, RGB order;
- eigenvalues descending, eigenvectors are the COLUMNS of ``eigvec``;
- sign: the component of largest magnitude of every eigenvector is positive (the first such
  component on a tie), so p1, the brightness axis, is all-positive;
- the fb.resnet.torch convention is the same eigenvectors with eigenvalues / 255**2 (pixels
  scaled to [0, 1]); fb.resnet's published eigvec columns 1 and 3 have the opposite sign,
  which the symmetric N(0, sigma) lighting noise does not see.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.core.files import atomic_write, write_json_atomic
from alexnet_pipe.stats.readers import read_pca
from alexnet_pipe.core.errors import Interrupted, UserError
from alexnet_pipe.shards.format import (MANIFEST, SHARD_META, SHARD_STATS, ShardFormatError, ShardStats, varint,
                     encode_field_bytes, encode_field_varint, open_reader, read_manifest,
                     load_shard_meta, shard_dirs)

SPLIT = "train"
SIGN_CONVENTION = "the largest-magnitude component of each eigenvector is positive (first on a tie)"
CONVENTIONS = {
    "scale": "pixel values 0..255, RGB order",
    "covariance": "population covariance over every pixel of every image (divided by `pixels`)",
    "eigval": "descending",
    "eigvec": "eigvec[i][j] is component i (R, G, B) of eigenvector j: the columns are the eigenvectors",
    "sign": SIGN_CONVENTION,
    "fbresnet": "same eigenvectors, eigenvalues of pixels scaled to [0, 1] (eigval / 255**2)",
    "mean_npy": "float32 (H, W, 3), RGB, HWC, 0..255",
    "mean_binaryproto": "Caffe BlobProto 1x3xHxW float, BGR, CHW",
}


@dataclasses.dataclass(frozen=True)
class StatsSettings:
    data: Path
    pca: bool
    recompute: bool
    sample: int | None
    plot: bool
    device: str = "cpu"


@dataclasses.dataclass(frozen=True)
class StatsResult:
    """Everything `stats` computes; eigval/eigvec are None without --pca."""
    mean_image: np.ndarray  # float32 (H, W, 3) RGB
    mean_rgb: np.ndarray  # float64 (3,)
    std_rgb: np.ndarray
    covariance: np.ndarray  # float64 (3, 3)
    images: int
    pixels: int
    eigval: np.ndarray | None = None
    eigvec: np.ndarray | None = None  # columns

    @property
    def explained_variance(self) -> np.ndarray | None:
        return None if self.eigval is None else self.eigval / self.eigval.sum()


# --- the numbers ----------------------------------------------------------------------

def exact_moments(total: ShardStats) -> tuple[list[Fraction], list[list[Fraction]], int]:
    """(mean RGB, covariance) as exact fractions, and the pixel count, from integer sums."""
    if total.count <= 0:
        raise UserError("the train split holds no images, so there is no mean to compute")
    n = total.count * total.pixel_sum.shape[0] * total.pixel_sum.shape[1]
    s = [int(v) for v in total.pixel_sum.sum(axis=(0, 1), dtype=np.int64)]
    outer = [[int(v) for v in row] for row in total.rgb_outer]
    mean = [Fraction(si, n) for si in s]
    cov = [[Fraction(n * outer[i][j] - s[i] * s[j], n * n) for j in range(3)] for i in range(3)]
    return mean, cov, n


def principal_axes(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues descending and eigenvectors as columns, signs fixed by SIGN_CONVENTION."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    for j in range(vectors.shape[1]):
        if vectors[np.argmax(np.abs(vectors[:, j])), j] < 0:
            vectors[:, j] = -vectors[:, j]
    return np.maximum(values, 0.0), vectors


def compute(total: ShardStats, pca: bool) -> StatsResult:
    mean, cov, n = exact_moments(total)
    covariance = np.array([[float(c) for c in row] for row in cov])
    mean_image = (total.pixel_sum / np.float64(total.count)).astype(np.float32)
    result = StatsResult(mean_image=mean_image, mean_rgb=np.array([float(m) for m in mean]),
                         std_rgb=np.sqrt(np.maximum(np.diag(covariance), 0.0)),
                         covariance=covariance, images=total.count, pixels=n)
    if pca:
        eigval, eigvec = principal_axes(covariance)
        result = dataclasses.replace(result, eigval=eigval, eigvec=eigvec)
    return result


# --- merging the per-shard sums -------------------------------------------------------

def _damaged(shard: Path, why: str) -> UserError:
    return UserError(f"the statistics of shard {shard} are {why}: run `alexnet-pipe stats --recompute` "
                     "to compute them from the records")


def load_shard_stats(shard: Path, entry: dict, size: int) -> ShardStats:
    """One shard's sums, checked against its meta.json and the manifest."""
    path = shard / SHARD_STATS
    if not shard.is_dir():  # --recompute cannot help: the records themselves are gone
        raise UserError(f"shard {shard} listed in the manifest is missing: run `alexnet-pipe prepare` again "
                        "with the same settings to rewrite it")
    if not path.is_file():
        raise _damaged(shard, f"missing ({SHARD_STATS} not found)")
    try:
        stats = ShardStats.load(path)
    except ShardFormatError:
        raise _damaged(shard, f"damaged ({SHARD_STATS} does not load)") from None
    meta = load_shard_meta(shard) or {}
    problem = _stats_problem(stats, size, entry.get("records"), meta.get("records"))
    if problem:
        raise _damaged(shard, f"damaged ({problem})")
    return stats


def _stats_problem(stats: ShardStats, size: int, manifest_records, meta_records) -> str | None:
    """Why these sums cannot be right, or None."""
    if stats.pixel_sum.shape != (size, size, 3):
        return f"pixel_sum has shape {stats.pixel_sum.shape}, the data dir's size is {size}"
    if stats.count != manifest_records or (meta_records is not None and stats.count != meta_records):
        return (f"{stats.count} images counted, the manifest lists {manifest_records} and "
                f"{SHARD_META} {meta_records}")
    if stats.count < 0 or stats.pixel_sum.min(initial=0) < 0 or stats.pixel_sum.max(initial=0) > 255 * stats.count:
        return "pixel sums out of range"
    outer = stats.rgb_outer
    n = stats.count * size * size
    sums = stats.pixel_sum.sum(axis=(0, 1))
    for c in range(3):
        sq, s = int(outer[c, c]), int(sums[c])
        # x in 0..255: s**2 / n <= sum(x**2) <= 255 * s (Cauchy-Schwarz and x**2 <= 255 x)
        if sq > 255 * s or (n and s * s > sq * n):
            return "squared sums inconsistent with the pixel sums"
    if not np.array_equal(outer, outer.T):
        return "rgb_outer is not symmetric"
    return None


def merge_shard_stats(data: Path, manifest: dict) -> ShardStats:
    size = int(manifest["settings"]["size"])
    entries = manifest["splits"][SPLIT]["shards"]
    total = ShardStats.zeros(size)
    for shard, entry in zip(shard_dirs(data, SPLIT, manifest), entries):
        total.merge(load_shard_stats(shard, entry, size))
    return total


# --- recomputing them from the records ------------------------------------------------

def shard_record_counts(shards: Sequence[Path]) -> list[int]:
    counts = []
    for shard in shards:
        env = open_reader(shard)
        try:
            counts.append(int(env.stat()["entries"]))
        finally:
            env.close()
    return counts


def accumulate(batches: Iterable[tuple[np.ndarray, np.ndarray]], counts: Sequence[int],
               on_batch: Callable[[int], None] | None = None) -> list[ShardStats | None]:
    """Per-shard sums from batches that run through the shards in order (counts: records each)."""
    per: list[ShardStats | None] = [None] * len(counts)
    ends = np.cumsum(counts)
    pos = 0
    for images, _labels in batches:
        start = 0
        while start < len(images):
            shard = int(np.searchsorted(ends, pos, side="right"))
            if shard >= len(counts):
                raise UserError("the shards yielded more records than their LMDB environments hold")
            take = min(len(images) - start, int(ends[shard]) - pos)
            if per[shard] is None:
                per[shard] = ShardStats(np.zeros(images.shape[1:], np.int64), np.zeros((3, 3), np.int64), 0)
            per[shard].add_batch(images[start:start + take])  # uint8, as iter_decoded yields
            start, pos = start + take, pos + take
        if on_batch:
            on_batch(len(images))
    return per


def recompute(shards: Sequence[Path], *, device: str, limit: int | None, raw_layout: str,
              backend: str = "auto") -> tuple[ShardStats, list[ShardStats | None]]:
    """One decoding pass: (total sums, per-shard sums; None for shards the pass did not reach)."""
    from alexnet_pipe.shards.decode import dali_error_cause, iter_decoded
    from alexnet_pipe.core.progress import Progress
    counts = shard_record_counts(shards)
    total_records = sum(counts) if limit is None else min(limit, sum(counts))
    progress = Progress(total_records, "decoding the train records")
    try:
        per = accumulate(iter_decoded(shards, device=device, limit=limit, raw_layout=raw_layout,
                                      backend=backend), counts, progress.update)
    except RuntimeError as exc:  # DALI reports a missing GPU or a bad LMDB as RuntimeError
        raise UserError(f"the decoding pass failed ({dali_error_cause(exc)})"
                        + ("; try --device cpu" if device != "cpu" else "")) from None
    progress.close()
    reached = [p for p in per if p is not None]
    if not reached:
        raise UserError("the train shards hold no records")
    total = ShardStats(np.zeros_like(reached[0].pixel_sum), np.zeros((3, 3), np.int64), 0)
    for p in reached:
        total.merge(p)
    if total.count != total_records:
        raise UserError(f"the decoding pass saw {total.count} records, the shards hold {total_records}: "
                        "run `alexnet-pipe verify`")
    return total, per


def repair_shard_stats(shards: Sequence[Path], per: Sequence[ShardStats | None], manifest: dict) -> list[Path]:
    """Write stats.npz where it is missing or damaged (after a full pass); returns those shards."""
    size = int(manifest["settings"]["size"])
    repaired = []
    for shard, entry, stats in zip(shards, manifest["splits"][SPLIT]["shards"], per):
        if stats is None:
            continue
        try:
            load_shard_stats(shard, entry, size)
        except UserError:
            stats.save(shard / SHARD_STATS)  # atomic: a reader never meets half a file
            repaired.append(shard)
    return repaired


def foreign_lmdbs(data: Path) -> list[Path]:
    """Caffe LMDBs made by other tools: DATA itself, or DATA/train/*/ (sorted)."""
    if (data / "data.mdb").is_file():
        return [data]
    return sorted(p.parent for p in (data / SPLIT).glob("*/data.mdb"))


# --- writing the outputs --------------------------------------------------------------

def encode_blobproto(mean_rgb_hwc: np.ndarray) -> bytes:
    """Caffe BlobProto of a mean image: legacy num/channels/height/width and shape, BGR CHW floats."""
    h, w, c = mean_rgb_hwc.shape
    chw_bgr = np.ascontiguousarray(mean_rgb_hwc[..., ::-1].transpose(2, 0, 1), dtype="<f4")
    shape = encode_field_bytes(1, b"".join(varint(d) for d in (1, c, h, w)))  # packed int64 dims
    return b"".join([encode_field_varint(1, 1), encode_field_varint(2, c), encode_field_varint(3, h),
                     encode_field_varint(4, w), encode_field_bytes(5, chw_bgr.tobytes()),
                     encode_field_bytes(7, shape)])


def shard_fingerprint(manifest: dict | None) -> list[dict]:
    if manifest is None:
        return []
    return [{k: s.get(k) for k in ("name", "records", "checksum")} for s in manifest["splits"][SPLIT]["shards"]]


def fingerprint_digest(shards: list[dict]) -> str:
    return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()


def pca_document(result: StatsResult, *, source: str, sample: int | None, manifest: dict | None) -> dict:
    shards = shard_fingerprint(manifest)
    doc = {"source": source, "sample": sample, "pca": result.eigval is not None,
           "size": list(result.mean_image.shape[:2]), "images": result.images, "pixels": result.pixels,
           "mean_rgb": result.mean_rgb.tolist(), "std_rgb": result.std_rgb.tolist(),
           "covariance": result.covariance.tolist()}
    if result.eigval is not None:
        doc.update(eigval=result.eigval.tolist(), eigvec=result.eigvec.tolist(),
                   explained_variance=result.explained_variance.tolist(),
                   fbresnet={"eigval": (result.eigval / 255.0 ** 2).tolist(), "eigvec": result.eigvec.tolist()})
    doc.update(conventions=CONVENTIONS, shards=shards, shards_digest=fingerprint_digest(shards),
               files={"mean": "mean.npy", "binaryproto": "mean.binaryproto"})
    return doc


def write_outputs(out: Path, result: StatsResult, doc: dict, settings: StatsSettings) -> None:
    """mean.npy, mean.binaryproto, stats_settings.json, then pca.json last (its checksums say 'done')."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "mean.npy", "wb") as f:
        np.save(f, result.mean_image)
    with atomic_write(out / "mean.binaryproto", "wb") as f:
        f.write(encode_blobproto(result.mean_image))
    write_json_atomic(out / "stats_settings.json", json.loads(json.dumps(dataclasses.asdict(settings), default=str)))
    write_json_atomic(out / "pca.json", doc)


def write_plots(out: Path, result: StatsResult) -> list[Path]:
    """mean.png, and with eigenpairs pca_axes.png: swatches of mean_rgb + k sqrt(lambda_i) p_i."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    written = [out / "mean.png"]
    fig = Figure(figsize=(4, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(np.clip(result.mean_image / 255.0, 0, 1))
    ax.set_title(f"mean of {result.images} training images")
    ax.axis("off")
    fig.savefig(written[0], dpi=100)
    if result.eigval is None:
        return written
    ks = np.arange(-3, 4)
    swatches = np.stack([[result.mean_rgb + k * np.sqrt(lam) * result.eigvec[:, i] for k in ks]
                         for i, lam in enumerate(result.eigval)])
    fig = Figure(figsize=(7, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(np.clip(swatches / 255.0, 0, 1), interpolation="nearest")
    ax.set_xticks(range(len(ks)), [f"{k:+d}σ" if k else "mean" for k in ks])
    ax.set_yticks(range(3), [f"p{i + 1}  λ={lam:.0f} ({100 * e:.1f}%)"
                             for i, (lam, e) in enumerate(zip(result.eigval, result.explained_variance))])
    ax.set_title("principal colour axes: mean RGB + k·sqrt(λ)·p")
    fig.tight_layout()
    written.append(out / "pca_axes.png")
    fig.savefig(written[1], dpi=100)
    return written


# --- the stage ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StatsRun:
    result: StatsResult
    source: str
    out: Path
    files: list[Path]
    repaired: list[Path]


def run_stats(settings: StatsSettings, *, backend: str = "auto") -> StatsRun:
    stage = ["the decoding pass"]
    try:
        return _run_stats(settings, backend, stage)
    except KeyboardInterrupt:  # every output is written atomically: each file is the old one or the new
        out = DataDir(Path(settings.data)).stats
        if stage[0] == "the decoding pass":
            raise Interrupted(f"interrupted during {stage[0]}: nothing was written, the shards and {out} are "
                              "as they were; run the same command again") from None
        raise Interrupted(f"interrupted while writing {out}: each file there is whole (the previous or the new "
                          "version), but they may not match each other; run the same command again") from None


def _run_stats(settings: StatsSettings, backend: str, stage: list[str]) -> StatsRun:
    data = Path(settings.data)
    manifest = _manifest_or_none(data, settings.recompute or settings.sample is not None)
    source, repaired = "shard-stats", []
    if settings.recompute or settings.sample is not None:
        shards = shard_dirs(data, SPLIT, manifest) if manifest else foreign_lmdbs(data)
        if not shards:
            raise UserError(f"{data} has neither a {MANIFEST} nor Caffe LMDBs (data.mdb) to read")
        total, per = recompute(shards, device=settings.device, limit=settings.sample, backend=backend,
                               raw_layout="hwc_rgb" if manifest else "chw_bgr")
        source = "recompute" if settings.sample is None else "sample"
        stage[0] = "writing"
        if manifest and settings.sample is None:
            repaired = repair_shard_stats(shards, per, manifest)
    else:
        total = merge_shard_stats(data, manifest)
    out = DataDir(data).stats
    # eigenpairs come from the same sums for free: never drop ones that describe these shards
    result = compute(total, settings.pca or _has_current_pca(data))
    stage[0] = "writing"
    sample = None if settings.sample is None else result.images  # N, or every record where the split has fewer
    write_outputs(out, result, pca_document(result, source=source, sample=sample, manifest=manifest),
                  settings)
    files = [out / "mean.npy", out / "mean.binaryproto", out / "pca.json"]
    if settings.plot:
        files += write_plots(out, result)
    return StatsRun(result, source, out, files, repaired)


def _has_current_pca(data: Path) -> bool:
    try:
        load_stats(data, need_pca=True)
    except UserError:
        return False
    return True


def _manifest_or_none(data: Path, recompute: bool) -> dict | None:
    if not (data / MANIFEST).exists() and recompute and foreign_lmdbs(data):
        return None  # Caffe LMDBs made by other tools
    if not (data / MANIFEST).exists() and foreign_lmdbs(data):
        raise UserError(f"{data} holds Caffe LMDBs but no {MANIFEST}: run `alexnet-pipe stats --recompute` "
                        "to compute the statistics from the records")
    manifest = read_manifest(data)
    if SPLIT not in manifest["splits"]:
        raise UserError(f"{data} has no '{SPLIT}' split: run `alexnet-pipe prepare` with training images")
    return manifest


def format_report(run: StatsRun) -> str:
    r = run.result
    fmt = lambda v: "  ".join(f"{x:10.4f}" for x in v)  # noqa: E731
    lines = [f"{r.images} images, {r.pixels} pixels, {r.mean_image.shape[0]}x{r.mean_image.shape[1]} "
             f"(from {run.source})",
             f"{'':22}{'R':>10}  {'G':>10}  {'B':>10}",
             f"{'mean RGB':<22}{fmt(r.mean_rgb)}", f"{'std RGB':<22}{fmt(r.std_rgb)}"]
    if r.eigval is not None:
        lines += [f"{'eigenvalues':<22}{fmt(r.eigval)}",
                  f"{'explained variance':<22}{fmt(r.explained_variance)}"]
        lines += [f"{f'eigenvector p{j + 1}':<22}{fmt(r.eigvec[:, j])}" for j in range(3)]
    if run.repaired:
        lines.append(f"rewrote {SHARD_STATS} of {len(run.repaired)} shard(s) whose statistics were missing or damaged")
    lines.append(f"wrote: {', '.join(str(f) for f in run.files)}")
    return "\n".join(lines)


# --- for the stages that read the statistics (the file readers: statfiles.py) --------------

def load_stats(data: Path, *, need_pca: bool) -> dict:
    """pca.json of a data dir, checked (read_pca) and checked to describe its current train shards."""
    path = DataDir(Path(data)).pca
    hint = "run `alexnet-pipe stats --pca`" if need_pca else "run `alexnet-pipe stats`"
    doc = read_pca(path, need_pca=need_pca, hint=hint)
    if (Path(data) / MANIFEST).exists():
        current = fingerprint_digest(shard_fingerprint(read_manifest(Path(data))))
        if doc.get("shards_digest") != current:
            raise UserError(f"{path} describes other train shards than the manifest lists: {hint}")
    return doc
