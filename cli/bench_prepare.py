"""`alexnet-pipe bench prepare`."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_pipe.core.limits import MAX_PROCESSES
from alexnet_pipe_cli.common import SIZE, run_and_report


@click.command("prepare")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder tree (train/<class>/...) to measure on [default: generate --images JPEGs].")
@click.option("--images", type=click.IntRange(min=8), default=1500, show_default=True)
@click.option("--workers", type=click.IntRange(1, MAX_PROCESSES), default=2, show_default=True)
@click.option("--size", type=SIZE, default=256, show_default=True)
@click.option("--resize", type=click.Choice(["area", "linear", "cubic", "lanczos"]), default="area", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Best of N per contender.")
@click.option("--model", is_flag=True,
              help="Instead: measure the writer alone, a worker's rate beside others and the pool's start, and "
                   "predict prepare's rate for 1..64 workers beside the runs measured here (--images pictures).")
@click.option("--cores", type=click.IntRange(min=1), default=None,
              help="--model: the cores of the machine predicted for [default: one per worker].")
@click.option("--writer-records", type=click.IntRange(min=64), default=4000, show_default=True,
              help="--model: records written per writer-alone measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_prepare(as_json, model, cores, writer_records, **options):
    """prepare vs the one-process PIL script and bare decode, on the same files in one run.

    \b
    alexnet-pipe bench prepare --images 1500 --workers 2
    alexnet-pipe bench prepare --model --images 600             # the scaling model, 1..64 workers
    """
    if model:
        from alexnet_pipe.report.prepare_model import ModelSettings, run_model
        settings = ModelSettings(images=options["images"], size=options["size"], writer_records=writer_records,
                                 cores=cores)
        run_and_report("bench prepare --model", settings, run_model, as_json, _model_lines)
        return
    from alexnet_pipe.report.bench_prepare import BenchPrepareSettings, run
    settings = BenchPrepareSettings(**options)
    run_and_report("bench prepare", settings, run, as_json, lambda out: [
        f"{out['images']} images, prepare --workers {out['workers']}:",
        f"  bare decode, 1 core      {out['bare_decode_images_per_sec_one_core']:8.1f} img/s",
        f"  PIL script, 1 process    {out['pil_baseline_images_per_sec']:8.1f} img/s",
        f"  prepare                  {out['prepare_images_per_sec']:8.1f} img/s",
        f"  prepare / PIL script     {out['ratio_vs_pil_baseline']:8.2f}x   (goal >= 2)",
        f"  per core / bare decode   {out['per_core_ratio_vs_bare_decode']:8.2f}    (goal >= 0.70)"])


def _model_lines(r: dict) -> list[str]:
    lines = [f"bare decode, 1 core: {r['bare_decode_one_core']:.0f} img/s; listing + plan {r['listing_seconds']:.2f} s",
             "one worker's img/s beside others: " + ", ".join(
                 f"{n} at once {w:.0f}" for n, w in r["worker_images_per_sec"].items()),
             "pool start: " + ", ".join(f"{n} workers {t:.2f} s" for n, t in r["pool_start_seconds"].items()),
             "the writer alone (parent, fed ready chunks):"]
    for name, w in r["writer"].items():
        lines.append(f"  {name:9s} {w['record_bytes']:7d} B/record  {w['records_per_sec']:8.0f} records/s  "
                     f"(parent CPU {w['parent_cpu_us_per_record']:.0f} us/record; per chunk: unpickle "
                     f"{w['unpickle_us_per_chunk']:.0f} us, stats merge {w['merge_us_per_chunk']:.0f} us)")
    lines.append(f"workers  predicted: writing  whole run of {r['images']}  measured whole run  bound "
                 f"(cores: {r['cores']})")
    for row in r["curve"]:
        measured = f"{row['measured']:10.0f}" if row["measured"] else "         -"
        lines.append(f"{row['workers']:7d}  {row['images_per_sec']:12.0f} img/s  {row['whole']:10.0f} img/s  "
                     f"{measured} img/s  {row['bound']}")
    h = r["h100"]
    lines.append(f"H100 machine (16 cores, parts scaled by {h['scale']:.2f}): predicted {h['predicted_whole']:.0f} "
                 f"img/s whole ({h['predicted_writing']:.0f} writing, {h['bound']}), measured {h['measured_whole']:.0f}")
    return lines
