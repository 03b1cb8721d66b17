"""prepare from an object store against the same inputs on disk, in one run (docs/performance.md).

    .venv/bin/python benchmarks/prepare_s3.py --images 600 --workers 2 --repeats 3

A local S3 protocol server (moto in its own process, as the tests start it: the test extra) holds the same
ImageNet-like JPEGs (`bench prepare`'s generator) as a folder tree and as the official train tar (per-class tars
inside). prepare runs alternate disk / bucket, per layout, and the medians are compared. Then what listing the
tar's headers in place costs per member: requests (counted at s3fs's call) and microseconds, against listing the
same tar on disk.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # helpers.s3server: one copy


def train_tar(tree: Path, out: Path) -> Path:
    """ILSVRC2012_img_train.tar of tree/train: one uncompressed tar per class inside."""
    out.mkdir(parents=True)
    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as outer:
        for folder in sorted((tree / "train").iterdir()):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for f in sorted(folder.iterdir()):
                    t.add(f, arcname=f.name)
            info = tarfile.TarInfo(f"{folder.name}.tar")
            info.size = len(inner.getvalue())
            outer.addfile(info, io.BytesIO(inner.getvalue()))
    return out


def prepare_rate(src, data: Path, workers: int, size: int) -> float:
    from alexnet_pipe.ingest.prepare import PrepareSettings, run
    summary = run(PrepareSettings(source=src, data=data, size=size, workers=workers), echo=lambda *_: None,
                  stream=io.StringIO())
    return summary["images_per_sec"]


def counting_requests():
    """A counter of the requests s3fs sends (each S3 call goes through S3FileSystem._call_s3)."""
    import s3fs
    counts, real = {}, s3fs.S3FileSystem._call_s3

    async def call(self, method, *args, **kwargs):
        counts[method] = counts.get(method, 0) + 1
        return await real(self, method, *args, **kwargs)
    s3fs.S3FileSystem._call_s3 = call
    return counts


def header_cost(local: Path, url: str) -> dict:
    from alexnet_pipe.ingest.archives import TRAIN_TAR, list_train_archive
    from alexnet_pipe.ingest.remote_tree import open_tree
    t = time.perf_counter()
    _, found = list_train_archive(local / TRAIN_TAR, [])
    local_s = time.perf_counter() - t
    counts = counting_requests()
    t = time.perf_counter()
    _, remote_found = list_train_archive(open_tree(url) / TRAIN_TAR, [])
    remote_s = time.perf_counter() - t
    assert remote_found == found  # the same members at the same offsets
    n = len(found)
    return {"members": n, "requests": counts, "requests_per_member": sum(counts.values()) / n,
            "remote_us_per_member": remote_s / n * 1e6, "local_us_per_member": local_s / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from helpers.s3server import S3Server

    from alexnet_pipe.report.bench_prepare import make_tree
    tmp = Path(tempfile.mkdtemp(prefix="prepare-s3-"))
    tree = make_tree(tmp / "folders", args.images)
    layouts = {"folders": tree, "archives": train_tar(tree, tmp / "archives")}
    server = S3Server().start()
    os.environ.update(server.env)
    bucket = f"s3://{server.new_bucket()}"
    try:
        for name, src in layouts.items():
            server.upload_tree(src, f"{bucket}/{name}")
        rates = {f"{name} {where}": [] for name in layouts for where in ("disk", "s3")}
        load = [os.getloadavg()[0]]
        for r in range(args.repeats):  # alternated, so that a change of the machine's load hits both alike
            for name, src in layouts.items():
                for where, source in (("disk", src), ("s3", f"{bucket}/{name}")):
                    rates[f"{name} {where}"].append(prepare_rate(source, tmp / f"d-{name}-{where}-{r}",
                                                                 args.workers, args.size))
            load.append(os.getloadavg()[0])
        out = {"images": args.images, "workers": args.workers, "size": args.size, "load_average": load,
               "runs": rates, "median_images_per_sec": {k: statistics.median(v) for k, v in rates.items()}}
        med = out["median_images_per_sec"]
        out["ratio_s3_vs_disk"] = {name: med[f"{name} s3"] / med[f"{name} disk"] for name in layouts}
        out["train_tar_headers"] = header_cost(layouts["archives"], f"{bucket}/archives")
    finally:
        server.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
