"""Every private DeepSpeed name megaraptr reads, writes, replaces, wraps or copies, and why.

"Private" here means a leading underscore or a name-mangled field, an internal buffer or
method of DeepSpeed's optimizers and pipeline module that DeepSpeed documents nowhere
(``averaged_gradients``, ``bit16_groups``, ...), and any DeepSpeed method megaraptr replaces,
wraps or copies. DeepSpeed's public API (``safe_get_full_fp32_param``, ``GatheredParameters``,
``engine.global_steps``, ``engine.basic_optimizer``, the pipeline grid's ids) is not listed.

Each :class:`Patch` names the DeepSpeed code it relies on (``SOURCES``: the sha256 of each
definition's normalised source at DeepSpeed 0.19.8, see :func:`megaraptr.runtime.compat.
source_hash`) and what runs when any of it differs: DeepSpeed's own code path (``fallback``,
slower, never wrong), or nothing (``fallback=None``: megaraptr stops before training, since
DeepSpeed's own path is wrong for RAPTR there or does not exist).
"""
from __future__ import annotations

from typing import Dict

from megaraptr.runtime.compat.checkpoint_patches import CHECKPOINT_PATCHES, CHECKPOINT_SOURCES
from megaraptr.runtime.compat.patch import (BF16, COMM, ENGINE, GRID, LINK, MANGLED, PIPE, PPC,
                                            PPCM, SUPPORTED, Z3, Z12, Z12M, Patch)

UTILS = "deepspeed.runtime.utils"

__all__ = ["MANGLED", "PATCHES", "SOURCES", "SUPPORTED", "Z12", "Z12M", "Patch"]

