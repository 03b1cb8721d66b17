"""`alexnet-pipe bench loader`: training-loader images/s beside decode-only and a plain torch baseline."""
from __future__ import annotations

import click

from alexnet_pipe.core.limits import MAX_PROCESSES, MAX_SIZE, MAX_STRENGTH
from alexnet_pipe_cli.common import BATCH, FiniteFloat, data_option, device_option, run_and_report


@click.command()
@data_option
@click.option("--loader", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
@device_option("cpu", help="Where the loader decodes and normalises.")
@click.option("--reader", type=click.Choice(["external", "caffe"]), default="external", show_default=True,
              help="DALI record source: the exact per-epoch plan, or fn.readers.caffe's shuffle buffer.")
@click.option("--roi/--no-roi", "roi_decode", default=True, show_default=True,
              help="Decode only the crop window (DALI), or the whole image and then crop.")
@click.option("--normalize-in", type=click.Choice(["torch", "dali"]), default="torch", show_default=True,
              help="DALI: hand uint8 crops to the fused torch normalisation, or do the float work "
                   "in DALI's operators (the slower former default, kept to compare).")
@click.option("--fancy-upsampling/--no-fancy-upsampling", default=True, show_default=True,
              help="GPU: decode chroma as libjpeg-turbo does (same pixels as the CPU), or nvJPEG's default.")
@click.option("--batch-size", type=BATCH, default=128, show_default=True)
@click.option("--batches", type=click.IntRange(1), default=20, show_default=True, help="Timed batches.")
@click.option("--warmup", type=click.IntRange(1), default=3, show_default=True, help="Untimed batches first.")
@click.option("--crop", type=click.IntRange(1, MAX_SIZE), default=224, show_default=True)
@click.option("--threads", type=click.IntRange(1, MAX_PROCESSES), default=2, show_default=True,
              help="DALI threads / torch workers (the baseline always has 2 workers).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also time the plain torch DataLoader + PIL/numpy baseline.")
@click.option("--crops", type=click.Choice(["translate", "random-resized"]), default="translate", show_default=True,
              help="Training crops: the paper's, or random-resized windows (train --crops).")
@click.option("--color-jitter", type=FiniteFloat(0, MAX_STRENGTH), default=0.0, show_default=True,
              help="Colour jitter strength (train --color-jitter).")
@click.option("--hue", type=FiniteFloat(0, 0.5), default=0.0, show_default=True, help="Hue jitter.")
@click.option("--normalize", type=click.Choice(["mean-image", "channel"]), default=None,
              help="Normalisation.  [default: channel with random-resized crops, else mean-image]")
@click.option("--lighting", type=FiniteFloat(0, MAX_STRENGTH), default=0.1, show_default=True, help="PCA lighting sigma.")
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="Rounds of every contender in turn; medians and each ratio's spread are reported.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def bench_loader(data, loader, device, reader, roi_decode, normalize_in, fancy_upsampling, batch_size, batches,
                 warmup, crop, threads, baseline, crops, color_jitter, hue, normalize, lighting, repeats, as_json):
    """Images/s of the training loader (full augmentation) after warm-up, beside the decode-only
    rate of the same records and a plain torch DataLoader doing the same work with PIL + numpy.

    \b
    alexnet-pipe bench loader --data ./alexnet-data --batches 30
    alexnet-pipe bench loader --data ./alexnet-data --normalize-in dali --no-baseline
    alexnet-pipe bench loader --device cuda --batch-size 256 --threads 8 --no-baseline --json
    alexnet-pipe bench loader --crops random-resized --color-jitter 0.4 --lighting 0   # vs the paper's, same run
    alexnet-pipe bench loader --loader torch --crops random-resized --color-jitter 0.4 --lighting 0 --repeats 5

    An augmentation other than the paper's is also timed against the paper's (ratio_to_paper).
    """
    from alexnet_pipe.report.bench_loader import BenchLoaderSettings, measure, report_lines
    normalize = normalize or ("channel" if crops == "random-resized" else "mean-image")
    s = BenchLoaderSettings(data, loader, device, reader, roi_decode, normalize_in, fancy_upsampling,
                            batch_size, batches, warmup, crop, threads, baseline, crops, color_jitter, hue,
                            normalize, lighting, repeats)
    run_and_report("bench loader", s, measure, as_json, report_lines)
