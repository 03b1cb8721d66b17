"""A click group whose subcommands are imported only when they run, and whose UserErrors become one line.

The command modules are named as strings (importlib), so `alexnet-pipe --help` pays for no subcommand's imports;
the groups (main, bench, viz) import this module, never each other.
"""
from __future__ import annotations

import importlib

import click

from alexnet_pipe.core.errors import UserError


class LazyGroup(click.Group):
    """A group whose subcommands are loaded on first use, and whose UserErrors become one line.

    `lazy_commands` maps name -> ("module:attribute", short help).
    """

    def __init__(self, *args, lazy_commands: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}

    def list_commands(self, ctx):
        return sorted(self.lazy_commands)

    def get_command(self, ctx, name):
        if name not in self.lazy_commands:
            return None
        module, attr = self.lazy_commands[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        # short help from the table: listing must not import every command module
        rows = [(name, self.lazy_commands[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = getattr(exc, "exit_code", 1)
            raise error from None
