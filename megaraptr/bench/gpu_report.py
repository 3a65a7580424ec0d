"""The GPU benchmark's summary (``gpu_bench.json``) and the short table printed last.

Read from the parts' JSON (:mod:`megaraptr.bench.gpu`): per shape and path the fixed and
per-layer costs under eager and auto kernels, their ratio, the efficiency at k = L/2 and the
torch.compile graphs made (while timed: must be 0); the residual-kernel check; the end-to-end
speedup against the ideal t(L) / t(mean k) from the plain-PyTorch costs of the same kernels;
and the issue's targets (measured, never asserted).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Optional

from megaraptr.bench.e2e import ideal_speedup

TARGETS = {"per_layer_ratio": 0.8, "efficiency": 0.95, "e2e_speedup": 1.27}
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
    return {"resolved": (entry.get("kernels") or {}).get("mode", "eager"),
            "optimizer": (entry.get("kernels") or {}).get("optimizer"),
            "fixed_ms": entry["fit"]["fixed_ms"], "per_layer_ms": entry["fit"]["per_layer_ms"],
            "t_half_ms": row.get("median_ms"), "efficiency_half": row.get("efficiency"),
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


def e2e_summary(e2e: dict, bert: Optional[dict]) -> dict:
    """The end-to-end summary with the ideal from part 1's plain costs (same kernels)."""
    s = dict(e2e["summary"], schedule=e2e["config"]["schedule"],
             steps=e2e["runs"]["full"]["steps"], steps_reduced=e2e.get("steps_reduced"),
             zero=e2e["config"]["zero"], kernels=e2e["config"]["kernels"],
             kernels_resolved=e2e["runs"]["raptr"]["kernels"]["mode"],
             graphs_compiled_in_loops=sum(r["graphs_compiled_in_loop"]
                                          for r in e2e["runs"].values()))
    L = e2e["num_layers"]
    plain = ((bert or {}).get("paths", {}).get("plain") or {}).get("auto")
    if plain and "error" not in plain:
        fixed, per_layer = plain["fixed_ms"], plain["per_layer_ms"]
        s["ideal_from_plain"] = ideal_speedup(fixed, per_layer, L, s["mean_active_layers"])
        s["ideal_from_plain_expected_layers"] = ideal_speedup(fixed, per_layer, L,
                                                              s["expected_active_layers"])
        s["achieved_over_ideal"] = s["speedup"] / s["ideal_from_plain"]
    return s


def targets(summary: dict) -> dict:
    """The issue's targets, measured: value and whether it is met, per item."""
    out = {}
    for part in ("bert", "gpt"):
        paths = (summary.get(part) or {}).get("paths", {})
        ratio = (paths.get("plain") or {}).get("per_layer_ratio")
        if ratio is not None:
            out[f"{part} per-layer auto/eager <= 0.8"] = (ratio,
                                                          ratio <= TARGETS["per_layer_ratio"])
        for base in BASES[1:]:
            auto = (paths.get(base) or {}).get("auto") or {}
            eff = auto.get("efficiency_half")
            if eff is not None:
                out[f"{part} {base} auto eff at L/2 >= 0.95"] = (eff, eff >= TARGETS["efficiency"])
    speedup = (summary.get("e2e") or {}).get("speedup")
    if speedup is not None:
        out["e2e speedup >= 1.27x"] = (speedup, speedup >= TARGETS["e2e_speedup"])
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
        summary["e2e"] = e2e_summary(e2e, summary.get("bert"))
    summary["targets"] = targets(summary)
    return summary


def _f(value, fmt="{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _e2e_line(e2e: dict) -> str:
    cut = " (steps cut to fit the budget)" if e2e.get("steps_reduced") else ""
    return (f"e2e {e2e['schedule']} vs full, {e2e['steps']} steps{cut}, ZeRO-{e2e['zero']}, "
            f"kernels {e2e['kernels_resolved']}: full {e2e['full_ms_per_step']:.1f} ms/step, "
            f"RAPTR {e2e['raptr_ms_per_step']:.1f} ({e2e['mean_active_layers']:.2f} layers): "
            f"speedup {e2e['speedup']:.3f}x; ideal {_f(e2e.get('ideal_from_plain'), '{:.3f}')}x "
            f"(plain costs), {e2e['ideal_from_own_fit']:.3f}x (own t(k)); achieved/ideal "
            f"{_f(e2e.get('achieved_over_ideal'), '{:.3f}')}; loss (last 20 steps) full "
            f"{e2e['loss_full_last20']:.3f}, RAPTR {e2e['loss_raptr_last20']:.3f}")


def _check_line(check: dict) -> str:
    state = "ok" if check.get("ok") else check.get("skipped") or "FAILED"
    bf16 = check.get("bfloat16") or {}
    timing = f"; bf16 {bf16['triton_ms']:.3f} ms vs eager x + s*b {bf16['eager_ms']:.3f} ms" \
        if "triton_ms" in bf16 else ""
    return f"Triton scaled residual add: {state}{timing}"


def table(summary: dict) -> str:
    """The short text table: card, kernels check, per-layer and efficiency, e2e, targets."""
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
             "auto", "eff L/2 eager", "auto", "graphs (timed)"]]
    for part in ("bert", "gpt"):
        shape = summary.get(part) or {}
        for base, row in shape.get("paths", {}).items():
            e, a = row.get("eager") or {}, row.get("auto") or {}
            graphs = a["error"][:40] if "error" in a else \
                f"{a.get('graphs', '-')} ({a.get('graphs_while_timed', '-')})"
            rows.append([shape["shape"], f"{base} [{a.get('resolved', '-')}]",
                         _f(e.get("per_layer_ms")), _f(a.get("per_layer_ms")),
                         _f(row.get("per_layer_ratio")), _f(e.get("fixed_ms"), "{:.1f}"),
                         _f(a.get("fixed_ms"), "{:.1f}"), _f(e.get("efficiency_half")),
                         _f(a.get("efficiency_half")), graphs])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if summary.get("e2e"):
        lines.append(_e2e_line(summary["e2e"]))
    met = summary["targets"]
    if met:
        dry = str(summary.get("device", "")).startswith("cpu")
        items = [f"{k}: {value:.3f} {'met' if ok else 'MISSED'}" for k, (value, ok) in met.items()]
        lines.append(("dry run on CPU, not the targets' setting; " if dry else "")
                     + "targets: " + "; ".join(items))
    return "\n".join(lines)
