"""`rayzero eval CHECKPOINT [--task TASK] [--limit N] [section.field=value ...] [--out F] [--benchmark NAME ...]`:
greedy pass@1 and test-time scaling of any checkpoint.

A checkpoint inside a run folder is measured on that run's held-out split with its eval settings (and the
run's prepared `eval.benchmarks`); a checkpoint elsewhere with the `tiny` recipe's. `--task` replaces the
task section whole (nothing of the run's task is kept): a task name (`arithmetic`, a fresh section with its
defaults), a recipe name or .yaml file (its `task` section), or an inline mapping (`"{name: jsonl, path:
x.jsonl}"`); `task.*` overrides then change single fields. `--limit N` measures the first N held-out
problems (and N per benchmark). The first line printed says which config and task were used, and from where.
E.g. `rayzero eval runs/tiny/grpo eval.samples=16 eval.scorer=arithmetic_process`.

`--benchmark NAME` (repeatable: a built-in name, or the name of an `eval.benchmarks` entry of the run's
config or overrides) measures the checkpoint on those benchmarks only: greedy, plus pass@k / maj@k with
`eval.samples > 0`. Prompts follow the run's task settings (template, system prompt, chat template) when
the checkpoint is in a run folder, else the benchmark's own template (an entry sets its own, e.g.
`eval.benchmarks=[{name: gsm8k, chat_template: true}]` for an instruct checkpoint); the checkpoint may be any
folder with a model (or a hub id, fetched once). Also runnable as `python -m pipelines.eval_cli` (options
and overrides in any order).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from pipelines.config import ConfigError, PipelineConfig, load_config, recipe_path
from pipelines.report.report import print_table
from pipelines.run_folder import read_jsonl
from pipelines.scoring import evaluate_benchmarks, evaluate_checkpoint


def check_checkpoint(path: Path) -> None:
    """A folder that holds a model: config.json and weights (one line otherwise, before any work)."""
    if not path.exists():
        raise ConfigError(f"{path}: does not exist (give a checkpoint folder, e.g. runs/<run>/grpo, or a hub id)")
    if not path.is_dir() or not (path / "config.json").exists():
        raise ConfigError(f"{path}: not a checkpoint folder (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ConfigError(f"{path}: config.json but no weights (*.safetensors or pytorch_model*.bin)")


def _checkpoint(checkpoint: str) -> Path:
    """A checkpoint folder, or a hub id resolved to its cached snapshot (downloaded once)."""
    from pipelines.models import is_hub_id, resolve_model

    if is_hub_id(checkpoint):
        return resolve_model(checkpoint, field="CHECKPOINT")
    path = Path(checkpoint)
    check_checkpoint(path)
    return path


def eval_config(path: Path, task: str | None, overrides: Sequence[str]) -> tuple[PipelineConfig, str]:
    """The config `rayzero eval` measures `path` with, and the line saying where it came from: the run's
    config.yaml next to the checkpoint (else the tiny recipe), its task section replaced whole by `task`
    (a task name, a recipe's task section, or an inline YAML mapping), then `overrides`."""
    from pipelines.config.schema import TaskSection, to_dict
    from pipelines.tasks import names

    run_cfg = path.parent / "config.yaml"
    source = f"{run_cfg} (the checkpoint's run)" if run_cfg.exists() else "recipe tiny (no config.yaml next to the checkpoint)"
    task_from = "the run's task section" if run_cfg.exists() else "the tiny recipe's task section"
    section: dict | None = None
    if task:
        inline = _yaml_mapping(task)
        if task in names():
            section, task_from = to_dict(TaskSection(name=task)), f"--task {task}: its defaults"
        elif inline is not None:
            section, task_from = inline, "--task: the mapping given"
        else:
            try:
                section = to_dict(load_config(task).task)
            except ConfigError as e:
                raise ConfigError(f"--task {task!r}: not a task ({', '.join(names())}), a recipe with a task section, "
                                  f"nor a mapping ({e})") from None
            task_from = f"--task {task}: that recipe's task section"
    # The whole section as `task.<field>=<value>` overrides (JSON is YAML): nothing of the run's task is kept.
    fields = [f"task.{k}={json.dumps(v)}" for k, v in {**to_dict(TaskSection()), **section}.items()] if section else []
    cfg = load_config(str(run_cfg) if run_cfg.exists() else str(recipe_path("tiny")), [*fields, *overrides])
    changed = [o.split("=", 1)[0] for o in overrides]
    line = (f"eval: config {source}; task {cfg.task.name}{' ' + cfg.task.dataset if cfg.task.dataset else ''} "
            f"from {task_from}" + (f"; overrides: {', '.join(changed)}" if changed else ""))
    return cfg, line


def _yaml_mapping(text: str) -> dict | None:
    if not text.lstrip().startswith("{"):
        return None
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--task {text!r}: not valid YAML") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--task {text!r}: expected a mapping of task fields")
    return value


