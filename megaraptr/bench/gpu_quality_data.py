"""The one folder the GPU quality study carries to an offline GPU machine (git-ignored).

    python -m megaraptr.bench.gpu_quality_data --corpus CORPUS   # -> .gpuquality/

after filling ``.whl/`` with the wheels the GPU machine lacks (deepspeed 0.19.8, pydantic,
hjson for Python 3.12: ``bash launch/gpu_wheels.sh``, see docs/benchmarks.md).
``CORPUS``: a folder with ``train.jsonl.gz`` and ``val.jsonl.gz`` whose lines carry a
``source`` field (default ``$MEGARAPTR_CORPUS``).

It holds everything ``launch/gpu_quality.sh`` needs besides the checkout, on a machine without
registry access or the ``tokenizers`` package:

- ``whl/``: copies of ``.whl/*.whl`` (installed there into ``/tmp/site``);
- ``data.tar.xz``: four prepared folders (``index.json``, ``tokenizer.json``, token shards),
  made from the shared corpus with one source (``--holdout-source``, default ``moby``) left
  out of training: ``bert/`` (WordPiece, masked LM) and ``gpt/`` (byte-level BPE, causal LM),
  each trained on every other source with the corpus's val split of those sources; and
  ``bert-<source>/``, ``gpt-<source>/``: the held-out source's text tokenized by the same
  tokenizers (their val split is the out-of-domain check);
- ``manifest.json``: tokens per part and the settings.

The tokens are xz-compressed (the raw shards are about twice the 64 MiB a GPU check may
carry); the launcher unpacks them into ``/tmp`` in seconds. ``--tiny`` makes a small version
from any corpus folder (small vocabularies) for the CPU test of the launcher.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from megaraptr.data import prepare_cached
from megaraptr.data.eval_sets import hold_out_source, prepare_eval_set
from megaraptr.errors import MegaraptrError

DEFAULT_OUT = ".gpuquality"
HOLDOUT = "moby"
VOCAB = {"bert": ("mlm", 8192), "gpt": ("causal", 2048)}
TINY_VOCAB = {"bert": ("mlm", 512), "gpt": ("causal", 512)}
KEEP = ("index.json", "tokenizer.json")


def _copy_prepared(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name in KEEP or f.suffix == ".bin":
            shutil.copyfile(f, dst / f.name)


def build(corpus: Path, out: Path, *, source: str, tiny: bool, wheels: Path) -> dict:
    """Write ``out`` (see the module docstring); returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"corpus": str(corpus), "holdout_source": source, "parts": {}}
    split = hold_out_source(corpus, source)
    manifest["documents"] = split.counts
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "data"
        for name, (kind, vocab) in (TINY_VOCAB if tiny else VOCAB).items():
            start = time.perf_counter()
            data = prepare_cached([split.train], val_inputs=[split.val], kind=kind,
                                  vocab_size=vocab)
            held = prepare_eval_set(split.heldout, data)
            _copy_prepared(data.path, stage / name)
            _copy_prepared(held.path, stage / f"{name}-{source}")
            manifest["parts"][name] = {
                "kind": kind, "vocab_size": data.vocab_size, "train_tokens": data.num_train_tokens,
                "val_tokens": data.num_val_tokens, f"{source}_tokens": held.num_val_tokens,
                "seconds": round(time.perf_counter() - start, 1)}
            print(f"{name}: {data.num_train_tokens:,} train tokens, {data.num_val_tokens:,} val, "
                  f"{held.num_val_tokens:,} {source}; vocabulary {data.vocab_size}", flush=True)
        tar_tmp = out / "data.tar.xz.tmp"
        with tarfile.open(tar_tmp, "w:xz", preset=6) as tar:
            tar.add(stage, arcname="data")
        os.replace(tar_tmp, out / "data.tar.xz")
    if (out / "whl").exists():
        shutil.rmtree(out / "whl")
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if found:
        (out / "whl").mkdir()
        for w in found:
            shutil.copyfile(w, out / "whl" / w.name)
    manifest["wheels"] = [w.name for w in found]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="megaraptr-gpu-quality-data",
                                description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=os.environ.get("MEGARAPTR_CORPUS"),
                   help="corpus folder (default $MEGARAPTR_CORPUS)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT))
    p.add_argument("--holdout-source", default=HOLDOUT)
    p.add_argument("--wheels", type=Path, default=Path(".whl"),
                   help="folder of wheels to carry (default .whl/)")
    p.add_argument("--tiny", action="store_true", help="small vocabularies (CPU tests)")
    args = p.parse_args(argv)
    if args.corpus is None or not (args.corpus / "train.jsonl.gz").is_file():
        print(f"megaraptr-gpu-quality-data: error: --corpus: {args.corpus}: no train.jsonl.gz "
              "there; allowed: a corpus folder (or $MEGARAPTR_CORPUS)", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        build(args.corpus, args.out, source=args.holdout_source, tiny=args.tiny,
              wheels=args.wheels)
    except MegaraptrError as err:
        print(f"megaraptr-gpu-quality-data: error: {err}", file=sys.stderr)
        return err.exit_code
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2 ** 20:.1f} MiB", flush=True)
    if not (args.out / "whl").is_dir():
        print("no wheels carried: fill .whl/ first (docs/benchmarks.md)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
