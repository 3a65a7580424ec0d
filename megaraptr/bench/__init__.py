"""Benchmarks of megaraptr: what RAPTR's layer skipping buys in wall-clock time.

Modules:

- ``step_time``: median optimizer-step time against the number of active layers k, under
  DeepSpeed+megaraptr (one or more ZeRO stages) and as plain PyTorch (the ideal), with fixed
  and per-layer costs, speedups and efficiency. Run ``python -m megaraptr.bench.step_time -h``.
- ``timing``: the two measured training loops that ``step_time`` drives.
"""
