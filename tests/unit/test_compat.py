"""megaraptr.runtime.compat: the registry of private DeepSpeed names agrees with the installed
DeepSpeed (a DeepSpeed upgrade that changes a patched method fails here), names every private
DeepSpeed name megaraptr's source touches, and a changed source means one warning line and
DeepSpeed's own path, or one error line before anything is built.

No engine, no process group: DeepSpeed's modules are imported and read, nothing more."""
from __future__ import annotations

import ast
import functools
import inspect
import re
from pathlib import Path

import pytest

from megaraptr.errors import DeepSpeedCompatError
from megaraptr.runtime import compat
from megaraptr.runtime.compat.registry import MANGLED, PATCHES, SOURCES, SUPPORTED, Z12, Z12M

PACKAGE = Path(compat.__file__).resolve().parents[2]
NOT_DEEPSPEED = {"_foreach_norm", "_foreach_mul_", "_foreach_zero_", "_foreach_copy_", "_dynamo",
                 "_local_scalar_dense", "_to_copy", "_unique2",  # torch (aten op names)
                 "_no_split_modules",  # transformers
                 "_result", "_rewarm_lr", "_before_optimizer_step"}  # RaptrEngine's own
"""Underscore names megaraptr reads that belong to torch, transformers or megaraptr itself
(RaptrEngine methods the host-overhead benchmark times)."""


@pytest.mark.parametrize("target", sorted(SOURCES))
def test_recorded_hash_matches_the_installed_deepspeed(target):
    # the installed DeepSpeed is the supported one (setup.py pins it); a release that changes a
    # method megaraptr copies, wraps or relies on must fail here, loudly, before users see it
    assert compat.source_hash(target) == SOURCES[target], \
        f"{target} changed: review megaraptr's patch against it, then record the new hash"


def test_every_recorded_source_belongs_to_a_patch_and_back():
    used = {target for patch in PATCHES.values() for target in patch.sources}
    assert used == set(SOURCES)
    for name, patch in PATCHES.items():
        assert (patch.fallback is None) == bool(patch.no_fallback), name  # one or the other
        assert patch.names and patch.what and patch.where, name
        for where in patch.where.split(", "):
            assert (PACKAGE.parent / where).is_file(), (name, where)


def _appears(owner, name: str) -> bool:
    """Whether ``name`` is an attribute of ``owner`` or is set/read on something in its
    source (instance fields, parameter attributes); name-mangled fields as written."""
    if hasattr(owner, name):
        return True
    written = "__" + name[len(MANGLED):] if name.startswith(MANGLED) else name
    owners = [c for c in inspect.getmro(owner) if c.__module__.startswith("deepspeed")] \
        if inspect.isclass(owner) else [owner]
    pattern = re.compile(rf"\.{re.escape(written)}\b|['\"]{re.escape(written)}['\"]")
    return any(pattern.search(_source(o)) for o in owners)


@functools.lru_cache(maxsize=None)
def _source(obj) -> str:
    return inspect.getsource(obj)


@pytest.mark.parametrize("patch", sorted(PATCHES))
def test_every_registered_name_is_a_real_deepspeed_attribute(patch):
    for owner, names in PATCHES[patch].names.items():
        obj = compat.resolve(owner)
        missing = [n for n in names if not _appears(obj, n)]
        assert not missing, f"{owner} has no {missing}"


def _registered() -> set:
    return {n for patch in PATCHES.values() for names in patch.names.values() for n in names}


def _private_names(path: Path) -> set:
    """Underscore names read off objects other than self, or written as strings (getattr,
    setattr), plus ``self._x`` and overridden ``_x`` methods in subclasses of DeepSpeed's."""
    tree = ast.parse(path.read_text())
    from_deepspeed = {a.asname or a.name for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and
                      (node.module or "").startswith("deepspeed") for a in node.names}
    subclass_nodes = set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and \
                any(isinstance(b, ast.Name) and b.id in from_deepspeed for b in node.bases):
            for inner in ast.walk(node):
                subclass_nodes.add(id(inner))
                if isinstance(inner, ast.FunctionDef) and inner.name.startswith("_") and \
                        not inner.name.startswith("__"):
                    names.add(inner.name)
    formatted = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                 for part in node.values}  # pieces of f-strings are text, not names
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not on_self or id(node) in subclass_nodes:
                names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                id(node) not in formatted:
            names.add(node.value)
    return {n for n in names if re.fullmatch(r"_[A-Za-z]\w*", n) and
            (not n.startswith("__") or n.startswith(MANGLED))}


def test_every_private_deepspeed_name_in_megaraptr_is_registered():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "compat" in path.relative_to(PACKAGE).parts:  # the registry itself
            continue
        for name in _private_names(path) - NOT_DEEPSPEED:
            found.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
    unregistered = {n: where for n, where in found.items() if n not in _registered()}
    assert not unregistered, f"register these in megaraptr/runtime/compat/registry.py: " \
                             f"{unregistered}"
    assert len(found) >= 20  # the scan sees them: step.py alone reads a dozen