def _limited(data: dict[str, dict], limit: int | None) -> dict[str, dict]:
    return {k: {**v, "rows": v["rows"][:limit]} for k, v in data.items()} if limit else data


def eval_command(checkpoint: str, args: Sequence[str], out: str = "", say: Callable[[str], None] = print,
                 benchmarks: Sequence[str] = (), task: str | None = None, limit: int | None = None) -> int:
    from pipelines.stages.base import quiet_libraries

    quiet_libraries()
    path = _checkpoint(checkpoint)
    if out and not Path(out).resolve().parent.is_dir():
        raise ConfigError(f"--out {out}: folder {Path(out).resolve().parent} does not exist")
    args = list(args)
    positional, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, list(args))
    if positional and task:
        raise ConfigError(f"TASK {positional!r} and --task {task!r}: give the task once (--task)")
    task = task or positional
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: must be >= 1 (problems to measure)")
    run_cfg = path.parent / "config.yaml"
    cfg, line = eval_config(path, task, overrides)
    say(line + (f"; the first {limit} problems" if limit else ""))
    if benchmarks:
        result = _benchmarks(path, cfg, list(benchmarks), in_run=run_cfg.exists(), say=say, limit=limit)
        _print_benchmarks(result, say)
    else:
        stored = path.parent / "data" / "heldout.jsonl"
        if run_cfg.exists() and not task and not any(o.startswith("task.") for o in overrides) and stored.exists():
            rows = read_jsonl(stored)
        else:
            rows = _heldout(cfg, path)
        rows = rows[:limit] if limit else rows
        bench = None
        if cfg.eval.benchmarks:
            bench = _limited(_benchmark_data(path, cfg, [], in_run=run_cfg.exists(), say=say), limit)
        result = evaluate_checkpoint(path, rows, cfg.eval, seed=cfg.run.seed, desc=f"eval {path.name}", benchmarks=bench)
        print_table({"stages": {path.name: result}, "summary": {}}, say)  # pass@k / maj@k with their T and k
        if "tool_gain" in result:  # a checkpoint trained with the tool (its tools.json): measured with and without
            say(f"tool: {100 * result['accuracy']:.1f} % with the tool, {100 * result['accuracy_no_tool']:.1f} % without "
                f"(gain {100 * result['tool_gain']:+.1f} points); {result['tool_calls_per_sample']:.2f} calls per sample, "
                f"{100 * result['tool_error_rate']:.1f} % of calls failed")
        if result.get("unparsed_gold"):
            say(f"unparsed_gold: {result['unparsed_gold']} held-out rows left out of accuracy (their gold cannot be used)")
        if result.get("benchmarks"):
            _print_benchmarks(result["benchmarks"], say)
    if out:
        Path(out).write_text(json.dumps(result, indent=2, default=str))
        say(f"results: {out}")
    return 0


