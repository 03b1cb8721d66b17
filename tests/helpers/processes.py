"""Tasks for worker processes in the lifecycle tests (importable by name, as spawned workers need)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# A child inherits the signals its parent ignores, and Python leaves SIGINT ignored if it starts so. glibc's
# system() ignores SIGINT and SIGQUIT in the whole process while its command runs: a child started meanwhile from
# another thread of the test process starts deaf to Ctrl-C (seen in full-suite runs: the trainer the Ctrl-C test
# started had SIGINT and SIGQUIT in its SigIgn, and trained on).  A test that sends SIGINT starts its child with
# this first, which gives SIGINT back its default, KeyboardInterrupt, as a terminal's foreground command has it.
DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"


def interruptible_module(module: str, *args: str) -> list[str]:
    """The argv of `python -m module args`, with SIGINT's default handler installed first (DEFAULT_SIGINT)."""
    run = "import runpy, sys; runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", f"{DEFAULT_SIGINT}; {run}", module, *args]


def sleep_and_say(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)
