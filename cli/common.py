"""Options, click types and checks shared by the commands."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import click

from alexnet_pipe.shards.datadir import DEFAULT, ENV_VAR
from alexnet_pipe.core.errors import UserError
from alexnet_pipe.core.limits import FLOAT32_MAX, MAX_BATCH, MAX_SEED, MAX_SIZE


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (FloatRange lets nan through: every comparison is False), and
    numbers beyond float32, which every float option ends up in (1e308 overflowed a tensor with a traceback)."""

    def __init__(self, min=None, max=None, min_open=False, max_open=False, clamp=False):
        super().__init__(-FLOAT32_MAX if min is None else min, FLOAT32_MAX if max is None else max,
                         min_open, max_open, clamp)

    def convert(self, value, param, ctx):
        number = click.types.FloatParamType.convert(self, value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        if abs(number) > FLOAT32_MAX:
            self.fail(f"{value!r} is beyond float32's range (+-{FLOAT32_MAX:.3g}).", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        if abs(self.min) == FLOAT32_MAX and abs(self.max) == FLOAT32_MAX:
            return ""
        if abs(self.max) == FLOAT32_MAX:  # the float32 bound is no range a user means to choose within
            return f"x{'>' if self.min_open else '>='}{self.min}"
        return super()._describe_range()


# one range for every --seed, every --batch-size and every image size (core.limits says why)
SEED = click.IntRange(0, MAX_SEED)
BATCH = click.IntRange(1, MAX_BATCH)
SIZE = click.IntRange(16, MAX_SIZE)


def _place_callback(check, what: str):
    """A click callback running `check(path, what)` (outdir's checks, which create nothing): a refusal is
    click's usage error naming the option, before the command does any work."""
    def callback(ctx, param, value):
        if value is None:
            return value
        try:
            check(value, what)
        except UserError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        return value
    return callback


def _dir_callback(what: str):
    from alexnet_pipe.core.outdir import check_place
    return _place_callback(check_place, what)


def _check_picture(path, what: str) -> None:
    from alexnet_pipe.core.outdir import check_file_place
    from alexnet_pipe.report.pictures import image_format
    check_file_place(path, what)
    image_format(path)


data_callback = _dir_callback("--data dir")
run_dir_callback = _dir_callback("--run dir")  # train's --run
output_callback = _place_callback(_check_picture, "-o/--output")


class DataPlace(click.Path):
    """--data's type: a directory path as click.Path checks it; a bucket URL (s3://, gs://) kept as given where
    the command writes one (prepare's, urls=True; a Path would fold its '//'), else refused with the way to a
    local copy."""

    def __init__(self, urls: bool):
        super().__init__(file_okay=False, path_type=Path)
        self.urls = urls

    def convert(self, value, param, ctx):
        from alexnet_pipe.core.remote import is_url
        if isinstance(value, str) and is_url(value):
            if self.urls:
                return value
            self.fail(f"{value} is a bucket URL; this command reads a local data dir: copy it first with "
                      f"`alexnet-pipe pull {value} DIR` (docs/buckets.md)", param, ctx)
        return super().convert(value, param, ctx)


def _data_callback(ctx, param, value):
    return value if isinstance(value, str) else data_callback(ctx, param, value)


def data_option(func=None, *, urls: bool = False):
    """--data DIR, falling back to $ALEXNET_PIPE_DATA, then ./alexnet-data; a place that cannot be a data dir
    (a file, a device, /proc) is refused before the command starts. urls: a bucket URL too (prepare's)."""
    if func is None:
        return lambda f: data_option(f, urls=urls)
    return click.option(
        "--data", "data", envvar=ENV_VAR, default=str(DEFAULT), show_default=True, show_envvar=True,
        type=DataPlace(urls), callback=_data_callback, metavar="DIR|URL" if urls else None,
        help="Data dir that prepare writes and stats/train read." + (
            " prepare also writes into a bucket (s3://bucket/alexnet-data; nodes then `alexnet-pipe pull` it)."
            if urls else ""))(func)


def output_option(default: str | None, help_default: str | None = None):
    """-o/--output of a picture: the suffix names the format (no suffix: PNG); a path that cannot take a file is
    refused before any work. `default`: a fixed file name, or None where the command derives one."""
    shown = f"  [default: {help_default}]" if help_default else ""
    return click.option(
        "-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
        default=Path(default) if default else None, show_default=default is not None, callback=output_callback,
        help=f"Picture to write: .png, .jpg, .pdf, .svg ... by its suffix (none: PNG).{shown}")


def device_option(default: str, *, auto: bool = False, help: str = ""):
    """--device, in the library's vocabulary (core.devices: cpu | cuda); "gpu", the older spelling, still
    passes and becomes "cuda". With `auto`, "auto" is passed on for the command to decide."""
    from alexnet_pipe.core.devices import TYPED, device_name

    def to_name(ctx, param, value):
        return value if value == "auto" else device_name(value)
    choices = (["auto"] if auto else []) + list(TYPED)
    return click.option("--device", type=click.Choice(choices), default=default, show_default=True,
                        callback=to_name, help=f"{help} (gpu: the same as cuda)".lstrip())


def require_gpu(flag: str = "--gpu") -> None:
    """`flag` (evaluate's and viz's --gpu) needs one CUDA device: say so, and that leaving it out runs on the CPU."""
    from alexnet_pipe.train.launch import visible_gpus
    if visible_gpus():
        return
    import torch
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
    raise UserError(f"{flag} needs a CUDA device but this machine has none (torch {torch.__version__}, built with "
                    f"{build}); leave out {flag} to run on the CPU")


def print_settings(title: str, settings) -> None:
    """Print a settings dataclass at the start of a command."""
    from dataclasses import asdict
    click.echo(f"{title}:")
    for key, value in asdict(settings).items():
        click.echo(f"  {key:<16} {json.dumps(value, default=str)}")


@contextlib.contextmanager
def stdout_to_stderr():
    """Everything written to stdout inside goes to stderr: Python's prints and, where stdout is file descriptor 1,
    what libraries and child processes write there; so that a --json object is alone on stdout."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests): Python's writes are all it gets
        fd = None
    saved = os.dup(1) if fd == 1 else None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_and_report(title: str, settings, measure, as_json: bool, lines) -> dict:
    """The settings (unless --json), then measure(settings), then one JSON object or `lines(result)`. With --json
    the object is the only thing on stdout: progress and messages go to stderr."""
    if not as_json:
        print_settings(title, settings)
    with stdout_to_stderr() if as_json else contextlib.nullcontext():
        result = measure(settings)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for line in lines(result):
            click.echo(line)
    return result
