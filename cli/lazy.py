"""A click group whose subcommands are imported only when they run, and that is the tool's one error boundary.

The command modules are named as strings (importlib), so `alexnet-pipe --help` pays for no subcommand's imports;
the groups (main, bench, viz) import this module, never each other. Every command runs inside the boundary
(core.boundary): SIGTERM and SIGHUP stop it as Ctrl-C does, and whatever escapes it is one sentence and a
non-zero exit; ALEXNET_PIPE_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import importlib

import click

COMMAND_KEY = "alexnet_pipe.command"  # ctx.meta (shared by nested contexts): the words of the command run


class LazyGroup(click.Group):
    """A group whose subcommands are loaded on first use, and which says any error of theirs in one sentence.

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

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta.setdefault(COMMAND_KEY, []).append(name)
        return name, command, rest

    def format_commands(self, ctx, formatter):
        # short help from the table: listing must not import every command module
        rows = [(name, self.lazy_commands[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        from alexnet_pipe.core import boundary, stopping
        boundary.printable_output()
        try:
            with stopping.stop_on_signals():
                return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if boundary.debugging():
                raise
            message, code = boundary.explain(exc, " ".join(ctx.meta.get(COMMAND_KEY, [])))
            error = click.ClickException(message)
            error.exit_code = code
            raise error from None
