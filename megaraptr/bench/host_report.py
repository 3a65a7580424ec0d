"""The host-overhead benchmark's arithmetic and its printed table (pure: JSON in, JSON out).

:func:`analyse` turns the arms' samples (:mod:`megaraptr.bench.host_overhead`) into medians with
quartiles, paired ratios (arm A over arm B within each round, then the median and quartiles of
those ratios: both arms saw the same moment of a shared machine), line fits of t(k) per family,
the cost of a skipped layer and the targets; :func:`report` prints it, the table last.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

from megaraptr.planning.step_profile import fit_line

RATIO_TARGET = 1.15
"""megaraptr's ZeRO-1/2 full-model step over its ZeRO-0 step, CPU, negligible compute."""
SKIP_TARGET = 0.05
"""A skipped layer's host time, as a fraction of an active layer's."""
PHASES = ("forward", "backward", "reduce", "norm", "unscale", "flatten", "optimizer",
          "all_gather", "zero_grad", "megaraptr", "other")


def quartiles(values: List[float]) -> Dict[str, float]:
    """Median, first and third quartile, min and max (``statistics.quantiles``, inclusive)."""
    if len(values) == 1:
        v = values[0]
        return {"median": v, "q1": v, "q3": v, "min": v, "max": v}
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": q2, "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def paired(a: List[float], b: List[float]) -> Dict[str, float]:
    """Quartiles of the per-round ratios a[i] / b[i]."""
    return quartiles([x / y for x, y in zip(a, b)])


def _name(kind: str, zero=None, k=None, depth=None) -> str:
    if kind == "plain":
        return f"plain k={k}"
    if kind == "deepspeed":
        return f"deepspeed z{zero}"
    return f"megaraptr z{zero} depth {depth}" if depth else f"megaraptr z{zero} k={k}"


