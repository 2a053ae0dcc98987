"""What a run leaves for people: experiment tracking (wandb), the report and its plots, and the model card
(publishing the checkpoint lives in pipelines/publish/)."""
