"""The fenced code blocks of the user-facing docs, and a sandbox to run them in.

Docs: README.md, docs/**/*.md, ds_configs/README.md and megaraptr/methods/README.md. Every
fence names its language: ``bash`` and ``python`` blocks are examples the tests run,
``json`` blocks are validated, ``text`` blocks are output. A comment on the line before a
fence changes what happens to the block:

- ``<!-- not run: REASON -->``: the tests skip it and say why (GPUs, several nodes, hours);
- ``<!-- run with: KEY=VALUE ... -->``: run with these environment variables, each one a knob
  the example documents (the quickstart's ``STEPS``);
- ``<!-- file: NAME -->``: a python block written to NAME in the sandbox of its page and run
  by a bash block of the same page that names it.

Examples run in a fresh folder that links the repository's top-level entries (so
``ds_configs/...``, ``launch/...`` and ``python -m megaraptr...`` work and outputs stay there)
and holds ``my_corpus/``, the user's corpus of the examples: the built-in sample.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from support import ROOT, cpu_env

LANGUAGES = ("bash", "python", "json", "text")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(not run|run with|file):\s*(.*?)\s*-->\s*$")
SANDBOX_LINKS = ("megaraptr", "ds_configs", "launch", "docs", "setup.py", "setup.cfg",
                 "README.md")


@dataclass
class Block:
    """One fenced block of a doc page."""

    path: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    text: str
    not_run: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    file: Optional[str] = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> List[Path]:
    """The user-facing markdown pages."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
            ROOT / "ds_configs" / "README.md", ROOT / "megaraptr" / "methods" / "README.md"]


def _marker(block: Block, kind: str, value: str) -> None:
    if kind == "not run":
        block.not_run = value
    elif kind == "run with":
        block.env = dict(item.split("=", 1) for item in value.split() if "=" in item)
    else:
        block.file = value


def blocks(path: Path) -> List[Block]:
    """The fenced blocks of ``path``, with the marker comment before each (if any).

    Raises:
        ValueError: an unclosed fence.
    """
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang, start = match.group(1), match.group(2), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start + 1}: unclosed fence")
        block = Block(path, start + 1, lang, "\n".join(body) + "\n")
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        if marker:
            _marker(block, marker.group(1), marker.group(2))
        found.append(block)
        i += 1
    return found


def all_blocks() -> List[Block]:
    return [b for path in doc_files() for b in blocks(path)]


def markers(path: Path) -> List[int]:
    """Lines (1-based) of every marker comment of ``path``, used or not."""
    return [n for n, line in enumerate(path.read_text().splitlines(), 1) if MARKER.match(line)]


def runnable(block: Block) -> bool:
    """Run by the tests as an example of its own (a ``file:`` block runs through its page)."""
    return block.lang in ("bash", "python") and block.not_run is None and block.file is None


ENGINE_WORDS = ("init_distributed", "initialize(", "deepspeed", "torchrun")
"""What makes a Python example need a process group or a DeepSpeed engine."""


def needs_engine(block: Block) -> bool:
    """Commands and Python examples with DeepSpeed run in tests/e2e; pure Python in tests/unit."""
    return block.lang == "bash" or any(word in block.text for word in ENGINE_WORDS)


def sandbox(folder: Path, page: Path) -> Path:
    """Make ``folder`` a place to run the examples of ``page``: links to the repository's
    top-level entries, ``my_corpus/`` (the built-in sample) and the page's ``file:`` blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SANDBOX_LINKS:
        if (ROOT / name).exists():
            (folder / name).symlink_to(ROOT / name)
    corpus = folder / "my_corpus"
    corpus.mkdir()
    for split in ("train", "val"):
        (corpus / f"{split}.jsonl.gz").symlink_to(ROOT / "megaraptr" / "data" / "sample" /
                                                  f"{split}.jsonl.gz")
    for block in blocks(page):
        if block.file:
            (folder / block.file).write_text(block.text)
    return folder


def example_env(block: Block) -> dict:
    """A CPU DeepSpeed environment in which ``python``, ``torchrun`` and the console scripts
    are this interpreter's, megaraptr is this checkout, and a virtualenv counts as active."""
    bindir = str(Path(sys.executable).parent)
    env = cpu_env()
    env.update(PATH=f"{bindir}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
               VIRTUAL_ENV=env.get("VIRTUAL_ENV") or sys.prefix)
    env.update(block.env)
    return env
