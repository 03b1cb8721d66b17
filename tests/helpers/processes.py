"""Tasks for worker processes in the lifecycle tests (importable by name, as spawned workers need)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def sleep_and_say(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)
