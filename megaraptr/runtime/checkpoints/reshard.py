"""Resuming a ZeRO-1/2 checkpoint on another number of data-parallel processes.

DeepSpeed 0.19.8 refuses a ZeRO checkpoint whose data-parallel size differs ("Automatic
adjustment of ZeRO's optimizer state partitioning with a new world size is not currently
supported") and names its universal checkpoint as the way. That way does not work for RAPTR:
``ds_to_universal`` reads ``exp_avg`` of every parameter group (``extract_zero_shards``, line
154) and stops with ``KeyError: 'exp_avg'`` on a layer group the optimizer has never stepped,
which under ``"skipped_layers": "freeze"`` is every layer a run has not trained yet (all of
stage 1's skipped layers); and its loader reads the converted files with
``torch.load(weights_only=False)`` outside the checkpoint engine.

megaraptr reads the saved partitions itself instead (each rank's file holds its slice of every
group's flat fp32 master and Adam moments, and ``param_slice_mappings`` says where each named
parameter lies in it), joins each parameter's slices in rank order, and after DeepSpeed has
loaded the weights alone (``load_optimizer_states=False``) imports the state per parameter
through :func:`megaraptr.runtime.pipe.optim_state.import_state`, as pipeline re-partitioning
does: fp32 master, moments, each layer group's own step count and the learning rate, exactly.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Dict, Tuple

import torch

from megaraptr.errors import CheckpointError
from megaraptr.runtime.checkpoints import safe_load

MOMENTS = ("exp_avg", "exp_avg_sq")
_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def partition_files(folder: str) -> list:
    """The ZeRO optimizer partition files of a checkpoint, in data-parallel rank order."""
    found = {}
    for path in glob.glob(os.path.join(folder, "*zero_pp_rank_*_mp_rank_00_optim_states.pt")):
        match = _RANK.search(os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    if sorted(found) != list(range(len(found))) or not found:
        raise CheckpointError(f"{folder}: ZeRO partition files of ranks {sorted(found)}; "
                              "expected 0..N-1")
    return [found[r] for r in range(len(found))]


def _group_states(base: object, groups: int) -> Tuple[list, list]:
    """(the torch optimizer state of each group (one flat partition per group), each group's
    learning rate or None)."""
    if isinstance(base, dict) and "state" in base:  # torch's state_dict
        state = base["state"]
        return [state.get(g["params"][0], {}) for g in base["param_groups"]], \
            [g.get("lr") for g in base["param_groups"]]
    return list(base), [None] * groups  # elastic_checkpoint: a list per group


def read_zero12(folder: str) -> Dict[str, dict]:
    """Every parameter's fp32 master, Adam moments, step and lr, by name, from all the
    partitions of a ZeRO-1/2 checkpoint (the format :func:`optim_state.import_state` reads).

    Raises:
        CheckpointError: a partition that does not hold what ZeRO-1/2 writes, or slices that
            do not add up to the parameter's shape.
    """
    pieces: Dict[str, dict] = {}
    for path in partition_files(folder):
        sd = safe_load.load(path, mmap=True).get("optimizer_state_dict") or {}
        try:
            masters = sd["single_partition_of_fp32_groups"]
            mappings = sd["param_slice_mappings"]
            states, lrs = _group_states(sd["base_optimizer_state"], len(masters))
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: not a ZeRO-1/2 optimizer partition (no {err})") \
                from None
        for g, mapping in enumerate(mappings):
            state = states[g] if g < len(states) else {}
            for name, frag in mapping.items():
                entry = pieces.setdefault(name, {"fp32": [], "exp_avg": [], "exp_avg_sq": [],
                                                 "step": None, "lr": None})
                entry["fp32"].append(masters[g].narrow(0, frag.start, frag.numel))
                for key in MOMENTS:
                    if key in state:
                        entry[key].append(state[key].narrow(0, frag.start, frag.numel))
                if "step" in state:
                    entry["step"] = float(state["step"])
                entry["lr"] = lrs[g] if lrs[g] is not None else entry["lr"]
    return {name: _joined(folder, name, entry) for name, entry in pieces.items()}


def _joined(folder: str, name: str, entry: dict) -> dict:
    fp32 = torch.cat([p.float() for p in entry["fp32"]])
    out = {"fp32": fp32.clone(), "step": entry["step"], "lr": entry["lr"]}
    for key in MOMENTS:
        if entry[key]:
            if len(entry[key]) != len(entry["fp32"]):
                raise CheckpointError(f"{folder}: {name} has {key} in some partitions only")
            out[key] = torch.cat([p.float() for p in entry[key]]).clone()
    return out


def shape_like(saved: Dict[str, dict], named_params) -> Dict[str, dict]:
    """``saved`` with each flat tensor in the shape of this model's parameter of that name.

    Raises:
        CheckpointError: a parameter the checkpoint lacks, or one of another size.
    """
    out = {}
    for name, param in named_params:
        entry = saved.get(name)
        if entry is None:
            raise CheckpointError(f"the checkpoint's optimizer state has no parameter {name}")
        if entry["fp32"].numel() != param.numel():
            raise CheckpointError(f"{name}: {entry['fp32'].numel()} values saved, this model's "
                                  f"has {param.numel()}")
        out[name] = {k: (v.view(param.shape) if torch.is_tensor(v) else v)
                     for k, v in entry.items()}
    return out
