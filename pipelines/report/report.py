"""The run report (`runs/<name>/report.json`) and the final table printed at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from pipelines.config.schema import PipelineConfig, to_dict
from pipelines.run_folder import read_json_or_none
from pipelines.stages import STAGES, stage_named

KEEP = ("accuracy", "accuracy_before", "params", "wall_time_s", "train_time_s", "steps", "traces",
        "teacher_params", "num_workers", "reward_first", "reward_last", "students", "num_tokens", "benchmarks",
        "unparsed_gold", "heldout_curve", "accuracy_no_tool", "tool_gain", "tool_calls_per_sample", "tool_error_rate",
        "masked_tool_tokens")
FROM_EVAL = ("pass@k", "maj@k", "tts", "sampling", "accuracy_per_billion_params", "mean_completion_tokens", "benchmarks")


def stage_flops(name: str, m: dict) -> float | None:
    """Estimated FLOPs a stage spent (its `Stage.flops`: rl.metrics, 6N per trained token, 2N per generated one)."""
    stage = stage_named(name)
    return stage.flops(m) if stage else m.get("flops")


def _reported(name: str) -> tuple[str, ...]:
    stage = stage_named(name)
    return stage.reported if stage else ()


def write_report(cfg: PipelineConfig, results: dict[str, dict]) -> dict:
    measuring = {s.name for s in STAGES if s.measures_others}
    stages = {name: {k: m[k] for k in KEEP + _reported(name) if k in m} | {"flops": stage_flops(name, m)}
              for name, m in results.items() if name not in measuring}
    # A measuring stage (eval) measured the checkpoints of other stages: its results belong to them.
    for name in measuring & set(results):
        for measured, e in results[name].get("checkpoints", {}).items():
            if measured in stages:
                stages[measured].update({k: e[k] for k in FROM_EVAL if k in e})
    summary = {}
    for stage in STAGES:  # each stage's own figures, in run order
        summary.update(stage.summary(results))
    # Tool runs (grpo.tools): the last trained policy's accuracy with the tool minus without it, same rows, same run
    # (summary.tool_gain, the tool arm minus a model trained without the tool, is the no_tool stage's figure).
    tooled = next((results[s.name] for s in reversed(STAGES) if s.trains_policy
                   and "tool_gain" in results.get(s.name, {})), None)
    if tooled is not None:
        summary["tool_gain_same_model"] = tooled["tool_gain"]
        summary["tool_calls_per_sample"] = tooled.get("tool_calls_per_sample")
        summary["tool_error_rate"] = tooled.get("tool_error_rate")
    report = {"run": cfg.run.name, "seed": cfg.run.seed, "stages": stages, "summary": summary,
              "config": to_dict(cfg)}
    dropped = (read_json_or_none(cfg.run_dir / "data" / "manifest.json") or {}).get("dropped")
    if dropped:  # rows of the task's data left out at load, by reason (pipelines/data.py)
        report["data"] = {"dropped": dropped}
    for name in measuring & set(results):  # what measuring cost, under the stage's own name
        report[name] = {"flops": results[name].get("flops"), "wall_time_s": results[name].get("wall_time_s")}
    contamination = cfg.run_dir / "data" / "contamination.json"  # written by pipelines/data.py
    if contamination.exists():
        report.setdefault("data", {})["contamination"] = json.loads(contamination.read_text())
    (cfg.run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _table(rows: list[tuple[str, ...]], say: Callable[[str], None]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "+".join("-" * (w + 2) for w in widths)
    say(line)
    for j, r in enumerate(rows):
        say(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            say(line)
    say(line)


def _density(x: float) -> str:
    """Accuracy per billion parameters: whole numbers for tiny models, two decimals for real ones (0.44 at
    134.5 M parameters is 3.27, not 3)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def _tables(report: dict) -> list[tuple[str, list[tuple[str, ...]]]]:
    """The report's tables as (title, rows with a header row first)."""
    bench = _benchmark_columns(report)
    rows = [("stage", "params", "held-out acc", *(title for title, _ in bench), "acc / B params", "FLOPs", "wall time")]
    base = _base(report)
    if base:
        acc, params = base
        rows.append(("base", f"{params:,}", f"{100 * acc:.1f} %", *("-" for _ in bench), _density(acc / (params / 1e9)),
                     "-", "-"))
    for name, m in report["stages"].items():
        density = m["accuracy"] / (m["params"] / 1e9) if m.get("params") else 0.0
        flops = f"{m['flops']:.2e}" if m.get("flops") else "-"
        rows.append((name, f"{m['params']:,}", f"{100 * m['accuracy']:.1f} %", *(cell(m) for _, cell in bench),
                     _density(density), flops, f"{m.get('wall_time_s', 0):.0f} s"))
    out = [("", rows)]
    present = [s for s in STAGES if s.name in report["stages"]]
    for stage in present:  # each stage's own tables (distillation's student x mix grid)
        out += stage.report_tables(report["stages"])
    for stage in present:
        curve = report["stages"][stage.name].get("heldout_curve") or [] if stage.curve_label else []
        if curve:
            start = curve[0]["accuracy"]
            out.append((f"{stage.curve_label} held-out accuracy during training (greedy pass@1)",
                        [("step", "held-out acc", "vs start")] + [
                (str(c["step"]), f"{100 * c['accuracy']:.1f} %", f"{100 * (c['accuracy'] - start):+.1f}") for c in curve]))
    sampled = {name: m for name, m in report["stages"].items() if m.get("pass@k") or m.get("maj@k")}
    if sampled:
        ks = sorted({int(k) for m in sampled.values() for key in ("pass@k", "maj@k") for k in (m.get(key) or {})})
        n, temp, problems = _sampling(report, next(iter(sampled.values())))
        rows = [("stage", *(f"pass@{k}" for k in ks), *(f"maj@{k}" for k in ks))]
        rows += [(name, *(_at(m.get(key), k) for key in ("pass@k", "maj@k") for k in ks)) for name, m in sampled.items()]
        where = f" on the first {problems} held-out problems" if problems else ""
        out.append((f"held-out pass@k and maj@k: {n} samples per problem at temperature {temp:g}{where}", rows))
    for name, m in report["stages"].items():
        if m.get("tts"):
            tts = [("strategy", "k", "tokens / problem", "accuracy")]
            tts += [(s, str(p["k"]), f"{p['tokens']:.0f}", f"{100 * p['accuracy']:.1f} %")
                    for s, pts in m["tts"].items() for p in pts]
            _, temp, _ = _sampling(report, m)
            out.append((f"test-time scaling, {name} (greedy at temperature 0, samples at temperature {temp:g})", tts))
    return out


