"""`--json`: the JSON object alone on stdout (`... --json | python -m json.tool` works), progress and messages on
stderr. Every command that has --json is run here; a new one without a case fails the first test."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_pipe_cli.bench import BENCH_COMMANDS
from alexnet_pipe_cli.main import COMMANDS, cli
from alexnet_pipe_cli.viz import VIZ_COMMANDS
from helpers.shardgen import make_data_dir, random_images

TINY_TRAIN = ["--loader", "torch", "--cpu", "--width", "0.0625", "--crop", "64", "--batch-size", "4",
              "--max-steps", "1", "--eval-every", "0", "--num-threads", "0", "--lighting", "0",
              "--normalize", "channel"]
# command words -> its arguments besides --json; "{data}" and "{ckpt}" are filled from the fixture
CASES = {
    "info": ["--data", "{data}"],
    "evaluate": ["{ckpt}", "--data", "{data}", "--loader", "torch", "--batch-size", "8"],
    "bench train": ["--cpu", "--width", "0.0625", "--crop", "64", "--batch-size", "2", "--steps", "1",
                    "--warmup", "1", "--repeats", "1"],
    "bench prepare": ["--images", "8", "--workers", "1", "--size", "32", "--repeats", "1"],
    "bench loader": ["--data", "{data}", "--batch-size", "4", "--batches", "1", "--warmup", "1", "--crop", "64",
                     "--no-baseline", "--threads", "1"],
}


def _commands_with_json() -> set[str]:
    found = set()
    for group, names in (([], COMMANDS), (["bench"], BENCH_COMMANDS), (["viz"], VIZ_COMMANDS)):
        for name in names:
            if name in ("bench", "viz"):
                continue
            command = cli.get_command(None, group[0]) if group else cli
            command = command.get_command(None, name)
            if any("--json" in p.opts for p in command.params):
                found.add(" ".join([*group, name]))
    return found


def test_every_json_command_has_a_case():
    assert _commands_with_json() == set(CASES)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A data dir with its statistics and a one-step checkpoint trained on it."""
    root = tmp_path_factory.mktemp("json")
    images = random_images(16, 72)
    data = make_data_dir(root / "d", {"train": (images[:12], np.arange(12) % 2),
                                      "val": (images[12:], np.arange(4) % 2)}, num_classes=2, shards=1)
    for args in (["stats", "--pca", "--data", str(data)],
                 ["train", "--data", str(data), "--run", str(data / "runs" / "r"), *TINY_TRAIN]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    return {"data": str(data), "ckpt": str(data / "runs" / "r" / "ckpt-00000001.pt")}


@pytest.mark.parametrize("words", sorted(CASES))
def test_json_is_alone_on_stdout(words, made):
    if words == "bench loader":
        pytest.importorskip("nvidia.dali", reason="bench loader's decode-only pass is DALI's")
    args = [*words.split(), *(a.format(**made) for a in CASES[words]), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), dict), result.stdout  # nothing but the object
