"""Pre-tokenized real text for the GPU benchmark, made here and carried to the GPU machine.

The GPU machine has no registry access and may lack the ``tokenizers`` package; prepared data
(``index.json`` + token shards) reads without it. This command takes a deterministic slice of
a corpus folder (``train.jsonl.gz`` and ``val.jsonl.gz``; documents whose id hashes below a
fraction, so every source is represented)
and prepares it twice into a git-ignored folder of the checkout:

- ``bert-mlm/``: WordPiece, vocabulary 30522 (BERT-base), masked LM;
- ``gpt-causal/``: byte-level BPE, vocabulary 50304 (GPT-2 medium's padded size), causal LM;

each with the corpus's val split: about 28 MB in all, under a minute on 2 cores.

    python -m megaraptr.bench.gpu_data --corpus my_corpus/    # -> .gpudata/ (git-ignored)
    MEGARAPTR_CORPUS=my_corpus/ python -m megaraptr.bench.gpu_data --out .gpudata --mlm-mb 40
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import List, Optional

from megaraptr.data import prepare

DEFAULT_OUT = ".gpudata"
PARTS = {"bert-mlm": ("mlm", 30522), "gpt-causal": ("causal", 50304)}


def default_corpus() -> Optional[Path]:
    """``$MEGARAPTR_CORPUS``, if set: the corpus folder when ``--corpus`` is not given."""
    env = os.environ.get("MEGARAPTR_CORPUS")
    return Path(env) if env else None


def write_slice(train: Path, out: Path, megabytes: float) -> dict:
    """Write the documents of ``train`` (jsonl.gz) whose id hash falls below the fraction that
    gives about ``megabytes`` of text into ``out`` (jsonl); returns what was written."""
    with gzip.open(train, "rt", encoding="utf-8") as f:
        total = sum(len(json.loads(line)["text"]) for line in f if line.strip())
    keep = min(1.0, megabytes * 1e6 / max(total, 1))
    written = docs = 0
    with gzip.open(train, "rt", encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            if not line.strip():
                continue
            doc = json.loads(line)
            key = str(doc.get("id", doc["text"][:64])).encode()
            if zlib.crc32(key) / 2 ** 32 < keep:
                dst.write(json.dumps({"text": doc["text"]}) + "\n")
                written += len(doc["text"])
                docs += 1
    return {"fraction": keep, "characters": written, "documents": docs}


def build(corpus: Path, out: Path, megabytes: dict) -> dict:
    """Prepare every part under ``out``; returns a manifest (also written to
    ``out/manifest.json``)."""

    out.mkdir(parents=True, exist_ok=True)
    manifest = {"corpus": str(corpus), "parts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, vocab) in PARTS.items():
            start = time.perf_counter()
            text = Path(tmp) / f"{name}.jsonl"
            sliced = write_slice(corpus / "train.jsonl.gz", text, megabytes[name])
            data = prepare([text], out / name, kind=kind, vocab_size=vocab,
                           val_inputs=[corpus / "val.jsonl.gz"])
            manifest["parts"][name] = dict(sliced, kind=kind, vocab_size=data.vocab_size,
                                           train_tokens=data.num_train_tokens,
                                           val_tokens=data.num_val_tokens,
                                           seconds=round(time.perf_counter() - start, 1))
            print(f"{name}: {data.num_train_tokens:,} train tokens, vocabulary "
                  f"{data.vocab_size}, {manifest['parts'][name]['seconds']} s", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="megaraptr-gpu-data", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=default_corpus())
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT))
    p.add_argument("--mlm-mb", type=float, default=40.0, help="MB of text for bert-mlm")
    p.add_argument("--causal-mb", type=float, default=8.0, help="MB of text for gpt-causal")
    args = p.parse_args(argv)
    if args.corpus is None:
        print("megaraptr-gpu-data: error: no corpus: give --corpus DIR (train.jsonl.gz and "
              "val.jsonl.gz) or $MEGARAPTR_CORPUS", file=sys.stderr)
        return 2
    for name in ("train.jsonl.gz", "val.jsonl.gz"):
        if not (args.corpus / name).is_file():
            print(f"megaraptr-gpu-data: error: {args.corpus / name}: no such file "
                  "(give --corpus or $MEGARAPTR_CORPUS)", file=sys.stderr)
            return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    build(args.corpus, args.out, {"bert-mlm": args.mlm_mb, "gpt-causal": args.causal_mb})
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
