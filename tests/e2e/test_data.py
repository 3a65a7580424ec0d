"""Tests of megaraptr.data: tokenizers, preparing, caching, errors and the command line.

Real text only: the built-in sample and slices of the shared corpus. Small broken files are
written only for the malformed-input tests.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from itertools import islice

from support import CORPUS, ROOT, cpu_env, run

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


def test_training_from_one_txt_file_holds_out_a_split_and_says_how(tmp_path):
    with gzip.open(CORPUS / "val.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in islice(f, 30)]
    (tmp_path / "one.txt").write_text("\n\n".join(texts), encoding="utf-8")
    (tmp_path / "short.txt").write_text(texts[1], encoding="utf-8")
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config["tensorboard"]["output_path"] = str(tmp_path / "tb")
    (tmp_path / "ds.json").write_text(json.dumps(config))
    train = [sys.executable, "-m", "megaraptr.train", "--deepspeed_config", tmp_path / "ds.json",
             "--model", "bert", "--size", "tiny", "--train-steps", "3", "--data"]
    env = cpu_env(MEGARAPTR_CACHE=tmp_path / "cache")
    proc = run(train + [tmp_path / "one.txt"], env=env, timeout=300)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("megaraptr: data: "))
    assert str(tmp_path / "one.txt") in line and "train tokens in" in line
    assert "val split: 1 of" in line and "held out: the one with the smallest document hash" \
        in line
    assert "megaraptr: step 3: eval loss" in proc.stdout
    # One document cannot be split; a second path is read too (--data takes several).
    for paths, message in (([tmp_path / "short.txt"], "short.txt: 1 document is too few to "
                            "hold out a val split; give more text"),
                           ([tmp_path / "one.txt", tmp_path / "nope.jsonl"],
                            "nope.jsonl: no such file")):
        proc = run(train + paths, env=env, timeout=120, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
