"""The ZeRO path: per-layer parameter groups and the freeze policy, the ZeRO-1/2/3 step that skips frozen layers, one gradient norm per step, and ZeRO-3 prefetch of each subnetwork."""
