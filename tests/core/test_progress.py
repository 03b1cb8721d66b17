"""The one progress display (progress.py): live on a terminal, whole plain lines in a log, silent off rank 0."""
from __future__ import annotations

import io

from alexnet_pipe.core.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_whole_lines_and_no_carriage_returns():
    out = io.StringIO()
    bar = Progress(5, "prepare", stream=out, every=0.0)
    for _ in range(5):
        bar.update(1, note="loss 1.0")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5
    assert lines[-1].startswith("prepare") and "5/5" in lines[-1] and "loss 1.0" in lines[-1]


def test_a_terminal_gets_tqdm_redrawn_in_place():
    out = Terminal()
    bar = Progress(3, "epoch 1", unit="step", stream=out, initial=1)
    bar.update(2)
    bar.close()
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()


def test_disabled_display_prints_nothing(capsys):
    out = io.StringIO()
    bar = Progress(2, "epoch 1", stream=out, every=0.0, enabled=False)
    bar.update(2)
    bar.write("a message")
    bar.close()
    assert out.getvalue() == "" and capsys.readouterr().out == ""
