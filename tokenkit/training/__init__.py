"""Training: optimizer, parameter partitioning, train step, checkpoints, metrics, loop."""
