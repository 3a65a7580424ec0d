"""The docs against the code: README's key table is the schema's, its dependency list is
setup.py's, every fence is labelled, JSON examples are valid raptr blocks, pure Python examples
run, repository paths and links resolve, and nothing user-facing points at a development
checkout. The command examples run in tests/e2e/test_docs_examples.py."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import re

import pytest
from support import ROOT
from support.docs import LANGUAGES, all_blocks, blocks, doc_files, markers, needs_engine, runnable

from megaraptr import parse_raptr_block
from megaraptr.core.config_doc import current_section, render_section

README = ROOT / "README.md"
CI_COMMAND = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q -n 2 --dist loadfile'
PAGES = doc_files()
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]


def is_pure(block) -> bool:
    return block.lang == "python" and runnable(block) and not needs_engine(block)


def test_readme_key_table_is_generated_from_the_schema():
    section = current_section(README.read_text())
    assert section is not None, "README lost the raptr-keys markers"
    assert section == render_section(), \
        "README's raptr key table differs from megaraptr/core/config.py; regenerate it with " \
        "python -m megaraptr.core.config_doc --update README.md"


def test_readme_dependencies_are_setup_pys():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.keyword)
                and n.arg == "install_requires")
    required = sorted(ast.literal_eval(call.value))
    sentence = re.search(r"Requires (.*?)\.(\s|$)", " ".join(README.read_text().split()))
    assert sentence, "README needs a sentence 'Requires `pkg`, `pkg`, ...'"
    assert sorted(re.findall(r"`([^`]+)`", sentence.group(1))) == required


def test_readme_has_the_ci_command_the_quick_loop_and_stays_short():
    text = README.read_text()
    assert CI_COMMAND in text and CI_COMMAND in (ROOT / ".ci" / "run").read_text()
    assert "pytest tests/unit" in text
    assert len(text.splitlines()) <= 400


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_fence_is_labelled_and_every_marker_belongs_to_a_block(page):
    found = blocks(page)
    assert [b.id for b in found if b.lang not in LANGUAGES] == [], \
        f"label every fence with one of {LANGUAGES}"
    marked = {b.id for b in found if b.not_run is not None or b.env or b.file}
    assert len(marked) == len(markers(page)), "a marker comment must directly precede a fence"
    for block in found:
        if block.not_run is not None:
            assert block.not_run and block.lang in ("bash", "python"), block.id
        if block.env:
            assert block.lang == "bash" and all(k.isupper() for k in block.env), block.id
        if block.file:
            users = [b for b in found if b.lang == "bash" and runnable(b) and block.file in b.text]
            assert block.lang == "python" and users, f"{block.id}: no example runs {block.file}"


def test_examples_mostly_run():
    examples = [b for b in all_blocks() if b.lang in ("bash", "python")]
    skipped = [b for b in examples if b.not_run is not None]
    assert examples and len(skipped) < len(examples) / 2, [b.id for b in skipped]


JSON_BLOCKS = [b for b in all_blocks() if b.lang == "json"]


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=[b.id for b in JSON_BLOCKS])
def test_json_examples_are_valid_raptr_blocks(block):
    text = block.text.strip()
    value = json.loads(text if text.startswith("{") else "{" + text + "}")
    assert "raptr" in value, f"{block.id}: a JSON example shows a raptr block"
    parse_raptr_block(value["raptr"])


PURE = [b for b in all_blocks() if is_pure(b)]


@pytest.mark.parametrize("block", PURE, ids=[b.id for b in PURE])
def test_pure_python_examples_run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.text, block.id, "exec"), {"__name__": "__main__"})
    assert out.getvalue().strip(), f"{block.id} printed nothing"


PATH = re.compile(r"(?<![\w./-])((?:megaraptr|tests|docs|launch|ds_configs|\.ci)/[\w./*<>-]*"
                  r"[\w>-](?:\.(?:py|md|sh|json|sbatch|png))?)")
LINK = re.compile(r"\]\(([^)#\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_repository_paths_and_links_resolve(page):
    text = page.read_text()
    missing = sorted({p for p in PATH.findall(text)
                      if not (ROOT / p).exists() and not set("{*<") & set(p)})  # patterns, not paths
    assert missing == [], f"{page.name} names paths that do not exist: {missing}"
    broken = sorted({link for link in LINK.findall(text) if "://" not in link
                     and not (page.parent / link).exists()})
    assert broken == [], f"{page.name} links to missing files: {broken}"


DEVELOPMENT_PATHS = re.compile(r"\.\./shared|shared/(data|docs|device)")
THIS_MACHINE = re.compile(r"/work/")
"""A path of the development machine; recorded measurements (JSON) may name where they ran."""
USER_FACING = ("megaraptr", "docs", "ds_configs", "launch")


def test_nothing_user_facing_points_at_a_development_checkout():
    files = [ROOT / "README.md", ROOT / "setup.py"]
    files += [p for top in USER_FACING for p in sorted((ROOT / top).rglob("*"))
              if p.is_file() and p.suffix in (".py", ".md", ".sh", ".sbatch", ".json", ".txt")]
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if DEVELOPMENT_PATHS.search(line)]
    assert hits == []
