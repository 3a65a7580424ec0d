"""The pipeline path: the pipeline module and engine, the whole-model clipping norm, optimizer state by parameter name, and re-partitioning through a checkpoint."""
