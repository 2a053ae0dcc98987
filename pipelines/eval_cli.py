"""`rayzero eval CHECKPOINT [TASK] [section.field=value ...]`: greedy pass@1 and test-time scaling of any
checkpoint. A checkpoint inside a run folder is measured on that run's held-out split with its eval
settings; TASK (a task name) and overrides change them, e.g.
`rayzero eval runs/tiny/grpo eval.samples=16 eval.scorer=arithmetic_process`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from pipelines.config import ConfigError, load_config, recipe_path
from pipelines.report.report import print_table
from pipelines.run_folder import read_jsonl
from pipelines.scoring import evaluate_checkpoint


def check_checkpoint(path: Path) -> None:
    """A folder that holds a model: config.json and weights (one line otherwise, before any work)."""
    if not path.is_dir() or not (path / "config.json").exists():
        raise ConfigError(f"{path}: not a checkpoint folder (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ConfigError(f"{path}: config.json but no weights (*.safetensors or pytorch_model*.bin)")


def eval_command(checkpoint: str, args: list[str], out: str = "", say: Callable[[str], None] = print) -> int:
    path = Path(checkpoint)
    check_checkpoint(path)
    if out and not Path(out).resolve().parent.is_dir():
        raise ConfigError(f"--out {out}: folder {Path(out).resolve().parent} does not exist")
    task, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, list(args))
    run_cfg = path.parent / "config.yaml"
    if task:
        overrides = [f"task.name={task}", *overrides]
    cfg = load_config(str(run_cfg) if run_cfg.exists() else str(recipe_path("tiny")), overrides)
    stored = path.parent / "data" / "heldout.jsonl"
    if run_cfg.exists() and not task and not any(o.startswith("task.") for o in overrides) and stored.exists():
        rows = read_jsonl(stored)
    else:
        from pipelines.tasks import load_task

        rows = load_task(cfg.task, cfg.run.seed)["heldout"]
    result = evaluate_checkpoint(path, rows, cfg.eval, seed=cfg.run.seed, desc=f"eval {path.name}")
    print_table({"stages": {path.name: result}, "summary": {}}, say)
    for name in ("pass@k", "maj@k"):
        if result.get(name):
            say(f"{name}: " + ", ".join(f"k={k}: {100 * v:.1f} %" for k, v in result[name].items()))
    if out:
        Path(out).write_text(json.dumps(result, indent=2, default=str))
        say(f"results: {out}")
    return 0
