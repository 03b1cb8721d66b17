"""The whole job on the built-in synthetic sample data: sample-data -> prepare -> stats --pca ->
train (2 gloo processes, DALI CPU pipeline) -> evaluate (centre and ten-crop) -> pictures.

Everything is written under DATA/demo/ (a folder the demo marks as its own; a rerun replaces the outputs it
wrote there and nothing else), so a user's real data dir is never touched and `rm -r DATA/demo` removes it all.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from alexnet_pipe.core.errors import UserError

MARKER = ".alexnet-pipe-demo"  # only a folder holding it is ever deleted by the demo


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    data: Path                      # the demo writes DATA/demo/
    classes: int = 10
    train_per_class: int = 80
    val_per_class: int = 20
    size: int = 128                 # stored images; the network sees `crop`
    crop: int = 112
    epochs: int = 12
    nproc: int = 2                  # gloo DDP processes
    workers: int = 2                # prepare's decode processes
    loader: str = "auto"
    seed: int = 0
    pictures: bool = True

    @property
    def root(self) -> Path:
        return Path(self.data) / "demo"


def _outputs() -> tuple[str, ...]:
    """The names a demo run writes at the top of DATA/demo/: a rerun removes these, and only these."""
    from alexnet_pipe.ingest.claims import LOCK
    from alexnet_pipe.ingest.owned import PREPARE_JSON
    from alexnet_pipe.shards.manifest import MANIFEST, REJECTS
    return ("sample", "train", "val", "stats", "runs", "pictures", "demo.json", MANIFEST, REJECTS, PREPARE_JSON,
            LOCK)


def _fresh_root(root: Path) -> None:
    """DATA/demo/ made, or emptied of the previous demo's outputs: a file the user put there stays."""
    if root.exists():
        if not (root / MARKER).exists():
            raise UserError(f"{root} exists and was not made by the demo; move it, or pass another --data")
        for name in _outputs():
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_file() or path.is_symlink():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by `alexnet-pipe demo`; safe to delete\n")


class Steps:
    """Prints each step's outcome with its time; keeps a summary for demo.json."""

    def __init__(self, echo):
        self.echo, self.summary, self.t0 = echo, {}, time.perf_counter()

    def __call__(self, name: str, fn):
        self.echo(f"\n== {name}")
        start = time.perf_counter()
        outcome = fn()
        self.summary[name] = {"seconds": round(time.perf_counter() - start, 1)}
        self.echo(f"   done in {time.perf_counter() - start:.1f} s")
        return outcome


def _sample(s: DemoSettings, echo) -> None:
    from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
    summary = write_sample_tree(s.root / "sample", SampleSettings(s.classes, s.train_per_class, s.val_per_class,
                                                                  s.seed))
    echo(f"   {summary.train_count} train + {summary.val_count} val synthetic images of {s.classes} classes "
         f"in {s.root / 'sample'} ({len(summary.expected_rejects)} deliberately broken)")


def _prepare(s: DemoSettings, echo) -> dict:
    from alexnet_pipe.ingest.plan import PrepareSettings
    from alexnet_pipe.ingest.prepare import run
    from alexnet_pipe.shards.manifest import REJECTS
    manifest = run(PrepareSettings(source=s.root / "sample", data=s.root, size=s.size, workers=s.workers,
                                   seed=s.seed), echo=lambda *_: None)["manifest"]
    for split, info in manifest["splits"].items():
        echo(f"   {split}: {info['count']} records in {len(info['shards'])} shards, {info['rejects']} rejected "
             f"(reasons in {s.root / REJECTS})")
    return manifest


def _stats(s: DemoSettings, echo) -> None:
    from alexnet_pipe.stats.compute import StatsSettings, format_report, run_stats
    run = run_stats(StatsSettings(data=s.root, pca=True, recompute=False, sample=None, plot=s.pictures))
    for line in format_report(run).splitlines():
        echo(f"   {line}")


def _train(s: DemoSettings, echo) -> dict:
    from alexnet_pipe.train.config import resolve_settings
    from alexnet_pipe.train.entry import run_training
    settings = resolve_settings("small", data=str(s.root), run=str(s.root / "runs" / "demo"), nproc=s.nproc,
                                epochs=s.epochs, crop=s.crop, loader=s.loader, seed=s.seed)
    echo(f"   recipe small: width {settings.width}, {settings.epochs} epochs, batch {settings.batch_size}, "
         f"{s.nproc} gloo processes, {s.loader} loader on the CPU")
    return run_training(settings)


def _evaluate(s: DemoSettings, echo, checkpoint: Path) -> dict:
    from alexnet_pipe.train.evaluation import EvalSettings, evaluate
    out = {}
    for views in ("centre", "ten-crop"):
        result = evaluate(EvalSettings(checkpoints=(str(checkpoint),), data=str(s.root), loader=s.loader,
                                       ten_crop=views == "ten-crop"))
        echo(f"   {views:<8}: top-1 error {result['top1_error']:.1%}, top-5 error {result['top5_error']:.1%} "
             f"on {result['images']} val images")
        out[views] = result
    return out


def _pictures(s: DemoSettings, echo, checkpoint: Path) -> list[Path]:
    from alexnet_pipe.report.augment_grid import VizAugmentSettings, render_augment
    from alexnet_pipe.report.curves import CurvesSettings, render_curves
    from alexnet_pipe.report.filters import FiltersSettings, render_filters
    from alexnet_pipe.report.neighbors import NeighborsSettings, render_neighbors
    pics = s.root / "pictures"
    jobs = [lambda: render_filters(FiltersSettings(checkpoint, pics / "filters.png")),
            lambda: render_curves(CurvesSettings(checkpoint.parent, pics / "curves.png")),
            lambda: render_neighbors(NeighborsSettings(checkpoint, s.root, pics / "neighbors.png", loader=s.loader)),
            lambda: render_augment(VizAugmentSettings(s.root, pics / "augment.png", 16, s.seed, s.crop, 0.1,
                                                      "convnet2", s.loader))]
    for job in jobs:
        job()
    files = sorted(pics.glob("*.png")) + sorted((s.root / "stats").glob("*.png"))
    for path in files:
        echo(f"   {path}")
    return files


def run(s: DemoSettings, echo=print) -> dict:
    """Run every step; returns (and writes to DATA/demo/demo.json) the summary with the errors."""
    from alexnet_pipe.loaders import resolve_loader
    s = dataclasses.replace(s, loader=resolve_loader(s.loader))  # once, for every step
    _fresh_root(s.root)
    step = Steps(echo)
    step("sample data (synthetic)", lambda: _sample(s, echo))
    step("prepare", lambda: _prepare(s, echo))
    step("stats --pca", lambda: _stats(s, echo))
    trained = step("train", lambda: _train(s, echo))
    from alexnet_pipe.train.checkpoint import best_checkpoint
    checkpoint = best_checkpoint(s.root / "runs" / "demo")
    errors = step("evaluate", lambda: _evaluate(s, echo, checkpoint))
    if s.pictures:
        step("pictures", lambda: _pictures(s, echo, checkpoint))
    chance = 1 - 1 / s.classes
    summary = {"settings": {k: str(v) for k, v in dataclasses.asdict(s).items()}, "steps": step.summary,
               "train": trained, "errors": errors, "chance_top1_error": chance,
               "seconds": round(time.perf_counter() - step.t0, 1)}
    (s.root / "demo.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
