"""The shape of the package, checked on its source: imports only go down the layers, the
package's own imports sit at module top, no method is chosen by a string test outside
megaraptr.methods, and every module says what it owns."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "megaraptr"
LAYERS = ["errors", "core", "methods", "kernels", "models|data", "planning", "runtime", "tools",
          "bench"]
"""Lowest first: a module may import its own layer and the layers below it, never above."""
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer.split("|")}
MODULES = sorted(PACKAGE.rglob("*.py"))


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _own_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").split(".")[0] == "megaraptr":
            names = [f"{node.module}.{a.name}" for a in node.names] \
                if node.module == "megaraptr" else [node.module]
            yield node, names
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "megaraptr"]
            if names:
                yield node, names


def test_every_package_module_is_in_a_layer():
    top = {_layer(p) for p in MODULES} - {"__init__", "train", "simulate"}  # the root API and
    assert top <= set(RANK), top - set(RANK)  # the two command aliases sit above every layer


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(path):
    layer = _layer(path)
    if layer not in RANK:
        return
    for node, names in _own_imports(ast.parse(path.read_text())):
        for name in names:
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else None
            assert target not in RANK or RANK[target] <= RANK[layer], \
                f"{path.name}:{node.lineno}: {layer} imports {name}, a higher layer"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_own_imports_at_module_top(path):
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    guarded = {id(n) for s in tree.body if isinstance(s, ast.If) for n in s.body}  # TYPE_CHECKING
    for node, names in _own_imports(tree):
        assert id(node) in top or id(node) in guarded, \
            f"{path.name}:{node.lineno}: imports {names[0]} inside a function"


def test_no_method_string_tests_outside_methods():
    pattern = re.compile(r"""\bmethod\s*(==|!=|\bin\b|\bnot in\b)|(==|!=)\s*["'](raptr|full|pld|"""
                         r"""layerdrop|stacking|warmup)["']""")
    found = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
             for p in MODULES if _layer(p) != "methods"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_has_a_docstring(path):
    assert ast.get_docstring(ast.parse(path.read_text())), path
