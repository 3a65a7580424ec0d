"""Every private DeepSpeed name megaraptr reads, writes, replaces, wraps or copies, and why.

"Private" here means a leading underscore or a name-mangled field, an internal buffer or
method of DeepSpeed's optimizers and pipeline module that DeepSpeed documents nowhere
(``averaged_gradients``, ``bit16_groups``, ...), and any DeepSpeed method megaraptr replaces,
wraps or copies. DeepSpeed's public API (``safe_get_full_fp32_param``, ``GatheredParameters``,
``engine.global_steps``, ``engine.basic_optimizer``, the pipeline grid's ids) is not listed.

Each :class:`Patch` names the DeepSpeed code it relies on (``SOURCES``, recorded in
:mod:`megaraptr.runtime.compat.sources`: the sha256 of each definition's normalised source at
DeepSpeed 0.19.8, see :func:`megaraptr.runtime.compat.source_hash`) and what runs when any of it differs: DeepSpeed's own code path (``fallback``,
slower, never wrong), or nothing (``fallback=None``: megaraptr stops before training, since
DeepSpeed's own path is wrong for RAPTR there or does not exist).
"""
from __future__ import annotations

from typing import Dict

from megaraptr.runtime.compat.checkpoint_patches import CHECKPOINT_PATCHES
from megaraptr.runtime.compat.patch import (BF16, COMM, ENGINE, GRID, LINK, MANGLED, PIPE, PPC,
                                            PPCM, SUPPORTED, UTILS, Z3, Z12, Z12M, Patch)
from megaraptr.runtime.compat.sources import SOURCES

__all__ = ["PATCHES", "Patch", "SOURCES", "SUPPORTED", "BF16", "COMM", "ENGINE", "GRID", "LINK",
           "MANGLED", "PIPE", "PPC", "PPCM", "UTILS", "Z3", "Z12", "Z12M"]


_PARTITION_READS = ("optimizer", "bit16_groups", "cpu_offload", "zenflow",
                    "torch_autocast_gradscaler", "has_moe_layers", "model_parallel_world_size")
_Z3_PARTITION_READS = ("optimizer", "fp16_groups", "sub_group_to_group_id", "offload_optimizer",
                       "swap_optimizer", "use_muon", "zenflow", "torch_autocast_gradscaler")
_PIPE_NORM_SOURCES = (PIPE + "._index_tied_modules", PIPE + "._build", GRID + ".__init__",
                      GRID + ".get_model_parallel_group")