def _base(report: dict) -> tuple[float, int] | None:
    """(held-out accuracy, params) of the model the run started from, so each stage's gain can be read off:
    from the first stage in run order that measured it (`Stage.base_accuracy`: SFT's starting point or,
    without SFT, GRPO's step 0, its curve starting from the base model)."""
    for stage in STAGES:
        m = report["stages"].get(stage.name)
        acc = stage.base_accuracy(m) if m is not None else None
        if isinstance(acc, (int, float)) and m.get("params"):
            return acc, m["params"]
    return None


def _sampling(report: dict, m: dict) -> tuple:
    """(samples per problem, temperature, problems) of a stage's sampled figures: as measured (`sampling`),
    else the run's eval config (reports written before `sampling` was recorded)."""
    s, e = m.get("sampling") or {}, (report.get("config") or {}).get("eval", {})
    return s.get("n", e.get("samples", "?")), s.get("temperature", e.get("temperature", 1.0)), \
        s.get("problems", e.get("num_problems", 0))


def _at(values: dict | None, k: int) -> str:
    """A pass@k / maj@k figure at k (keys are ints in memory, strings once read back from JSON)."""
    v = (values or {}).get(k, (values or {}).get(str(k)))
    return f"{100 * v:.1f} %" if v is not None else "-"


def _benchmark_columns(report: dict) -> list[tuple[str, Callable[[dict], str]]]:
    """One column per benchmark measured by any stage (greedy accuracy), plus `<name> pass@K (T=t)` and
    `<name> maj@K (T=t)` at the largest K when sampled; "-" where a stage did not measure it."""
    cols: dict[str, dict[str, int]] = {}
    temps: dict[str, float] = {}
    for m in report["stages"].values():
        for name, b in (m.get("benchmarks") or {}).items():
            seen = cols.setdefault(name, {})
            for key in ("pass@k", "maj@k"):
                seen[key] = max([seen.get(key, 0), *(int(k) for k in (b.get(key) or {}))])
            if "temperature" in b:
                temps.setdefault(name, b["temperature"])

    def greedy(name: str) -> Callable[[dict], str]:
        return lambda m: f"{100 * m['benchmarks'][name]['accuracy']:.1f} %" if name in (m.get("benchmarks") or {}) else "-"

    def sampled(name: str, key: str, k: int) -> Callable[[dict], str]:
        return lambda m: _at((m.get("benchmarks") or {}).get(name, {}).get(key), k)

    default_t = (report.get("config") or {}).get("eval", {}).get("temperature", 1.0)
    out: list[tuple[str, Callable[[dict], str]]] = []
    for name, ks in cols.items():
        out.append((name, greedy(name)))
        for key in ("pass@k", "maj@k"):
            if ks.get(key):
                k = ks[key]
                out.append((f"{name} {key[:-1]}{k} (T={temps.get(name, default_t):g})", sampled(name, key, k)))
    return out


def _unparsed_notes(report: dict) -> list[str]:
    """Gold answers the verifier could not read are left out of accuracy, never scored 0 or 1: say so."""
    notes = []
    for stage, m in report["stages"].items():
        for name, b in [("held-out", m), *(m.get("benchmarks") or {}).items()]:
            if b.get("unparsed_gold"):
                notes.append(f"note: {stage} {name}: {b['unparsed_gold']} gold answer(s) could not be parsed; "
                             f"left out of the accuracy")
    return notes


def print_table(report: dict, say: Callable[[str], None] = print) -> None:
    for title, rows in _tables(report):
        if title:
            say(title)
        _table(rows, say)
    for k, v in report["summary"].items():
        say(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    for note in _unparsed_notes(report):
        say(note)


def write_markdown(run_dir: Path, report: dict, plots: list[Path]) -> Path:
    """`report.md`: the tables and the run's plots, for people who look rather than read JSON."""
    lines = [f"# rayzero run `{report['run']}` (seed {report['seed']})", ""]
    for title, rows in _tables(report):
        if title:
            lines += [f"## {title}", ""]
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]] + [""]
    if report["summary"]:
        lines += ["## summary", ""] + [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
                                       for k, v in report["summary"].items()] + [""]
    if plots:
        lines += ["## plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    path = Path(run_dir) / "report.md"
    path.write_text("\n".join(lines))
    return path
