"""Publishing a finished stage: `rayzero publish` and the recipe's `publish` section (publish.py), the Hub
calls (hub.py) and LoRA adapters (adapter.py). It reads a run's outputs (report, plots, model card from
pipelines/report/); the run itself never depends on it except to publish at the end."""
