"""The run report (`runs/<name>/report.json`) and the final table printed at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from pipelines.config.schema import PipelineConfig, to_dict
from rl.metrics import generate_flops, train_flops

KEEP = ("accuracy", "accuracy_before", "params", "wall_time_s", "train_time_s", "steps", "traces",
        "teacher_params", "num_workers", "reward_first", "reward_last", "students", "num_tokens", "benchmarks",
        "unparsed_gold", "accuracy_no_tool", "tool_gain", "tool_calls_per_sample", "tool_error_rate")
FROM_EVAL = ("pass@k", "maj@k", "tts", "accuracy_per_billion_params", "mean_completion_tokens", "benchmarks")


def stage_flops(name: str, m: dict) -> float | None:
    """Estimated FLOPs a stage spent (rl.metrics: 6N per trained token, 2N per generated one)."""
    n = m.get("params", 0)
    if name in ("sft", "baseline") and m.get("num_tokens"):
        return train_flops(n, m["num_tokens"])
    if name == "grpo" and m.get("num_tokens"):
        # every token is generated (or prefilled) once and trained on once
        return generate_flops(n, m["num_tokens"]) + train_flops(n, m["num_tokens"])
    if name in ("distill", "eval"):
        return m.get("flops")
    return None


def write_report(cfg: PipelineConfig, results: dict[str, dict]) -> dict:
    stages = {name: {k: m[k] for k in KEEP if k in m} | {"flops": stage_flops(name, m)}
              for name, m in results.items() if name != "eval"}
    # The eval stage measured the checkpoints of other stages: its results belong to them.
    for name, e in results.get("eval", {}).get("checkpoints", {}).items():
        if name in stages:
            stages[name].update({k: e[k] for k in FROM_EVAL if k in e})
    acc = {name: m["accuracy"] for name, m in results.items() if name != "eval"}
    summary = {}
    if "sft" in acc and "grpo" in acc:
        summary["grpo_gain_over_sft"] = acc["grpo"] - acc["sft"]
    if "baseline" in acc and "grpo" in acc:
        summary["grpo_gain_over_equal_time_sft"] = acc["grpo"] - acc["baseline"]
    if "distill" in results:
        teacher = results.get("grpo") or results.get("sft")
        if teacher:
            summary["student_param_ratio"] = results["distill"]["params"] / teacher["params"]
            summary["student_accuracy_retained"] = acc["distill"] / teacher["accuracy"] if teacher["accuracy"] else None
    # Tool runs (grpo.tools): the GRPO policy's accuracy with the tool minus without it, same rows, same run.
    tooled = next((results[n] for n in ("grpo", "sft") if "tool_gain" in results.get(n, {})), None)
    if tooled is not None:
        summary["tool_gain"] = tooled["tool_gain"]
        summary["tool_calls_per_sample"] = tooled.get("tool_calls_per_sample")
        summary["tool_error_rate"] = tooled.get("tool_error_rate")
    report = {"run": cfg.run.name, "seed": cfg.run.seed, "stages": stages, "summary": summary,
              "config": to_dict(cfg)}
    if "eval" in results:
        report["eval"] = {"flops": results["eval"].get("flops"), "wall_time_s": results["eval"].get("wall_time_s")}
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
    for name, m in report["stages"].items():
        density = m["accuracy"] / (m["params"] / 1e9) if m.get("params") else 0.0
        flops = f"{m['flops']:.2e}" if m.get("flops") else "-"
        rows.append((name, f"{m['params']:,}", f"{100 * m['accuracy']:.1f} %", *(cell(m) for _, cell in bench),
                     _density(density), flops, f"{m.get('wall_time_s', 0):.0f} s"))
    out = [("", rows)]
    students = report["stages"].get("distill", {}).get("students")
    if students:
        mixes = list(dict.fromkeys(s["mix"] for s in students))
        sizes = list(dict.fromkeys((s["student"], s["params"]) for s in students))
        acc = {(s["student"], s["mix"]): s["accuracy"] for s in students}
        out.append(("distillation: every student on every trace mix (held-out accuracy)", [("student", "params", *mixes)] + [
            (name, f"{params:,}", *(f"{100 * acc[(name, m)]:.1f} %" if (name, m) in acc else "-" for m in mixes))
            for name, params in sizes]))
    for name, m in report["stages"].items():
        if m.get("tts"):
            tts = [("strategy", "k", "tokens / problem", "accuracy")]
            tts += [(s, str(p["k"]), f"{p['tokens']:.0f}", f"{100 * p['accuracy']:.1f} %")
                    for s, pts in m["tts"].items() for p in pts]
            out.append((f"test-time scaling, {name}", tts))
    return out


def _benchmark_columns(report: dict) -> list[tuple[str, Callable[[dict], str]]]:
    """One column per benchmark measured by any stage (greedy accuracy), plus `<name> maj@K` at the largest
    K when sampled; "-" where a stage did not measure it."""
    cols: dict[str, int] = {}
    for m in report["stages"].values():
        for name, b in (m.get("benchmarks") or {}).items():
            ks = [int(k) for k in (b.get("maj@k") or {})]
            cols[name] = max([cols.get(name, 0), *ks])

    def greedy(name: str) -> Callable[[dict], str]:
        return lambda m: f"{100 * m['benchmarks'][name]['accuracy']:.1f} %" if name in (m.get("benchmarks") or {}) else "-"

    def maj(name: str, k: int) -> Callable[[dict], str]:
        def cell(m: dict) -> str:
            v = ((m.get("benchmarks") or {}).get(name, {}).get("maj@k") or {}).get(str(k))
            return f"{100 * v:.1f} %" if v is not None else "-"
        return cell

    out: list[tuple[str, Callable[[dict], str]]] = []
    for name, k in cols.items():
        out.append((name, greedy(name)))
        if k:
            out.append((f"{name} maj@{k}", maj(name, k)))
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
