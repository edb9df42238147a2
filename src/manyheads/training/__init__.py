"""What `MultiTaskTrainer` delegates to: per-task evaluation and generation, per-task losses, checkpoints,
preemption and the output lock."""
