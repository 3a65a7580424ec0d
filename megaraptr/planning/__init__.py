"""Pure cost models: pipeline partitions (balance), step costs t(k) and their ideal speedups, the plain-PyTorch step profile, the pipeline cost profile, and the 1F1B simulator."""
