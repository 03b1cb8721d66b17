"""Hostile input, generated (issue 19): instead of a list of cases, strategies over what a careless or hostile
user controls, derived from the commands themselves.

- every leaf command's declared click parameters: values at and beyond the boundaries of the parameter's own type
  and range (empty, negative, zero, huge, non-finite, non-UTF-8, not a number);
- every parameter that takes a path: file kinds in its place (a FIFO, a directory, a symlink loop, /dev/null, a
  read-only place, an empty or junk file, a name that is not UTF-8);
- the environment: stray launcher variables, a hostile $ALEXNET_PIPE_DATA.

The invariant, for every case: exit 0 with output whose numbers are finite, or a non-zero exit with one sentence;
never a traceback, a bug report ("failed unexpectedly"), a hang, a deleted user file, or a non-finite number
written to a file. Commands run in this process through click's CliRunner, at tiny sizes (a 64 px data dir of 18
images, width-1/16 models, one step). CI runs a bounded, derandomized number of examples; set
ALEXNET_PIPE_HOSTILE_EXAMPLES=N for N examples per test, drawn afresh.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from alexnet_pipe_cli.main import cli
from helpers.shardgen import make_data_dir, random_images
from helpers.commands import leaf_commands

DEEP = int(os.environ.get("ALEXNET_PIPE_HOSTILE_EXAMPLES", "0"))
# numpy's overflow and invalid-value warnings are non-finite numbers in the making (NaN pixels cast into a
# picture leave no other trace): they fail the case
pytestmark = [pytest.mark.filterwarnings("error:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("error:invalid value encountered:RuntimeWarning")]
HANG_SECONDS = 60 if DEEP else 30


def examples(ci: int):
    """Hypothesis settings: `ci` derandomized examples in CI, ALEXNET_PIPE_HOSTILE_EXAMPLES fresh ones otherwise."""
    return settings(max_examples=DEEP or ci, derandomize=not DEEP, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- the commands, at tiny sizes

# Each leaf command's arguments for a quick successful run; {NAME} is a place of the world below.
BASE = {
    "sample-data": ["{NEW}", "--classes", "2", "--train-per-class", "1", "--val-per-class", "1", "--no-pathologies"],
    "prepare": ["{SRC}", "--data", "{NEW}", "--size", "32", "--workers", "1"],
    "info": ["--data", "{DATA}"],
    "verify": ["--data", "{DATA}", "--workers", "1"],
    "pull": ["memory://hostile-world/data", "{NEW}"],  # the world's data dir, also in fsspec's in-process store
    "stats": ["--data", "{DATA}", "--pca"],
    "train": ["--cpu", "--loader", "synthetic", "--max-steps", "1", "--width", "0.0625", "--crop", "64",
              "--batch-size", "2", "--eval-every", "0", "--run", "{NEW}", "--recipe", "small",
              "--synthetic-steps", "1", "--num-threads", "0", "--epochs", "1"],
    "evaluate": ["{CKPT}", "--data", "{DATA}", "--loader", "torch", "--batch-size", "4"],
    "bench prepare": ["--images", "8", "--repeats", "1", "--workers", "1", "--size", "32"],
    "bench loader": ["--data", "{DATA}", "--loader", "torch", "--batch-size", "2", "--batches", "1", "--warmup", "1",
                     "--crop", "32", "--threads", "1", "--no-baseline"],
    "bench train": ["--cpu", "--width", "0.0625", "--crop", "63", "--batch-size", "1", "--steps", "1", "--warmup",
                    "1", "--repeats", "1"],
    "viz augment": ["--data", "{DATA}", "--n", "1", "--crop", "32", "-o", "{NEW}.png", "--loader", "torch"],
    "viz filters": ["{CKPT}", "-o", "{NEW}.png"],
    "viz neighbors": ["{CKPT}", "--data", "{DATA}", "--query", "1", "--k", "1", "--loader", "torch",
                      "--num-threads", "0", "-o", "{NEW}.png"],
    "viz curves": ["{RUN}", "-o", "{NEW}.png"],
}
# not generated: demo runs the whole pipeline for minutes (tests/test_demo.py runs it)
SKIPPED_COMMANDS = {"demo"}

# Values that are legitimate but expensive rather than hostile are not drawn: a count of steps, images or repeats,
# or a size (of images, batches, the network) as large as its range allows is a long run or a large allocation,
# not a fault to find; beyond the range (refused at once) is drawn. torch.compile takes minutes on first use;
# several training processes take half a minute to start (test_hostile.py and test_train.py start them).
EXPENSIVE = {"--images", "--repeats", "--steps", "--warmup", "--batches", "--max-steps", "--synthetic-steps",
             "--train-per-class", "--val-per-class", "--classes", "--n", "--epochs", "--sample", "--limit",
             "--size", "--crop", "--batch-size", "--width", "--query", "--k", "--scale",
             "--workers", "--threads", "--num-threads", "--nproc", "--gpus"}
NOT_DRAWN = {("train", "--compile"), ("bench train", "--compile"), ("train", "--nproc"), ("train", "--max-restarts"),
             ("train", "--tensorboard"), ("train", "--lrn-impl"), ("bench train", "--lrn-impl")}
MANY = 2 ** 63  # no machine has this many of anything


COMMANDS = leaf_commands()


def test_every_command_has_a_tiny_run():
    assert set(COMMANDS) - SKIPPED_COMMANDS == set(BASE)


def _flag(param: click.Parameter) -> str:
    return param.opts[0] if isinstance(param, click.Option) else param.name


def _drawn_params(name: str) -> list[click.Parameter]:
    return [p for p in COMMANDS[name].params
            if p.name not in ("help",) and (name, _flag(p)) not in NOT_DRAWN and not getattr(p, "hidden", False)]


# ---------------------------------------------------------------- values, from each parameter's own type

NOT_UTF8 = os.fsdecode(b"caf\xe9")  # what a Latin-1 shell passes: Python sees it surrogate-escaped
WORDS = ["", " ", "abc", NOT_UTF8, "-", "--", "x" * 300]


def _number_values(t, integer: bool, expensive: bool) -> list:
    low, high = getattr(t, "min", None), getattr(t, "max", None)
    values = [0, -1, 1] if integer else [0.0, -0.0, -1.0, 1e-320] + ([] if expensive else [1.0])
    step = 1 if integer else 1e-9
    if low is not None:
        values += [low, low - step]
    if high is not None:
        values += [high + step] if expensive else [high, high + step]
    elif not expensive:
        values += [MANY, 2 ** 64, 10 ** 30] if integer else [1e308, 1.7e308]
    if not integer:
        values += ["nan", "inf", "-inf", "1e999"]
    else:
        values += ["1.5", "1e3", "0x10", "\u0663"]  # a float, exponent and hex spellings, an Arabic-Indic 3
    return values


def values_for(name: str, param: click.Parameter) -> st.SearchStrategy:
    t = param.type
    expensive = _flag(param) in EXPENSIVE
    if isinstance(param, click.Option) and param.is_flag:
        return st.just(None)  # a flag: given (its presence is the value)
    if isinstance(t, click.Choice):
        return st.sampled_from([*t.choices, *(c.upper() for c in t.choices), *WORDS])
    if isinstance(t, click.types.IntParamType):
        return st.sampled_from(_number_values(t, True, expensive) + WORDS)
    if isinstance(t, click.types.FloatParamType):
        return st.sampled_from(_number_values(t, False, expensive) + WORDS)
    if isinstance(t, click.Path):
        return st.sampled_from(KINDS)
    pairs = ["1", "1,2,3", "2,1", "-1,1", "nan,1", "1,inf", "a,b", "0,0", "1e308,1e308", "0.5,0.5", "3,3"]
    return st.sampled_from(pairs + WORDS)


# ---------------------------------------------------------------- the world each case runs in

KINDS = ["missing", "fifo", "directory", "symlink-loop", "dev-null", "empty-file", "junk-file", "below-a-file",
         "read-only", "not-utf8-name"]


@pytest.fixture(scope="module")
def hostile_world(tmp_path_factory):
    """The pristine inputs (copied for each case): a data dir with stats, a checkpoint, a run dir, a source tree;
    and a read-only copy of the data dir on a tmpfs (helpers.mounts.read_only_copy)."""
    import cv2
    import torch
    from alexnet_pipe.model.alexnet import build_model
    from alexnet_pipe.stats.compute import StatsSettings, run_stats
    from alexnet_pipe.train.config import TrainSettings
    root = tmp_path_factory.mktemp("world")
    images, labels = random_images(18, 64, seed=4), np.arange(18) % 3
    data = make_data_dir(root / "data", {"train": (images[:12], labels[:12]), "val": (images[12:], labels[12:])}, 3, 2)
    run_stats(StatsSettings(data, pca=True, recompute=False, sample=None, plot=False))
    ts = TrainSettings(width=0.0625, crop=64)
    torch.save({"model": build_model(ts.arch, 3, ts.width).state_dict(), "num_classes": 3,
                "settings": dataclasses.asdict(ts)}, root / "model.pt")
    for c in range(2):
        folder = root / "src" / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(folder / f"{i}.JPEG"), images[i])
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "epoch": i / 4, "loss": 2.0 - i / 10, "lr": 0.01}) + "\n" for i in range(1, 6)))
    import fsspec
    fsspec.filesystem("memory").put(str(data), "/hostile-world/data", recursive=True)
    from helpers.mounts import read_only_copy, unmount
    read_only = read_only_copy(root / "ro", data, "data")  # fails, never skips, where no tmpfs mounts; conftest
    yield {"root": root, "read_only": read_only}  # marks the tests of this world `mount`
    unmount(root / "ro")


class Case:
    """One case's own copies of the inputs, the user's files that must survive, and the places to substitute."""

    def __init__(self, world: dict):
        self.dir = Path(tempfile.mkdtemp(dir=world["root"], prefix="case-"))
        self.world = world
        for name in ("data", "run", "src"):
            shutil.copytree(world["root"] / name, self.dir / name, symlinks=True)
        shutil.copy(world["root"] / "model.pt", self.dir / "model.pt")
        self.mine = {self.dir / "notes.txt": b"the user's notes", self.dir / "data" / "README.mine": b"mine too"}
        for path, content in self.mine.items():
            path.write_bytes(content)
        self.places = {"DATA": self.dir / "data", "RUN": self.dir / "run", "SRC": self.dir / "src",
                       "CKPT": self.dir / "model.pt", "NEW": self.dir / "new"}

    def args(self, words: list[str]) -> list[str]:
        return [re.sub(r"\{(\w+)\}", lambda m: str(self.places[m.group(1)]), w) for w in words]

    def kind(self, kind: str) -> str | None:
        """A path of the given kind (None: this machine cannot make it)."""
        base = self.dir / f"kind-{kind}"
        if kind == "missing":
            return str(base)
        if kind == "fifo":
            os.mkfifo(base)
        elif kind == "directory":
            base.mkdir()
        elif kind == "symlink-loop":
            os.symlink(base, base)
        elif kind == "dev-null":
            return "/dev/null"
        elif kind == "empty-file":
            base.write_bytes(b"")
        elif kind == "junk-file":
            base.write_bytes(bytes(range(256)) * 4)
        elif kind == "below-a-file":
            base.write_bytes(b"x")
            return str(base / "below")
        elif kind == "read-only":
            return str(self.world["read_only"])
        elif kind == "not-utf8-name":
            name = os.fsencode(str(self.dir)) + b"/caf\xe9"
            shutil.copytree(self.dir / "data", os.fsdecode(name))
            return os.fsdecode(name)
        return str(base)

    def check_user_files(self) -> None:
        for path, content in self.mine.items():
            assert path.is_file() and path.read_bytes() == content, f"the user's {path} was deleted or changed"

    def check_written_numbers(self) -> None:
        """Every number in a JSON, .npy or checkpoint file under the case's dir is finite."""
        for path in self.dir.rglob("*"):
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 50 << 20:
                continue
            _assert_finite_file(path)


