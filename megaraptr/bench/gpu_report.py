"""The GPU benchmark's summary (``gpu_bench.json``) and the short table printed last.

Read from the parts' JSON (:mod:`megaraptr.bench.gpu`): per shape and path the fixed and
per-layer costs under eager and auto kernels and their ratio; per DeepSpeed path its overhead
against plain PyTorch with the same kernels (per-layer ratio, fixed-cost difference) and its
speedup at k = L/2 against its own ideal (:mod:`megaraptr.bench.step_metrics`); the
torch.compile graphs made (while timed: must be 0); the residual-kernel check; the end-to-end
pairs (speedup and achieved / ideal, the ideal from the same run's plain-PyTorch costs with the
same kernels); and the targets (measured, never asserted). None of these figures can be won
by a slower path: the retired "efficiency" could.
"""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import List, Optional

from megaraptr.bench import host_report
from megaraptr.bench.step_metrics import meets

TARGETS = {"per_layer_ratio": 0.8, "zero1_per_layer_vs_plain": 1.05, "zero1_fixed_diff_ms": 3.0,
           "e2e_achieved_over_ideal": 0.98}
"""Compiled per-layer time <= 0.8 x eager (plain PyTorch); BERT-base ZeRO-1 with auto kernels:
per-layer time <= 1.05 x plain PyTorch's and fixed cost <= plain's + 3 ms; RAPTR end to end
>= 0.98 of the ideal in every pair (3 of 3)."""
BASES = ("plain", "zero1", "zero2", "zero3")


