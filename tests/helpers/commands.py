"""Every leaf command of the CLI, for tests that go over all of them."""
from __future__ import annotations

import click

from alexnet_pipe_cli.main import cli


def leaf_commands() -> dict:
    """(name, click command) of every leaf command."""
    ctx = click.Context(cli)

    def walk(group, prefix):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if isinstance(cmd, click.Group):
                yield from walk(cmd, prefix + [name])
            else:
                yield " ".join(prefix + [name]), cmd
    return dict(walk(cli, []))
