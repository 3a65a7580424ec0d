"""Command line for data preparation: ``python -m megaraptr.data prepare|info``.

Bad input or arguments print one line to stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
import time

from megaraptr.data import load_prepared, prepare
from megaraptr.data.split import describe_split
from megaraptr.errors import MegaraptrError

PROG = "python -m megaraptr.data"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Prepare and inspect megaraptr training data.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    prep = sub.add_parser("prepare", help="tokenize raw text into a prepared directory")
    prep.add_argument("--input", nargs="+", required=True, metavar="PATH",
                      help=".txt (running text, cut into documents of at most 131,072 "
                           "characters), .jsonl/.jsonl.gz ('text' field) files or directories")
    prep.add_argument("--output", required=True, metavar="DIR", help="output directory")
    prep.add_argument("--kind", required=True, choices=("mlm", "causal"),
                      help="mlm: WordPiece for BERT-style; causal: byte-level BPE for GPT-style")
    prep.add_argument("--vocab-size", type=int, default=8192, metavar="N")
    prep.add_argument("--tokenizer-file", metavar="F", help="use this tokenizer.json")
    prep.add_argument("--val-input", nargs="+", metavar="PATH", help="val inputs")
    prep.add_argument("--val-fraction", type=float, default=0.01,
                      help="documents held out by hash when there are no val inputs")
    info = sub.add_parser("info", help="describe a prepared directory")
    info.add_argument("dir", metavar="DIR")
    return parser


def _describe(data) -> str:
    lines = [f"{data.path}",
             f"  kind       {data.kind} ({data.tokenizer_kind}), vocab {data.vocab_size}, "
             f"{data.dtype.name}",
             "  special    " + ", ".join(f"{k}={v}" for k, v in sorted(data.special.items()))]
    for split in ("train", "val"):
        entry = data.index["splits"][split]
        lines.append(f"  {split:<10} {entry['tokens']:,} tokens, {entry['documents']:,} documents, "
                     f"{len(entry['shards'])} shard(s)")
    lines.append(f"  {describe_split(data.index)}")
    lines += [f"  note: {note}" for note in data.notes]
    lines.append(f"  fingerprint {data.fingerprint}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args = _parser().parse_args(argv)
    try:

        if args.command == "info":
            print(_describe(load_prepared(args.dir)))
            return 0
        start = time.perf_counter()
        data = prepare(args.input, args.output, kind=args.kind, vocab_size=args.vocab_size,
                       tokenizer_file=args.tokenizer_file, val_inputs=args.val_input,
                       val_fraction=args.val_fraction)
        print(_describe(data))
        print(f"  prepared in {time.perf_counter() - start:.1f} s")
        return 0
    except MegaraptrError as err:
        print(err, file=sys.stderr)
        return err.exit_code if err.exit_code else 1


if __name__ == "__main__":
    sys.exit(main())
