"""`alexnet-pipe bench loader`: training-loader images/s beside decode-only and a plain torch baseline."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from pathlib import Path

import click

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.limits import MAX_PROCESSES, MAX_SIZE, MAX_STRENGTH
from alexnet_pipe_cli.common import BATCH, FiniteFloat, data_option, run_and_report


@dataclasses.dataclass(frozen=True)
class BenchLoaderSettings:
    data: Path
    loader: str
    device: str
    reader: str
    roi_decode: bool
    normalize_in: str
    fancy_upsampling: bool
    batch_size: int
    batches: int
    warmup: int
    crop: int
    threads: int
    baseline: bool
    crops: str = "translate"  # the augmentation timed (the paper's by default)
    color_jitter: float = 0.0
    hue: float = 0.0
    normalize: str = "mean-image"
    lighting: float = 0.1

    def is_papers(self) -> bool:
        return self == dataclasses.replace(self, **PAPER_AUGMENTATION)


# the paper's augmentation (LoaderSettings' defaults): what a modern one is timed against in the same run
PAPER_AUGMENTATION = dict(crops="translate", color_jitter=0.0, hue=0.0, normalize="mean-image", lighting=0.1)


def timed_rate(batches, warmup: int, count: int) -> float:
    """Images/s over `count` batches after `warmup` batches of an (endless) batch iterator."""
    start, seen = None, 0
    try:
        for done, batch in enumerate(batches, 1):
            if done == warmup:
                start = time.perf_counter()
            elif done > warmup:
                seen += len(batch[0])
            if done == warmup + count:
                return seen / (time.perf_counter() - start)
    finally:
        batches.close()  # ends the epoch: pipelines, workers and shard handles go now
    raise UserError("the loader stopped early")


def _loader_batches(s: BenchLoaderSettings):
    from alexnet_pipe.loaders import LoaderSettings, make_loader
    from alexnet_pipe.loaders.dali import CaffeReaderLoader, DaliLoader
    settings = LoaderSettings(s.data, batch_size=s.batch_size, crop=s.crop, loader=s.loader,
                              device=s.device, num_threads=s.threads, reader=s.reader,
                              fancy_upsampling=s.fancy_upsampling, crops=s.crops, color_jitter=s.color_jitter,
                              hue=s.hue, normalize=s.normalize, lighting=s.lighting)
    if s.loader == "dali":
        cls = CaffeReaderLoader if s.reader == "caffe" else DaliLoader
        loader = cls(settings, roi_decode=s.roi_decode, normalize_in=s.normalize_in)
    else:
        loader = make_loader(settings)
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def _decode_batches(s: BenchLoaderSettings):
    """DALI's reader and decoder alone, endlessly; the batches stay where the decoder put them (a
    copy to numpy would time the host, not the decoder: 10,000 instead of 20,000+ img/s on an H100)."""
    from alexnet_pipe.shards.decode import build_decode_pipeline, probe
    from alexnet_pipe.shards.format import shard_dirs
    dirs = shard_dirs(s.data, "train")
    pipe = build_decode_pipeline(dirs, batch_size=s.batch_size, device=s.device, encoded=probe(dirs).encoded,
                                 num_threads=s.threads, fancy_upsampling=s.fancy_upsampling)
    try:
        while True:
            yield pipe.run()  # (images, labels): DALI batches, whose len() is the batch size
    finally:
        del pipe


def _baseline_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "loader_baseline.py"
    if not path.is_file():
        raise UserError(f"the baseline script {path} is not here (it ships with the source tree): "
                        "use --no-baseline")
    spec = importlib.util.spec_from_file_location("loader_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_shards_once(data: Path) -> None:
    """Bring every train shard file into the page cache, so that no contender pays for the first
    reads from disk (the first of three runs here was 1.5-2x slower than the next two without it).
    Skipped when the split is over a quarter of the memory (ImageNet: ~40 GB): the cache could not
    keep it, and the timed batches read only a few thousand records anyway."""
    from alexnet_pipe.shards.format import shard_dirs
    files = [f for shard in shard_dirs(data, "train") if shard.is_dir()  # a missing shard: the loader says so
             for f in shard.iterdir()]
    if sum(f.stat().st_size for f in files) > _memory_bytes() // 4:
        return
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no such sysconf name here: do not warm
        return 0


def measure(s: BenchLoaderSettings) -> dict:
    read_shards_once(s.data)
    result = {"images_per_sec": timed_rate(_loader_batches(s), s.warmup, s.batches),
              "decode_only_images_per_sec": timed_rate(_decode_batches(s), s.warmup, s.batches)}
    result["fraction_of_decode_only"] = result["images_per_sec"] / result["decode_only_images_per_sec"]
    if not s.is_papers():  # the same loader with the paper's augmentation, in the same run
        paper = dataclasses.replace(s, **PAPER_AUGMENTATION)
        result["paper_images_per_sec"] = timed_rate(_loader_batches(paper), s.warmup, s.batches)
        result["ratio_to_paper"] = result["images_per_sec"] / result["paper_images_per_sec"]
    if s.baseline:
        rate = _baseline_module().baseline_rate(s.data, batch_size=s.batch_size, batches=s.batches,
                                                warmup=s.warmup, crop=s.crop, workers=2)
        result["baseline_images_per_sec"] = rate
        result["speedup_vs_baseline"] = result["images_per_sec"] / rate
    result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()}
    return result


@click.command()
@data_option
@click.option("--loader", type=click.Choice(["dali", "torch"]), default="dali", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def bench_loader(data, loader, device, reader, roi_decode, normalize_in, fancy_upsampling, batch_size, batches,
                 warmup, crop, threads, baseline, crops, color_jitter, hue, normalize, lighting, as_json):
    """Images/s of the training loader (full augmentation) after warm-up, beside the decode-only
    rate of the same records and a plain torch DataLoader doing the same work with PIL + numpy.

    \b
    alexnet-pipe bench loader --data ./alexnet-data --batches 30
    alexnet-pipe bench loader --data ./alexnet-data --normalize-in dali --no-baseline
    alexnet-pipe bench loader --device gpu --batch-size 256 --threads 8 --no-baseline --json
    alexnet-pipe bench loader --crops random-resized --color-jitter 0.4 --lighting 0   # vs the paper's, same run

    An augmentation other than the paper's is also timed against the paper's (ratio_to_paper).
    """
    normalize = normalize or ("channel" if crops == "random-resized" else "mean-image")
    s = BenchLoaderSettings(data, loader, device, reader, roi_decode, normalize_in, fancy_upsampling,
                            batch_size, batches, warmup, crop, threads, baseline, crops, color_jitter, hue,
                            normalize, lighting)
    run_and_report("bench loader", s, measure, as_json, lambda r: [
        f"loader       {r['images_per_sec']:10.1f} img/s",
        f"decode-only  {r['decode_only_images_per_sec']:10.1f} img/s   (loader = {r['fraction_of_decode_only']:.0%} of it)",
        *([f"baseline     {r['baseline_images_per_sec']:10.1f} img/s   (loader = {r['speedup_vs_baseline']:.2f}x)"]
          if baseline else []),
        *([f"paper's aug  {r['paper_images_per_sec']:10.1f} img/s   (loader = {r['ratio_to_paper']:.2f}x)"]
          if "paper_images_per_sec" in r else [])])
