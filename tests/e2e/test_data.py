"""Tests of megaraptr.data: tokenizers, preparing, caching, errors and the command line.

Real text only: the built-in sample and slices of the shared corpus. Small broken files are
written only for the malformed-input tests.
"""

from __future__ import annotations

import os
import subprocess
import sys



from support import ROOT
ENV = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


# -- sample and tokenizers ---------------------------------------------------------------------


# -- prepared data -----------------------------------------------------------------------------


# -- errors and command line -------------------------------------------------------------------


def test_cli_prepare_info_and_errors(tmp_path):
    cli = [sys.executable, "-m", "megaraptr.data"]
    proc = subprocess.run(cli + ["prepare", "--input", str(tmp_path / "missing.jsonl.gz"),
                                 "--output", str(tmp_path / "o"), "--kind", "mlm"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "missing.jsonl.gz: no such file" in proc.stderr
    proc = subprocess.run(cli + ["prepare", "--input", "x", "--output", "o", "--kind", "t5"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--kind" in proc.stderr
    proc = subprocess.run(cli + ["info", str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
