"""The fenced blocks of README.md and docs/*.md, and the verdict each code block carries.

A shell or python block (```bash, ```sh, ```python, or an untagged block that reads like commands) needs an HTML
comment on the line before it, one of:

    <!-- test: run -->               runs as written
    <!-- test: sub -->               runs through the one substitution (tests/test_docs.py says what it is)
    <!-- test: gpu: REASON -->       not run on a CPU machine: needs CUDA, and says why
    <!-- test: cluster: REASON -->   not run here: needs a scheduler or several machines, and says why

`run` and `sub` take flags after a comma: `data` (the block reads ./alexnet-data, which the test prepares first
from the sample data) and `slow`. `cluster (NAME)` names a block for other tests (tests/test_cluster.py). A text
block after `<!-- printed by: COMMAND -->` is what COMMAND prints: the test runs COMMAND and compares.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL, PYTHON = {"bash", "sh", "shell", "console", "zsh"}, {"python", "py"}
KINDS, FLAGS = ("run", "sub", "gpu", "cluster"), {"data", "slow"}
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
VERDICT = re.compile(r"<!-- test: (?P<kind>\w+)(?: \((?P<name>[\w-]+)\))?(?P<flags>(?:, \w+)*)(?:: (?P<reason>.*?))? -->")
PRINTED = re.compile(r"<!-- printed by: (?P<command>.+?) -->")
# an untagged block that starts a line with one of these is commands, and needs a verdict like any other
COMMAND_WORDS = re.compile(r"^\s*(\$ )?(alexnet-pipe|python3?|make|torchrun|srun|sbatch|kubectl|git|export|source|"
                           r"cd|pip|for|\w+=\$\()", re.M)


@dataclasses.dataclass(frozen=True)
class Verdict:
    kind: str
    name: str | None
    flags: frozenset
    reason: str | None


@dataclasses.dataclass(frozen=True)
class Block:
    file: str          # relative to the repository
    line: int          # of the opening fence
    lang: str
    body: str
    comment: str       # the line before the fence

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def is_code(self) -> bool:
        return self.lang in SHELL | PYTHON or (not self.lang and bool(COMMAND_WORDS.search(self.body)))

    @property
    def verdict(self) -> Verdict | None:
        m = VERDICT.fullmatch(self.comment.strip())
        if not m:
            return None
        flags = frozenset(f.strip() for f in m["flags"].split(",") if f.strip())
        return Verdict(m["kind"], m["name"], flags, m["reason"])

    @property
    def printed_by(self) -> str | None:
        m = PRINTED.fullmatch(self.comment.strip())
        return m["command"] if m else None


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append(Block(str(path.relative_to(ROOT)), text.count("\n", 0, m.start()) + 1, m["lang"],
                           m["body"], before))
    return found


def problem(block: Block) -> str | None:
    """Why a block's verdict is missing or malformed; None when it is fine."""
    if not block.is_code:
        return None
    v = block.verdict
    if v is None:
        return f"{block.where}: a {block.lang or 'command'} block without <!-- test: run|sub|gpu|cluster ... -->"
    if v.kind not in KINDS:
        return f"{block.where}: unknown verdict {v.kind!r} (one of {', '.join(KINDS)})"
    if v.kind in ("gpu", "cluster") and not v.reason:
        return f"{block.where}: a {v.kind} block must say why it cannot run here (<!-- test: {v.kind}: why -->)"
    if not v.flags <= FLAGS:
        return f"{block.where}: unknown flags {sorted(v.flags - FLAGS)} (known: {sorted(FLAGS)})"
    return None


def named_block(name: str, path: Path | None = None) -> str:
    """The body of the code block marked `<!-- test: cluster (NAME): ... -->` (docs/getting-started.md by default),
    for the tests that run a cluster's command on one machine."""
    path = path or ROOT / "docs" / "getting-started.md"
    found = [b for b in blocks(path) if b.verdict and b.verdict.name == name]
    assert len(found) == 1, f"{path.name} has {len(found)} code blocks marked <!-- test: cluster ({name}): ... -->"
    return found[0].body


def tally() -> dict[str, int]:
    """How many code blocks run as written, through the substitution, or only on a GPU / a cluster."""
    counts = dict.fromkeys(KINDS, 0)
    for path in doc_files():
        for block in blocks(path):
            if block.is_code and block.verdict:
                counts[block.verdict.kind] += 1
    return counts
