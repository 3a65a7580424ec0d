"""The DeepSpeed sources megaraptr's patches rely on: for each definition, the sha256 of its
normalised source at the supported release (:func:`megaraptr.runtime.compat.source_hash`).

The patches that rely on them, and why, are in :mod:`megaraptr.runtime.compat.registry`.
"""
from __future__ import annotations

from typing import Dict

from megaraptr.runtime.compat.checkpoint_patches import CHECKPOINT_SOURCES
from megaraptr.runtime.compat.patch import (BF16, COMM, ENGINE, GRID, LINK, PIPE, PPC, PPCM, UTILS,
                                            Z3, Z12, Z12M)

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
    Z12 + ".process_gradients":
        "9fcdf51b4e2aae5cf3a368d95a14b0081560cdb136b4e9f421eec6ca614da51b",
    Z12 + ".reduce_gradients":
        "75f245eacd772b0f6d288a3bb8107e9f4bf1d7eb3cd25e09611c94c4458aaf7b",
    Z12 + ".overlapping_partition_gradients_reduce_epilogue":
        "20871f12056a01113282bb9375443d867d3eb0dade7a9f3df788b03b614a3ee8",
    Z12 + ".reduce_ready_partitions_and_remove_grads":
        "1a97251238d3a0a385ad3ec5beb97ad9030f22ab61dfc282e99178183961dabd",
    Z12 + ".reduce_independent_p_g_buckets_and_remove_grads":
        "c2c5ee9bae409435dd3abd3609129fb399b74d65f5c68b070570e4065318a9c4",
    Z12 + ".reduce_ipg_grads":
        "3be4bb728d603460e791a36699c1715173f566ae7fc2fca3225ed3400ebdb771",
    Z12 + ".average_tensor":
        "cfaf1fb8613618509d6188de12b98dd728c136fc882add75de60bef2857c4386",
    Z12 + ".gradient_reduction_w_predivide":
        "2e19b1622b1dea27576808e8987dec2d72201aaeca9f6ea7d2f10f56e1f2d92c",
    Z12 + ".allreduce_bucket":
        "9cf3c3ba124a05f97073799dc0d8b10938b07dc91e94c12579c653336abb4eb5",
    Z12 + ".buffered_reduce_fallback":
        "e1ce59052d3a3656146fa741ae455b4f1230bf5a40d560b01eed72ee542aa71b",
    Z12 + ".allreduce_no_retain":
        "0c6fa16532a8f77df65092e81ae4a8167c363402188474ebc495776b02c2d6b7",
    Z12 + ".allreduce_and_copy":
        "0e48f447185e4d07a3f999fbbce21a1bebeaad3d46e434839c8fb6e14f45088e",
    Z12 + ".setup_buckets":
        "48fbaab579779e9be3891a1f009de88eebf54df7546b7af5c6f11bb5014d214e",
    Z12 + "._release_ipg_buffers":
        "d89b21edc14fb939276e2543d1e4cd4c96a636092c0a18c0adddc69d15efae81",
    Z12 + "._clear_param_grad_only":
        "84ada6ab9af5548468c1a83217b6dde21a865ec5c093705548a4240887400e30",
    Z12 + ".create_gradient_handling_hooks":
        "e0db72651ae3b0a17ddd6e1bf0f69e4956757d43f9f14c5a9e84558a7350ec91",
    Z12 + ".copy_grads_in_partition":
        "79ca5e21eb5fbfafb2f1c551f324ded8569eafdad59ea15cc4db3f93b36b79b4",
    Z12 + "._get_flat_partition_unpadded":
        "fced9decf99801c28ba852e88743333486fb4a98e2094724225c83972135b01e",
    Z12 + "._get_preflattened_grad_partition":
        "404d59654c777318e962d61413c5e5e21ada6cecdfc4ef8375a9899bc90a69ed",
    Z12 + ".__init__":
        "1a689c25b8c854d45b7a082bd89d01968492c0821c6be79b52b400f7f76a2ced",
    Z12M + ":GradPartitionBufferGroup":
        "69b756e678dade678e954179fdfa51ebe70113bec4953eda51e27e78e7ef6cc2",
    ENGINE + ".allreduce_gradients":
        "f8b80230ea38c8ed3bfd286f9f96ed6aef1e436a80c6e1610eba81591e317aeb",
    ENGINE + "._backward_epilogue":
        "94450533180c39445558cd83fdccec005cb4eb99654eff1fd0f24022353a0f63",
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
