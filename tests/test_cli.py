"""The command layer: help everywhere, bad input as one sentence, no heavy imports where not needed."""
from __future__ import annotations

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
    from alexnet_pipe.sample_data import SampleSettings, write_sample_tree
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
    _one_sentence_error(r)
    assert "cannot write" in r.output


def test_data_dir_from_environment(tmp_path):
    r = _run(["info"], env={"ALEXNET_PIPE_DATA": str(tmp_path / "nowhere")})
    _one_sentence_error(r)
    assert "nowhere" in r.output and "alexnet-pipe prepare" in r.output


def test_prepare_dry_run_and_info(tmp_path):
    from alexnet_pipe.sample_data import SampleSettings, write_sample_tree
    write_sample_tree(tmp_path / "src", SampleSettings(classes=2, train_per_class=9, val_per_class=2))
    r = _run(["prepare", str(tmp_path / "src"), "--data", str(tmp_path / "d"), "--dry-run", "--shards", "2"])
    assert r.exit_code == 0 and "train: 18 images -> 2 shards" in r.output
    assert not (tmp_path / "d").exists()
    r = _run(["prepare", str(tmp_path / "src"), "--data", str(tmp_path / "d"), "--size", "32", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "rejected" in r.output and "rejects.jsonl" in r.output
    r = _run(["info", "--data", str(tmp_path / "d")])
    assert r.exit_code == 0 and "train: 15 records in 1 shards" in r.output, r.output
