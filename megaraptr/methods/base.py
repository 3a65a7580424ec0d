"""The protocol every training method implements (RAPTR and the comparison methods).

A method is a :class:`Method` subclass in its own module of :mod:`megaraptr.methods`, listed in
the registry there. It says which keys of the ``"raptr"`` block it needs or refuses (its
:meth:`Method.check`), builds its schedule (:meth:`Method.build`, giving the schedule its
per-step :class:`~megaraptr.core.policy.LayerPolicy`: keep probabilities, the mask, what
happens at a stage start, what evaluation runs), and says whether pipelines support it and
what it needs from the DeepSpeed engine (:meth:`Method.check_engine`). The schema of the block
(key names, types, defaults) is :mod:`megaraptr.core.config`.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from megaraptr.core.config import RaptrConfig
from megaraptr.core.schedule import Schedule
from megaraptr.core.stage import Stage


class Method:
    """One training method; class attributes describe it, methods check and build."""

    name: str = ""
    settings_key: str = ""
    """The key of the method's own settings block in "raptr" ("" when it has none)."""
    needs_schedule = False
    """True: "schedule" is required when enabled; False: it is refused."""
    schedule_example = '"6-8-10-12"'
    any_sampling = False
    """False: only "bernoulli" sampling (each layer decided on its own)."""
    supports_pipeline = True
    sweepable = False
    """Whether ``megaraptr-config sweep`` can vary its schedule."""

    def check(self, config: RaptrConfig, block: dict) -> None:
        """The method's own checks of an enabled block (after the shared ones)."""

    def build(self, config: RaptrConfig, *, num_layers: int, total_steps: int,
              fixed: Tuple[int, ...]) -> Schedule:
        """The run's schedule (``fixed``: the resolved fixed layers)."""
        raise NotImplementedError

    def check_engine(self, *, fp16: bool, zero_stage: int) -> None:
        """One-line ConfigError for a DeepSpeed setting the method cannot train under."""

    def summary(self, staged: Sequence[Stage]) -> str:
        """A few words for the config tool: the method, and its depths when staged."""
        return self.name


def depths_summary(name: str, staged: Sequence[Stage]) -> str:
    """"raptr 6-8-10-12 in 4 stages": the expected depth of each staged stage."""
    depths = "-".join(f"{s.expected_layers:.4g}" for s in staged)
    return f"{name} {depths} in {len(staged)} stages"
