"""prepare, info, verify."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from alexnet_pipe.core.limits import MAX_PROCESSES
from alexnet_pipe_cli.common import SEED, SIZE, data_option, print_settings
from alexnet_pipe_cli.locations import PathOrURL

RESIZES = ["area", "linear", "cubic", "lanczos"]
MAX_PIXELS = 100_000_000  # shards.pixels.MAX_PIXELS (a test holds them equal): OpenCV stays out of --help


def _cores() -> int:
    found = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(found, MAX_PROCESSES)


def _shard_range(ctx, param, value):
    if value is None or value == "auto":
        return value
    try:
        a, b = (int(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter("expected A:B, e.g. 0:16 (shards A to B-1 of each split), or auto") from None
    if not 0 <= a < b:
        raise click.BadParameter("expected 0 <= A < B")
    return a, b


@click.command()
@click.argument("source", type=PathOrURL(exists=True, file_okay=False, path_type=Path))
@data_option(urls=True)
@click.option("--size", type=SIZE, default=256, show_default=True,
              help="Shorter side after rescaling; the central size x size square is kept.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True, help="JPEG quality.")
@click.option("--encoding", type=click.Choice(["jpeg", "raw"]), default="jpeg", show_default=True,
              help="jpeg: encoded Datums; raw: HWC RGB bytes (encoded=false), ~5x larger, no decode cost.")
@click.option("--resize", type=click.Choice(RESIZES), default="area", show_default=True,
              help="Downscaling filter (enlarging always uses cubic). area: pixel-area averaging; "
                   "a shrink by less than 2x is a cubic 2x enlargement, then the exact 2x2 average.")
@click.option("--reduce/--no-reduce", default=True, show_default=True,
              help="Let JPEGs of shorter side >= 2*size decode at 1/2, 1/4, 1/8 scale (DCT domain).")
@click.option("--max-pixels", type=click.IntRange(min=0), default=MAX_PIXELS, show_default=True,
              help="Refuse (list in rejects.jsonl) an image of more pixels, from its header before decoding: a "
                   "small file can hold a huge image that takes GBs to decode. 0: no limit.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the global shuffle.")
@click.option("--shards", type=click.IntRange(min=1), default=None, help="Shards per split [default: records / shard-size].")
@click.option("--shard-size", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option("--workers", type=click.IntRange(1, MAX_PROCESSES), default=_cores, show_default="all cores")
@click.option("--val-labels", type=PathOrURL(exists=True, path_type=Path), default=None,
              help="LOC_val_solution.csv, the devkit (.tar.gz or dir) or its ground-truth .txt.")
@click.option("--only-shards", callback=_shard_range, default=None, metavar="A:B|auto",
              help="Write only shards A..B-1 of each split (cluster use); a last plain run finalises. auto: this "
                   "task's share in a Slurm array job or a Kubernetes indexed Job (docs/getting-started.md).")
@click.option("--array-count", type=click.IntRange(min=1), default=None,
              help="With --only-shards auto under Kubernetes: the indexed Job's completions (Slurm says its own).")
@click.option("--overwrite", is_flag=True,
              help="Replace the shards, manifest and stats prepare wrote in the data dir; other files stay.")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --data in a bucket: where each shard is written before its upload  [default: $TMPDIR].")
@click.option("--dry-run", is_flag=True, help="Find the inputs and print the plan; write nothing.")
def prepare(source, data, dry_run, **options):
    """Turn an ImageNet download (folders, Kaggle, or the official tars) into shards.

    \b
    alexnet-pipe prepare /data/imagenet --data /fast/alexnet-data
    alexnet-pipe prepare ./sample --size 128 --workers 2
    alexnet-pipe prepare s3://bucket/imagenet --data /fast/alexnet-data
    """
    from alexnet_pipe.ingest.plan import PrepareSettings, make_plan
    from alexnet_pipe.ingest.prepare import run
    from alexnet_pipe.ingest.sources import discover
    settings = PrepareSettings(source=source, data=data, **options)
    print_settings("prepare", settings)
    if dry_run:
        inv = discover(source, settings.val_labels)
        for split, plans in make_plan(inv, settings).items():
            click.echo(f"{split}: {len(inv.splits[split])} images -> {len(plans)} shards")
        click.echo(f"{len(inv.classes)} classes; {len(inv.rejects)} files refused before decoding")
        return
    summary = run(settings, echo=click.echo)
    _print_summary(summary, data)


def _print_summary(summary: dict, data: Path) -> None:
    from alexnet_pipe.shards.datadir import DataDir
    dd = DataDir(data)
    click.echo(f"wrote {summary['written_now']} images in {summary['seconds']:.1f} s "
               f"({summary['images_per_sec']:.0f} img/s overall: listing {summary['listing_seconds']:.1f} s, "
               f"then {summary['writing_images_per_sec']:.0f} img/s writing; {summary['shards_written_now']} shards)")
    if summary["left_to_others"]:
        click.echo(f"{len(summary['left_to_others'])} shards were being written by another prepare and were left "
                   f"to it ({', '.join(summary['left_to_others'][:3])})")
    manifest = summary["manifest"]
    if manifest is None:
        click.echo("these shards are done; run prepare without --only-shards once all parts are written")
        return
    click.echo(f"{'split':<6} {'records':>9} {'rejected':>9} {'shards':>7} {'MB':>9}")
    for split, s in manifest["splits"].items():
        mb = sum(e["bytes"] for e in s["shards"]) / 1e6
        click.echo(f"{split:<6} {s['count']:>9} {s['rejects']:>9} {len(s['shards']):>7} {mb:>9.1f}")
    from alexnet_pipe.ingest.bucket import reasons_file
    with reasons_file(data, None if isinstance(data, str) else dd.rejects) as path:
        reasons = _reasons(path)
    if reasons:
        click.echo("rejected, by reason: " + "; ".join(f"{n} {why}" for why, n in reasons))
    where = data if isinstance(data, str) else dd.root  # a bucket URL, as given
    click.echo(f"manifest: {where}/manifest.json; rejected inputs and reasons: {where}/rejects.jsonl")


def _reasons(path: Path, most: int = 6) -> list[tuple[str, int]]:
    """(reason, count) of the rejected inputs, commonest first; a reason's details after '(' merged."""
    from collections import Counter

    from alexnet_pipe.shards.manifest import read_rejects
    counts = Counter(row["reason"].split(" (")[0] for row in read_rejects(path))
    return counts.most_common(most)


@click.command()
@data_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(data, as_json):
    """Print what a data dir holds.

    \b
    alexnet-pipe info --data ./alexnet-data
    """
    from alexnet_pipe.shards.verify import info as read_info
    out = read_info(data)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"data dir {out['data']}: {out['classes']} classes, settings {json.dumps(out['settings'])}")
    for note in out["notes"]:
        click.echo(note)
    for split, s in out["splits"].items():
        click.echo(f"  {split}: {s['records']} records in {s['shards']} shards "
                   f"({s['bytes'] / 1e6:.1f} MB), {s['rejects']} inputs rejected")
        if s["missing"]:
            click.echo(f"  WARNING {split}: {len(s['missing'])} shard dir(s) listed in the manifest are missing "
                       f"({', '.join(s['missing'][:3])}): run `alexnet-pipe prepare` again to rewrite them", err=True)
    click.echo(f"  stats: {', '.join(out['stats']) or 'none (run alexnet-pipe stats --pca)'}")
    click.echo(f"  runs: {', '.join(out['runs']) or 'none'}")


@click.command()
@data_option
@click.option("--workers", type=click.IntRange(1, MAX_PROCESSES), default=_cores, show_default="all cores")
def verify(data, workers):
    """Decode every record; check counts and checksums against the manifest.

    \b
    alexnet-pipe verify --data ./alexnet-data
    """
    from alexnet_pipe.shards.verify import verify as run_verify
    reports = run_verify(data, workers)
    damaged = [r for r in reports if r.problems]
    for r in damaged:
        click.echo(f"DAMAGED {r.split}/{r.name}: " + "; ".join(r.problems[:3]), err=True)
    total = sum(r.records for r in reports)
    if damaged:
        raise click.ClickException(f"{len(damaged)} of {len(reports)} shards damaged: "
                                   + ", ".join(f"{r.split}/{r.name}" for r in damaged))
    click.echo(f"ok: {total} records in {len(reports)} shards decode, counts and checksums match")