def analyse(result: dict) -> dict:
    """Medians, paired ratios, fits, skipped-layer cost and targets of one run."""
    arms, L = result["arms"], result["config"]["num_layers"]
    zeros = result["config"]["zero"]
    ks = sorted({a["k"] for a in arms.values() if a["kind"] == "plain"})
    out: dict = {"arms": {}, "ratios": {}, "fits": {}, "skipped_layer": {}, "targets": {}}
    for name, arm in arms.items():
        phases = {key: {p: statistics.median(s.get(p, 0.0) for s in arm[key]) for p in PHASES}
                  if arm.get(key) else {} for key in ("phases_ms", "cpu_phases_ms")}
        out["arms"][name] = {"wall_ms": quartiles(arm["samples_ms"]),
                             "cpu_ms": quartiles(arm["cpu_ms"]), **phases,
                             "counts": arm["counts"]}

    def ratio(a: str, b: str) -> Optional[dict]:
        if a not in arms or b not in arms:
            return None
        return {key: paired(arms[a][key], arms[b][key]) for key in ("samples_ms", "cpu_ms")}

    plain_full = _name("plain", k=L)
    for z in zeros:
        full = _name("megaraptr", z, L)
        pairs = {f"{full} / {_name('megaraptr', 0, L)}": (full, _name("megaraptr", 0, L)),
                 f"{full} / {_name('deepspeed', z)}": (full, _name("deepspeed", z)),
                 f"{full} / {plain_full}": (full, plain_full),
                 f"{_name('deepspeed', z)} / {plain_full}": (_name("deepspeed", z), plain_full),
                 f"{_name('megaraptr', z, L // 2)} / {_name('plain', k=L // 2)}":
                     (_name("megaraptr", z, L // 2), _name("plain", k=L // 2))}
        for label, (a, b) in pairs.items():
            if a != b and ratio(a, b) is not None:
                out["ratios"][label] = ratio(a, b)
        if z:
            r = out["ratios"].get(f"{full} / {_name('megaraptr', 0, L)}")
            if r:
                value = r["samples_ms"]["median"]
                out["targets"][f"megaraptr ZeRO-{z} / ZeRO-0 full-model step <= "
                               f"{RATIO_TARGET}"] = (value, value <= RATIO_TARGET)
    families = {"plain": [_name("plain", k=k) for k in ks]}
    families.update({f"megaraptr z{z}": [_name("megaraptr", z, k) for k in ks] for z in zeros})
    for family, names in families.items():
        medians = [out["arms"][n]["wall_ms"]["median"] for n in names]
        fit = fit_line(ks, medians)
        mid = (medians[0] + medians[-1]) / 2
        fit["nonlinearity"] = (medians[len(ks) // 2] - mid) / mid if len(ks) > 2 else 0.0
        out["fits"][family] = fit
    base = out["fits"]["plain"]
    for family, fit in out["fits"].items():
        if family != "plain":
            fit["per_layer_vs_plain"] = fit["per_layer_ms"] / base["per_layer_ms"] \
                if base["per_layer_ms"] > 0 else None
            fit["fixed_minus_plain_ms"] = fit["fixed_ms"] - base["fixed_ms"]
    for z in zeros:
        half, full, shallow = (_name("megaraptr", z, L // 2), _name("megaraptr", z, L),
                               _name("megaraptr", z, depth=L // 2))
        if shallow not in arms:
            continue
        n = L // 2  # layers skipped in `half`, and layers `full` runs beyond `shallow`
        skipped = [(a - b) / n for a, b in zip(arms[half]["samples_ms"],
                                               arms[shallow]["samples_ms"])]
        active = [(a - b) / n for a, b in zip(arms[full]["samples_ms"],
                                              arms[shallow]["samples_ms"])]
        ops = {key: arms[key]["counts"]["ops"] for key in (half, full, shallow)}
        entry = {"skipped_ms": quartiles(skipped), "active_ms": quartiles(active),
                 "skipped_ops": (ops[half] - ops[shallow]) / n,
                 "active_ops": (ops[full] - ops[shallow]) / n}
        act = entry["active_ms"]["median"]
        entry["skipped_over_active"] = entry["skipped_ms"]["median"] / act if act > 0 else None
        out["skipped_layer"][f"z{z}"] = entry
        if entry["skipped_over_active"] is not None:
            value = entry["skipped_over_active"]
            out["targets"][f"megaraptr ZeRO-{z}: skipped layer <= {SKIP_TARGET} x active "
                           "layer"] = (value, value <= SKIP_TARGET)
    return out


def _row(cells: List[str], widths: List[int]) -> str:
    return " | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def _table(rows: List[List[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [_row(r, widths) for r in rows]


def report(result: dict) -> str:
    """Device, config, phases, syncs, ratios, skipped-layer cost, targets; the step-time
    table last."""
    a, c = result["analysis"], result["config"]
    lines = [f"host overhead: {result['device']}; torch {result['versions']['torch']}, "
             f"deepspeed {result['versions']['deepspeed']}; {c['model']}-{c['size']} "
             f"(L={c['num_layers']}), {c['micro_batch']} x {c['seq_len']} tokens, "
             f"{c['precision']}, clipping {c['clip']}; {c['steps']} interleaved rounds; "
             f"{result['seconds']:.0f} s"]
    rows = [["arm (phases, median thread-CPU ms)"] + list(PHASES)]
    for name, arm in a["arms"].items():
        if arm["cpu_phases_ms"]:
            rows.append([name] + [f"{arm['cpu_phases_ms'][p]:.2f}" for p in PHASES])
    lines += _table(rows) + ["(wall-clock phases in the JSON: analysis.arms.*.phases_ms)"]
    for label, r in a["ratios"].items():
        w, t = r["samples_ms"], r["cpu_ms"]
        lines.append(f"{label}: {w['median']:.3f} [{w['q1']:.3f}-{w['q3']:.3f}] wall, "
                     f"{t['median']:.3f} cpu")
    for family, fit in a["fits"].items():
        extra = "" if family == "plain" else (
            f"; per layer {fit['per_layer_vs_plain']:.2f}x plain, fixed "
            f"{fit['fixed_minus_plain_ms']:+.2f} ms" if fit.get("per_layer_vs_plain") else "")
        lines.append(f"{family}: t(k) = {fit['fixed_ms']:.2f} + {fit['per_layer_ms']:.3f} k ms "
                     f"(t(L/2) off the line by {fit['nonlinearity']:+.1%}){extra}")
    for z, s in a["skipped_layer"].items():
        lines.append(f"skipped layer, {z}: {s['skipped_ms']['median']:.3f} ms "
                     f"[{s['skipped_ms']['q1']:.3f}-{s['skipped_ms']['q3']:.3f}] against "
                     f"{s['active_ms']['median']:.3f} ms per active layer; aten ops "
                     f"{s['skipped_ops']:.1f} against {s['active_ops']:.1f}")
    lines.append("targets: " + "; ".join(f"{k}: {v:.3f} {'met' if ok else 'MISSED'}"
                                         for k, (v, ok) in a["targets"].items()))
    rows = [["arm", "wall ms", "[q1-q3]", "cpu ms", "syncs/step", "aten ops/step"]]
    for name, arm in a["arms"].items():
        w, cnt = arm["wall_ms"], arm["counts"]
        rows.append([name, f"{w['median']:.2f}", f"[{w['q1']:.2f}-{w['q3']:.2f}]",
                     f"{arm['cpu_ms']['median']:.2f}", str(cnt["syncs"]), str(cnt["ops"])])
    return "\n".join(lines + _table(rows))


def compare(results: Dict[str, dict]) -> str:
    """One row per run (label -> result JSON), side by side: megaraptr's full-model step of
    ZeRO-1/2 over ZeRO-0 (paired medians, wall and thread CPU), ZeRO-1 over plain DeepSpeed
    ZeRO-1, host syncs and aten ops per ZeRO-1 step, and per skipped layer the aten ops and
    the time as a fraction of an active layer's, ZeRO-0/1/2."""
    rows = [["run", "z1/z0 wall", "cpu", "z2/z0 wall", "cpu", "z1/ds z1 cpu", "syncs z1",
             "ops z1", "skipped-layer ops z0/z1/z2", "skipped/active z0/z1/z2"]]
    for label, result in results.items():
        a, L = result["analysis"], result["config"]["num_layers"]
        ratio = a["ratios"]

        def r(z, key, base=None):
            name = f"megaraptr z{z} k={L} / {base or f'megaraptr z0 k={L}'}"
            return f"{ratio[name][key]['median']:.3f}" if name in ratio else "-"
        arm = a["arms"][f"megaraptr z1 k={L}"]
        skip = a["skipped_layer"]
        rows.append([label, r(1, "samples_ms"), r(1, "cpu_ms"), r(2, "samples_ms"),
                     r(2, "cpu_ms"), r(1, "cpu_ms", "deepspeed z1"), str(arm["counts"]["syncs"]),
                     str(arm["counts"]["ops"]),
                     "/".join(f"{skip[z]['skipped_ops']:.0f}" for z in ("z0", "z1", "z2")
                              if z in skip),
                     "/".join("-" if skip[z]["skipped_over_active"] is None  # no active time
                              else f"{skip[z]['skipped_over_active']:.2f}"
                              for z in ("z0", "z1", "z2") if z in skip)])
    return "\n".join(_table(rows))


if __name__ == "__main__":  # python -m megaraptr.bench.host_report LABEL=RUN.json ...
    print(compare({arg.split("=", 1)[0]: json.loads(Path(arg.split("=", 1)[1]).read_text())
                   for arg in sys.argv[1:]}))
