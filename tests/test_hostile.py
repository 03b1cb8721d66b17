"""Issue 15, as a careless or hostile user: paths that are not storage, data that does not fit the checkpoint,
hints that name options the command lacks, non-finite numbers. Each case: one sentence, a non-zero exit."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images
from helpers.commands import leaf_commands as _commands

S, CROP = 64, 64


def run(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def one_sentence(result, code=1) -> str:
    """The error line of a refused command: exit `code`, no traceback, one Error."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception,
                                                                                        SystemExit), result.output
    assert result.output.count("Error") == 1, result.output
    return result.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def data3(tmp_path_factory) -> Path:
    """12 train / 9 val images of 64 px in 3 classes, with stats (mean image + PCA)."""
    from alexnet_pipe.stats.compute import StatsSettings, run_stats
    images = random_images(21, S, seed=4)
    labels = np.arange(21) % 3
    root = make_data_dir(tmp_path_factory.mktemp("hostile") / "d", {
        "train": (images[:12], labels[:12]), "val": (images[12:], labels[12:])}, 3, 2)
    run_stats(StatsSettings(root, pca=True, recompute=False, sample=None, plot=False))
    return root


def checkpoint(path: Path, classes: int, crop: int = CROP) -> Path:
    """A checkpoint as train writes it (untrained weights): `classes` outputs, trained on `crop`."""
    import torch
    from alexnet_pipe.train.config import TrainSettings
    from alexnet_pipe.model.alexnet import build_model
    ts = TrainSettings(width=0.0625, crop=crop)
    torch.save({"model": build_model(ts.arch, classes, ts.width).state_dict(), "num_classes": classes,
                "settings": dataclasses.asdict(ts)}, path)
    return path


@pytest.fixture(scope="module")
def ckpt3(data3, tmp_path_factory) -> Path:
    return checkpoint(tmp_path_factory.mktemp("ckpt") / "three.pt", 3)


# ---------------------------------------------------------------- paths that are not storage

