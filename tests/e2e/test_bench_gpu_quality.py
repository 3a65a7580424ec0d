"""The GPU quality study's one command (launch/gpu_quality.sh) on CPU at a tiny size: the carried
folder made from a corpus with one source held out, unpacked and run end to end (both models,
every run at once), the reports and the short table last; and its refusal of a missing folder.
"""
from __future__ import annotations

import json
import sys

from support import ROOT, cpu_env, run, small_corpus


def test_launcher_runs_the_study_from_the_carried_folder(tmp_path):
    carry = tmp_path / "carry"
    run([sys.executable, "-m", "megaraptr.bench.gpu_quality_data", "--corpus",
         small_corpus(tmp_path / "corpus"), "--out", carry, "--tiny", "--wheels",
         tmp_path / "none"], timeout=120)
    manifest = json.loads((carry / "manifest.json").read_text())
    assert manifest["holdout_source"] == "moby" and manifest["documents"]["heldout"] >= 1
    assert set(manifest["parts"]) == {"bert", "gpt"}
    out = tmp_path / "out"
    env = cpu_env(PYTHON=sys.executable, WHEELS=0, DEVICE="cpu", CARRY=carry, OUT=out,
                  WORK=tmp_path / "work", UNPACK=tmp_path / "unpacked")
    proc = run(["bash", ROOT / "launch" / "gpu_quality.sh"], timeout=240, env=env)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("gpu_quality: rc=0")
    table = lines[lines.index(next(x for x in lines if x.startswith("model/method"))):-1]
    assert [row.split()[0] for row in table[1:]] == [
        "bert/full", "bert/raptr", "bert/full-matched", "gpt/full", "gpt/raptr",
        "gpt/full-matched"]
    for model in ("bert", "gpt"):
        report = (out / model / "report.md").read_text()
        assert "**Equal steps**" in report and "**Equal FLOPs**" in report
        assert "| moby loss |" in report and "a corpus source left out of training" in report
        runs = json.loads((out / model / "runs.json").read_text())
        assert all(r["final_extra_eval_loss"]["moby"] > 0 for r in runs.values())
        (png,) = (out / model).glob("quality_h*.png")
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert (out / model / "raptr.log").read_text().count("megaraptr: step 8: eval loss") == 1


def test_launcher_without_the_carried_folder_exits_2(tmp_path):
    env = cpu_env(PYTHON=sys.executable, WHEELS=0, DEVICE="cpu", CARRY=tmp_path / "missing",
                  OUT=tmp_path / "out")
    proc = run(["bash", ROOT / "launch" / "gpu_quality.sh"], timeout=30, env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"gpu_quality: no {tmp_path / 'missing'}/data.tar.xz "
                                   "(python -m megaraptr.bench.gpu_quality_data)")
