"""SIGTERM and SIGHUP stop a command the way Ctrl-C does, so that one clean-up path serves all three.

Python turns SIGINT into KeyboardInterrupt, and every stage already cleans up on it (prepare drops the shard it
was writing, worker pools stop their processes, stats says what was written). SIGTERM (`kill`, a scheduler, a
container stop) and SIGHUP (a closed terminal or SSH session) killed the process outright instead: the stage's
clean-up never ran and its worker processes were left blocked forever. `stop_on_signals` raises `Stopped`, a
KeyboardInterrupt, for them; the CLI wraps every command in it. A trainer that has its own SIGTERM handler (the
preemption flag, train/signals.py) installs it over this one for the training loop.
"""
from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []  # the signals that stopped this process, first first


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread was, as Ctrl-C's KeyboardInterrupt is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, _frame) -> None:
    _received.append(signum)
    if len(_received) == 1:  # a second signal during the clean-up is noted, not raised: the clean-up completes
        raise Stopped(signum)


def received() -> int | None:
    """The signal (SIGTERM, SIGHUP) that stopped this command, or None (none did, or it was Ctrl-C)."""
    return _received[0] if _received else None


def received_name() -> str | None:
    """'SIGTERM' or 'SIGHUP' where one stopped this command, else None."""
    return signal.Signals(_received[0]).name if _received else None


def exit_code(default: int) -> int:
    """128 + the stopping signal, as a shell reports a process a signal ended; `default` where none did."""
    return 128 + _received[0] if _received else default


@contextlib.contextmanager
def stop_on_signals():
    """Within: SIGTERM and SIGHUP raise Stopped in the main thread (elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is _raise:
        yield  # a thread cannot take signals; a nested group (bench, viz) is inside the outer one's
        return
    _received.clear()
    previous = {s: signal.signal(s, _raise) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_in_worker() -> None:
    """A worker process leaves stopping to its parent: Ctrl-C and a closed terminal signal the whole process group,
    and a worker that died of them (or raised KeyboardInterrupt while idle, with a traceback) broke the pool before
    the parent could stop it in order. The parent kills its workers as it stops (workers.WorkerPool)."""
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