PATCHES: Dict[str, Patch] = {
    "cpu_shm_op_skip": Patch(
        where="megaraptr/runtime/distributed.py",
        what="on CPU, replaces build_shm_op with a no-op so that starting the process group does "
             "not JIT-build the shared-memory all-reduce op (50-100 s) that training never uses",
        sources=(COMM + ":build_shm_op", COMM + ":TorchBackend.__init__"),
        names={COMM: ("build_shm_op",)},
        fallback="DeepSpeed builds its shared-memory op (50-100 s at the first start)"),
    "zero12_layer_norm": Patch(
        where="megaraptr/runtime/zero/norm.py",
        what="replaces has_overflow and scaled_global_norm on the ZeRO-1/2 optimizer: one fused "
             "fp64 norm over the gradients of the layers that ran and one all-reduce, which the "
             "overflow check reuses (DeepSpeed: kernels per tensor, an all-reduce per group)",
        sources=(Z12 + ".has_overflow", Z12 + ".check_overflow", Z12 + "._check_overflow",
                 Z12 + ".scaled_global_norm", Z12 + ".get_grad_norm_direct", Z12 + ".step"),
        names={Z12: ("has_overflow", "scaled_global_norm", "averaged_gradients",
                     "dp_process_group", "device", "_zero_padding") + _PARTITION_READS},
        fallback="DeepSpeed's own overflow check and norm (per tensor and per layer group: "
                 "slower, the same norm up to float summation order)"),
    "zero12_frozen_step": Patch(
        where="megaraptr/runtime/zero/step.py",
        what="replaces DeepSpeedZeroOptimizer.step with a copy of its non-offload path in which "
             "frozen (skipped) layer groups only release their gradients: no flatten, scaling, "
             "optimizer call, copy back or all-gather; and the active groups' unscale, "
             "optimizer call and copy back run batched (the same arithmetic per group, the "
             "clipping factor computed once on the device: no host sync per group)",
        sources=(Z12 + ".step", Z12 + "._optimizer_step", Z12 + ".unscale_and_clip_grads",
                 Z12 + "._update_model_bit16_weights",
                 "deepspeed.runtime.utils:all_gather_dp_groups"),
        names={Z12: ("step", "micro_step_id", "_wait_for_offload_copies", "compute_grad_norm",
                     "_global_grad_norm", "overflow", "check_grad_overflow", "check_overflow",
                     "partition_gradients", "scaled_global_norm", "dtype", "loss_scale",
                     "_update_scale", "zero_grad", "_release_preflattened_grad_buffers",
                     "averaged_gradients", "all_grad_tensors", "timers",
                     "free_grad_in_param_list", "params_not_in_partition", "params_in_partition",
                     "real_dp_process_group", "_get_preflattened_grad_partition",
                     "flatten_dense_tensors_aligned", "partition_size", "flatten",
                     "single_partition_of_fp32_groups", "clip_grad", "reduce_bucket_size", "device",
                     "_lazy_init_hp_params_optimizer_state",
                     "parallel_partitioned_bit16_groups", "bit16_groups_flat",
                     "nccl_start_alignment_factor", "allgather_bucket_size",
                     "_update_model_bit16_weights") + _PARTITION_READS,
               Z12M: ("INITIAL_MICRO_STEP_ID", "OPTIMIZER_TIMERS", "OPTIMIZER_GRADIENTS_TIMER",
                      "OPTIMIZER_STEP_TIMER", "OPTIMIZER_ALLGATHER_TIMER",
                      "all_gather_dp_groups")},
        fallback="DeepSpeed's own ZeRO-1/2 step, which also flattens, scales, copies back and "
                 "all-gathers frozen groups (megaraptr still leaves them out of the torch "
                 "optimizer: the same result, slower)"),
    "zero12_frozen_epilogue": Patch(
        where="megaraptr/runtime/zero/epilogue.py",
        what="wraps the three builders of the ZeRO-1/2 reduction epilogue so that the groups of "
             "frozen (skipped) layers get no gradient partition (no zero tensor per parameter, "
             "no views, no zeroed fp32 buffer); installed only with megaraptr's step and norm, "
             "which never read those partitions",
        sources=(Z12 + ".independent_gradient_partition_epilogue",
                 Z12 + ".finalize_gradient_accumulation_boundary", Z12 + ".get_all_grad_tensors",
                 Z12 + ".get_flat_partition", Z12 + "._build_compact_grad_partition_buffer",
                 Z12 + "._get_compact_grad_partition_buffer", Z12 + ".step"),
        names={Z12: ("get_all_grad_tensors", "get_flat_partition",
                     "_build_compact_grad_partition_buffer", "params_in_partition")},
        fallback="DeepSpeed builds every group's gradient partition after backward, zeros for "
                 "frozen layers, which megaraptr's step then drops unread (slower, the same "
                 "result)"),
    "zero12_layer_reduce": Patch(
        where="megaraptr/runtime/zero/reduce.py",
        what="replaces the ZeRO-1/2 gradient reduction (the per-parameter hooks' bucket copies, "
             "reduce_gradients, the reduction epilogue): after backward, one flatten of the "
             "active layer groups' gradients in their flat layout, one division and one "
             "all-reduce per bucket of whole groups, each group's partition a view of it (the "
             "same arithmetic per element, the same partition views); frozen groups untouched",
        sources=(Z12 + ".process_gradients", Z12 + ".reduce_gradients",
                 Z12 + ".overlapping_partition_gradients_reduce_epilogue",
                 Z12 + ".independent_gradient_partition_epilogue",
                 Z12 + ".reduce_ready_partitions_and_remove_grads",
                 Z12 + ".reduce_independent_p_g_buckets_and_remove_grads",
                 Z12 + ".reduce_ipg_grads", Z12 + ".average_tensor",
                 Z12 + ".gradient_reduction_w_predivide", Z12 + ".allreduce_bucket",
                 Z12 + ".buffered_reduce_fallback", Z12 + ".allreduce_no_retain",
                 Z12 + ".allreduce_and_copy",
                 Z12 + ".setup_buckets", Z12 + "._release_ipg_buffers",
                 Z12 + "._clear_param_grad_only", Z12 + ".create_gradient_handling_hooks",
                 Z12 + ".copy_grads_in_partition", Z12 + ".get_flat_partition",
                 Z12 + "._get_flat_partition_unpadded", Z12 + "._get_preflattened_grad_partition",
                 Z12 + ".__init__", Z12M + ":GradPartitionBufferGroup",
                 ENGINE + ".allreduce_gradients", ENGINE + "._backward_epilogue"),
        names={Z12: ("process_gradients", "reduce_gradients",
                     "overlapping_partition_gradients_reduce_epilogue",
                     "_coalesce_grad_reduction", "ready_for_gradients", "micro_step_id",
                     "ipg_buckets", "autoep_folding_tp_group", "round_robin_bit16_groups",
                     "round_robin_bit16_padding", "partition_size", "bit16_groups",
                     "dp_process_group", "real_dp_process_group", "averaged_gradients",
                     "all_grad_tensors", "_release_ipg_buffers", "_clear_param_grad_only",
                     "_epilogue_ran_this_backward", "reduce_scatter", "gradient_average",
                     "sequence_parallel_size", "communication_data_type",
                     "gradient_reduction_w_predivide", "reduce_bucket_size", "dtype", "device",
                     "gradient_accumulation_dtype", "use_grad_accum_attribute", "overlap_comm",
                     "_offload_gradient_safety_enabled", "partition_gradients",
                     "contiguous_gradients"),
               Z12M: ("GradPartitionBufferGroup", "pg_correctness_test"),
               Z12M + ":GradPartitionBufferGroup": ("flat_partition", "_view_specs")},
        fallback="DeepSpeed's own reduction: per parameter, a copy into its bucket, the "
                 "bucket's reduction with per-parameter offsets, a copy into the partition "
                 "buffer and views per group (slower, the same gradients)"),
    "zero3_layer_norm": Patch(
        where="megaraptr/runtime/zero/norm.py",
        what="replaces _get_norm_groups on the ZeRO-3 optimizer: one fused fp64 norm over the "
             "gradient partitions of the layers that ran and one all-reduce",
        sources=(Z3 + "._get_norm_groups", Z3 + ".get_grad_norm_direct", Z3 + ".step"),
        names={Z3: ("_get_norm_groups", "averaged_gradients", "dp_process_group", "device")
               + _Z3_PARTITION_READS},
        fallback="DeepSpeed's own per-sub-group norm; megaraptr then zeroes skipped layers' "
                 "stale gradients before each step so that it counts none (slower, the same "
                 "norm up to float summation order)"),
    "zero3_frozen_step": Patch(
        where="megaraptr/runtime/zero/step.py",
        what="wraps four per-sub-group helpers of the ZeRO-3 step so that frozen sub-groups skip "
             "gradient preparation, scaling, the optimizer and the copy back",
        sources=(Z3 + ".step", Z3 + "._prepare_sub_group", Z3 + ".unscale_and_clip_grads",
                 Z3 + "._optimizer_step", Z3 + "._reassign_or_swap_out_partitioned_parameters",
                 Z3 + "._release_sub_group"),
        names={Z3: ("_prepare_sub_group", "unscale_and_clip_grads", "_optimizer_step",
                    "_reassign_or_swap_out_partitioned_parameters") + _Z3_PARTITION_READS},
        fallback="DeepSpeed's own ZeRO-3 step, which also prepares, scales and copies back "
                 "frozen sub-groups (megaraptr still leaves them out of the torch optimizer: "
                 "the same result, slower)"),
    "zero3_stale_grads": Patch(
        where="megaraptr/runtime/zero/groups.py",
        what="zeroes skipped layers' reduced-gradient partitions in place, all in one "
             "foreach call (ZeRO-3 would otherwise apply a stale gradient again)",
        sources=(Z3 + "._get_fp32_grad_state_partition",),
        names={Z3: ("_get_fp32_grad_state_partition",)},
        fallback="DeepSpeed's public safe_set_local_grad with a zero tensor per parameter "
                 "(slower, the same zeros)"),
    "zero3_prefetch": Patch(
        where="megaraptr/runtime/zero/prefetch.py",
        what="installs each step's module trace in the ZeRO-3 parameter coordinator, so that it "
             "prefetches exactly the parameters of the step's subnetwork",
        sources=(PPC, PPCM + ":iter_params", "deepspeed.utils.z3_leaf_module:z3_leaf_module",
                 Z3 + "._get_param_coordinator"),
        names={PPC: (MANGLED + "submodule_order", MANGLED + "param_order",
                     MANGLED + "trace_mode", MANGLED + "ParamInTrace",
                     "_clear_trace_structures", "is_invalid_trace", "is_complete_trace"),
               PPCM: ("ZeRoTraceMode", "iter_params", "z3_leaf_module"),
               Z3: ("_get_param_coordinator",)},
        fallback="DeepSpeed records its own module trace and drops it whenever the subnetwork "
                 "changes (no prefetch on those steps: slower, the same result)"),
    "hp_state_relink": Patch(
        where="megaraptr/runtime/zero/groups.py",
        what="clears _hp_optimizer_states_linked when a layer group is first stepped after "
             "step 1, so that DeepSpeed links its per-parameter optimizer-state views again",
        sources=(Z12 + "._lazy_init_hp_params_optimizer_state", Z12 + "._optimizer_step",
                 BF16 + "._lazy_init_hp_params_optimizer_state", BF16 + ".step",
                 LINK + ":lazy_init_hp_params_optimizer_state"),
        names={Z12: ("_hp_optimizer_states_linked",), BF16: ("_hp_optimizer_states_linked",)},
        fallback="DeepSpeed links the views once, after step 1: safe_get_full_optimizer_state "
                 "finds no Adam state for layers first trained later (training is unchanged)"),
    "stacking_optimizer_state": Patch(
        where="megaraptr/runtime/layer_copy.py",
        what='copies a source layer\'s optimizer state to its new layer ("stacking": '
             '{"optimizer_state": "copy"}) or drops every layer\'s ("reset_all") in the torch '
             "optimizer, whose state ZeRO-3 keys by each sub-group's flat fp32 partition",
        sources=(Z3 + "._optimizer_step",),
        names={Z3: ("fp32_partitioned_groups_flat", "sub_group_to_group_id")},
        no_fallback="DeepSpeed has no way to copy one layer's optimizer state to another"),
    "pipe_partition": Patch(
        where="megaraptr/runtime/pipe/engine.py, megaraptr/models/pipe.py",
        what="overrides PipelineModule._partition_layers to place the planned layer partition, "
             "and reads the built stage's _local_start to load reference weights",
        sources=(PIPE + ".__init__", PIPE + "._partition_layers", PIPE + "._set_bounds",
                 PIPE + "._build"),
        names={PIPE: ("_partition_layers", "_topo", "global_rank", "num_stages", "parts",
                      "_set_bounds", "_local_start", "forward_funcs")},
        no_fallback="megaraptr places the planned (balanced) partition through this override "
                    "and DeepSpeed's own partition methods cannot express it"),
    "pipe_fp32_clip": Patch(
        where="megaraptr/runtime/pipe/norm.py",
        what="replaces the pipeline engine's clip_fp32_gradients: one norm of the whole model "
             "(replicated tied weights once) on every stage",
        sources=(ENGINE + ".clip_fp32_gradients", ENGINE + "._take_model_step")
        + _PIPE_NORM_SOURCES,
        names={ENGINE: ("clip_fp32_gradients",), PIPE: ("ds_pipe_replicated",),
               GRID: ("get_model_parallel_group",)},
        no_fallback="DeepSpeed 0.19.8's own fp32 pipeline clipping counts only the first "
                    "stage's gradients, so every stage would clip by a different, partial norm"),
    "pipe_zero1_norm": Patch(
        where="megaraptr/runtime/pipe/norm.py",
        what="replaces the pipeline's ZeRO-1 scaled_global_norm: one norm of the whole model "
             "from one all-reduce over the data-parallel group and one over the stages",
        sources=(Z12 + ".scaled_global_norm", Z12 + ".get_grad_norm_direct", Z12 + ".step")
        + _PIPE_NORM_SOURCES,
        names={Z12: ("scaled_global_norm", "bit16_groups", "averaged_gradients",
                     "params_in_partition", "dp_process_group", "device", "_zero_padding"),
               PIPE: ("ds_pipe_replicated",), GRID: ("get_model_parallel_group",)},
        no_fallback="DeepSpeed 0.19.8's own norm all-reduces one partial norm per parameter "
                    "group over the stages; with per-layer groups the stages' collectives do "
                    "not pair up and training hangs"),
    "pipe_optim_state": Patch(
        where="megaraptr/runtime/pipe/optim_state.py",
        what="re-links DeepSpeed's per-parameter optimizer-state views and reads each "
             "parameter's _hp_mapping, to save and restore the optimizer state by parameter "
             "name in pipeline checkpoints (resume, re-partitioning)",
        sources=(Z12 + "._lazy_init_hp_params_optimizer_state",
                 BF16 + "._lazy_init_hp_params_optimizer_state", LINK + ":link_hp_params",
                 LINK + ":_init_lp_to_hp_mapping", LINK + ":lazy_init_hp_params_optimizer_state"),
        names={Z12: ("_hp_optimizer_states_linked", "_lazy_init_hp_params_optimizer_state",
                     "bit16_groups"),
               BF16: ("_hp_optimizer_states_linked", "_lazy_init_hp_params_optimizer_state",
                      "bf16_groups"),
               LINK: ("_hp_mapping", "get_full_hp_param")},
        no_fallback="a pipeline's checkpoints and re-partitioning carry the fp32 masters and "
                    "Adam moments through it; without it they would be lost or misread"),
    "tp_grad_norm": Patch(
        where="megaraptr/runtime/tp/layers.py, megaraptr/runtime/initialize.py",
        what="marks each tensor-parallel shard tensor_model_parallel and hands DeepSpeed the "
             "tensor-parallel group as its mpu's model-parallel group, so that DeepSpeed's "
             "clipping norms (fp32 without ZeRO, ZeRO-1/2, the bf16 optimizer) count every "
             "shard on its rank and each replicated parameter once (on tensor rank 0)",
        sources=(UTILS + ":is_model_parallel_parameter", UTILS + ":clip_grad_norm_",
                 Z12 + ".get_grad_norm_direct", BF16 + ".get_grads_for_norm"),
        names={UTILS: ("tensor_model_parallel",)},
        no_fallback="without this convention each tensor-parallel rank would clip by a "
                    "different, wrong norm (shards missed or replicated parameters counted T "
                    "times)"),
    "nonfinite_skip_step": Patch(
        where="megaraptr/runtime/divergence.py",
        what='under "on_nonfinite": "skip_step", wraps the torch optimizer\'s step, through '
             "which alone DeepSpeed's ZeRO-0/1/2/3 and bf16 steps change weights and optimizer "
             "state, so that a dropped step leaves both untouched; and takes a step DeepSpeed "
             "skipped for an invalid gradient norm out of skipped_steps, stepping the LR "
             "scheduler as _take_model_step does after an applied update",
        sources=(ENGINE + "._take_model_step", Z12 + ".step", Z12 + "._optimizer_step",
                 Z3 + ".step", Z3 + "._optimizer_step", BF16 + ".step"),
        names={ENGINE: ("skipped_steps", "lr_scheduler", "basic_optimizer")},
        no_fallback="a dropped step relies on these steps' order (norm check, then the torch "
                    "optimizer's step; the LR scheduler stepped only without overflow); "
                    '"on_nonfinite": "stop" needs none of it'),
    **CHECKPOINT_PATCHES,
}
"""Every patch, by the name ``RaptrEngine.deepspeed_patches`` reports it under."""