def _no_constant(name):
    raise AssertionError(f"{name} written")


def _assert_finite_file(path: Path) -> None:
    if path.suffix in (".json", ".jsonl"):
        for line in path.read_text(errors="replace").splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            if line.strip():
                try:
                    json.loads(line, parse_constant=_no_constant)
                except AssertionError as exc:
                    raise AssertionError(f"{path}: {exc}") from None
                except ValueError:
                    pass  # not JSON: not ours to judge here
    elif path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        assert not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all(), f"{path} holds non-finite"
    elif path.suffix == ".pt":
        import torch
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = state.get("model", {}) if isinstance(state, dict) else {}
        bad = [k for k, v in model.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
        assert not bad, f"{path} holds non-finite weights: {bad[:3]}"


# ---------------------------------------------------------------- running one case

class Hang(BaseException):
    """The case ran past HANG_SECONDS (a BaseException: no error boundary may turn it into a sentence)."""


def _alarm(signum, frame):
    raise Hang(f"no answer after {HANG_SECONDS} s")


def invoke(words: list[str], env: dict | None = None):
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        return CliRunner().invoke(cli, words, env=env)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


NON_FINITE_TEXT = re.compile(r"(?<![\w.])-?(nan|inf|infinity)(?![\w.])", re.I)


def check(result, case: Case, words: list[str]) -> None:
    """The invariant: 0 and finite output, or one sentence; never a traceback, a bug, a lost or non-finite file."""
    shown = f"alexnet-pipe {' '.join(map(repr, words))}\n{result.output[-3000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{shown}\nraised {type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.output, shown
    if result.exit_code == 0:
        assert not NON_FINITE_TEXT.search(result.output), f"a non-finite number was printed: {shown}"
    else:
        assert result.output.count("Error:") == 1, shown
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("Error: ") and "failed unexpectedly" not in last, shown
    case.check_user_files()
    case.check_written_numbers()


def _words(name: str, param: click.Parameter, value, case: Case) -> list[str] | None:
    """The command's tiny run with `param` set to `value` (replacing the base's value); None: not makeable."""
    words = case.args(BASE[name])
    if value in KINDS:
        value = case.kind(value)
        if value is None:
            return None
    flag = _flag(param)
    if isinstance(param, click.Argument):  # BASE lists a command's arguments first, in their order
        position = [p for p in COMMANDS[name].params if isinstance(p, click.Argument)].index(param)
        words[position] = str(value)
    elif isinstance(param, click.Option) and param.is_flag:
        words.append(flag)
    elif flag in words:
        words[words.index(flag) + 1] = str(value)
    else:
        words += [flag, str(value)]
    return name.split() + words


# ---------------------------------------------------------------- the generated tests

@pytest.mark.parametrize("name", sorted(BASE))
@examples(ci=6)
@given(data=st.data())
def test_option_values(name, data, hostile_world):
    """One declared parameter of the command at a boundary value of its own type, or a file kind for a path."""
    params = _drawn_params(name)
    param = data.draw(st.sampled_from(params), label="parameter")
    value = data.draw(values_for(name, param), label=_flag(param))
    case = Case(hostile_world)
    words = _words(name, param, value, case)
    if words is not None:
        check(invoke(words), case, words)


def _path_params() -> list[tuple[str, click.Parameter]]:
    return [(name, p) for name in sorted(BASE) for p in _drawn_params(name) if isinstance(p.type, click.Path)]


@examples(ci=30)
@given(data=st.data())
def test_file_kinds_where_a_path_is_expected(data, hostile_world):
    name, param = data.draw(st.sampled_from(_path_params()), label="parameter")
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    case = Case(hostile_world)
    words = _words(name, param, kind, case)
    if words is not None:
        check(invoke(words), case, words)


ENVIRONMENT = {
    "WORLD_SIZE": ["2", "0", "abc", ""], "RANK": ["1", "-1", "abc"], "LOCAL_RANK": ["0", "x"],
    "TORCHELASTIC_RESTART_COUNT": ["1", "abc"], "ALEXNET_PIPE_DATA": KINDS, "OMP_NUM_THREADS": ["0", "abc"],
}


@examples(ci=12)
@given(data=st.data())
def test_environment(data, hostile_world):
    name = data.draw(st.sampled_from(["train", "evaluate", "stats", "info", "viz augment"]), label="command")
    chosen = data.draw(st.lists(st.sampled_from(sorted(ENVIRONMENT)), min_size=1, max_size=3, unique=True),
                       label="variables")
    case = Case(hostile_world)
    env = {}
    for var in chosen:
        value = data.draw(st.sampled_from(ENVIRONMENT[var]), label=var)
        env[var] = case.kind(value) if value in KINDS else value
        if env[var] is None:
            return
    words = name.split() + case.args(BASE[name])
    if "ALEXNET_PIPE_DATA" in env and "--data" in words:  # the variable is what --data falls back to
        at = words.index("--data")
        del words[at:at + 2]
    check(invoke(words, env=env), case, words)
