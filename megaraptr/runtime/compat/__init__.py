"""DeepSpeed compatibility: megaraptr's patches of DeepSpeed internals, checked at start-up.

megaraptr replaces, wraps or copies a few DeepSpeed methods and reads private fields
(:mod:`megaraptr.runtime.compat.registry` lists them all, with why). Each patch records the
sha256 of the DeepSpeed sources it relies on, as of DeepSpeed 0.19.8. Before a patch is
installed, :func:`guard` or :func:`require` hashes the installed DeepSpeed's sources again:

- all equal: the patch is installed and reported ``"active"``;
- one differs, and DeepSpeed's own path is correct (only slower): one warning line names the
  method and the supported version, the patch stays off, and it is reported
  ``"fallback: <reason>"`` (:func:`guard`);
- one differs, and there is no correct fallback: :class:`DeepSpeedCompatError`, one line,
  before training (:func:`require`).

A source is normalised before hashing (dedented, comments, blank lines and trailing spaces
dropped), so a reformatted comment does not count as a change; any code change does.

Usage (the engine's start-up)::

    patches = dict(compat.PROCESS_PATCHES)
    if compat.guard(patches, "zero12_frozen_step"):
        ...install...
    print(compat.describe(patches))
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import io
import os
import sys
import textwrap
import tokenize
from typing import Dict, Optional

from megaraptr.errors import DeepSpeedCompatError
from megaraptr.runtime.compat.registry import PATCHES, SOURCES, SUPPORTED

ACTIVE = "active"
PROCESS_PATCHES: Dict[str, str] = {}
"""Patches of this process rather than of one engine (the CPU shared-memory op skip)."""

_hashes: Dict[str, str] = {}  # target -> installed source hash (sources do not change in-process)
_warned: set = set()


def resolve(target: str):
    """The object ``module`` or ``module:qualname`` names in the installed DeepSpeed."""
    module, _, qualname = target.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


def definition_source(target: str) -> str:
    """The normalised source of ``module:qualname`` as written in the installed package.

    Read from the enclosing module's or class's source, so that a decorator which does not
    keep ``__wrapped__`` (DeepSpeed's ``instrument_w_nvtx``) still yields the method itself.
    """
    module, _, qualname = target.partition(":")
    *outer, name = qualname.split(".")
    source, tree = _parsed(f"{module}:{'.'.join(outer)}")
    body = tree.body[0].body if outer else tree.body  # a class's source is that one class
    found = [node for node in body if getattr(node, "name", None) == name and
             isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    if not found:
        raise LookupError(f"{target}: no such definition")
    node = found[-1]  # a redefinition wins, as at run time
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    return _normalise("\n".join(source.splitlines()[start - 1:node.end_lineno]))


@functools.lru_cache(maxsize=None)
def _parsed(owner: str):
    """(dedented source, its AST) of a module or class, read once per process."""
    source = textwrap.dedent(inspect.getsource(resolve(owner)))
    return source, ast.parse(source)


def _normalise(source: str) -> str:
    source = textwrap.dedent(source)
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source + "\n").readline):
        if token.type == tokenize.COMMENT:  # at most one per line: cut it off
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def source_hash(target: str) -> str:
    """sha256 (hex) of :func:`definition_source`."""
    if target not in _hashes:
        _hashes[target] = hashlib.sha256(definition_source(target).encode()).hexdigest()
    return _hashes[target]


def installed_version() -> str:
    import deepspeed

    return deepspeed.__version__


def label(target: str) -> str:
    """A short name for a target: ``Class.method``, or ``module.function``."""
    module, _, qualname = target.partition(":")
    return qualname if "." in qualname or qualname[:1].isupper() else f"{module}.{qualname}"


def mismatch(name: str) -> Optional[str]:
    """Why patch ``name`` cannot be trusted on the installed DeepSpeed, or None if it can."""
    for target in PATCHES[name].sources:
        try:
            same = source_hash(target) == SOURCES[target]
        except (OSError, TypeError, LookupError, AttributeError, ImportError,
                SyntaxError) as err:  # no source shipped, or the definition is gone
            return f"{label(target)} cannot be read ({type(err).__name__})"
        if not same:
            return f"{label(target)} differs from DeepSpeed {SUPPORTED}'s"
    return None


def _say(line: str) -> None:
    """Print a warning line once per process, on global rank 0 only."""
    if line not in _warned:
        _warned.add(line)
        if os.environ.get("RANK", "0") == "0":
            print(f"megaraptr: warning: {line}", file=sys.stderr, flush=True)


def guard(patches: Optional[dict], name: str) -> bool:
    """Whether patch ``name`` may be installed; records the outcome in ``patches``.

    On a source mismatch: one warning line, ``patches[name] = "fallback: <reason>"`` and False;
    the caller keeps DeepSpeed's own path.
    """
    patch = PATCHES[name]
    assert patch.fallback is not None, f"{name} has no fallback: use require()"
    why = mismatch(name)
    status = ACTIVE if why is None else f"fallback: {why}; {patch.fallback}"
    if patches is not None:
        patches[name] = status
    if why is not None:
        _say(f"{why} (installed: DeepSpeed {installed_version()}; megaraptr supports "
             f"{SUPPORTED}): {name} off, {patch.fallback}")
    return why is None


def depends_off(patches: Optional[dict], name: str, needed: str) -> None:
    """Record patch ``name`` as on DeepSpeed's own path because patch ``needed``, which it
    relies on, is (no warning line of its own: ``needed``'s said why)."""
    if patches is not None:
        patches[name] = f"fallback: needs {needed}, which is off; {PATCHES[name].fallback}"


def require(patches: Optional[dict], name: str) -> None:
    """Stop unless patch ``name`` (one without a correct fallback) matches the installed
    DeepSpeed; records ``"active"`` in ``patches``.

    Raises:
        DeepSpeedCompatError: one line naming the method, the versions and why.
    """
    why = mismatch(name)
    if why is not None:
        raise DeepSpeedCompatError(
            f"{why} (installed: DeepSpeed {installed_version()}; megaraptr supports "
            f"{SUPPORTED}) and megaraptr's {name} has no safe fallback: "
            f"{PATCHES[name].no_fallback}. Install deepspeed=={SUPPORTED}")
    if patches is not None:
        patches[name] = ACTIVE


def describe(patches: Dict[str, str]) -> str:
    """One line for a run's log: the DeepSpeed version and each patch's state."""
    active = [n for n, s in patches.items() if s == ACTIVE]
    off = [f"{n} ({s.split(';')[0].removeprefix('fallback: ')})" for n, s in patches.items()
           if s != ACTIVE]
    line = f"DeepSpeed {installed_version()} (megaraptr supports {SUPPORTED}): " \
           f"patches active: {', '.join(active) or 'none'}"
    return line + (f"; on DeepSpeed's own path: {', '.join(off)}" if off else "")