SOURCES: Dict[str, str] = {
    COMM + ":build_shm_op":
        "5ee7daeb8dd5b01181f4b000b100433b3cc8df0acc5ed075e273260f93d4bd0c",
    COMM + ":TorchBackend.__init__":
        "276f6cb65502be6635843e35302493e02bec5b747899c51602ed1addaac8502b",
    Z12 + ".step":
        "a2d8d2337aa84128cee14eec52236ec9d68d1ec4e6a8efb303b5dcca981b7294",
    Z12 + ".has_overflow":
        "276d94de0eb5df4c7ef3a9100854a0defdd3e2c3839b43b37ff21fb2ac12511d",
    Z12 + ".check_overflow":
        "21e688469410dcb9b8e294232a90068233e8bd35dc84d432a04e02516c74fd9e",
    Z12 + "._check_overflow":
        "10eab3fe40cd789942a4d5acd4053219d47597d647eacb1b1abf0a3c2297ec0a",
    Z12 + ".scaled_global_norm":
        "7c0e0519726ce50974a10a2212060f4917bf75292fd076eb8c1cd2cbd9b10c4d",
    Z12 + ".get_grad_norm_direct":
        "a026b9a3030c5c7233da588c84470b94a7376e0d5949a0ca35b44383588caab0",
    Z12 + "._optimizer_step":
        "6f46d25e76261218ffb3b3b11083fe334a0191aedb98bd038cdda05476191b6b",
    Z12 + ".unscale_and_clip_grads":
        "cb0b04fe2145e38439981e4a0c67da6dda303e5742dbe6ff72e49aef2f5cbd3c",
    Z12 + "._update_model_bit16_weights":
        "83171fe94f14c64953ace6873c96cd28c0f7f5ae051533aed3d467be15e4050b",
    Z12 + ".independent_gradient_partition_epilogue":
        "dc24164405ee1f9bf016ac31f04f0271cac17a13c3c78cadaf4efc87cfd962f7",
    Z12 + ".finalize_gradient_accumulation_boundary":
        "5563f38d9ab8986ec04f561af0dc4c0227b1239ff983ec37fe4f1b66d9fcade9",
    Z12 + ".get_all_grad_tensors":
        "8fa1f167ea5a238ca67dea5b817557af4ef3b592f76f41d04b2f0f56990107a0",
    Z12 + ".get_flat_partition":
        "c31ab2462db74a62cb9215c11f8208d1dc68165aed4d6241b57d09ff9cfe4c7b",
    Z12 + "._build_compact_grad_partition_buffer":
        "1d79ee542cdaa6198c1bd7b5b998db46e1d6872bd7d1cec1569b6e82d94addcd",
    Z12 + "._get_compact_grad_partition_buffer":
        "d274ad142c082ef91700e2aef322eb13686f99d8bda92f232b01d70f3ceb82bc",
    Z12 + "._lazy_init_hp_params_optimizer_state":
        "99f3d15d8f2565ab7f97af31fe971ce9df6d2f4e0231969b0f78c449d8ba152f",
    "deepspeed.runtime.utils:all_gather_dp_groups":
        "f8b0beff6522ce2416af670fe04092db836a468247626163bd774a397df57638",
    Z3 + ".step":
        "68d57e14f9ea4ea0da55da52245d12fa3f9368baea7935b6d2ec886bc6040e26",
    Z3 + "._get_norm_groups":
        "177f236f119d2da8bdb9fa8bcd96f8ab1464faf565ae23a5cbd3d25976f98778",
    Z3 + ".get_grad_norm_direct":
        "72e5ef04607a872d1614c71436a7681e12c1cbe752978a1e80332207db757070",
    Z3 + "._prepare_sub_group":
        "35d806f141e97e29045413c28becc663a116ee9b4feb6ce18a148413afb871ea",
    Z3 + ".unscale_and_clip_grads":
        "bfce053338d77b3e925e4d6744cd0d063b00a313b7622e867a97e1e9773baa4a",
    Z3 + "._optimizer_step":
        "c545e42b5991c1d94f52583fa19504dacbcd7916a613440d64f88aa6af0721e8",
    Z3 + "._reassign_or_swap_out_partitioned_parameters":
        "7215dddafc16172aa56344f6ea03418b578dd42c6ff83280f5e074549453be67",
    Z3 + "._release_sub_group":
        "8048d86492da2f2aa8c3dfce8d383e9ddea74490315871cb2b006a14ea2e5d1a",
    Z3 + "._get_fp32_grad_state_partition":
        "6dacbbf3e83b04010b1d46614c3a70c9cf6ac69918bd5db88c2da8777bb37975",
    Z3 + "._get_param_coordinator":
        "4680950ca98db3493b017feef7714f4e2251637d609cdcd23b316b9a37249165",
    PPC:
        "0b679d278f723614ee205b7f9284d08c3c4bf1d41bc499ae14a18e9f0069b544",
    PPCM + ":iter_params":
        "a68163d2d610927e6168219995b1bf0cd68e52ebe459889d7e16e71420d18be7",
    "deepspeed.utils.z3_leaf_module:z3_leaf_module":
        "26c8af97a389a0c42795cf67277067d0032e31c6bd967bf58694eb6c7bafc44b",
    BF16 + ".step":
        "7d02ce2f0b88e650049d9b6e02e7cdda5640c2a09e56981f15965f75d7d9a6d8",
    BF16 + "._lazy_init_hp_params_optimizer_state":
        "c0393e72960959b2dfc69ac97e9495822d4dba9550d6de172b98a97671a83ff8",
    LINK + ":link_hp_params":
        "3bcd9f135abb4ac5e446a2959d0b9d06956fe99843e9c9c82757d8fb384e956d",
    LINK + ":_init_lp_to_hp_mapping":
        "7d5ed57899ff3354925ba451d80ac837f5c9e261ed0fbe45a6a8f1b711c24a61",
    LINK + ":lazy_init_hp_params_optimizer_state":
        "71e809180cb68d95d2aac927abcc7a8b944f6f489532fbd38a6c1568ddbb8e0d",
    PIPE + ".__init__":
        "b868a6bb24ac5976c92113a7d68c75f0ef11724d2e1084aff1318520680adb13",
    PIPE + "._partition_layers":
        "b3b58c1dfeb7aa0f02d93893bd7cad72ae96e3c0acbdf1426469aa595c2f4db8",
    PIPE + "._set_bounds":
        "fb90aa44e6f99d113f92a7b19258978a405cd6898592c98defad5b394a7e5e04",
    PIPE + "._build":
        "8b9c4f6d756d150896a844d9c2e522d1c0c69fa3ee936cd4e24dd9a6faf2878a",
    PIPE + "._index_tied_modules":
        "e7e77009fe534d3dc2d27ae7c97a051d76ac7c27684720db280af31f89daa186",
    GRID + ".__init__":
        "f02da999221008485aa0bd1316d9f4005ccbb80f127499b10da0597ffea5a01d",
    GRID + ".get_model_parallel_group":
        "35489e78902c8824e8da0d753996751a1a2f9ed8a3da215f29f2f7fb9d4992ad",
    ENGINE + ".clip_fp32_gradients":
        "0b80ad2f8fa3936fdedf7b58391ed1fd4f2b45cd727c6d2566f21b929e4c40d7",
    ENGINE + "._take_model_step":
        "4b72d5239e60708bfa186a4dbbc175497072234f282273b12cb396980d8fd49e",
    UTILS + ":is_model_parallel_parameter":
        "0744c51e520243d0f38ca148d4ccde1736f42c9c02845923fb8c094cbf71d55c",
    UTILS + ":clip_grad_norm_":
        "5ec95ef1249af7a28f85dc929f7d211bafe7bccb8f1db33f09860600cb5a01c9",
    BF16 + ".get_grads_for_norm":
        "e1222417ad92998a3f74094547294e7c696323804ef50047b15999b21b762b05",
    **CHECKPOINT_SOURCES,
}
"""``module:qualname`` -> sha256 of its normalised source in DeepSpeed 0.19.8."""


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
