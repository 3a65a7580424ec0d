"""What ``megaraptr-train`` prints and writes: the header, the summary JSON, the last lines.

:func:`print_header` (rank 0) says what runs: model, parameters, processes, method, tokens
per step, kernels, TensorBoard folder, the schedule's stages, the setup's own lines (a
pipeline's partitions), the DeepSpeed patches in force and the run's notes. :func:`summarize` builds the summary dict that
``--summary FILE`` holds; :func:`report` prints each node's digest line and rank 0's result
line, and writes the file.
"""
from __future__ import annotations

import json
import os
import socket
from typing import Optional

from megaraptr.runtime import compat
from megaraptr.tools.extra_eval import ExtraEvals
from megaraptr.tools.preflight import RunPlan
from megaraptr.tools.train_loop import History
from megaraptr.tools.train_setup import TrainSetup


def print_header(plan: RunPlan, setup: TrainSetup, *, world: int, tokens_per_step: int,
                 tb_dir: Optional[str], notes) -> None:
    """The run's opening lines (call on rank 0)."""
    engine, flags = setup.engine, plan.flags
    print(f"megaraptr: {flags.model}-{flags.size}, {setup.num_parameters:,}"
          f" parameters, {world} process(es), method {plan.method}"
          f", {tokens_per_step:,} tokens/step, kernels {engine.kernels['mode']} "
          f"(optimizer: {engine.kernels['optimizer']}), TensorBoard: {tb_dir}", flush=True)
    for row in engine.schedule.describe():
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(f"megaraptr: {compat.describe(engine.deepspeed_patches)}", flush=True)
    for line in setup.describe():
        print(f"megaraptr: {line}", flush=True)
    if plan.layout is not None:
        print(f"megaraptr: tensor_parallel: {plan.layout.describe()} (megaraptr's Megatron-style "
              "layers; DeepSpeed gets the process groups, not AutoTP)", flush=True)
    for note in notes:
        print(f"megaraptr: {note}", flush=True)


def summarize(plan: RunPlan, setup: TrainSetup, history: History, *, final: Optional[float],
              session_seconds: float, world: int, tb_dir: Optional[str]) -> dict:
    """The summary JSON of a finished (or --exit-at-step) session."""
    engine, flags = setup.engine, plan.flags
    return {
        "steps": engine.applied_steps, "finished": engine.applied_steps >= flags.train_steps,
        "final_eval_loss": final, "initial_eval_loss": history.initial_eval_loss,
        "eval_history": history.eval, "eval_clock": history.eval_clock,
        **ExtraEvals.summary(history.extra_eval),
        "wall_seconds": history.wall_seconds, "session_seconds": session_seconds,
        "tokens_per_second": history.tokens / max(history.wall_seconds, 1e-9),
        "tokens": history.tokens, "layer_flops_fraction": engine.layer_flops_fraction(),
        "expected_layer_flops_fraction": engine.schedule.expected_flops_fraction(),
        "subnetwork_digest": engine.digest.hexdigest, "raptr_enabled": plan.raptr.enabled,
        "method": plan.method, "kernels": engine.kernels,
        "deepspeed_patches": engine.deepspeed_patches,
        "model": flags.model, "size": flags.size, "objective": plan.objective,
        "run_id": plan.run_id,
        "world_size": world, "pipeline": setup.summary(),
        "schedule": engine.schedule.describe(), "tensorboard_dir": tb_dir,
        "resumed_from": plan.resume.path if plan.resume else None,
        "dropped_steps": engine.guard.dropped,
    }


def report(plan: RunPlan, summary: dict, *, rank: int) -> None:
    """Each node's digest line (compare them across nodes), rank 0's result line and file."""
    world, flags, tb_dir = summary["world_size"], plan.flags, summary["tensorboard_dir"]
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one line per node: compare across nodes
        print(f"megaraptr: rank {rank} of {world} (first on its node, {socket.gethostname()}): "
              f"{summary['steps']} steps, subnetwork digest {summary['subnetwork_digest']}",
              flush=True)
    if rank != 0:
        return
    if summary["finished"]:
        print(f"megaraptr: step {summary['steps']}: eval loss {summary['initial_eval_loss']:.4f}"
              f" at start -> {summary['final_eval_loss']:.4f}; layer FLOPs "
              f"{summary['layer_flops_fraction']:.3f} of full; "
              f"{summary['tokens_per_second']:,.0f} tokens/s; TensorBoard: {tb_dir}", flush=True)
    elif not summary.get("stopped"):  # a signal's stop ends with its own line (RunStopped)
        print(f"megaraptr: stopped after step {summary['steps']} (--exit-at-step); resume "
              f"with --load {flags.save}", flush=True)
    if flags.summary:
        os.makedirs(os.path.dirname(os.path.abspath(flags.summary)), exist_ok=True)
        with open(flags.summary, "w") as f:
            json.dump(summary, f, indent=2)
