"""Errors that carry one sentence for the user; the CLI prints them without a traceback."""


class UserError(Exception):
    """A problem with the user's input or data dir, said in one sentence."""

    def __reduce__(self):
        # A worker's error reaches the parent pickled. Exception's own pickling calls cls(*args), which fails for
        # subclasses whose __init__ takes other arguments (UnreadableFile(path, reason), DiskFull(path, written)):
        # the parent then saw a broken pool instead of the sentence. Rebuild from the message and the attributes.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls, args: tuple, state: dict) -> UserError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class Interrupted(UserError):
    """Ctrl-C, after the command cleaned up; the CLI exits 130, as a shell does for SIGINT."""

    exit_code = 130


class Preempted(UserError):
    """SIGTERM (a scheduler's notice): the run stopped after a whole step and a checkpoint; `--resume` continues it.
    Exits with signals.PREEMPTED_EXIT (75)."""

    exit_code = 75


class ShardFormatError(UserError):
    """A record or file that is not what the shard format says (shards.py and metadata.py raise it)."""
