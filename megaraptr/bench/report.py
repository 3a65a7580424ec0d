"""The quality benchmark's report: curves, equal-budget interpolation, markdown and PNG.

Each finished run's summary holds its eval curve (``eval_history``: step, loss) and the clock
of every evaluation (``eval_clock``: step, training wall-clock seconds so far, layer-FLOPs
fraction so far). Layer FLOPs are counted in full-model steps (fraction x steps) and reported
relative to the ``full`` run of the same horizon, so a method that trains fewer steps (such as
``full-matched``) shows what it spent. "Equal FLOPs" and "equal wall-clock" read every curve,
linearly interpolated, at the smallest budget any run of the horizon finished with.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from megaraptr.bench.methods import BASELINE, model_shape

Curve = List[Tuple[float, float]]


def interpolate(curve: Curve, x: float) -> Optional[float]:
    """The curve's y at x (linear between points), None outside it."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if curve and abs(curve[-1][0] - x) <= 1e-9 * max(1.0, abs(x)):
        return curve[-1][1]
    return None


def curves(summary: dict, full_steps: int) -> Dict[str, Curve]:
    """Eval loss against steps, wall-clock seconds and layer FLOPs (in full runs)."""
    loss = {int(s): float(v) for s, v in summary["eval_history"]}
    out = {"steps": [], "wall": [], "flops": []}
    for step, wall, fraction in summary.get("eval_clock", []):
        if int(step) in loss:
            y = loss[int(step)]
            out["steps"].append((float(step), y))
            out["wall"].append((float(wall), y))
            out["flops"].append((float(fraction) * step / full_steps, y))
    return out


def horizon_rows(runs: Sequence, summaries: Dict[str, dict]) -> Tuple[List[dict], dict]:
    """One row per finished run of one horizon, and the equal-budget points used."""
    full = next((summaries[r.label] for r in runs if r.name == BASELINE and r.label in summaries),
                None)
    full_steps = full["steps"] if full else max(summaries[r.label]["steps"] for r in runs
                                                if r.label in summaries)
    data = {r.label: curves(summaries[r.label], full_steps) for r in runs if r.label in summaries}
    budget = {"flops": min(c["flops"][-1][0] for c in data.values()),
              "wall": min(c["wall"][-1][0] for c in data.values())}
    rows = []
    for run in runs:
        if run.label not in summaries:
            continue
        s, c = summaries[run.label], data[run.label]
        rows.append({
            "method": run.name, "steps": s["steps"], "final": s["final_eval_loss"],
            "delta": s["final_eval_loss"] - full["final_eval_loss"] if full else None,
            "flops": c["flops"][-1][0], "wall": s["wall_seconds"],
            "wall_ratio": s["wall_seconds"] / full["wall_seconds"] if full else None,
            "at_flops": interpolate(c["flops"], budget["flops"]),
            "at_wall": interpolate(c["wall"], budget["wall"]), "curves": c,
        })
    return rows, budget


def _fmt(value, spec: str, signed: bool = False) -> str:
    if value is None:
        return "-"
    return format(value, ("+" if signed else "") + spec)


def markdown_table(rows: List[dict], budget: dict) -> str:
    head = ("| method | steps | final eval loss | vs full | layer FLOPs | wall-clock s | wall vs "
            f"full | loss @ {budget['flops']:.3f} FLOPs | loss @ {budget['wall']:.0f} s |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['final']:.4f} | "
                     f"{_fmt(r['delta'], '.4f', True)} | {r['flops']:.3f} | {r['wall']:.0f} | "
                     f"{_fmt(r['wall_ratio'], '.2f')} | {_fmt(r['at_flops'], '.4f')} | "
                     f"{_fmt(r['at_wall'], '.4f')} |")
    return "\n".join(lines)


def plot(rows: List[dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, key, label in zip(axes, ("steps", "wall", "flops"),
                              ("optimizer steps", "training wall-clock (s)",
                               "layer FLOPs (full run = 1)")):
        for r in rows:
            pts = r["curves"][key][1:]  # the step-0 loss squeezes the interesting range
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r["method"], linewidth=1.4)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss (full model)")
        ax.grid(alpha=0.3)
        finals = [r["final"] for r in rows]
        ax.set_ylim(min(finals) - 0.05, max(finals) + 0.6)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(runs: Sequence, args) -> str:
    """Write ``OUT/report.md`` and one ``quality_h{h}.png`` per horizon; returns the report."""

    summaries = {r.label: r.summary() for r in runs if r.finished()}
    L, params = model_shape(args)
    tokens_per_step = args.micro_batch * args.seq_len
    out = [f"# Quality benchmark: {args.model}-{args.size}", "",
           f"{L} layers, {params:,} non-embedding parameters; {tokens_per_step:,} tokens per step "
           f"({args.micro_batch} x {args.seq_len}); vocabulary {args.vocab_size}; AdamW lr "
           f"{args.lr:g}, warmup {args.warmup:g} of the run then cosine to 0.1x; seed {args.seed}. "
           "Loss: per-token cross-entropy of the full model on held-out text.", ""]
    horizons = sorted({r.horizon for r in runs})
    overview = []
    for h in horizons:
        group = [r for r in runs if r.horizon == h]
        done = [r for r in group if r.label in summaries]
        steps = max(r.steps for r in group)
        out += [f"## {h:g} tokens per parameter ({steps * tokens_per_step:,} tokens, {steps} steps)",
                ""]
        if not done:
            out += ["(no finished runs yet)", ""]
            continue
        rows, budget = horizon_rows(group, summaries)
        png = os.path.join(args.out, f"quality_h{h:g}.png")
        plot(rows, f"{args.model}-{args.size}, {h:g} tokens/parameter", png)
        out += [markdown_table(rows, budget), "", f"![h{h:g}]({os.path.basename(png)})", ""]
        missing = [r.name for r in group if r.label not in summaries]
        if missing:
            out += [f"Not finished: {', '.join(missing)}.", ""]
        overview.append((h, {r["method"]: r for r in rows}))
    methods = [m for m in dict.fromkeys(r.name for r in runs)]
    out += ["## Final eval loss by horizon", "",
            "| tokens/param | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for h, by in overview:
        out.append(f"| {h:g} | " + " | ".join(_fmt(by[m]["final"], ".4f") if m in by else "-"
                                           for m in methods) + " |")
    path = os.path.join(args.out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path
