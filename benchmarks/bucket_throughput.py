"""prepare into a bucket and pull from it, against the same prepare on local disk, in one run.

Starts a local S3 server (moto, in its own process: `pip install 'moto[server]'`), writes a synthetic tree, then
times: prepare SRC --data LOCAL (the baseline), prepare SRC --data s3://... (same settings, its uploads timed
apart), and pull s3://... DIR one file at a time and --pull-jobs at a time (alternated, --pull-rounds each,
medians). Prints one JSON object: images/s of both prepares and their ratio, the upload's and the pulls' MB/s. A local moto server is a Python process on the same cores: its MB/s is a floor, not a cloud's.

    .venv/bin/python benchmarks/bucket_throughput.py --images 400 --size 256 --encoding raw
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's S3 server helper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--encoding", default="raw")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pull-jobs", type=int, default=4)
    ap.add_argument("--pull-rounds", type=int, default=3)
    a = ap.parse_args()
    from helpers.s3server import S3Server
    from alexnet_pipe.core import remote
    from alexnet_pipe.ingest.prepare import PrepareSettings, run
    from alexnet_pipe.ingest.pull import pull
    from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
    server = S3Server().start()
    os.environ.update(server.env)
    root = Path(tempfile.mkdtemp(prefix="bucket-bench-"))
    try:
        classes = 4
        write_sample_tree(root / "src", SampleSettings(classes=classes, train_per_class=a.images // classes,
                                                       val_per_class=1, seed=0, pathologies=False))
        settings = dict(source=root / "src", size=a.size, encoding=a.encoding, workers=a.workers, shard_size=100)
        t0 = time.perf_counter()
        base = run(PrepareSettings(data=root / "local", **settings), echo=lambda *_: None)
        local_s = time.perf_counter() - t0
        uploads = {"bytes": 0, "seconds": 0.0}
        put = remote.put_file

        def timed_put(local, url):
            t = time.perf_counter()
            put(local, url)
            uploads["seconds"] += time.perf_counter() - t
            uploads["bytes"] += os.path.getsize(local)
        remote.put_file = timed_put
        url = f"s3://{server.new_bucket()}/alexnet-data"
        t0 = time.perf_counter()
        run(PrepareSettings(data=url, scratch=root, **settings), echo=lambda *_: None)
        bucket_s = time.perf_counter() - t0
        remote.put_file = put
        pulls = {}  # one file at a time against --pull-jobs at a time, alternated
        for k in range(a.pull_rounds):
            for jobs in (1, a.pull_jobs):
                done = pull(url, root / f"pulled-{jobs}-{k}", jobs=jobs)
                pulls.setdefault(jobs, []).append(done["bytes"] / 1e6 / done["seconds"])
        pulled_mb = {jobs: sorted(v)[len(v) // 2] for jobs, v in pulls.items()}
        images = base["written_now"]
        print(json.dumps({
            "images": images, "size": a.size, "encoding": a.encoding, "workers": a.workers,
            "local_images_per_sec": round(images / local_s, 1), "bucket_images_per_sec": round(images / bucket_s, 1),
            "bucket_over_local": round(local_s / bucket_s, 3),
            "uploaded_mb": round(uploads["bytes"] / 1e6, 1),
            "upload_mb_per_sec": round(uploads["bytes"] / 1e6 / uploads["seconds"], 1),
            "upload_share_of_bucket_run": round(uploads["seconds"] / bucket_s, 3),
            "pull_mb_per_sec_one_file_at_a_time": round(pulled_mb[1], 1),
            f"pull_mb_per_sec_{a.pull_jobs}_at_a_time": round(pulled_mb[a.pull_jobs], 1),
            "pull_jobs_over_one": round(pulled_mb[a.pull_jobs] / pulled_mb[1], 2)}))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)  # our own mkdtemp


if __name__ == "__main__":
    main()
