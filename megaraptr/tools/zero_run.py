"""The engine of a ``megaraptr-train`` run without a pipeline (ZeRO 0-3 data parallelism).

:class:`ZeroRun` builds the model (a reference BERT/GPT, or a Hugging Face model adapted in
place, :mod:`megaraptr.models.hf`) from ``--seed``, configures DeepSpeed's activation
checkpointing when asked, and wraps it with ``megaraptr.initialize``. It has the interface of
:class:`megaraptr.tools.train_setup.TrainSetup`; its checkpoints are the engine's
(:mod:`megaraptr.runtime.checkpoints`: complete or absent, with the run's facts in the
manifest, ``--keep-checkpoints`` retention).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

from megaraptr.models import build_model, optimizer_groups
from megaraptr.models.hf import build_hf_model, causal_inputs, is_hf
from megaraptr.runtime.checkpoints import Resume
from megaraptr.runtime.initialize import initialize
from megaraptr.tools.preflight import RunPlan
from megaraptr.tools.resume_check import run_facts
from megaraptr.tools.train_data import RunData


class ZeroRun:
    """A run's :class:`megaraptr.runtime.engine.RaptrEngine` over a plain DeepSpeed engine."""

    def __init__(self, plan: RunPlan, data: RunData):
        flags = plan.flags
        self.override_schedule = flags.override_raptr_schedule
        self.keep, self.run = flags.keep_checkpoints, run_facts(flags)
        self.inputs = None
        torch.manual_seed(flags.seed)  # the model's initial weights: a function of --seed
        if is_hf(flags.model):  # a transformers model, adapted in place (megaraptr.models.hf)
            model = build_hf_model(flags.model, size=flags.size, vocab_size=data.vocab_size,
                                   seq_len=flags.seq_len, dropout=flags.dropout,
                                   checkpoint=flags.activation_checkpointing)
            self.inputs = causal_inputs if plan.data_kind == "causal" else None
        else:
            model = build_model(flags.model, flags.size, vocab_size=data.vocab_size,
                                seq_len=flags.seq_len, dropout=flags.dropout,
                                checkpoint=flags.activation_checkpointing)
        if flags.activation_checkpointing == "deepspeed":
            import deepspeed

            deepspeed.checkpointing.configure(None, deepspeed_config=plan.ds_config)
        self.num_parameters = sum(p.numel() for p in model.parameters())  # before any TP split
        self.engine, *_ = initialize(model=model, model_parameters=optimizer_groups(model),
                                     config=plan.ds_config, total_steps=flags.train_steps,
                                     seed=plan.sampler_seed)

    def load(self, resume: Resume) -> dict:
        _, client_state = self.engine.load_checkpoint(
            resume.load_dir, resume.tag, override_schedule=self.override_schedule, verify=False)
        return client_state or {}

    def save(self, save_dir: str, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(save_dir, tag=tag, client_state=client_state,
                                    keep=self.keep, run=self.run)

    def next_engine(self, client_state: Callable[[], dict]):
        return self.engine  # one engine for the whole run

    def events(self, result) -> List[tuple]:
        return []

    def describe(self) -> List[str]:
        return []

    def summary(self) -> Optional[dict]:
        return None

    def close(self) -> None:
        pass
