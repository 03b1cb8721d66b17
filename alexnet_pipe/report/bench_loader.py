"""`alexnet-pipe bench loader`: training-loader images/s beside decode-only and a plain torch baseline, measured
in the same run (cli/bench_loader.py is its command)."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import statistics
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
    repeats: int = 1  # alternating rounds of every contender; medians reported

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
    try:
        while True:
            yield from loader.epoch(epoch)
            epoch += 1
    finally:
        loader.close()  # workers that persist across epochs go now, inside the call that started them


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


def _contenders(s: BenchLoaderSettings) -> dict:
    """name -> a function timing it once: the loader, decode-only, the paper's augmentation (when another is
    asked for) and the plain torch baseline."""
    out = {"loader": lambda: timed_rate(_loader_batches(s), s.warmup, s.batches),
           "decode_only": lambda: timed_rate(_decode_batches(s), s.warmup, s.batches)}
    if not s.is_papers():  # the same loader with the paper's augmentation, in the same run
        paper = dataclasses.replace(s, **PAPER_AUGMENTATION)
        out["paper"] = lambda: timed_rate(_loader_batches(paper), s.warmup, s.batches)
    if s.baseline:
        out["baseline"] = lambda: _baseline_module().baseline_rate(
            s.data, batch_size=s.batch_size, batches=s.batches, warmup=s.warmup, crop=s.crop, workers=2)
    return out


def _ratio(runs: dict, a: str, b: str) -> tuple[float, float, float]:
    """(median, min, max) of a / b over the rounds: each ratio from one round, its two contenders run back to back."""
    ratios = [x / y for x, y in zip(runs[a], runs[b])]
    return statistics.median(ratios), min(ratios), max(ratios)


_RATIOS = {"fraction_of_decode_only": ("loader", "decode_only"), "ratio_to_paper": ("loader", "paper"),
           "speedup_vs_baseline": ("loader", "baseline"), "paper_speedup_vs_baseline": ("paper", "baseline")}


def _ratios(runs: dict) -> dict:
    """Every ratio of _RATIOS whose two contenders ran, with its spread over the rounds."""
    out = {}
    for key, (a, b) in _RATIOS.items():
        if a in runs and b in runs:
            out[key], low, high = _ratio(runs, a, b)
            out[key + "_spread"] = [low, high]
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for (DataLoader workers, once joined)."""
    import resource
    return sum(sum(resource.getrusage(who)[:2]) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _rounds(s: BenchLoaderSettings) -> tuple[dict, dict, dict]:
    """Every contender once per round, `repeats` rounds in turn: its timed rate (after the warm-up), its rate
    over the whole call (start-up, warm-up and shutdown included) and its CPU us per image over the call."""
    contenders = _contenders(s)
    runs, calls, cpu = ({name: [] for name in contenders} for _ in range(3))
    images = (s.warmup + s.batches) * s.batch_size
    for _ in range(s.repeats):
        for name, once in contenders.items():
            c0, t0 = _cpu_seconds(), time.perf_counter()
            runs[name].append(once())
            calls[name].append(images / (time.perf_counter() - t0))
            cpu[name].append((_cpu_seconds() - c0) / images * 1e6)
    return runs, calls, cpu


def measure(s: BenchLoaderSettings) -> dict:
    """Every contender once per round, `repeats` rounds in turn (a loaded machine's drift falls on all alike);
    rates are medians, ratios the medians of each round's own ratio, with their spread (min, max).  The rates
    are timed after `warmup` batches (the steady state) and, beside them, over each whole call (start-up
    included: a loader that is quick to start is worth as much on short runs); and each contender's CPU time
    per image over its whole call: on a machine shared with other jobs the wall clock says how much of the
    cores a contender was given, the CPU time what it cost."""
    read_shards_once(s.data)
    runs, calls, cpu = _rounds(s)
    med = {name: statistics.median(rates) for name, rates in runs.items()}
    result = {"images_per_sec": med["loader"], "decode_only_images_per_sec": med["decode_only"]}
    if "paper" in runs:
        result["paper_images_per_sec"] = med["paper"]
    if "baseline" in runs:
        result["baseline_images_per_sec"] = med["baseline"]
    result.update(_ratios(runs))
    result["startup_included"] = {"images_per_sec": {name: statistics.median(v) for name, v in calls.items()},
                                  **_ratios(calls), "runs": calls}
    result["cpu_us_per_image"] = {name: statistics.median(v) for name, v in cpu.items()}
    if "paper" in cpu:  # > 1: the loader costs less CPU than the paper's augmentation would
        result["cpu_ratio_to_paper"] = statistics.median(p / q for p, q in zip(cpu["paper"], cpu["loader"]))
    result["runs"], result["cpu_runs"] = runs, cpu
    result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()}
    return result


def report_lines(r: dict) -> list[str]:
    """The text report of measure()'s result."""
    spread = lambda key: f"{r[key]:.2f}x, {r[key + '_spread'][0]:.2f}-{r[key + '_spread'][1]:.2f}"  # noqa: E731
    rates = lambda name: f"{min(r['runs'][name]):.0f}-{max(r['runs'][name]):.0f}"  # noqa: E731
    lines = [f"loader       {r['images_per_sec']:10.1f} img/s  ({rates('loader')})",
             f"decode-only  {r['decode_only_images_per_sec']:10.1f} img/s  ({rates('decode_only')}; loader = "
             f"{r['fraction_of_decode_only']:.0%} of it)"]
    if "baseline_images_per_sec" in r:
        lines.append(f"baseline     {r['baseline_images_per_sec']:10.1f} img/s  ({rates('baseline')}; loader = "
                     f"{spread('speedup_vs_baseline')})")
    if "paper_images_per_sec" in r:
        lines.append(f"paper's aug  {r['paper_images_per_sec']:10.1f} img/s  ({rates('paper')}; loader = "
                     f"{spread('ratio_to_paper')})")
    if "paper_speedup_vs_baseline" in r:
        lines.append(f"paper's aug vs baseline: {spread('paper_speedup_vs_baseline')}")
    whole = r["startup_included"]
    lines.append("whole calls, start-up included: " + ", ".join(
        f"{k} {v:.0f}" for k, v in whole["images_per_sec"].items()) + " img/s" + "".join(
        f"; {label} {whole[key]:.2f}x ({whole[key + '_spread'][0]:.2f}-{whole[key + '_spread'][1]:.2f})"
        for key, label in (("speedup_vs_baseline", "loader vs baseline"),
                           ("paper_speedup_vs_baseline", "paper's vs baseline")) if key in whole))
    lines.append("CPU us/image: " + ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_image"].items()))
    return lines
