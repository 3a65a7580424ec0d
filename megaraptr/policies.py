"""The comparison methods' per-step layer policies, as pure functions of the applied step.

- Progressive Layer Dropping (Zhang & He, NeurIPS 2020): theta(t) = (1 - theta_bar)
  exp(-gamma t) + theta_bar, with t the number of steps already applied (so step 1 trains the
  full model); layer i of L (1-based) runs with probability 1 - i/L (1 - theta(t)): deeper
  layers are dropped more. Fixed layers, if any are configured, always run.
- LayerDrop (Fan et al., 2019) needs no function here: a constant keep probability 1 - p.
- Gradual stacking (Reddi et al., 2023): the model of a stage is its first k layers; growing
  from k to k' copies the top layers onto the new ones (:func:`growth_plan`).

And one policy of every staged method: the optional LR re-warmup after a stage transition
(:func:`rewarm_multiplier`).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple


def pld_theta(step: int, theta_bar: float, gamma: float) -> float:
    """theta of applied step ``step`` (1-based): 1 at step 1, decaying to theta_bar."""
    return (1.0 - theta_bar) * math.exp(-gamma * (step - 1)) + theta_bar


def pld_layer_probs(num_layers: int, fixed: Sequence[int], theta: float) -> Tuple[float, ...]:
    """Keep probability of every layer at one step."""
    fixed = set(fixed)
    return tuple(1.0 if i in fixed else 1.0 - (i + 1) / num_layers * (1.0 - theta)
                 for i in range(num_layers))


def pld_layer_sum(first: int, last: int, num_layers: int, fixed: Sequence[int],
                  theta_bar: float, gamma: float) -> float:
    """Expected number of layer runs over steps first..last (closed form)."""
    if last < first:
        return 0.0
    count = last - first + 1
    depth_weight = sum((i + 1) / num_layers for i in range(num_layers) if i not in set(fixed))
    # sum of (1 - theta(t)) over the steps: (1 - theta_bar) * sum exp(-gamma (t - 1))
    if gamma == 0.0:
        decay = float(count)
    else:
        ratio = math.exp(-gamma)
        decay = ratio ** (first - 1) * (1.0 - ratio ** count) / (1.0 - ratio)
    dropped = (1.0 - theta_bar) * (count - decay) * depth_weight
    return count * num_layers - dropped


def growth_plan(old_depth: int, new_depth: int) -> List[Tuple[int, int]]:
    """(target, source) layer pairs when a stacked model grows from ``old_depth`` layers to
    ``new_depth``: the top ``new_depth - old_depth`` layers are copied in order on top (6 -> 9:
    layers 3, 4, 5 -> 6, 7, 8); when growing by more than the depth, the copies repeat."""
    if not 1 <= old_depth <= new_depth:
        raise ValueError(f"cannot grow {old_depth} layers to {new_depth}")
    grow = new_depth - old_depth
    top = min(grow, old_depth)
    return [(old_depth + j, old_depth - top + j % top) for j in range(grow)]


def rewarm_multiplier(step: int, stage_first_step: int, stage_index: int, rewarm_steps: int,
                      first_staged_index: int = 0) -> float:
    """Factor on the learning rate of ``step``: ramps (1 .. K) / (K + 1) over the first K =
    ``rewarm_steps`` steps of every stage after the first staged one, else 1."""
    into = step - stage_first_step
    if rewarm_steps <= 0 or stage_index <= first_staged_index or into >= rewarm_steps:
        return 1.0
    return (into + 1) / (rewarm_steps + 1)
