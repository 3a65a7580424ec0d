"""The quality benchmark's report: markdown tables, curves (PNG) and every run's raw record.

Each comparison sets side by side only runs that each finished their own warmup + cosine LR
schedule (never a reading in the middle of a longer run), and says what is held equal:

- **equal steps**: the runs of N steps (``full`` and every method of the same length);
- **equal FLOPs**: the runs whose total training FLOPs (layers, head and embedding:
  :mod:`megaraptr.planning.flops`) are within ``FLOPS_BAND`` of ``full-matched``'s, which
  trains the full model for as many steps as RAPTR's FLOPs buy; so RAPTR, stacking and the
  FLOP-matched PLD and LayerDrop each against it, and against each other;
- **equal wall-clock**: the runs whose training seconds are within ``WALL_BAND`` of
  ``full-wall``'s, which trains the full model for N x (raptr's seconds / full's seconds).

Losses: the full model's per-token cross-entropy on the val split and on each extra held-out
set (``--eval-data``, ``--holdout-source``): one column each, everywhere. FLOPs are reported
relative to the ``full`` run of the horizon: layer FLOPs (what RAPTR saves) and total FLOPs.
``runs.json`` holds every finished run's summary (curves, clocks, FLOPs, its raptr block).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from megaraptr.bench.methods import BASELINE, MATCHED, WALL, flops_of, model_shape

Curve = List[Tuple[float, float]]
FLOPS_BAND = 0.03
WALL_BAND = 0.05


def interpolate(curve: Curve, x: float) -> Optional[float]:
    """The curve's y at x (linear between points), None outside it (for plots and tests)."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if curve and abs(curve[-1][0] - x) <= 1e-9 * max(1.0, abs(x)):
        return curve[-1][1]
    return None


def curves(summary: dict, full_flops: float, step_flops) -> Dict[str, Curve]:
    """Val loss against steps, wall-clock seconds and total FLOPs (in full runs)."""
    loss = {int(s): float(v) for s, v in summary["eval_history"]}
    out = {"steps": [], "wall": [], "flops": []}
    for step, wall, fraction in summary.get("eval_clock", []):
        if int(step) in loss:
            y = loss[int(step)]
            out["steps"].append((float(step), y))
            out["wall"].append((float(wall), y))
            out["flops"].append((step_flops.run(step, fraction) / full_flops, y))
    return out


def rows_of(runs: Sequence, summaries: Dict[str, dict], args) -> List[dict]:
    """One row per finished run of one horizon (relative to its ``full`` run)."""
    step_flops = flops_of(args)
    done = [r for r in runs if r.label in summaries]
    full = next((summaries[r.label] for r in done if r.name == BASELINE), None)
    n_full = full["steps"] if full else max(summaries[r.label]["steps"] for r in done)
    full_flops = step_flops.run(n_full, 1.0)
    rows = []
    for run in done:
        s = summaries[run.label]
        fraction = s["layer_flops_fraction"]
        rows.append({
            "method": run.name, "steps": s["steps"], "val": s["final_eval_loss"],
            "extra": dict(s.get("final_extra_eval_loss", {})),
            "layer_flops": fraction * s["steps"] / n_full,
            "flops": step_flops.run(s["steps"], fraction) / full_flops,
            "wall": s["wall_seconds"], "equal_steps": s["steps"] == n_full,
            "curves": curves(s, full_flops, step_flops)})
    return rows


def _fmt(value, spec: str, signed: bool = False) -> str:
    return "-" if value is None else format(value, ("+" if signed else "") + spec)


