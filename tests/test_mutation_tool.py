"""tools/mutation.py's own logic (`make mutation`), with mutmut stood in for: a real group run takes minutes."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).parents[1] / "tools" / "mutation.py"
# one mutant of the augment group as `mutmut results --all true` lists it
MUTANT = "alexnet_pipe.loaders.augment.x_resized_window__mutmut_1"


@pytest.fixture
def tool(tmp_path, monkeypatch):
    """The tool as a module, its work folder in tmp_path and mutmut answering as if the group had one mutant."""
    spec = importlib.util.spec_from_file_location("mutation_tool_under_test", TOOL)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "WORK", tmp_path / ".mutation")
    answers = {"run": "", "results": f"    {MUTANT}: survived\n", "show": f"# {MUTANT}: survived\n--- a\n+++ b\n"}
    monkeypatch.setattr(module, "mutmut", lambda where, command, *args, capture=False: answers[command])
    return module


def run_tool(tool, monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["mutation.py", *args])
    tool.main()


def test_an_only_pattern_that_matches_no_mutant_is_an_error_not_zero_of_zero(tool, monkeypatch):
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool, monkeypatch, "augment", "--max-children", "1", "--only", "*no_such_function__mutmut_*")
    message = str(stopped.value.code)
    assert stopped.value.code not in (0, None) and "matched no mutant of the augment group" in message
    assert "*no_such_function__mutmut_*" in message and "\n" not in message


def test_an_only_pattern_that_matches_runs_and_counts_its_mutants(tool, monkeypatch, capsys):
    run_tool(tool, monkeypatch, "augment", "--max-children", "1", "--only", "*x_resized_window__mutmut_*")
    assert "augment: 1 surviving of 1 mutants" in capsys.readouterr().out
    assert MUTANT in (tool.WORK / "augment" / "survivors.txt").read_text()


def test_the_loop_group_s_shorter_timeout_is_what_mutmut_reads(tool, tmp_path, monkeypatch):
    """The loop group's mutants that never end (docs/testing.md) stop after 4x their tests' time, not mutmut's
    15x (an hour there); the other groups keep mutmut's default. mutmut ignores a key it does not know, so where
    it is installed its own reader must find the value in the group's pyproject.toml."""
    import tomllib
    written = {name: tomllib.loads(tool.group_config(g))["tool"]["mutmut"] for name, g in tool.GROUPS.items()}
    assert written["loop"]["timeout_multiplier"] == 4
    assert [name for name, table in written.items() if "timeout_multiplier" in table] == ["loop"]
    configuration = pytest.importorskip("mutmut.configuration")
    (tmp_path / "pyproject.toml").write_text(tool.group_config(tool.GROUPS["loop"]))
    monkeypatch.chdir(tmp_path)
    configuration.reset_config()
    try:
        assert configuration.config().timeout_multiplier == 4
    finally:
        configuration.reset_config()
