"""docs/getting-started.md's cloud path, run as written against a local S3 server (moto, its own process): the
indexed Job's container command once per completion index, each "pod" with a scratch dir of its own (machines that
share nothing), the finalising command, then pull on a "node": the pulled data dir equals a local prepare of the
same download, record for record. (tests/test_docs.py runs the finalise/pull/train blocks alone.)"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import bucketdata, layouts
from helpers.docblocks import ROOT, blocks, named_block
from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree

GETTING_STARTED = ROOT / "docs" / "getting-started.md"
DOC_BUCKET = "s3://my-bucket"


def _doc_command(contains: str) -> list[str]:
    """The one command line of getting-started.md's runnable blocks that contains `contains`."""
    lines = [line for b in blocks(GETTING_STARTED) if b.verdict and b.verdict.kind == "sub"
             for line in b.body.splitlines() if contains in line]
    assert len(lines) == 1, f"getting-started.md has {len(lines)} runnable lines with {contains!r}"
    return shlex.split(lines[0].split("#")[0])


def _run(argv: list[str], **env: str) -> str:
    assert argv[0] == "alexnet-pipe", argv
    done = subprocess.run([sys.executable, "-m", "alexnet_pipe", *argv[1:]], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)
    assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_cloud_path_runs_as_written_and_equals_a_local_prepare(s3, tmp_path):
    import yaml  # PyYAML, a test dependency
    server, bucket = s3
    tree = tmp_path / "tree"
    write_sample_tree(tree, SampleSettings(classes=4, train_per_class=10, val_per_class=2))
    download = layouts.archives(tree, tmp_path / "imagenet")
    server.upload_tree(download, f"{bucket}/imagenet")
    here = lambda args: [a.replace(DOC_BUCKET, bucket) for a in args]  # noqa: E731

    job = yaml.safe_load(named_block("k8s-prepare"))
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    argv = container["command"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert argv[argv.index("--array-count") + 1] == str(spec["completions"])
    assert argv[argv.index("--scratch") + 1] in {m["mountPath"] for m in container["volumeMounts"]}
    for index in range(spec["completions"]):  # each pod: its own scratch dir, one worker on this small machine
        args = here(argv)
        args[args.index("--scratch") + 1] = str(tmp_path / f"pod{index}")
        args[args.index("--workers") + 1] = "1"
        (tmp_path / f"pod{index}").mkdir()
        assert f"array task {index + 1} of {spec['completions']}" in _run(args, JOB_COMPLETION_INDEX=str(index))

    finalise = here(_doc_command(f"--data {DOC_BUCKET}/alexnet-data"))
    assert "--only-shards" not in finalise and finalise[2] == argv[2].replace(DOC_BUCKET, bucket)
    _run(finalise)
    pull = here(_doc_command("alexnet-pipe pull"))
    node = tmp_path / "node"
    _run([*pull[:-1], str(node)])
    _run(["alexnet-pipe", "verify", "--data", str(node)])

    shards = argv[argv.index("--shards") + 1]
    _run(["alexnet-pipe", "prepare", str(download), "--data", str(tmp_path / "local"), "--shards", shards])
    pulled, local = bucketdata.snapshot(node), bucketdata.snapshot(tmp_path / "local")
    assert pulled["records"] == local["records"]
    # a reject names its input where it was read: the bucket's object, the local file
    assert pulled["rejects"].replace(f"{bucket}/imagenet".encode(), str(download).encode()) == local["rejects"]
    assert {k: v for k, v in pulled["manifest"].items() if k != "source"} == \
           {k: v for k, v in local["manifest"].items() if k != "source"}
