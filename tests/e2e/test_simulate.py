"""Tests of the pipeline simulator (megaraptr.planning.simulate, megaraptr.tools.simulate).

Pure: numpy only, no DeepSpeed, no torch. The 1F1B examples are worked by hand in comments.
"""
import subprocess
import sys

# ---------------------------------------------------------------- command line


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "megaraptr.simulate", "--layers", "6",
                           "--stages", "2", "--schedule", "4-6", "--steps", "10",
                           "--micro-batches", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("| balanced")
    bad = subprocess.run([sys.executable, "-m", "megaraptr.simulate", "--stages", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
