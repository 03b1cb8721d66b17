"""`alexnet-pipe bench loader`: training-loader images/s beside decode-only and a plain torch baseline, measured
in the same run (cli/bench_loader.py is its command)."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from pathlib import Path

from alexnet_pipe.core.errors import UserError
from alexnet_pipe.report.dali_variants import BenchDaliLoader, CaffeReaderLoader, check_reader


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


def make_bench_loader(s: BenchLoaderSettings):
    """The loader timed: the production one, or with --reader caffe, --no-roi or --normalize-in dali the DALI
    variant kept for comparison (dali_variants.py)."""
    from alexnet_pipe.loaders import LoaderSettings, make_loader, resolve_loader
    settings = LoaderSettings(s.data, batch_size=s.batch_size, crop=s.crop, loader=resolve_loader(s.loader),
                              device=s.device, num_threads=s.threads, fancy_upsampling=s.fancy_upsampling,
                              crops=s.crops, color_jitter=s.color_jitter, hue=s.hue, normalize=s.normalize,
                              lighting=s.lighting)
    check_reader(settings, s.reader)
    if s.loader != "dali":
        return make_loader(settings)
    cls = CaffeReaderLoader if s.reader == "caffe" else BenchDaliLoader
    return cls(settings, roi_decode=s.roi_decode, normalize_in=s.normalize_in)


def _loader_batches(s: BenchLoaderSettings):
    loader = make_bench_loader(s)
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def _decode_batches(s: BenchLoaderSettings):
    """DALI's reader and decoder alone, endlessly; the batches stay where the decoder put them (a
    copy to numpy would time the host, not the decoder: 10,000 instead of 20,000+ img/s on an H100)."""
    from alexnet_pipe.shards.decode import build_decode_pipeline, probe
    from alexnet_pipe.shards.manifest import shard_dirs
    dirs = shard_dirs(s.data, "train")
    pipe = build_decode_pipeline(dirs, batch_size=s.batch_size, device=s.device, encoded=probe(dirs).encoded,
                                 num_threads=s.threads, fancy_upsampling=s.fancy_upsampling)
    try:
        while True:
            yield pipe.run()  # (images, labels): DALI batches, whose len() is the batch size
    finally:
        del pipe


def _baseline_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "loader_baseline.py"
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
    from alexnet_pipe.shards.manifest import shard_dirs
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