def _heldout(cfg, path: Path) -> list[dict]:
    """The task's held-out rows, templated with the checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    from pipelines.data import render_splits
    from pipelines.tasks import load_task

    rows = load_task(cfg.task, cfg.run.seed)["heldout"]
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    return render_splits(cfg.task, {"heldout": rows}, tok)["heldout"]


def _benchmark_data(path: Path, cfg, names: list[str], in_run: bool, say) -> dict[str, dict]:
    """{name: {"rows", "scorer", "max_new_tokens"}} for `names` (default: every `eval.benchmarks` entry),
    templated with the checkpoint's tokenizer: a run's task settings when the checkpoint is in a run."""
    from transformers import AutoTokenizer

    from pipelines.config import TaskSection
    from pipelines.data import benchmark_rows
    from pipelines.tasks.benchmarks import BenchmarkError, parse_benchmarks, parse_entry

    try:
        entries = {s.name: s for s in parse_benchmarks(cfg.eval.benchmarks, cfg.task)}
        specs = [entries[n] if n in entries else parse_entry(n, "--benchmark") for n in names] if names \
            else list(entries.values())
    except BenchmarkError as e:
        raise ConfigError(str(e)) from None
    task = cfg.task if in_run else TaskSection()
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    return {s.name: {"rows": benchmark_rows(s, task, tok, say), "scorer": s.scorer, "max_new_tokens": s.max_new_tokens}
            for s in specs}


def _benchmarks(path: Path, cfg, names: list[str], in_run: bool, say, limit: int | None = None) -> dict[str, dict]:
    from rl.modeling import load_policy

    data = _limited(_benchmark_data(path, cfg, names, in_run, say), limit)
    model, tok = load_policy(path)
    return evaluate_benchmarks(model, tok, data, cfg.eval, seed=cfg.run.seed, desc=f"eval {path.name}")


def _print_benchmarks(results: dict[str, dict], say: Callable[[str], None]) -> None:
    ks = sorted({k for r in results.values() for k in r.get("pass@k", {})}, key=int)
    temps = {r["temperature"] for r in results.values() if r.get("temperature") is not None}
    t = f" (T={temps.pop():g})" if len(temps) == 1 else ""  # the sampling temperature behind pass@k and maj@k
    head = ["benchmark", "n", "accuracy", "unparsed gold"] + [f"pass@{k}{t}" for k in ks] + [f"maj@{k}{t}" for k in ks]
    rows = [head]
    for name, r in results.items():
        rows.append([name, str(r["n"]), f"{100 * r['accuracy']:.1f} %", str(r["unparsed_gold"])]
                    + [f"{100 * r['pass@k'][k]:.1f} %" if k in r.get("pass@k", {}) else "-" for k in ks]
                    + [f"{100 * r['maj@k'][k]:.1f} %" if k in r.get("maj@k", {}) else "-" for k in ks])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for j, r in enumerate(rows):
        say(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            say("-+-".join("-" * w for w in widths))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`rayzero eval` (a command module: pipelines/cli.py `commands()`)."""
    add_arguments(sub.add_parser("eval", help="evaluate a checkpoint: pass@k, test-time scaling, benchmarks"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `eval` command's arguments (`rayzero eval` and `python -m pipelines.eval_cli`)."""
    parser.add_argument("checkpoint")
    parser.add_argument("args", nargs="*", metavar="[section.field=value]")
    parser.add_argument("--task", default=None, help="the task to measure on, instead of the run's: a task name "
                        "(arithmetic, hf, jsonl, reasoning_gym, human_eval), a recipe (its task section) or a mapping")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="measure the first N problems only")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    parser.add_argument("--benchmark", action="append", default=[], metavar="NAME",
                        help="measure on this benchmark only (repeatable): gsm8k, math500, aime24, aime25, amc23, "
                             "humaneval, mbpp, or an eval.benchmarks entry's name")


def run(ns: argparse.Namespace) -> int:
    return eval_command(ns.checkpoint, ns.args, ns.out, benchmarks=getattr(ns, "benchmark", []) or (),
                        task=getattr(ns, "task", None), limit=getattr(ns, "limit", None))


def main(argv: list[str] | None = None) -> int:
    from pipelines.tasks import TaskDataError

    parser = argparse.ArgumentParser(prog="rayzero eval", description="evaluate a checkpoint")
    add_arguments(parser)
    ns = parser.parse_intermixed_args(argv)  # options may come before or after the overrides
    try:
        return run(ns)
    except (ConfigError, TaskDataError) as e:
        print(f"rayzero: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
