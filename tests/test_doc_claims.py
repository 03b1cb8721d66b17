"""What the docs say about the toolkit, checked against the toolkit: which commands take --data and which default
to --loader auto (README), the recipe table (training.md), the module paths they name, and that they point only
inside the repository."""
from __future__ import annotations

import importlib
import re

import click
import pytest

from alexnet_pipe.train.config import TrainSettings, resolve_settings
from alexnet_pipe_cli.main import cli
from helpers.docblocks import ROOT, doc_files

README = (ROOT / "README.md").read_text()


def commands(group=cli, prefix=()) -> dict[str, click.Command]:
    """Every command of the CLI by its words ("viz augment")."""
    found = {}
    for name in group.list_commands(None):
        command = group.get_command(None, name)
        if isinstance(command, click.Group):
            found.update(commands(command, (*prefix, name)))
        else:
            found[" ".join((*prefix, name))] = command
    return found


def option_default(command: click.Command, name: str):
    param = next((p for p in command.params if p.name == name), None)
    if param is None:
        return None
    return TrainSettings.__dataclass_fields__[name].default if param.default is None else param.default


def listed(sentence_start: str, sentence_end: str) -> set[str]:
    """The backticked command names of the README sentence between two phrases."""
    start = README.index(sentence_start)
    text = README[start:README.index(sentence_end, start)]
    return set(re.findall(r"`([a-z][a-z -]*[a-z])`", text))


def test_readme_names_exactly_the_commands_that_take_data():
    names = listed("where it is, so the stages find each other's outputs:", "`alexnet-pipe COMMAND --help`")
    assert names == {n for n, c in commands().items() if option_default(c, "data") is not None}


def test_readme_names_exactly_the_commands_whose_loader_is_auto():
    names = listed("`--loader auto`, the default of", "takes DALI where it is installed")
    defaults = {n: option_default(c, "loader") for n, c in commands().items()}
    assert names == {n for n, d in defaults.items() if d == "auto"}
    assert defaults["bench loader"] == "dali" and "`bench loader` times\nDALI's loader unless given `--loader torch`" \
        in README


def _table_row(text: str, first_cell: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in row.strip("|").split("|")][1:]


@pytest.mark.parametrize("column,recipe", [(0, "paper"), (1, "small")])
def test_training_md_recipe_table_is_what_the_recipes_set(column, recipe):
    """Each column of the recipe table against resolve_settings (the table said `small` keeps bias lr x2 without
    decay; it has x1 with decay)."""
    text = (ROOT / "docs" / "training.md").read_text()
    s = resolve_settings(recipe)

    def cell(first):
        row = _table_row(text, first)
        return row[0] if row[column] == "same" else row[column]
    biases = cell("biases")
    assert f"lr x{s.bias_lr_mult:g}" in biases and ("no weight decay" in biases) == (not s.bias_decay), biases
    assert int(cell("batch (global)")) == s.batch_size and int(cell("epochs")) == s.epochs
    assert float(cell("width")) == s.width
    assert ("PaperSGD" in cell("momentum form (`alexnet_pipe.train.optim`)")) == (s.momentum_form == "paper")


def test_docs_point_only_inside_the_repository():
    """Links and paths resolve in a clone (no ../shared/ALEXNET.md), and no user doc cites the tracker's issues."""
    for path in doc_files():
        text = path.read_text()
        assert not re.search(r"\bissues? \d+", text), f"{path.name} cites an issue number"
        assert "../" not in text, f"{path.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if not re.match(r"[a-z]+://", target):
                assert (path.parent / target).exists(), f"{path.name} links to {target}, which is not here"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_modules_the_docs_name_exist():
    for path in doc_files():
        text = path.read_text()
        for file in re.findall(r"\b(alexnet_pipe/[\w/]+\.py)\b", text):
            assert (ROOT / file).is_file(), f"{path.name} names {file}, which is not in the repository"
        for dotted in re.findall(r"`(alexnet_pipe(?:\.\w+)+)", text):
            assert _resolves(dotted), f"{path.name} names {dotted}, which does not import"


@pytest.mark.skipif(not __import__("shutil").which("make"), reason="needs make")
def test_make_install_takes_a_torch_index_and_keeps_a_venv_made_beforehand(tmp_path):
    """README: `make TORCH_INDEX=... install` installs torch from that index (the CPU build), and a venv made
    beforehand (with a CUDA torch of one's own) is not made anew."""
    import subprocess
    venv = tmp_path / "venv"
    plan = subprocess.run(["make", "-n", "-B", "install", f"VENV={venv}", "TORCH_INDEX=https://example.org/cpu"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--index-url https://example.org/cpu" in plan
    assert f"test -x {venv}/bin/python || " in plan  # `python -m venv` only where there is no venv yet
    assert "--index-url" not in subprocess.run(["make", "-n", "-B", "install", f"VENV={venv}"], cwd=ROOT,
                                               capture_output=True, text=True, check=True).stdout
