"""What the training loop needs from a run's engine, whichever path built it.

``megaraptr-train`` trains through one of two setups with the same small interface,
:class:`TrainSetup`: :class:`megaraptr.tools.zero_run.ZeroRun` (ZeRO 0-3 data parallelism)
and :class:`megaraptr.tools.pipeline_run.PipelineRun` (``--pipeline-stages N``). The loop
(:mod:`megaraptr.tools.train_loop`) and the report (:mod:`megaraptr.tools.train_report`)
talk to the interface only; :func:`build_setup` is the one place that picks the path.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Protocol

from megaraptr.runtime.checkpoints import Resume
from megaraptr.runtime.engine import RaptrEngine, StepResult
from megaraptr.tools.pipeline_run import PipelineRun
from megaraptr.tools.preflight import RunPlan
from megaraptr.tools.train_data import RunData
from megaraptr.tools.zero_run import ZeroRun


class TrainSetup(Protocol):
    """A run's engine and what its path does differently."""

    engine: RaptrEngine
    """The engine training now (a pipeline's changes when it re-partitions)."""
    num_parameters: int
    inputs: Optional[Callable[[dict], dict]]
    """Maps a batch to the model's keyword arguments (None: the batch is them)."""

    def load(self, resume: Resume) -> dict:
        """Load a verified checkpoint into the engine; returns its client state."""

    def save(self, save_dir: str, tag: str, client_state: dict) -> None:
        """Write a complete checkpoint with ``client_state`` beside megaraptr's state and move
        ``latest`` to it (:func:`megaraptr.runtime.checkpoints.save`; --keep-checkpoints
        applies). Raises CheckpointWriteError (exit 74) on every rank when it cannot."""

    def next_engine(self, client_state: Callable[[], dict]) -> RaptrEngine:
        """The engine for the next step (a pipeline re-partitions at planned stage changes,
        saving ``client_state()`` with the move; called only then)."""

    def events(self, result: StepResult) -> List[tuple]:
        """TensorBoard scalars of the step that only this path has."""

    def describe(self) -> List[str]:
        """Lines the run prints at its start about this path."""

    def summary(self) -> Optional[dict]:
        """The summary JSON's "pipeline" entry (None without a pipeline)."""

    def close(self) -> None:
        """Remove what the path made for itself (scratch folders)."""


def build_setup(plan: RunPlan, data: RunData, resume: Optional[Resume] = None) -> TrainSetup:
    """The run's engine on the path its flags ask for (the process group exists already);
    ``resume``: the verified checkpoint the run will load (a pipeline plans from it)."""
    if plan.flags.pipeline_stages:  # DeepSpeed PipelineModule + train_batch
        return PipelineRun(plan, data, resume)
    return ZeroRun(plan, data)
