"""Errors that carry one sentence for the user; the CLI prints them without a traceback."""


class UserError(Exception):
    """A problem with the user's input or data dir, said in one sentence."""


class Interrupted(UserError):
    """Ctrl-C, after the command cleaned up; the CLI exits 130, as a shell does for SIGINT."""

    exit_code = 130


class Preempted(UserError):
    """SIGTERM (a scheduler's notice): the run stopped after a whole step and a checkpoint; `--resume` continues it.
    Exits with signals.PREEMPTED_EXIT (75)."""

    exit_code = 75


class ShardFormatError(UserError):
    """A record or file that is not what the shard format says (shards.py and metadata.py raise it)."""
