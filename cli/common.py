"""Options and helpers shared by the commands."""
from __future__ import annotations

import json
from pathlib import Path

import click

from alexnet_pipe.datadir import DEFAULT, ENV_VAR


def data_option(func):
    """--data DIR, falling back to $ALEXNET_PIPE_DATA, then ./alexnet-data."""
    return click.option(
        "--data", "data", envvar=ENV_VAR, default=str(DEFAULT), show_default=True, show_envvar=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Data dir that prepare writes and stats/train read.")(func)


def print_settings(title: str, settings) -> None:
    """Print a settings dataclass at the start of a command."""
    from dataclasses import asdict
    click.echo(f"{title}:")
    for key, value in asdict(settings).items():
        click.echo(f"  {key:<16} {json.dumps(value, default=str)}")


def run_and_report(title: str, settings, measure, as_json: bool, lines) -> dict:
    """The settings (unless --json), then measure(settings), then one JSON object or `lines(result)`."""
    if not as_json:
        print_settings(title, settings)
    result = measure(settings)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for line in lines(result):
            click.echo(line)
    return result