def _hostile_places(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    return {"proc": Path("/proc/self/alexnet"), "dev-null": Path("/dev/null"), "file": a_file,
            "below-a-file": a_file / "below"}


DATA_COMMANDS = [["info"], ["verify"], ["stats", "--pca"], ["viz", "augment"], ["bench", "loader"],
                 ["train", "--cpu", "--dry-run"], ["evaluate", "CKPT"], ["viz", "neighbors", "CKPT"]]


@pytest.mark.parametrize("words", DATA_COMMANDS, ids=" ".join)
def test_data_that_is_not_a_directory_is_one_sentence(words, tmp_path, ckpt3):
    words = [str(ckpt3) if w == "CKPT" else w for w in words]
    for name, place in _hostile_places(tmp_path).items():
        line = one_sentence(run(*words, "--data", place), code=2)
        assert str(place) in line and "--data" in line, (name, line)
    assert not (tmp_path / "a-file" / "below").exists()


def test_run_dir_that_is_not_a_directory_is_one_sentence(tmp_path):
    from alexnet_pipe_cli.common import run_dir_callback
    cmd = click.Command("t", params=[click.Option(["--run"], type=click.Path(path_type=Path),
                                                  callback=run_dir_callback)], callback=lambda run: None)
    for name, place in _hostile_places(tmp_path).items():
        result = CliRunner().invoke(cmd, ["--run", str(place)])
        assert result.exit_code == 2 and str(place) in result.output and "--run" in result.output, (name, result.output)
    assert CliRunner().invoke(cmd, ["--run", str(tmp_path / "new" / "run")]).exit_code == 0
    assert not (tmp_path / "new").exists()  # the check creates nothing


def _metrics_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": i, "epoch": i / 4, "loss": 2.0 - i / 10, "lr": 0.01} for i in range(1, 6)]
    rows.append({"step": 5, "epoch": 1.25, "top1_error": 0.5, "top5_error": 0.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_output_that_is_not_a_plain_file_is_one_sentence(tmp_path, ckpt3, data3):
    """-o into /proc, at /dev/null, below a file, at a directory: one sentence before any work, nothing created."""
    run_dir = _metrics_run(tmp_path)
    places = _hostile_places(tmp_path)
    del places["file"]  # a picture already there is replaced: -o names the file to write
    places["dir"] = tmp_path
    commands = [["viz", "curves", run_dir], ["viz", "filters", ckpt3],
                ["viz", "neighbors", ckpt3, "--data", data3], ["viz", "augment", "--data", data3]]
    for words in commands:
        for name, place in places.items():
            line = one_sentence(run(*words, "-o", place), code=2)
            assert str(place) in line, (words, name, line)
    assert not Path("/dev/null.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "run"]


def test_output_formats(tmp_path):
    """The suffix names the format; none: PNG at exactly that path; one matplotlib cannot write: refused,
    naming the ones it can."""
    run_dir = _metrics_run(tmp_path)
    result = run("viz", "curves", run_dir, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out").read_bytes().startswith(b"\x89PNG") and not (tmp_path / "out.png").exists()
    result = run("viz", "curves", run_dir, "-o", tmp_path / "curves.jpg")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.jpg").read_bytes().startswith(b"\xff\xd8")
    for bad in ("out.xyz", "out.v2", "curves.PNG!"):
        line = one_sentence(run("viz", "curves", run_dir, "-o", tmp_path / bad), code=2)
        assert ".png" in line and ".jpg" in line and bad in line, line
        assert not (tmp_path / bad).exists()


@pytest.mark.parametrize("suffix", ["png", "jpg", "pdf", "svg", "tif", "webp"])
def test_viz_filters_writes_every_offered_format(suffix, tmp_path, ckpt3):
    out = tmp_path / f"f.{suffix}"
    result = run("viz", "filters", ckpt3, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


# ---------------------------------------------------------------- data that does not fit the checkpoint

def test_evaluate_refuses_data_with_another_class_count(tmp_path, data3):
    ten = checkpoint(tmp_path / "ten.pt", 10)
    line = one_sentence(run("evaluate", ten, "--data", data3, "--loader", "torch"))
    assert "10 classes" in line and "3" in line and str(ten) in line, line
    line = one_sentence(run("viz", "neighbors", ten, "--data", data3, "--loader", "torch", "-o", tmp_path / "n.png"))
    assert "10 classes" in line and "3" in line, line
    assert not (tmp_path / "n.png").exists()


def test_evaluate_crop_larger_than_the_data_names_no_missing_option(tmp_path, data3):
    big = checkpoint(tmp_path / "big.pt", 3, crop=224)
    for words in (["evaluate", big], ["viz", "neighbors", big, "-o", tmp_path / "n.png"]):
        line = one_sentence(run(*words, "--data", data3, "--loader", "torch"))
        assert "224" in line and "64" in line and "pass --crop" not in line, line


def test_neighbors_says_when_it_shows_fewer_queries_or_neighbours(tmp_path, data3, ckpt3):
    out = tmp_path / "n.png"
    result = run("viz", "neighbors", ckpt3, "--data", data3, "--loader", "torch", "--num-threads", "0",
                 "--query", "20", "--k", "30", "-o", out)
    assert result.exit_code == 0, result.output
    assert "--query 20: the val split holds 9 images, showing 9" in result.output, result.output
    assert "--k 30: 12 training images searched, showing 12 neighbours" in result.output, result.output
    assert out.is_file()


def test_one_class_data_is_said(tmp_path):
    from alexnet_pipe.shards.verify import class_note
    images = random_images(6, S, seed=1)
    one = make_data_dir(tmp_path / "one", {"train": (images, np.zeros(6, int))}, 1, 1)
    from alexnet_pipe.shards import read_manifest
    note = class_note(read_manifest(one), one)
    assert note and f"{one} holds 1 class:" in note and "loss is 0" in note
    result = run("info", "--data", one, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["notes"] == [note], result.output
    two = make_data_dir(tmp_path / "two", {"train": (images, np.arange(6) % 2)}, 2, 1)
    assert class_note(read_manifest(two)) is None


# ---------------------------------------------------------------- --gpu where there is none

@pytest.mark.parametrize("words", [["evaluate", "CKPT"], ["viz", "neighbors", "CKPT"]], ids=" ".join)
def test_gpu_without_cuda_names_the_commands_own_options(words, ckpt3, data3, monkeypatch):
    import alexnet_pipe.train.launch
    monkeypatch.setattr(alexnet_pipe.train.launch, "visible_gpus", lambda: 0)
    words = [str(ckpt3) if w == "CKPT" else w for w in words]
    line = one_sentence(run(*words, "--data", data3, "--gpu"))
    assert "--gpu" in line and "--cpu" not in line and "--nproc" not in line and "--gpus" not in line, line


# ---------------------------------------------------------------- non-finite numbers

def _float_options():
    return [(name, p) for name, cmd in _commands().items() for p in cmd.params
            if isinstance(p.type, click.types.FloatParamType)]


def test_every_float_option_refuses_nan_and_inf():
    floats = _float_options()
    assert {n for n, _ in floats} >= {"train", "viz augment", "bench train"}
    accepted = []
    for name, param in floats:
        for value in ("nan", "inf", "-inf"):
            try:
                param.type.convert(value, param, click.Context(_commands()[name]))
            except click.BadParameter:
                continue
            accepted.append((name, param.name, value))
    assert accepted == []


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, 10 ** 6), value=st.one_of(st.floats(), st.sampled_from(
    ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "+inf"])))
def test_float_options_take_finite_numbers_only(index, value):
    """Any float option, any float or spelling of one: finite values in range pass, every other is refused."""
    name, param = (floats := _float_options())[index % len(floats)]
    ctx = click.Context(_commands()[name])
    number = float(value)
    t = param.type
    in_range = math.isfinite(number) and (t.min is None or (number > t.min if t.min_open else number >= t.min)) \
        and (t.max is None or (number < t.max if t.max_open else number <= t.max))
    try:
        got = t.convert(str(value), param, ctx)
    except click.BadParameter as exc:
        assert not in_range, (name, param.name, value, exc)
        if math.isnan(number):
            assert "not a finite number" in str(exc)
    else:
        assert in_range and got == number, (name, param.name, value)


@pytest.mark.parametrize("words", [["viz", "augment", "--lighting"], ["bench", "train", "--width"]], ids=" ".join)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_option_is_refused_at_the_command_line(words, value, tmp_path):
    line = one_sentence(run(*words, value, "--data", tmp_path / "missing") if words[0] == "viz"
                        else run(*words, value, "--steps", 1), code=2)
    assert "not a finite number" in line, line


# ---------------------------------------------------------------- hints name only options the command has

# Which commands can show the user messages of a library module ("module" or "module.function", the latter
# first): a message's options must be options of each of them. Options inside "`alexnet-pipe CMD ...`" are
# checked against CMD instead. A module that names options in its messages and is missing here fails the test.
REACHED_BY = {
    "ingest.arrayjob": {"prepare"},
    "loaders.augment": {"train", "viz augment", "bench loader"},  # train-mode loaders: mean image, PCA lighting
    "train.checkpoint": {"train", "evaluate", "viz filters", "viz neighbors"},
    "train.checkpoint.check_resumable": {"train"},
    "stats.ready": {"train", "evaluate", "viz neighbors"},
    "train.checkpoint.diverged": {"train"},
    "shards.decode": {"stats", "bench loader"},  # the decode-only pass
    "shards.decode.check_dali_can_open": {"train", "evaluate", "viz augment", "viz neighbors", "bench loader"},
    "report.demo": {"demo"},
    "train.evaluation": {"evaluate", "viz neighbors"},
    "train.launch": {"train"},
    "train.config._check_applied_rates": {"train"},
    "loaders": {"train", "evaluate", "viz augment", "viz neighbors", "bench loader"},
    "loaders.base.cuda_device_id": {"bench loader"},  # the others check for CUDA before any loader
    "loaders.base.BaseLoader.__init__": {"train", "viz augment", "bench loader"},  # evaluate checks the crop first
    "ingest.owned": {"prepare"},
    "ingest.bucket": {"prepare"},
    "ingest.pull": {"pull"},
    "ingest.prepare": {"prepare"},
    "ingest.plan": {"prepare"},
    "ingest.binding": {"prepare"},
    "ingest.writing": {"prepare"},
    "ingest.chunks": {"prepare"},
    "train.runlog": {"train"},
    "train.rundir": {"train"},
    "shards.pixels.check_pixels": {"prepare"},  # records are decoded elsewhere, but never over the limit
    "ingest.sample_data": {"sample-data"},
    "ingest.sample_drawing": {"sample-data"},
    "ingest.sources": {"prepare"},
    "ingest.items": {"prepare"},
    "ingest.labels": {"prepare"},
    "ingest.folders": {"prepare"},
    "ingest.archives": {"prepare"},
    "stats.compute": {"stats"},
    "stats.sums": {"stats"},
    "stats.moments": {"stats"},
    "train.loop": {"train"},
    "train.entry": {"train"},
    "train.evaluation.ensemble_precision": {"evaluate"},
    "report.bench_loader": {"bench loader"},
    "report.dali_variants": {"bench loader"},
    "shards.verify": {"info", "verify"},
    "report.pictures": {"viz filters", "viz neighbors", "viz curves", "viz augment"},
    "report.filters": {"viz filters"},
    "report.neighbors": {"viz neighbors"},
    "report.curves": {"viz curves"},
    "report.augment_grid": {"viz augment"},
}
# messages only some of a function's callers can reach: (where, a phrase of the message) -> those callers
ONLY_WHEN = {("stats.ready.check_data", "has no val split"): {"train"}}  # need_val: train's evaluations


def _error_names() -> set[str]:
    import builtins
    import alexnet_pipe.core.errors as errors
    ours = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
    return ours | {"ClickException", "UsageError", "BadParameter"} - set(dir(builtins))


def _messages():
    """(where, text) of every error a library module builds: the string constants of the call, and of the
    assignments in the same function to names the call uses (a hint built before the raise)."""
    import ast
    import alexnet_pipe
    errors, root = _error_names(), Path(alexnet_pipe.__file__).parent

    def strings(node):
        return " ".join(c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str))

    def visit(node, scope, module, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield from visit(child, scope + [child.name], module, child)
                continue
            if isinstance(child, ast.Call):
                f = child.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in errors:
                    used = {n.id for a in [*child.args, *child.keywords] for n in ast.walk(a) if isinstance(n, ast.Name)}
                    hints = [strings(a.value) for a in ast.walk(function) if isinstance(a, ast.Assign)
                             and used & {n.id for t in a.targets for n in ast.walk(t) if isinstance(n, ast.Name)}]
                    yield ".".join([module, *scope]), " ".join([strings(child), *hints])
            yield from visit(child, scope, module, function)

    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        yield from visit(tree, [], module, tree)


def _commands_reaching(where: str, text: str) -> set[str]:
    for (place, phrase), commands in ONLY_WHEN.items():
        if where == place and phrase in text:
            return commands
    parts = where.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in REACHED_BY:
            return REACHED_BY[".".join(parts[:n])]
    raise AssertionError(f"{where} names options in its messages ({text[:80]}...): add it to REACHED_BY")


_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-o)(?![\w-])")
_NAMED_COMMAND = re.compile(r"`alexnet-pipe ((?:viz|bench) [a-z-]+|[a-z-]+)([^`]*)`")


def _named_options():
    """{(command, option): where} for every option a library message names."""
    found = {}
    for where, text in _messages():
        for command, rest in _NAMED_COMMAND.findall(text):
            for option in _OPTION.findall(rest):
                found.setdefault((command, option), where)
        bare = _NAMED_COMMAND.sub(" ", text)
        options = _OPTION.findall(bare)
        for command in _commands_reaching(where, bare) if options else ():
            for option in options:
                found.setdefault((command, option), where)
    return found


# known, in files other engineers own (issue 15 report): remove an entry when its fix lands
_PENDING: dict = {}  # (command, option) -> why a known wrong hint is still there; empty: every hint is right


def _option_cases():
    return [pytest.param(command, option, where, id=f"{command} {option} ({where})",
                         marks=[pytest.mark.xfail(strict=True, reason=_PENDING[command, option])]
                         if (command, option) in _PENDING else [])
            for (command, option), where in sorted(_named_options().items())]


def test_messages_name_options_at_all():
    found = _named_options()
    assert ("train", "--resume") in found and ("prepare", "--overwrite") in found
    assert ("stats", "--pca") in found  # from "`alexnet-pipe stats --pca`" in a datadir message
    assert ("viz curves", "-o") in found


@pytest.mark.parametrize("command, option, where", _option_cases())
def test_every_option_a_message_names_exists_on_its_command(command, option, where):
    cmd = _commands()[command]
    options = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
    assert option in options, f"a message of {where} tells `alexnet-pipe {command}` users to use {option}"


def test_reached_by_lists_every_command_that_calls_a_module_itself():
    """The table's cross-check: a command whose own code imports a library module reaches its messages."""
    import ast
    import inspect
    import textwrap
    missing = []
    for name, cmd in _commands().items():
        body = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(cmd.callback))))
        for node in ast.walk(body):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alexnet_pipe."):
                module = node.module.removeprefix("alexnet_pipe.")
                if module in REACHED_BY and name not in REACHED_BY[module]:
                    missing.append((name, module))
    assert missing == []


# ---------------------------------------------------------------- Ctrl-C with several processes

@pytest.mark.slow
def test_ctrl_c_in_train_with_two_processes_is_130_and_one_sentence(tmp_path):
    """Ctrl-C in a terminal signals the whole process group: the launcher and both workers."""
    import os
    import signal
    import subprocess
    import sys
    import time
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet_pipe", "train", "--cpu", "--nproc", "2", "--loader", "synthetic",
         "--run", str(run_dir), "--recipe", "small", "--width", "0.0625", "--crop", "64", "--batch-size", "4",
         "--eval-every", "0", "--schedule", "step", "--log-every", "1", "--epochs", "1000"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 120
        while not (metrics.is_file() and metrics.stat().st_size) and proc.poll() is None:
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and out.count("Error:") == 1, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("Error: interrupted:") and "--resume" in out
