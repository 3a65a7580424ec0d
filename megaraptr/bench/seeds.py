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


def target_table(settings: List[tuple], method: str, limits: Dict[str, float]) -> List[str]:
    """Markdown lines: per setting (a name and its sweeps, one per seed), ``method``'s mean gap
    to each reference of ``limits`` (each seed's gap in brackets) on every held-out set, and
    whether it is within that reference's limit."""
    columns = sorted({c for _, sweeps in settings for s in sweeps for r in s.values()
                      for c in r.get("final_extra_eval_loss", {})})
    columns = ["val"] + columns
    head = ["setting"] + [f"vs {ref}, {c} (<= {limit:+g})" for ref, limit in limits.items()
                          for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, sweeps in settings:
        label = next(k for k in sweeps[0] if k.split("/")[-1] == method)
        horizon = label.split("/")[0]
        cells = [name]
        for ref, limit in limits.items():
            for c in columns:
                gaps = [_loss(s[label], c) - _loss(s[f"{horizon}/{ref}"], c) for s in sweeps]
                mean = sum(gaps) / len(gaps)
                verdict = "met" if mean <= limit + 1e-12 else f"**missed by {mean - limit:.3f}**"
                cells.append(f"{mean:+.4f} ({', '.join(f'{g:+.4f}' for g in gaps)}): {verdict}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="megaraptr-bench-seeds", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="runs.json of each sweep, one per seed")
    p.add_argument("--ref", default="full", help="the method the gaps are taken to")
    p.add_argument("--seeds", default=None, help="each sweep's seed, joined by commas (header)")
    p.add_argument("--targets", metavar="METHOD", default=None,
                   help="instead: METHOD's gap to each --limits reference, a row per setting "
                        "(runs given as NAME=A/runs.json,B/runs.json)")
    p.add_argument("--limits", default="full=0.01,stacking=0",
                   help="with --targets: reference=largest allowed mean gap, joined by commas")
    args = p.parse_args(argv)
    if args.targets:
        return _targets(p, args)
    seeds = args.seeds.split(",") if args.seeds else None
    if seeds is not None and len(seeds) != len(args.runs):
        p.error(f"--seeds: {len(seeds)} names for {len(args.runs)} runs.json")
    sweeps = []
    for path in args.runs:
        with open(path) as f:
            sweeps.append(json.load(f))
    print("\n".join(seed_table(sweeps, args.ref, seeds)))
    return 0


def _targets(p: argparse.ArgumentParser, args) -> int:
    try:
        limits = {ref: float(v) for ref, v in (item.split("=") for item in args.limits.split(","))}
        settings = [(name, paths.split(",")) for name, paths in (r.split("=", 1) for r in args.runs)]
    except ValueError:
        p.error("--targets: runs as NAME=A/runs.json,B/runs.json and --limits as ref=number,...")
    loaded = []
    for name, paths in settings:
        sweeps = []
        for path in paths:
            with open(path) as f:
                sweeps.append(json.load(f))
        loaded.append((name, sweeps))
    print("\n".join(target_table(loaded, args.targets, limits)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
