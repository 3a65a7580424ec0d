"""The step-time benchmark's printed report: fits, overheads against plain PyTorch, the table.

The table, one per kernels mode, has per path and k: the median step time, the speedup
t(L)/t(k), that speedup over the path's own ideal (``/ideal``, ``*`` where t(k) is off the
path's own line) and, for DeepSpeed paths, t(k) over plain PyTorch's (:mod:`megaraptr.bench.
step_metrics`).
"""
from __future__ import annotations

from typing import List

from megaraptr.bench import step_metrics


def path_name(name: str, kernels: str) -> str:
    """A path's key in the result: "zero2" under eager kernels, "zero2+auto" otherwise."""
    return name if kernels == "eager" else f"{name}+{kernels}"


def _table(paths: dict, names: List[str], ks: List[int], plain: str) -> List[str]:
    header = ["k"]
    for name in names:
        header += [f"{name} ms", "speedup", "/ideal"] + (["vs plain"] if name != plain else [])
    rows = [header]
    for k in ks:
        row = [str(k)]
        for name in names:
            entry = paths[name]["per_k"][str(k)]
            off = "" if entry["linear"] else "*"
            row += [f"{entry['median_ms']:.1f}", f"{entry['speedup']:.2f}x",
                    f"{entry['achieved_over_ideal']:.3f}{off}"]
            if name != plain:
                row.append(f"{entry['vs_plain']:.2f}x")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return [" | ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]


def report(result: dict) -> str:
    """The text printed at the end: device, versions, config, fits, and the tables last (one
    per kernels mode, the last mode's last).

    Args:
        result: what :func:`run` returned.
    """
    paths, ks = result["paths"], result["ks"]
    c = result["config"]
    lines = [f"device: {result['device']}; world size {result['world_size']}; torch "
             f"{result['versions']['torch']}, deepspeed {result['versions']['deepspeed']}",
             f"config: {c['model']}-{c['size']} (L={result['num_layers']}), {c['precision']}, "
             f"micro batch {c['micro_batch']} x seq {c['seq_len']} per rank, skipped layers "
             f"{c['skipped_layers']}, {c['steps']} timed + {c['warmup']} warmup steps per k, "
             f"kernels {', '.join(c['kernels_modes'])}"]
    ok = [n for n in paths if "error" not in paths[n]]
    for name in ok:
        fit, kernels = paths[name]["fit"], paths[name].get("kernels") or {}
        mode = f" [{kernels['mode']}, {kernels.get('optimizer')}, " \
            f"{paths[name].get('compiled_graphs', 0)} graphs compiled, " \
            f"{paths[name].get('compiled_graphs_while_timed', 0)} while timed]" \
            if kernels.get("mode", "eager") != "eager" else ""
        versus = paths[name].get("vs_plain")
        against = f"; against plain: per layer {versus['per_layer_ratio']:.2f}x, fixed " \
            f"{versus['fixed_diff_ms']:+.2f} ms" if versus and versus["per_layer_ratio"] else ""
        lines.append(f"{name}: fixed {fit['fixed_ms']:.2f} ms + {fit['per_layer_ms']:.2f} ms "
                     f"per layer{against}{mode}")
        for k in ks:
            phases = paths[name]["per_k"][str(k)].get("phases_median_ms")
            if phases:
                lines.append(f"  k={k} phases (ms): " + ", ".join(
                    f"{n} {v:.1f}" for n, v in phases.items()))
    lines += [f"{n}: not measured: {paths[n]['error']}" for n in paths if n not in ok]
    lines.append(f"/ideal: speedup t(L)/t(k) over the path's own ideal (t linear between its "
                 f"t({ks[0]}) and t(L)); * off that line by more than "
                 f"{step_metrics.LINEAR_TOLERANCE:.0%}; vs plain: t(k) / plain PyTorch's t(k)")
    modes = c["kernels_modes"]
    for mode in modes:
        plain = path_name("plain", mode)
        names = [n for n in ok if paths[n]["kernels_mode"] == mode]
        if plain not in names:
            continue
        if len(modes) > 1:
            lines.append(f"kernels {mode}:")
        lines += _table(paths, names, ks, plain)
    return "\n".join(lines)
