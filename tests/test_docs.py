"""Every command the docs show runs as the docs say (README.md, docs/*.md; the verdicts: tests/docblocks.py).

The blocks of one file run in order in one shell session (exports and `cd` carry over), in a scratch clone: the
repository's files linked in, and a `.venv` that is the environment the suite runs in (its `.installed` marks
`make install` as done). README.md and getting-started.md start where a fresh clone does, without the command on
PATH: they show how to get it; the other docs start with the venv active.

The one substitution (`<!-- test: sub -->` blocks; `run` blocks get neither part):
  * paths: absolute paths under /data, /fast, /shared and /tmp are taken under the scratch dir, where /data/imagenet
    (the official tars), /data/kaggle (Kaggle's tree) and /data/folders (extracted folders, flat val/) with
    /data/LOC_val_solution.csv hold a tiny generated ImageNet (`sample-data`: 4 classes, 40 train images);
  * buckets: s3:// URLs name buckets on a local S3 server (moto, in its own process) whose AWS_* variables the
    block gets; s3://my-bucket/imagenet holds the official tars of the same tiny ImageNet;
  * run length: the environment variables of SUBSTITUTION (every option can come from the environment, a given
    option wins): 2 training steps of a 1/16-width network, a short demo, one benchmark step, and `make test`
    collecting one test file (the suite cannot run itself from inside itself), and `make mutation` running one
    mutant of the optim group (a whole run takes hours).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.docblocks import PYTHON, ROOT, Block, blocks, doc_files, problem

SUBSTITUTION = {
    "ALEXNET_PIPE_TRAIN_MAX_STEPS": "2", "ALEXNET_PIPE_TRAIN_WIDTH": "0.0625", "ALEXNET_PIPE_TRAIN_BATCH_SIZE": "8",
    "ALEXNET_PIPE_DEMO_CLASSES": "4", "ALEXNET_PIPE_DEMO_TRAIN_PER_CLASS": "30", "ALEXNET_PIPE_DEMO_VAL_PER_CLASS": "8",
    "ALEXNET_PIPE_DEMO_EPOCHS": "8", "ALEXNET_PIPE_DEMO_NPROC": "1",
    "ALEXNET_PIPE_BENCH_TRAIN_STEPS": "1", "ALEXNET_PIPE_BENCH_TRAIN_WARMUP": "1",
    "ALEXNET_PIPE_BENCH_TRAIN_REPEATS": "1", "ALEXNET_PIPE_BENCH_TRAIN_WIDTH": "0.0625",
    "ALEXNET_PIPE_BENCH_TRAIN_CROP": "64", "ALEXNET_PIPE_BENCH_TRAIN_BATCH_SIZE": "4",
    "PYTEST_ADDOPTS": "--collect-only -q tests/train/test_config.py",
    "MUTATION_GROUPS": "optim", "ALEXNET_PIPE_MUTATION_ONLY": "alexnet_pipe.train.schedule.x_lr_at__mutmut_1",
}
SITE_PATHS = re.compile(r"(?<![\w.$/-])/(data|fast|shared|tmp)(?=/|\s|$)", re.M)
FRESH_SHELL = {"README.md", "docs/getting-started.md"}  # the command is not on PATH yet
CLONE = ["README.md", "Makefile", "pyproject.toml", "alexnet_pipe", "cli", "tests", "benchmarks", "docs", "tools"]
BLOCK_TIMEOUT = 600


def test_every_code_block_has_a_verdict():
    """A new shell or python block in the docs says how it is tested, or why it cannot be here."""
    problems = [p for path in doc_files() for b in blocks(path) if (p := problem(b))]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the scratch clone and its inputs

@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Path:
    """The site's inputs of the substitution (a tiny ImageNet in three layouts) and a prepared data dir."""
    from helpers import layouts
    from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
    from alexnet_pipe_cli.main import cli
    from click.testing import CliRunner
    base = tmp_path_factory.mktemp("doc-inputs")
    tree = base / "site" / "data" / "folders"
    write_sample_tree(tree, SampleSettings(classes=4, train_per_class=10, val_per_class=2))
    shutil.copy(tree / "LOC_val_solution.csv", tree.parent / "LOC_val_solution.csv")
    layouts.archives(tree, tree.parent / "imagenet")
    layouts.kaggle_nested(tree, tree.parent / "kaggle")
    for folder in ("fast", "shared", "tmp"):
        (base / "site" / folder).mkdir()
    data = base / "alexnet-data"
    for args in (["prepare", str(tree), "--data", str(data), "--workers", "1"], ["stats", "--pca", "--data", str(data)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    return base


def fake_venv(clone: Path) -> Path:
    """`.venv` of the scratch clone: the environment running these tests, installed (make's `.installed`)."""
    bindir = Path(sys.executable).parent
    venv = clone / ".venv" / "bin"
    venv.mkdir(parents=True)
    scripts = {"python": f'exec {shlex.quote(sys.executable)} "$@"',
               "alexnet-pipe": f'exec {shlex.quote(str(bindir / "alexnet-pipe"))} "$@"'}
    for name, line in scripts.items():
        (venv / name).write_text(f"#!/bin/sh\n{line}\n")
        (venv / name).chmod(0o755)
    (venv / "activate").write_text(f'export VIRTUAL_ENV={shlex.quote(str(clone / ".venv"))}\n'
                                   f'export PATH="{venv}:$PATH"\n')
    (clone / ".venv" / ".installed").touch()  # after pyproject.toml's link: make install has nothing to do
    return venv


def scratch_clone(tmp_path: Path, inputs: Path, fresh: bool, with_data: bool) -> tuple[Path, Path, Path]:
    """(clone, site root, the session's state file)."""
    clone = tmp_path / "alexnet-pipe"
    clone.mkdir()
    for name in CLONE:
        (clone / name).symlink_to(ROOT / name)
    venv = fake_venv(clone)
    site = tmp_path / "site"
    shutil.copytree(inputs / "site", site, symlinks=True)
    if with_data:
        shutil.copytree(inputs / "alexnet-data", clone / "alexnet-data")
    state = tmp_path / "state.sh"
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if Path(p).resolve() != Path(sys.executable).parent.resolve())
    state.write_text(f"export PATH={shlex.quote(path if fresh else f'{venv}{os.pathsep}{path}')}\n"
                     f"cd {shlex.quote(str(clone))}\n")
    return clone, site, state


# ---------------------------------------------------------------- running a block

def base_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ALEXNET_PIPE_", "PYTEST_", "VIRTUAL_ENV", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    return dict(env, PYTHONUNBUFFERED="1", OPENCV_LOG_LEVEL="ERROR")


def shell_script(block: Block, text: str, state: Path) -> str:
    """The block between restoring the session's state and saving it (the substitution's variables excluded)."""
    if block.lang in PYTHON:
        code = state.with_name(f"block-{block.line}.py")
        code.write_text(text)
        text = f"exec {shlex.quote(sys.executable)} {shlex.quote(str(code))}"
    keep = " ".join(SUBSTITUTION)
    return (f"source {shlex.quote(str(state))}\nset -eo pipefail\n{text}\nset +e\n"
            f"unset {keep}\n{{ export -p; printf 'cd %q\\n' \"$PWD\"; }} > {shlex.quote(str(state))}\n")


DOC_BUCKET = "my-bucket"


@pytest.fixture(scope="session")
def doc_bucket(s3_server, inputs) -> dict:
    """The docs' bucket on the local S3 server, holding the official tars at imagenet/; the variables that
    point a client at the server."""
    s3_server.client().create_bucket(Bucket=DOC_BUCKET)
    s3_server.upload_tree(inputs / "site" / "data" / "imagenet", f"s3://{DOC_BUCKET}/imagenet")
    return s3_server.env


def run_block(block: Block, site: Path, state: Path, bucket_env: dict | None = None) -> None:
    sub = block.verdict.kind == "sub"
    text = SITE_PATHS.sub(lambda m: f"{site}/{m[1]}", block.body) if sub else block.body
    env = dict(base_env(), **(dict(SUBSTITUTION, **(bucket_env or {})) if sub else {}))
    script = shell_script(block, text, state)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert done.returncode == 0, (f"{block.where} ({block.verdict.kind}) exited {done.returncode}:\n{text}\n"
                                  f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")


def check_printed(block: Block, state: Path) -> None:
    """The block is a run of consecutive lines of what its command prints."""
    done = subprocess.run(["bash", "-c", f"source {shlex.quote(str(state))}\n{block.printed_by}"], env=base_env(),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    want = [line.rstrip() for line in block.body.rstrip("\n").splitlines()]
    got = [line.rstrip() for line in done.stdout.splitlines()]
    assert any(got[i:i + len(want)] == want for i in range(len(got))), (
        f"{block.where} is not what `{block.printed_by}` prints:\n{done.stdout}")


def runnable(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.printed_by or (b.verdict and b.verdict.kind in ("run", "sub"))]


def _params():
    for path in doc_files():
        todo = runnable(path)
        if todo:
            slow = any(b.verdict and "slow" in b.verdict.flags for b in todo)
            yield pytest.param(path, id=path.name, marks=[pytest.mark.slow] if slow else [])


def uses_a_bucket(todo: list[Block]) -> bool:
    return any(b.verdict and b.verdict.kind == "sub" and "s3://" in b.body for b in todo)


@pytest.mark.parametrize("path", list(_params()))
def test_the_docs_run(path, inputs, tmp_path, request):
    todo = runnable(path)
    bucket_env = request.getfixturevalue("doc_bucket") if uses_a_bucket(todo) else None
    name = str(path.relative_to(ROOT))
    with_data = any(b.verdict and "data" in b.verdict.flags for b in todo)
    clone, site, state = scratch_clone(tmp_path, inputs, name in FRESH_SHELL, with_data)
    for block in todo:
        if block.printed_by:
            check_printed(block, state)
        else:
            run_block(block, site, state, bucket_env)
