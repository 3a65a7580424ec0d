"""The process groups of a tensor-parallel run: the one place that knows them (Megatron's
``parallel_state``), handed to DeepSpeed as its ``mpu``.

:class:`ParallelGroups` builds, for a :class:`megaraptr.planning.layout.Layout`, one process
group per tensor-parallel group (the T ranks that hold the shards of the same layers) and,
without a pipeline, one per data-parallel group (the replicas of one shard, over which ZeRO
partitions and reduces). Every rank creates every group, in the same order, as
``torch.distributed.new_group`` requires. With a pipeline, DeepSpeed's own grid
(``PipeModelDataParallelTopology``) makes the data-parallel and stage groups; the tensor-parallel
group here then has exactly the ranks of the grid's ``"model"`` axis.

The object answers DeepSpeed's ``mpu`` questions (``get_data_parallel_group``,
``get_model_parallel_rank``, ...): "model parallel" is the tensor-parallel group, so DeepSpeed
counts each replicated parameter once in its clipping norm (on tensor rank 0) and each
shard on every rank, and names checkpoint files ``mp_rank_<tensor rank>``.
"""
from __future__ import annotations

from typing import List

import torch.distributed as dist

from megaraptr.planning.layout import Layout


class ParallelGroups:
    """Tensor- and data-parallel groups of this rank (DeepSpeed's ``mpu`` interface).

    Args:
        layout: the run's T x P x D layout; ``layout.world`` must be the process group's size.
        data_groups: also create the data-parallel groups (the non-pipeline path; a pipeline's
            grid makes its own).
    """

    def __init__(self, layout: Layout, *, data_groups: bool = True):
        if layout.world != dist.get_world_size():
            raise ValueError(f"layout {layout.describe()} for a world of "
                             f"{dist.get_world_size()} ranks")
        self.layout = layout
        self.global_rank = dist.get_rank()
        self.pipe_index, self.data_index, self.tensor_index = layout.coords(self.global_rank)
        self.tensor_ranks = self._make(layout.tensor_groups())
        self.tensor_group = self._group
        self.data_ranks: List[int] = [self.global_rank]
        self.data_group = None
        if data_groups:
            self.data_ranks = self._make(layout.data_groups())
            self.data_group = self._group

    def _make(self, all_groups: List[List[int]]) -> List[int]:
        mine = None
        for ranks in all_groups:
            group = dist.new_group(ranks=ranks)
            if self.global_rank in ranks:
                mine, self._group = ranks, group
        return mine

    @property
    def tensor_size(self) -> int:
        return self.layout.tensor

    def describe(self) -> str:
        return (f"{self.layout.describe()}; this rank: stage {self.pipe_index}, replica "
                f"{self.data_index}, tensor shard {self.tensor_index}")

    # DeepSpeed's mpu interface ------------------------------------------------------------
    def get_model_parallel_rank(self) -> int:
        return self.tensor_index

    def get_model_parallel_world_size(self) -> int:
        return self.layout.tensor

    def get_model_parallel_group(self):
        return self.tensor_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.tensor_ranks[0]

    def get_data_parallel_rank(self) -> int:
        return self.data_index

    def get_data_parallel_world_size(self) -> int:
        return self.layout.data

    def get_data_parallel_group(self):
        return self.data_group

    def get_data_parallel_group_ranks(self) -> List[int]:
        return list(self.data_ranks)
