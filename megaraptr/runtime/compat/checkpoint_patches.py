"""The DeepSpeed patches behind megaraptr's checkpoints (:mod:`megaraptr.runtime.checkpoints`):
the safe loader routed into DeepSpeed's checkpoint engine with its writes guarded, and ZeRO-1/2
resume on another data-parallel size. Merged into :data:`.registry.SOURCES` and
:data:`.registry.PATCHES`."""
from __future__ import annotations

from typing import Dict

from megaraptr.runtime.compat.patch import CE, ENGINE, LINK, PIPE, TCE, Z12, Patch

CHECKPOINT_SOURCES: Dict[str, str] = {
    TCE + ".load":
        "e8b5b855229613f2b1c7afde66625672903fd46f69b5ea8180996ae9cbcb035c",
    TCE + ".save":
        "29c171866012db1de4e26f2554ac6a8e6ee54f314b2ae94354f1ed4b80527690",
    CE + ".makedirs":
        "477b409a387e46483da30ffb9af41f8ed0febf40baeba8baab00d621eac761c4",
    ENGINE + "._copy_recovery_script":
        "1fa1b5ee20864a8e42ad6cd73ddd0826b169e8e06ffe132e91e569152f98a27a",
    ENGINE + ".save_checkpoint":
        "ec5d65fae23a3629a0eb057e920b79fe2bd212496fa7102b573dd4a3ceb806ef",
    ENGINE + "._save_checkpoint":
        "b5f383b6e630946d8a57985e00b1939903415594bcb134ec49d4b962081e849f",
    ENGINE + "._save_zero_checkpoint":
        "783d4b0c4ef6fe0736dd834bd5a847c5a526cf3a1e05d83a835540f9f7b8ef65",
    ENGINE + ".load_checkpoint":
        "350690db1ed314e0dc4b6f381bc30c6220b1cd68498f05a3e75e705ff5944e7d",
    ENGINE + "._load_checkpoint":
        "bed25684bc57391a08d89cea363e4d9e859bf21a504a0f6aa451954521c0b141",
    ENGINE + "._get_all_zero_checkpoint_state_dicts":
        "75f89679405fe027e8bca75b474c80f0befe2a70e9510ea1d268b22aa066bd2e",
    ENGINE + "._load_zero_checkpoint":
        "38fa05253cd60bac42f32b31431505118c4909b7be5bfb06fe0de9a658782657",
    "deepspeed.runtime.state_dict_factory:SDLoaderBase.load":
        "1e4b8333098cbea0c9027fd3cb13c7bb4d8198d7c23abb2b48f5610a04b4c0ab",
    PIPE + ".save_state_dict":
        "37b9645a58f7fe21a663d8c9263fa58da010f6da7e39344e62b62bb7276a266c",
    PIPE + ".load_state_dir":
        "7bfefa5b9e75448682eba9792dc5fc8c649ef3fed0b3d2046aa80fd75ca92a50",
    Z12 + ".state_dict":
        "827a9c0323b363d573d07f6423655d0ebd818a0dcf4e1f253bfc5b613c39d41b",
    Z12 + "._get_base_optimizer_state":
        "e5c801b1df1a475a342468c9555cbe27bd2651dda7058c46ae5ce474c04a4e5a",
    Z12 + "._restore_from_bit16_weights":
        "86a5dbb55ca52dcfee2f8fa55d76d764d77644b7c29733c67948bb09d6e72765",
}
"""``module:qualname`` -> sha256 of its normalised source in DeepSpeed 0.19.8."""

CHECKPOINT_PATCHES: Dict[str, Patch] = {
    "checkpoint_io": Patch(
        where="megaraptr/runtime/checkpoints/engine_io.py",
        what="replaces the engine's TorchCheckpointEngine.load (torch.load with weights_only="
             "False: a tampered checkpoint runs code) with megaraptr's weights-only loader, and "
             "wraps its save and makedirs and the recovery-script copy so that a failed write "
             "during a save is recorded for the store instead of raised mid-save on one rank",
        sources=(TCE + ".load", TCE + ".save", CE + ".makedirs", ENGINE + "._copy_recovery_script",
                 ENGINE + ".save_checkpoint", ENGINE + "._save_checkpoint",
                 ENGINE + "._save_zero_checkpoint", ENGINE + ".load_checkpoint",
                 ENGINE + "._load_checkpoint", ENGINE + "._get_all_zero_checkpoint_state_dicts",
                 ENGINE + "._load_zero_checkpoint",
                 "deepspeed.runtime.state_dict_factory:SDLoaderBase.load",
                 PIPE + ".save_state_dict", PIPE + ".load_state_dir"),
        names={ENGINE: ("checkpoint_engine", "_copy_recovery_script"),
               TCE: ("load", "save", "makedirs")},
        no_fallback="DeepSpeed's own load unpickles checkpoints with weights_only=False (code "
                    "in a tampered file runs), and its save raises a failed write on one rank "
                    "mid-save while the others wait in a barrier"),
    "zero12_reshard": Patch(
        where="megaraptr/runtime/checkpoints/reshard.py",
        what="resumes a ZeRO-1/2 checkpoint on another data-parallel size: reads every saved "
             "partition (fp32 master, Adam moments, step, lr) by parameter name through the "
             "partitions' param_slice_mappings and imports it per parameter "
             "(runtime/pipe/optim_state.py) after DeepSpeed loads the weights alone",
        sources=(Z12 + ".state_dict", Z12 + "._get_base_optimizer_state",
                 Z12 + "._restore_from_bit16_weights",
                 Z12 + "._lazy_init_hp_params_optimizer_state", LINK + ":link_hp_params",
                 LINK + ":lazy_init_hp_params_optimizer_state"),
        names={Z12: ("_hp_optimizer_states_linked", "_lazy_init_hp_params_optimizer_state",
                     "bit16_groups")},
        no_fallback="DeepSpeed 0.19.8 refuses a ZeRO checkpoint of another data-parallel size "
                    "and its universal conversion fails on layers that have not trained yet"),
}
