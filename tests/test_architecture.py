"""The house's rules: the import contracts hold, every module is placed in them, options are declared once, and the
tests stand alone (no test module imports another, so `pytest` and `python -m pytest` collect the same)."""
from __future__ import annotations

import ast
import collections
import dataclasses
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import alexnet_pipe
from alexnet_pipe.train.config import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def test_lint_imports_keeps_every_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _layered_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["type"] == "layers" and "containers" not in c)["layers"]
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}


def test_every_library_module_has_a_layer():
    """A new module cannot escape the layer rules by being left out of them."""
    top = {f"alexnet_pipe.{m.name}" for m in pkgutil.iter_modules(alexnet_pipe.__path__)} - {"alexnet_pipe.__main__"}
    assert top == _layered_modules()


def test_train_options_are_generated_from_the_settings():
    """Each offered setting is one option whose choices and shown default come from TrainSettings."""
    from click.testing import CliRunner
    from alexnet_pipe_cli.main import cli
    from alexnet_pipe_cli.train import train
    offered = {p.name: p for p in train.params}
    for f in dataclasses.fields(TrainSettings):
        opt = f.metadata["opt"]
        if opt.cli:
            assert offered[f.name].default is None, f.name  # so a recipe's value applies unless given
            assert tuple(getattr(offered[f.name].type, "choices", ())) == opt.choices, f.name
    help_text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    assert "[default: 90 (small: 30)]" in help_text and "[plateau|step|cosine]" in help_text


def _imports(tree: ast.AST):
    """(line, names) of each import statement, those inside functions too: `from x import y` names x and x.y."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            yield node.lineno, [base] + [f"{base}.{alias.name}".lstrip(".") for alias in node.names]


def cross_imports(tests: Path) -> list[str]:
    """'file:line: name' for each import of a test module (test_*.py, conftest) or of `tests` as a package: the
    first works only by accident of sys.path order, the second not from the pytest console script at all."""
    test_modules = {p.stem for p in tests.rglob("test_*.py")} | {"conftest"}
    helpers = {p.stem for p in (tests / "helpers").glob("*.py")} - {"__init__"}  # only as helpers.x
    found = []
    for path in sorted(tests.rglob("*.py")):
        for line, names in _imports(ast.parse(path.read_text(), filename=str(path))):
            bad = [n for n in names if n.split(".")[0] in {"tests", *helpers} or test_modules.intersection(n.split("."))]
            if bad:
                found.append(f"{path.relative_to(tests)}:{line}: {bad[0]}")
    return found


def test_no_test_module_imports_another():
    """Shared code is a fixture in conftest.py or a plain function in tests/helpers/."""
    assert cross_imports(TESTS) == []


def test_test_file_names_are_unique():
    """pytest imports test files by their basename (no __init__.py in tests/): two of a name in different wings
    would fail collection with 'import file mismatch'."""
    names = collections.Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []


def test_train_loop_reads_in_one_screen():
    """train() holds the epoch and step loops; the step, the metrics row, the checkpoint and the evaluation are
    named functions of their own (issue 18)."""
    import inspect
    from alexnet_pipe.train.loop import train
    lines, _ = inspect.getsourcelines(train)
    assert len(lines) < 60, f"train() is {len(lines)} lines"


# the train wing's files and their one owner each (issue 18): the module that alone spells each name
RUN_FILES = {"settings.json": "alexnet_pipe/train/runlog.py", "metrics.jsonl": "alexnet_pipe/train/runlog.py",
             "best.pt": "alexnet_pipe/train/checkpoint.py", "ckpt-": "alexnet_pipe/train/checkpoint.py"}


def test_each_run_file_is_named_by_its_owner_alone():
    """A string that is a path naming a run file (no spaces: prose, help texts and examples may mention them)
    appears only in the file's owner; everyone else asks the owner (runlog.settings_path, metrics_path,
    read_metrics; checkpoint.checkpoints, latest_checkpoint, best_checkpoint)."""
    import ast
    pattern = re.compile(r"^[\w./{}:-]*(?:(?<![\w.])(settings\.json|metrics\.jsonl|best\.pt)|(?<![\w.])(ckpt-))[\w./{}:-]*$")
    strays = []
    for path in sorted([*(ROOT / "alexnet_pipe").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := pattern.match(node.value)):
                if RUN_FILES[m.group(1) or m.group(2)] != where:
                    strays.append((where, node.lineno, node.value))
    assert strays == []


def test_every_import_of_the_library_resolves():
    """Each `from alexnet_pipe... import NAME` in the library, the CLI, the tests and the benchmarks names a module
    and a name that exist: a module split or moved leaves no stale import behind in a lazy import or a test that
    no run happens to collect (a merge of two branches that moved code left several)."""
    import ast
    import importlib
    stale = []
    for folder in ("alexnet_pipe", "cli", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                        and node.module.split(".")[0] in {"alexnet_pipe", "alexnet_pipe_cli"}):
                    continue
                try:
                    module = importlib.import_module(node.module)
                except ImportError as exc:
                    stale.append(f"{path.relative_to(ROOT)}:{node.lineno}: {exc}")
                    continue
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            stale.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}")
    assert stale == []


def test_no_undefined_name_in_the_library():
    """pyflakes' undefined names over alexnet_pipe/ and cli/: a merge of two branches that moved code left a
    module using `os` it no longer imported, found only when `prepare --only-shards auto` ran."""
    result = subprocess.run([sys.executable, "-m", "pyflakes", str(ROOT / "alexnet_pipe"), str(ROOT / "cli")],
                            capture_output=True, text=True, timeout=120)
    assert [line for line in result.stdout.splitlines() if "undefined name" in line] == []