def test_the_copied_zero12_step_reads_only_registered_names():
    from megaraptr.runtime.zero import step

    tree = ast.parse("\n".join(inspect.getsource(f) for f in (
        step._zero12_step, step._flat_gradient, step.clip_factor, step.batches,
        step.optimizer_step)))  # the copied step and the helpers it calls
    read = {(node.value.id, node.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)}
    names = PATCHES["zero12_frozen_step"].names
    assert {a for base, a in read if base == "opt"} <= set(names[Z12])
    assert {a for base, a in read if base == "z"} <= set(names[Z12M])
    assert len({a for base, a in read if base == "opt"}) >= 30


def test_normalised_source_ignores_comments_and_layout_only():
    base = compat._normalise("def f(x):\n    y = x + 1\n    return y\n")
    assert compat._normalise("def f(x):  # doc\n\n    y = x + 1   # why\n    return y\n") == base
    assert compat._normalise("    def f(x):\n        y = x + 1\n        return y\n") == base
    assert compat._normalise("def f(x):\n    y = x + 2\n    return y\n") != base
    assert compat._normalise("def f(x):\n    y = '#' + x\n") != \
        compat._normalise("def f(x):\n    y = '' + x\n")  # a '#' in a string is code


def test_decorated_methods_hash_their_own_source():
    # instrument_w_nvtx wraps without functools.wraps: the method's text, not the wrapper's
    source = compat.definition_source(
        "deepspeed.runtime.zero.stage3:DeepSpeedZeroOptimizer_Stage3._get_norm_groups")
    assert "def _get_norm_groups(self):" in source and "wrapped_fn" not in source


@pytest.fixture
def fresh(monkeypatch):
    """A clean warning memory, rank 0, and a recorded hash to change."""
    monkeypatch.setattr(compat, "_warned", set())
    monkeypatch.delenv("RANK", raising=False)

    def change(target: str):
        monkeypatch.setitem(SOURCES, target, "0" * 64)
    return change


def test_a_changed_source_falls_back_with_one_warning_line(fresh, capsys):
    fresh(Z12 + ".step")
    patches = {}
    assert compat.guard(patches, "zero12_frozen_step") is False
    assert compat.guard(patches, "zero12_frozen_step") is False  # asked again: no new line
    assert compat.guard(patches, "zero3_frozen_step") is True
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"megaraptr: warning: DeepSpeedZeroOptimizer.step differs from DeepSpeed "
                     f"{SUPPORTED}'s (installed: DeepSpeed {compat.installed_version()}; "
                     f"megaraptr supports {SUPPORTED}): zero12_frozen_step off, "
                     f"{PATCHES['zero12_frozen_step'].fallback}"]
    assert patches["zero12_frozen_step"].startswith(
        "fallback: DeepSpeedZeroOptimizer.step differs from DeepSpeed 0.19.8's; DeepSpeed's own")
    assert patches["zero3_frozen_step"] == "active"
    line = compat.describe(patches)
    assert "\n" not in line and "patches active: zero3_frozen_step" in line
    assert "own path: zero12_frozen_step (DeepSpeedZeroOptimizer.step differs" in line


def test_other_ranks_stay_quiet(fresh, capsys, monkeypatch):
    fresh(Z12 + ".step")
    monkeypatch.setenv("RANK", "1")
    assert compat.guard({}, "zero12_layer_norm") is False
    assert capsys.readouterr().err == ""


def test_no_fallback_stops_with_one_line_before_anything_is_built(fresh):
    from megaraptr.models import model_config
    from megaraptr.runtime.pipe import engine as pipeline

    fresh("deepspeed.runtime.pipe.module:PipelineModule._partition_layers")
    cfg = model_config("tiny", vocab_size=512, seq_len=32)
    with pytest.raises(DeepSpeedCompatError) as err:  # no process group exists: it stops first
        pipeline.build_module("gpt", cfg, num_stages=2, layer_parts=(0, 2, 4))
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert message.startswith("PipelineModule._partition_layers differs from DeepSpeed 0.19.8's")
    assert "pipe_partition has no safe fallback" in message
    assert message.endswith(f"Install deepspeed=={SUPPORTED}")


def test_guard_refuses_a_patch_without_fallback():
    with pytest.raises(AssertionError):
        compat.guard({}, "pipe_zero1_norm")


def test_unreadable_source_counts_as_a_mismatch(fresh, monkeypatch):
    def no_source(target):
        raise OSError("could not get source code")
    monkeypatch.setattr(compat, "_hashes", {})
    monkeypatch.setattr(compat, "definition_source", no_source)
    assert compat.mismatch("zero3_stale_grads") == \
        "DeepSpeedZeroOptimizer_Stage3._get_fp32_grad_state_partition cannot be read (OSError)"


@pytest.mark.parametrize("target", PATCHES["zero12_layer_reduce"].sources)
def test_any_changed_source_of_the_layer_reduction_falls_back(fresh, capsys, target):
    # each DeepSpeed method whose behaviour the reduction reproduces or relies on: one changed,
    # the reduction stays DeepSpeed's, said in one line naming that method
    fresh(target)
    patches = {}
    assert compat.guard(patches, "zero12_layer_reduce") is False
    assert patches["zero12_layer_reduce"].startswith(f"fallback: {compat.label(target)} differs")
    assert capsys.readouterr().err.count("zero12_layer_reduce off") == 1
