"""PNG plots of a run for people who look rather than read: `runs/<run>/plots/*.png`.

Drawn from files only (each stage's `history.jsonl`, written by `rl.callbacks.MetricHistory`, and
`report.json`), never from wandb, so they work offline and can be redrawn at any time:

- `reward.png`           GRPO reward (weighted sum) and each reward function's mean, per step
- `accuracy.png`         held-out accuracy per stage (before/after for SFT), and training token accuracy
- `heldout.png`          GRPO held-out accuracy (greedy pass@1) along training (`heldout/accuracy` rows of
                         grpo/history.jsonl: start, every `grpo.eval_every`, end), beside the base model's, SFT's
                         and the equal-time baseline's accuracy
- `response_length.png`  GRPO completion length (mean, min-max band) per step
- `loss.png`             training loss per stage
- `tts.png`              test-time scaling: accuracy against generated tokens per problem (log x), one
                         line per strategy, one panel per stage, when `report["stages"][s]["tts"]` exists
                         (`{strategy: [{"tokens", "accuracy", "k"}, ...]}`)

Uses matplotlib's object API (`Figure`, Agg canvas): no pyplot state, no display needed.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

def read_history(path: Path) -> list[dict]:
    """Logged rows of a stage (`history.jsonl`); [] when the stage logged nothing."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and "step" in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_reward(grpo: list[dict], path: Path) -> Path | None:
    reward_keys = sorted({k for h in grpo for k in h if k.startswith("rewards/") and k.endswith("/mean")})
    if not grpo or not (reward_keys or any("reward" in h for h in grpo)):
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    x, y = _series(grpo, "reward")
    if x:
        ax.plot(x, y, label="reward (weighted sum)", linewidth=2, color="black")
    for k in reward_keys:
        x, y = _series(grpo, k)
        ax.plot(x, y, label=k.split("/")[1], alpha=0.8)
    ax.set(xlabel="GRPO step", ylabel="mean reward per completion", title="GRPO rewards")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy(report: dict, histories: dict[str, list[dict]], path: Path) -> Path | None:
    stages = {s: m for s, m in report.get("stages", {}).items() if isinstance(m.get("accuracy"), (int, float))}
    token_acc = {s: _series(h, "mean_token_accuracy") for s, h in histories.items()}
    token_acc = {s: xy for s, xy in token_acc.items() if xy[0]}
    if not stages and not token_acc:
        return None
    fig = Figure(figsize=(11 if token_acc else 6, 4))
    ax = fig.add_subplot(1, 2 if token_acc else 1, 1)
    names = list(stages)
    after = [100 * stages[s]["accuracy"] for s in names]
    bars = ax.bar(names, after, color="tab:blue", label="after the stage")
    before = [(i, 100 * stages[s]["accuracy_before"]) for i, s in enumerate(names) if "accuracy_before" in stages[s]]
    if before:
        ax.scatter([i for i, _ in before], [v for _, v in before], color="tab:red", marker="_", s=400, zorder=3,
                   label="before the stage")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set(ylabel="held-out accuracy (%)", title="held-out accuracy (greedy pass@1)", ylim=(0, 105))
    ax.legend(fontsize=8)
    if token_acc:
        ax2 = fig.add_subplot(1, 2, 2)
        for s, (x, y) in token_acc.items():
            ax2.plot(x, [100 * v for v in y], label=s)
        ax2.set(xlabel="training step", ylabel="token accuracy (%)", title="training token accuracy")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_heldout(report: dict, grpo: list[dict], path: Path, label: str = "GRPO") -> Path | None:
    """The curve of the stage labelled `label` (`Stage.curve_label`) beside every other stage's reference
    lines (`Stage.reference_lines`: the base model, SFT, the equal-time baseline)."""
    from pipelines.stages import STAGES

    x, y = _series(grpo, "heldout/accuracy")
    if not x:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(x, [100 * v for v in y], marker="o", color="tab:blue", label=label)
    stages = report.get("stages", {})
    refs = [ref for s in STAGES if s.name in stages for ref in s.reference_lines(stages[s.name])]
    for label, acc, color in refs:
        if isinstance(acc, (int, float)):
            ax.axhline(100 * acc, linestyle="--", color=color, alpha=0.8, label=label)
    ax.set(xlabel="GRPO step", ylabel="held-out accuracy (%)", title="held-out accuracy during GRPO (greedy pass@1)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_length(grpo: list[dict], path: Path) -> Path | None:
    x, mean = _series(grpo, "completions/mean_length")
    if not x:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(x, mean, label="mean", color="tab:green")
    xl, lo = _series(grpo, "completions/min_length")
    xh, hi = _series(grpo, "completions/max_length")
    if xl == x and xh == x:
        ax.fill_between(x, lo, hi, alpha=0.2, color="tab:green", label="min-max")
    ax.set(xlabel="GRPO step", ylabel="completion length (tokens)", title="GRPO response length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_loss(histories: dict[str, list[dict]], path: Path) -> Path | None:
    curves = {s: _series(h, "loss") for s, h in histories.items()}
    curves = {s: xy for s, xy in curves.items() if xy[0]}
    if not curves:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for s, (x, y) in curves.items():
        ax.plot(x, y, label=s)
    ax.set(xlabel="training step", ylabel="loss", title="training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_tts(report: dict, path: Path) -> Path | None:
    """Accuracy vs mean generated tokens per problem (log x), per strategy; one panel per stage."""
    stages = {s: m["tts"] for s, m in report.get("stages", {}).items() if isinstance(m, dict) and m.get("tts")}
    if not stages:
        return None
    fig = Figure(figsize=(6 * len(stages), 4.5))
    for i, (stage, curves) in enumerate(stages.items(), 1):
        ax = fig.add_subplot(1, len(stages), i)
        for strategy, points in curves.items():
            pts = sorted((p for p in points if p.get("tokens", 0) > 0), key=lambda p: p["tokens"])
            if not pts:
                continue
            x, y = [p["tokens"] for p in pts], [100 * p["accuracy"] for p in pts]
            ax.plot(x, y, marker="o", label=strategy)
            for p, xi, yi in zip(pts, x, y):
                if "k" in p:
                    ax.annotate(str(p["k"]), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set(xlabel="generated tokens per problem (log)", ylabel="held-out accuracy (%)",
               title=f"test-time scaling: {stage}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(run_dir: str | Path, report: dict | None = None) -> list[Path]:
    """Draw every plot the run has data for into `run_dir/plots/`; returns the files written."""
    run_dir = Path(run_dir)
    if report is None:
        path = run_dir / "report.json"
        if not path.exists():
            raise FileNotFoundError(f"plots: {path} not found; plots are drawn after a run wrote its report")
        report = json.loads(path.read_text())
    from pipelines.stages import STAGES

    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    trained = [s for s in STAGES if not s.measures_others]
    names = [s.name for s in trained if s.name in report.get("stages", {})] or [s.name for s in trained]
    histories = {s: read_history(run_dir / s / "history.jsonl") for s in names}
    histories = {s: h for s, h in histories.items() if h}
    # The reward, held-out and length plots: the first stage whose history has an RL curve (`Stage.curve_label`).
    curved = next((s for s in trained if s.curve_label and s.name in histories), None)
    rl = histories[curved.name] if curved else []
    drawn = [plot_reward(rl, out / "reward.png"), plot_accuracy(report, histories, out / "accuracy.png"),
             plot_heldout(report, rl, out / "heldout.png", curved.curve_label if curved else ""),
             plot_length(rl, out / "response_length.png"), plot_loss(histories, out / "loss.png"),
             plot_tts(report, out / "tts.png")]
    return [p for p in drawn if p is not None]
