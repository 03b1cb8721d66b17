"""`stats`: the training set's mean image and the eigenpairs of its RGB pixel covariance, as a run.

The fast path merges the exact integer sums that prepare stores in every train shard (``stats.npz``,
docs/format.md; sums.py), so the result does not depend on shard count or order and ImageNet takes well under a
second. ``--recompute`` gets the same sums from one decoding pass. The maths is moments.py, the files outputs.py
(plots.py with --plot), their names and readers readers.py.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from alexnet_pipe.core.errors import Interrupted, UserError
from alexnet_pipe.shards.datadir import DataDir
from alexnet_pipe.shards.manifest import MANIFEST, read_manifest, shard_dirs
from alexnet_pipe.shards.shardstats import SHARD_STATS
from alexnet_pipe.stats.moments import StatsResult, compute
from alexnet_pipe.stats.outputs import pca_document, write_outputs
from alexnet_pipe.stats.plots import write_plots
from alexnet_pipe.stats.readers import MEAN, MEAN_BINARYPROTO, PCA, SPLIT, load_stats
from alexnet_pipe.stats.sums import foreign_lmdbs, merge_shard_stats, recompute, repair_shard_stats


@dataclasses.dataclass(frozen=True)
class StatsSettings:
    data: Path
    pca: bool
    recompute: bool
    sample: int | None
    plot: bool
    device: str = "cpu"


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
    files = [out / MEAN, out / MEAN_BINARYPROTO, out / PCA]
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
