"""Benchmarks of megaraptr: what RAPTR's layer skipping buys in wall-clock time.

Modules:

- ``step_time``: median optimizer-step time against the number of active layers k, under
  DeepSpeed+megaraptr (one or more ZeRO stages) and as plain PyTorch (the ideal), with fixed
  and per-layer costs, speedups and efficiency. Run ``python -m megaraptr.bench.step_time -h``.
- ``timing``: the two measured training loops that ``step_time`` drives.
- ``quality`` (+ ``methods``, ``report``): methods side by side on eval loss.
- ``gpu`` (+ ``gpu_report``, ``e2e``, ``kernel_check``, ``gpu_data``): the whole method on one
  GPU in one command (``bash launch/gpu_check.sh``): fused kernels against eager, per ZeRO
  stage, and RAPTR end to end against full training and its ideal.
"""
