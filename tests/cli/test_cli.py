"""The command layer: help everywhere, bad input as one sentence, no heavy imports where not needed."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from alexnet_pipe_cli.bench import BENCH_COMMANDS
from alexnet_pipe_cli.main import COMMANDS, cli
from alexnet_pipe_cli.viz import VIZ_COMMANDS

EVERY = ([[c] for c in COMMANDS] + [["bench", c] for c in BENCH_COMMANDS] + [["viz", c] for c in VIZ_COMMANDS])


@pytest.mark.parametrize("words", EVERY, ids=" ".join)
def test_help_of_every_command(words):
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_top_level_help_and_python_m():
    out = subprocess.run([sys.executable, "-m", "alexnet_pipe", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "prepare" in out.stdout


def test_help_and_prepare_do_not_import_torch_or_dali(tmp_path):
    code = ("import sys; from alexnet_pipe_cli.main import cli\n"
            "try:\n    cli(['prepare', '--help'], standalone_mode=False)\nfinally:\n"
            "    heavy = [m for m in ('torch', 'nvidia.dali', 'matplotlib') if m in sys.modules]\n"
            "    print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_prepare_runs_without_torch(tmp_path):
    from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
    write_sample_tree(tmp_path / "src", SampleSettings(classes=2, train_per_class=3, val_per_class=1,
                                                        pathologies=False))
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
            "from alexnet_pipe_cli.main import cli\n"
            f"cli(['prepare', {str(tmp_path / 'src')!r}, '--data', {str(tmp_path / 'd')!r}, '--size', '32',"
            " '--workers', '1'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "manifest.json").is_file()


def _run(args, **kw):
    return CliRunner().invoke(cli, args, **kw)


def _one_sentence_error(result, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.output.count("Error") == 1


def test_prepare_bad_inputs(tmp_path):
    _one_sentence_error(_run(["prepare", str(tmp_path / "missing")]), code=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _run(["prepare", str(empty), "--data", str(tmp_path / "d")])
    _one_sentence_error(r)
    assert "found no ImageNet layout" in r.output
    (empty / "train" / "n0").mkdir(parents=True)
    r = _run(["prepare", str(empty), "--data", str(tmp_path / "d")])
    _one_sentence_error(r)
    assert "found no images" in r.output
    _one_sentence_error(_run(["prepare", str(empty), "--workers", "0"]), code=2)
    _one_sentence_error(_run(["prepare", str(empty), "--only-shards", "3:1"]), code=2)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (empty / "train" / "n0" / "a.JPEG").write_bytes(b"")
    r = _run(["prepare", str(empty), "--data", str(a_file)])
    _one_sentence_error(r, code=2)  # click's Path type: "is a file"
    assert "is a file" in r.output
    r = _run(["prepare", str(empty), "--data", str(a_file / "below")])
    _one_sentence_error(r, code=2)  # data_option's check, before anything is created
    assert "which is a file, not a directory" in r.output


def test_data_dir_from_environment(tmp_path):
    r = _run(["info"], env={"ALEXNET_PIPE_DATA": str(tmp_path / "nowhere")})
    _one_sentence_error(r)
    assert "nowhere" in r.output and "alexnet-pipe prepare" in r.output


def test_prepare_dry_run_and_info(tmp_path):
    from alexnet_pipe.ingest.sample_data import SampleSettings, write_sample_tree
    write_sample_tree(tmp_path / "src", SampleSettings(classes=2, train_per_class=9, val_per_class=2))
    r = _run(["prepare", str(tmp_path / "src"), "--data", str(tmp_path / "d"), "--dry-run", "--shards", "2"])
    assert r.exit_code == 0 and "train: 18 images -> 2 shards" in r.output
    assert not (tmp_path / "d").exists()
    r = _run(["prepare", str(tmp_path / "src"), "--data", str(tmp_path / "d"), "--size", "32", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "rejected" in r.output and "rejects.jsonl" in r.output
    assert "rejected, by reason: 1 " in r.output and "1 empty file" in r.output
    r = _run(["info", "--data", str(tmp_path / "d")])
    assert r.exit_code == 0 and "train: 15 records in 1 shards" in r.output, r.output


@pytest.fixture()
def ready(tmp_path):
    """A small data dir with shards, manifest and stats (mean image + PCA), as prepare + stats --pca leave it."""
    import numpy as np
    from alexnet_pipe.stats.compute import StatsSettings, run_stats
    from helpers.shardgen import make_data_dir, random_images
    images = random_images(16, 64, seed=2)
    data = make_data_dir(tmp_path / "d", {"train": (images[:12], np.arange(12) % 3),
                                          "val": (images[12:], np.arange(4) % 3)}, 3, 2)
    run_stats(StatsSettings(data, pca=True, recompute=False, sample=None, plot=False))
    return data


def test_deleted_shard_dir_is_one_sentence_everywhere(ready):
    import shutil
    shutil.rmtree(ready / "train" / "shard-00001")
    d = ["--data", str(ready)]
    r = _run(["info", *d])
    assert r.exit_code == 0 and "shard dir(s) listed in the manifest are missing (shard-00001)" in r.output
    r = _run(["verify", *d, "--workers", "1"])
    _one_sentence_error(r)
    assert "train/shard-00001" in r.output
    for args, says in ((["stats", "--pca"], "listed in the manifest is missing"),
                       (["stats", "--recompute"], "missing or unreadable"),
                       (["train", "--cpu", "--loader", "torch", "--crop", "64", "--run", str(ready / "r")],
                        "shard dir(s) listed in"),
                       (["viz", "augment", "--crop", "56", "-o", str(ready / "a.png")], "missing or unreadable"),
                       (["bench", "loader", "--crop", "56", "--batches", "1", "--batch-size", "4"],
                        "missing or unreadable")):
        r = _run([*args, *d])
        _one_sentence_error(r)
        assert says in r.output and "alexnet-pipe" in r.output.splitlines()[-1], (args, r.output)


def test_manifest_that_is_not_one_is_one_sentence_everywhere(ready):
    (ready / "manifest.json").write_text("[1, 2]")
    d = ["--data", str(ready)]
    for args in (["info"], ["verify"], ["stats"], ["train", "--cpu", "--loader", "torch", "--crop", "64"],
                 ["viz", "augment", "--crop", "56"], ["bench", "loader", "--crop", "56"]):
        r = _run([*args, *d])
        _one_sentence_error(r)
        assert "is not a manifest written by `alexnet-pipe prepare`" in r.output, (args, r.output)


def test_user_error_exit_code_is_kept(monkeypatch):
    """An Interrupted (Ctrl-C after cleaning up) exits 130 as a shell does; other UserErrors exit 1."""
    from alexnet_pipe.core.errors import Interrupted
    import alexnet_pipe.shards.verify

    def stop(data):
        raise Interrupted("interrupted: run the same command again")
    monkeypatch.setattr(alexnet_pipe.shards.verify, "info", stop)
    r = _run(["info"])
    _one_sentence_error(r, code=130)
    assert "run the same command again" in r.output


def test_bench_prepare_json_reports_rates_and_ratios():
    r = _run(["bench", "prepare", "--images", "8", "--repeats", "1", "--workers", "2", "--size", "32", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["images"] == 8 and out["workers"] == 2
    rates = [out[k] for k in ("prepare_images_per_sec", "pil_baseline_images_per_sec",
                              "bare_decode_images_per_sec_one_core")]
    assert all(v > 0 for v in rates)
    assert out["ratio_vs_pil_baseline"] == pytest.approx(rates[0] / rates[1])
    assert out["per_core_ratio_vs_bare_decode"] == pytest.approx(rates[0] / 2 / rates[2])


def test_options_come_from_the_environment_and_a_given_option_wins(tmp_path):
    """ALEXNET_PIPE_<COMMAND>_<OPTION> sets any option (site defaults; the docs test shortens runs with it)."""
    env = {"ALEXNET_PIPE_TRAIN_MAX_STEPS": "7", "ALEXNET_PIPE_TRAIN_LOADER": "synthetic"}
    base = ["train", "--cpu", "--run", str(tmp_path / "r"), "--dry-run"]
    assert re.search(r"^  max_steps +7$", _run(base, env=env).output, re.M)
    assert re.search(r"^  max_steps +3$", _run([*base, "--max-steps", "3"], env=env).output, re.M)
    env = {"ALEXNET_PIPE_SAMPLE_DATA_CLASSES": "3"}
    result = _run(["sample-data", str(tmp_path / "s"), "--train-per-class", "1", "--no-pathologies"], env=env)
    assert result.exit_code == 0 and "(3 classes)" in result.output, result.output
