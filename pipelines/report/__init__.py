"""What a run leaves for people: experiment tracking (wandb), the report and its plots, model cards and
published checkpoints."""
