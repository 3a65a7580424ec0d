"""Every shell and Python example of README.md and the docs, run as a user runs it.

Each bash block runs under ``bash -euo pipefail`` in a fresh sandbox (``support.docs``): links
to the repository, ``my_corpus/`` (the built-in sample) and the page's ``file:`` blocks. A
Python block that needs DeepSpeed or a process group runs as a script there (pure ones run in
tests/unit/test_docs.py). Blocks marked ``<!-- not run: why -->`` are reported as skipped
with their reason, so ``pytest -rs`` lists every example the tests do not run.
"""
from __future__ import annotations

import sys

import pytest
from support import run
from support.docs import all_blocks, example_env, needs_engine, runnable, sandbox


def _params():
    params = []
    for block in all_blocks():
        if block.lang not in ("bash", "python") or block.file:
            continue
        if block.not_run is not None:
            params.append(pytest.param(block, id=block.id,
                                       marks=pytest.mark.skip(reason=f"not run: {block.not_run}")))
        elif runnable(block) and needs_engine(block):
            params.append(pytest.param(block, id=block.id))
    return params


@pytest.mark.parametrize("block", _params())
def test_example_runs(block, tmp_path):
    folder = sandbox(tmp_path / "sandbox", block.path)
    if block.lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", block.text]
    else:
        (folder / "example.py").write_text(block.text)
        cmd = [sys.executable, "example.py"]
    proc = run(cmd, timeout=600, env=example_env(block), cwd=folder)
    assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr[-3000:]