def table(rows: List[dict], ref: Optional[dict], extras: List[str], ref_name: str) -> str:
    """A markdown table of ``rows``, losses and their gaps to ``ref`` per held-out set."""
    cols = ["val"] + extras
    head = ["method", "steps", "layer FLOPs", "total FLOPs", "wall-clock s"]
    for c in cols:
        head += [f"{c} loss", f"vs {ref_name}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], str(r["steps"]), f"{r['layer_flops']:.3f}", f"{r['flops']:.3f}",
                 f"{r['wall']:.0f}" if r["wall"] >= 100 else f"{r['wall']:.1f}"]
        for c in cols:
            mine = r["val"] if c == "val" else r["extra"].get(c)
            theirs = None if ref is None else (ref["val"] if c == "val" else ref["extra"].get(c))
            gap = None if mine is None or theirs is None else mine - theirs
            cells += [_fmt(mine, ".4f"), _fmt(gap, ".4f", signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons(rows: List[dict], extras: List[str], wall: Optional[dict]) -> List[str]:
    """The three tables of one horizon, each saying what is held equal."""
    by = {r["method"]: r for r in rows}
    out = []
    same = [r for r in rows if r["equal_steps"]]
    if same:
        out += ["**Equal steps** (each run trains the same number of steps, its own schedule "
                "over them):", "", table(same, by.get(BASELINE), extras, BASELINE), ""]
    ref = by.get(MATCHED) or by.get("raptr")
    if ref is not None:
        band = [r for r in rows if r["method"] != BASELINE and r["method"] != WALL
                and abs(r["flops"] / ref["flops"] - 1) <= FLOPS_BAND]
        left = [f"{r['method']} ({r['flops']:.3f})" for r in rows if r not in band
                and r["method"] != BASELINE]
        out += [f"**Equal FLOPs** (runs that each finished their own schedule within "
                f"{FLOPS_BAND:.0%} of {ref['method']}'s {ref['flops']:.3f} of full training's "
                "total FLOPs):", "", table(band, ref, extras, ref["method"]), ""]
        if left:
            out += [f"Not FLOP-matched (total FLOPs): {', '.join(left)}.", ""]
    if WALL in by:
        ref = by[WALL]
        band = [r for r in rows if r["method"] != BASELINE
                and abs(r["wall"] / ref["wall"] - 1) <= WALL_BAND]
        note = "" if wall is None else (
            f" (its length: {wall['ratio']:.3f} of full's steps = raptr's "
            f"{wall['raptr_seconds']:.0f} s / full's {wall['full_seconds']:.0f} s of training, "
            "measured in this sweep)")
        out += [f"**Equal wall-clock** (runs whose training seconds are within {WALL_BAND:.0%} "
                f"of full-wall's{note}):", "", table(band, ref, extras, WALL), ""]
    return out


def plot(rows: List[dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, key, label in zip(axes, ("steps", "wall", "flops"),
                              ("optimizer steps", "training wall-clock (s)",
                               "total training FLOPs (full run = 1)")):
        for r in rows:
            pts = r["curves"][key][1:]  # the step-0 loss squeezes the interesting range
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r["method"], linewidth=1.4)
        ax.set_xlabel(label)
        ax.set_ylabel("val loss (full model)")
        ax.grid(alpha=0.3)
        finals = [r["val"] for r in rows]
        ax.set_ylim(min(finals) - 0.05, max(finals) + 0.6)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wall_note(args, h: float) -> Optional[dict]:
    path = os.path.join(args.out, f"h{h:g}", WALL, "wall.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def header(args) -> List[str]:
    L, params = model_shape(args)
    tokens_per_step = args.micro_batch * args.seq_len
    extras = list(getattr(args, "extras", {}) or {})
    held = [f"`{e}` (a corpus source left out of training; val holds the other sources)"
            if e == getattr(args, "holdout_source", None) else f"`{e}` (--eval-data)"
            for e in extras]
    return [f"# Quality benchmark: {args.model}-{args.size}", "",
            f"{L} layers, {params:,} non-embedding parameters; {tokens_per_step:,} tokens per "
            f"step ({args.micro_batch} x {args.seq_len}); vocabulary {args.vocab_size}; AdamW "
            f"lr {args.lr:g}, warmup {args.warmup:g} of each run then cosine to 0.1x over the "
            f"run's own length; seed {args.seed}; {getattr(args, 'device', 'cpu')}, "
            f"{getattr(args, 'precision', 'fp32')}, kernels {getattr(args, 'kernels', 'eager')}. "
            "Loss: per-token cross-entropy of the full model on held-out text: the val split"
            + (f" and {', '.join(held)}" if held else "") + ". FLOPs relative to the full run "
            "of N steps (layer FLOPs: the transformer layers only; total: head and embedding "
            "too).", ""]


def write_report(runs: Sequence, args) -> str:
    """Write ``OUT/report.md``, ``OUT/runs.json`` and one ``quality_h{h}.png`` per horizon;
    returns the report's path."""
    summaries = {r.label: r.summary() for r in runs if r.finished()}
    tokens_per_step = args.micro_batch * args.seq_len
    extras = list(getattr(args, "extras", {}) or {})
    out, overview, record = header(args), [], {}
    for h in sorted({r.horizon for r in runs}):
        group = [r for r in runs if r.horizon == h]
        steps = max(r.steps for r in group if r.name != WALL)
        out += [f"## {h:g} tokens per parameter ({steps * tokens_per_step:,} tokens, {steps} "
                "steps)", ""]
        if not any(r.label in summaries for r in group):
            out += ["(no finished runs yet)", ""]
            continue
        rows = rows_of(group, summaries, args)
        png = os.path.join(args.out, f"quality_h{h:g}.png")
        plot(rows, f"{args.model}-{args.size}, {h:g} tokens/parameter", png)
        out += comparisons(rows, extras, _wall_note(args, h))
        out += [f"![h{h:g}]({os.path.basename(png)})", ""]
        missing = [r.name for r in group if r.label not in summaries]
        if missing:
            out += [f"Not finished (in no table): {', '.join(missing)}.", ""]
        overview.append((h, {r["method"]: r for r in rows}))
        for r, row in zip([r for r in group if r.label in summaries], rows):
            record[r.label] = dict(summaries[r.label], raptr=r.config["raptr"],
                                   lr=args.lr, flops_vs_full=row["flops"],
                                   layer_flops_vs_full=row["layer_flops"])
    methods = list(dict.fromkeys(r.name for r in runs))
    for col in ["val"] + extras:
        out += [f"## Final {col} loss by horizon", "",
                "| tokens/param | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for h, by in overview:
            out.append(f"| {h:g} | " + " | ".join(
                _fmt(by[m]["val"] if col == "val" else by[m]["extra"].get(col), ".4f")
                if m in by else "-" for m in methods) + " |")
        out.append("")
    with open(os.path.join(args.out, "runs.json"), "w") as f:
        json.dump(record, f, indent=1)
    path = os.path.join(args.out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path