def _load(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _path(entry: dict, half: str) -> dict:
    if "error" in entry:
        return {"error": entry["error"]}
    row = entry["per_k"].get(half, {})
    versus = entry.get("vs_plain") or {}
    return {"resolved": (entry.get("kernels") or {}).get("mode", "eager"),
            "optimizer": (entry.get("kernels") or {}).get("optimizer"),
            "fixed_ms": entry["fit"]["fixed_ms"], "per_layer_ms": entry["fit"]["per_layer_ms"],
            "per_layer_vs_plain": versus.get("per_layer_ratio"),
            "fixed_diff_ms": versus.get("fixed_diff_ms"),
            "t_half_ms": row.get("median_ms"), "half_vs_plain": row.get("vs_plain"),
            "half_over_ideal": row.get("achieved_over_ideal"),
            "linear": all(r.get("linear", True) for r in entry["per_k"].values()),
            "graphs": entry.get("compiled_graphs"),
            "graphs_while_timed": entry.get("compiled_graphs_while_timed")}


def shape_summary(result: dict) -> dict:
    """Per base path (plain, zero1, ...): eager and auto entries and the per-layer ratio."""
    L = result["num_layers"]
    half = str(L // 2)
    c = result["config"]
    out = {"shape": f"{c['model']}-{c['size']}", "num_layers": L, "half": L // 2,
           "tokens_per_step": c["micro_batch"] * c["seq_len"], "vocab_size": c["vocab_size"],
           "paths": {}}
    for base in BASES:
        eager, auto = result["paths"].get(base), result["paths"].get(base + "+auto")
        if eager is None and auto is None:
            continue
        row = {"eager": _path(eager, half) if eager else None,
               "auto": _path(auto, half) if auto else None}
        if row["eager"] and row["auto"] and "error" not in row["eager"] and \
                "error" not in row["auto"] and row["eager"]["per_layer_ms"] > 0:
            row["per_layer_ratio"] = row["auto"]["per_layer_ms"] / row["eager"]["per_layer_ms"]
        out["paths"][base] = row
    return out


def e2e_summary(e2e: dict) -> dict:
    """The end-to-end pairs: speedups, the ideal from the same run's plain costs (same
    kernels), achieved / ideal per pair and their spread."""
    runs = e2e["runs"]
    return dict(e2e["summary"], schedule=e2e["config"]["schedule"], steps=runs[0]["steps"],
                steps_reduced=e2e.get("steps_reduced"), zero=e2e["config"]["zero"],
                kernels=e2e["config"]["kernels"], kernels_resolved=runs[0]["kernels"]["mode"],
                graphs_compiled_in_loops=sum(r["graphs_compiled_in_loop"] for r in runs))


def targets(summary: dict) -> dict:
    """The targets, measured: value and whether it is met, per item."""
    out = {}
    for part in ("bert", "gpt"):
        paths = (summary.get(part) or {}).get("paths", {})
        ratio = (paths.get("plain") or {}).get("per_layer_ratio")
        if ratio is not None:
            out[f"{part} per-layer auto/eager <= 0.8"] = (ratio,
                                                          ratio <= TARGETS["per_layer_ratio"])
    zero1 = (((summary.get("bert") or {}).get("paths") or {}).get("zero1") or {}).get("auto")
    if zero1 and zero1.get("per_layer_vs_plain") is not None:
        value = zero1["per_layer_vs_plain"]
        out["bert zero1 auto per-layer <= 1.05 x plain"] = (
            value, value <= TARGETS["zero1_per_layer_vs_plain"])
        value = zero1["fixed_diff_ms"]
        out["bert zero1 auto fixed <= plain + 3 ms"] = (value,
                                                        value <= TARGETS["zero1_fixed_diff_ms"])
    e2e = summary.get("e2e") or {}
    if e2e.get("achieved_over_ideal"):
        hit, total = meets(e2e["achieved_over_ideal"], TARGETS["e2e_achieved_over_ideal"])
        out[f"e2e achieved/ideal >= 0.98 in {total} of {total} pairs (met in {hit})"] = (
            min(e2e["achieved_over_ideal"]), hit == total and total >= 3)
    return out


def summarize(out: Path, status: dict, *, elapsed: float, command: str) -> dict:
    """Everything the parts wrote, summarized (what ``gpu_bench.json`` holds)."""
    summary = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": command, "elapsed_s": round(elapsed, 1), "parts": status}
    for part in ("bert", "gpt"):
        result = _load(out / f"{part}.json")
        if result:
            summary.setdefault("device", result["device"])
            summary.setdefault("versions", result["versions"])
            summary[part] = shape_summary(result)
            if "kernel_check" in result:
                summary["kernel_check"] = result["kernel_check"]
    e2e = _load(out / "e2e.json")
    if e2e and "summary" in e2e:
        summary["e2e"] = e2e_summary(e2e)
    host = _load(out / "host.json")
    if host and "analysis" in host:
        summary["host"] = {"device": host["device"], "config": host["config"],
                           "targets": host["analysis"]["targets"],
                           "table": host_report.compare({"host": host})}
    summary["targets"] = targets(summary)
    return summary


def _f(value, fmt="{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _e2e_line(e2e: dict) -> str:
    cut = " (steps cut to fit the budget)" if e2e.get("steps_reduced") else ""
    sp, ach = e2e["speedup"], e2e["achieved_over_ideal_spread"]
    return (f"e2e {e2e['schedule']} vs full, {e2e['pairs']} pairs of {e2e['steps']} steps{cut}, "
            f"ZeRO-{e2e['zero']}, kernels {e2e['kernels_resolved']}: full "
            f"{e2e['full_ms_per_step']['median']:.1f} ms/step, RAPTR "
            f"{e2e['raptr_ms_per_step']['median']:.1f} ({e2e['mean_active_layers']:.2f} layers): "
            f"speedup {sp['median']:.3f}x [{sp['min']:.3f}-{sp['max']:.3f}]; ideal "
            f"{e2e['ideal']:.3f}x (plain PyTorch t(k) of this run, same kernels; "
            f"{e2e['ideal_from_line']:.3f}x from its line); achieved/ideal {ach['median']:.3f} "
            f"[{ach['min']:.3f}-{ach['max']:.3f}]; loss (last 20 steps) full "
            f"{e2e['loss_full_last20']:.3f}, RAPTR {e2e['loss_raptr_last20']:.3f}")


def _check_line(check: dict) -> str:
    state = "ok" if check.get("ok") else check.get("skipped") or "FAILED"
    bf16 = check.get("bfloat16") or {}
    timing = f"; bf16 {bf16['triton_ms']:.3f} ms vs eager x + s*b {bf16['eager_ms']:.3f} ms" \
        if "triton_ms" in bf16 else ""
    return f"Triton scaled residual add: {state}{timing}"


def table(summary: dict) -> str:
    """The short text table: card, kernels check, per-layer costs and overheads, e2e, targets."""
    v = summary.get("versions") or {}
    lines = [f"megaraptr GPU benchmark: {summary.get('device', 'no device result')}; torch "
             f"{v.get('torch', '?')}, deepspeed {v.get('deepspeed', '?')}; {summary['date']}; "
             f"{summary['elapsed_s']:.0f} s"]
    for part, st in summary["parts"].items():
        if st.get("rc") != 0:
            cut = " (timed out: partial results)" if st.get("timed_out") else ""
            lines.append(f"part {part}: {st.get('skipped') or 'rc %s' % st.get('rc')}{cut}")
        if st.get("first_try"):
            lines.append(f"part {part}: rc {st['first_try']['rc']} with auto kernels (see "
                         f"{part}.log), run again with fused kernels ({part}-fused.log)")
    if summary.get("kernel_check"):
        lines.append(_check_line(summary["kernel_check"]))
    rows = [["shape", "path [auto is]", "ms/layer eager", "auto", "ratio", "fixed ms eager",
             "auto", "vs plain (auto): per layer", "fixed ms", "L/2 /ideal", "graphs (timed)"]]
    for part in ("bert", "gpt"):
        shape = summary.get(part) or {}
        for base, row in shape.get("paths", {}).items():
            e, a = row.get("eager") or {}, row.get("auto") or {}
            graphs = a["error"][:40] if "error" in a else \
                f"{a.get('graphs', '-')} ({a.get('graphs_while_timed', '-')})"
            off = "" if a.get("linear", True) else "*"
            rows.append([shape["shape"], f"{base} [{a.get('resolved', '-')}]",
                         _f(e.get("per_layer_ms")), _f(a.get("per_layer_ms")),
                         _f(row.get("per_layer_ratio")), _f(e.get("fixed_ms"), "{:.1f}"),
                         _f(a.get("fixed_ms"), "{:.1f}"), _f(a.get("per_layer_vs_plain")),
                         _f(a.get("fixed_diff_ms"), "{:+.1f}"),
                         _f(a.get("half_over_ideal"), "{:.3f}") + off, graphs])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if summary.get("e2e"):
        lines.append(_e2e_line(summary["e2e"]))
    if summary.get("host"):
        lines += ["host overhead (python -m megaraptr.bench.host_overhead, "
                  f"{summary['host']['config']['size']}, {summary['host']['config']['precision']}):",
                  summary["host"]["table"]]
    met = summary["targets"]
    if met:
        dry = str(summary.get("device", "")).startswith("cpu")
        items = [f"{k}: {value:.3f} {'met' if ok else 'MISSED'}" for k, (value, ok) in met.items()]
        lines.append(("dry run on CPU, not the targets' setting; " if dry else "")
                     + "targets: " + "; ".join(items))
    return "\n".join(lines)


def rescore(summary: dict) -> List[str]:
    """The overheads against plain PyTorch of an older summary (one that reported
    "efficiency"), recomputed from its fits and medians at L/2: per path and kernels the
    per-layer ratio, the fixed-cost difference and t(L/2) over its own ideal. The three
    medians of the k = 0, L/2, L fit are recovered exactly (least squares through three
    equally spaced points: slope = (t(L) - t(0)) / L)."""
    lines = ["shape | path | kernels | per layer vs plain | fixed ms vs plain | t(L/2) / own ideal"]
    for part in ("bert", "gpt"):
        shape = summary.get(part) or {}
        L, paths = shape.get("num_layers"), shape.get("paths", {})
        for mode in ("eager", "auto"):
            plain = (paths.get("plain") or {}).get(mode) or {}
            for base, row in paths.items():
                entry = row.get(mode) or {}
                if base == "plain" or "fixed_ms" not in entry or "fixed_ms" not in plain:
                    continue
                slope, mid = entry["per_layer_ms"], entry["t_half_ms"]
                ends = 3 * (entry["fixed_ms"] + slope * L / 2) - mid  # t(0) + t(L)
                t0 = (ends - slope * L) / 2
                line = t0 + slope * L / 2  # the path's own line through t(0) and t(L)
                lines.append(f"{shape['shape']} | {base} | {entry.get('resolved', mode)} | "
                             f"{slope / plain['per_layer_ms']:.2f}x | "
                             f"{entry['fixed_ms'] - plain['fixed_ms']:+.1f} | {line / mid:.3f}")
    return lines


if __name__ == "__main__":  # python -m megaraptr.bench.gpu_report docs/gpu/SUMMARY.json
    for path in sys.argv[1:]:
        print(path)
        print("\n".join(rescore(json.loads(Path(path).read_text()))))
