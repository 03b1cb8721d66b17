"""Modules of one idea each: no module of the library or the command line over 400 lines (the team's rule).

Fails until the splits of issue 18 land (shards/format.py, ingest/prepare.py, stats/compute.py, report/viz.py, ...);
kept apart from test_architecture.py so that the branches before them stay green.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 400


def long_modules(*packages: Path) -> list[str]:
    """'path: lines' for each .py file under `packages` longer than LIMIT lines."""
    found = []
    for package in packages:
        for path in sorted(package.rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > LIMIT:
                found.append(f"{path.relative_to(ROOT)}: {lines}")
    return found


def test_no_module_is_over_400_lines():
    assert long_modules(ROOT / "alexnet_pipe", ROOT / "cli") == []
