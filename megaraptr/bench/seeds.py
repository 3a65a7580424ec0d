"""Several seeds of the quality benchmark side by side: one table from their ``runs.json``.

    python -m megaraptr.bench.seeds runs/h5/runs.json runs/h5-seed2/runs.json [--ref full]
        [--seeds 1234,2]

Each ``runs.json`` is one sweep of :mod:`megaraptr.bench.quality` (one ``--seed``). For every
method (and horizon) that finished in all of them, the table gives each seed's final loss on
the val split and on every extra held-out set (``--eval-data``, ``--holdout-source``), their
mean, and the mean gap to ``--ref`` (default ``full``) with its range over the seeds (the gap
is taken within each seed, so a seed's shared luck cancels). Methods that finished in only
some sweeps are listed below the table, in no row.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional


def _loss(run: dict, column: str) -> Optional[float]:
    return run["final_eval_loss"] if column == "val" else \
        run.get("final_extra_eval_loss", {}).get(column)


def seed_table(sweeps: List[Dict[str, dict]], ref: str = "full",
               seeds: Optional[List[str]] = None) -> List[str]:
    """Markdown lines: per label finished in every sweep, the losses, mean and gap to ``ref``
    (``seeds``: each sweep's name in the header; default 1, 2, ...)."""
    seeds = seeds or [str(i + 1) for i in range(len(sweeps))]
    labels = [label for label in sweeps[0] if all(label in s for s in sweeps)]
    columns = ["val"] + sorted({c for s in sweeps for r in s.values()
                                for c in r.get("final_extra_eval_loss", {})})
    head = ["run", "layer FLOPs"]
    for c in columns:
        head += [f"{c}: " + ", ".join(f"seed {name}" for name in seeds),
                 f"{c} mean", f"{c} vs {ref} (range)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        horizon = label.split("/")[0]
        cells = [label, f"{sweeps[0][label].get('layer_flops_vs_full', 1.0):.3f}"]
        for c in columns:
            mine = [_loss(s[label], c) for s in sweeps]
            refs = [_loss(s.get(f"{horizon}/{ref}", {}), c) if f"{horizon}/{ref}" in s else None
                    for s in sweeps]
            cells.append(", ".join("-" if v is None else f"{v:.4f}" for v in mine))
            known = [v for v in mine if v is not None]
            cells.append(f"{sum(known) / len(known):.4f}" if len(known) == len(mine) else "-")
            gaps = [m - r for m, r in zip(mine, refs) if m is not None and r is not None]
            cells.append(f"{sum(gaps) / len(gaps):+.4f} ({min(gaps):+.4f} to {max(gaps):+.4f})"
                         if len(gaps) == len(mine) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    partial = [label for s in sweeps for label in s if label not in labels]
    if partial:
        lines += ["", "In only some sweeps (no row): " + ", ".join(dict.fromkeys(partial)) + "."]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="megaraptr-bench-seeds", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="runs.json of each sweep, one per seed")
    p.add_argument("--ref", default="full", help="the method the gaps are taken to")
    p.add_argument("--seeds", default=None, help="each sweep's seed, joined by commas (header)")
    args = p.parse_args(argv)
    seeds = args.seeds.split(",") if args.seeds else None
    if seeds is not None and len(seeds) != len(args.runs):
        p.error(f"--seeds: {len(seeds)} names for {len(args.runs)} runs.json")
    sweeps = []
    for path in args.runs:
        with open(path) as f:
            sweeps.append(json.load(f))
    print("\n".join(seed_table(sweeps, args.ref, seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
