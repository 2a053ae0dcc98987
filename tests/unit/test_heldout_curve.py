"""GRPO's held-out curve (issue 21) and a report that shows what each stage added (issue 25): the periodic
held-out evaluation inside a real TRL GRPO trainer (start, every share of the budget, paused out of the time
budget), and report.md / the console table / plots drawn from what the stage writes."""

import json
import time

from tests.unit.test_rl_progress import _tiny_grpo


def _reward(completions, **_):
    return [float(len(c) % 3) for c in completions]


def test_heldout_points_at_the_start_and_every_share_land_in_history(tmp_path, capsys):
    from rl.callbacks import HeldoutEval, MetricHistory

    seen = []

    def evaluate(model):
        seen.append(model.training)
        return {"accuracy": 0.25 * len(seen)}

    trainer = _tiny_grpo(tmp_path, _reward, 4)
    trainer.add_callback(MetricHistory(tmp_path / "history.jsonl"))
    trainer.add_callback(HeldoutEval(trainer, evaluate, fraction=0.5, desc="grpo"))
    trainer.train()
    assert seen == [False, False], "evaluated twice (step 0 and 2; step 4 is the stage's own eval), in eval mode"
    assert trainer.model.training, "training mode restored"
    points = [(h["step"], h["heldout/accuracy"]) for h in trainer.state.log_history if "heldout/accuracy" in h]
    assert points == [(0, 0.25), (2, 0.5)]
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(h["step"], h["heldout/accuracy"]) for h in history if "heldout/accuracy" in h] == points
    out = capsys.readouterr().out
    assert "grpo: held-out accuracy 25.0 % at step 0/4" in out and "grpo: held-out accuracy 50.0 % at step 2/4" in out


def test_evaluation_time_is_not_training_time(tmp_path):
    """A 6 s budget and an 8 s evaluation at the start: counted, training would stop after one step."""
    from rl.callbacks import HeldoutEval, TimeBudget

    budget = TimeBudget(6.0)
    trainer = _tiny_grpo(tmp_path, _reward, 2, callbacks=[budget])
    trainer.add_callback(HeldoutEval(trainer, lambda m: time.sleep(8.0) or {"accuracy": 0.0}, fraction=1.0,
                                     budget=budget))
    trainer.train()
    assert trainer.state.global_step == 2
    assert budget.paused >= 8.0


def _report() -> dict:
    eval_sampled = {"pass@k": {"1": 0.4, "4": 0.7}, "maj@k": {"1": 0.4, "4": 0.55},
                    "sampling": {"n": 4, "temperature": 0.7, "problems": 100}}
    bench = {"gsm8k": {"accuracy": 0.3, "n": 50, "pass@k": {"1": 0.3, "4": 0.6}, "maj@k": {"1": 0.3, "4": 0.45},
                       "samples_per_problem": 4, "temperature": 0.7}}
    return {"run": "r", "seed": 0, "summary": {"grpo_gain_over_sft": 0.1},
            "config": {"eval": {"temperature": 1.0, "samples": 4}},
            "stages": {"sft": {"accuracy": 0.4, "accuracy_before": 0.06, "params": 134_515_008, "flops": 1e15,
                               "wall_time_s": 100, **eval_sampled, "benchmarks": bench},
                       "grpo": {"accuracy": 0.5, "params": 134_515_008, "flops": 2e15, "wall_time_s": 200,
                                "heldout_curve": [{"step": 0, "accuracy": 0.4}, {"step": 25, "accuracy": 0.45},
                                                  {"step": 50, "accuracy": 0.5}]}}}


def test_report_shows_the_base_row_sampled_figures_with_t_and_k_and_the_curve(tmp_path):
    from pipelines.report.plots import write_plots
    from pipelines.report.report import print_table, write_markdown

    report = _report()
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "history.jsonl").write_text("".join(
        json.dumps({"step": p["step"], "heldout/accuracy": p["accuracy"]}) + "\n"
        for p in report["stages"]["grpo"]["heldout_curve"]))
    plots = write_plots(tmp_path, report)
    assert tmp_path / "plots" / "heldout.png" in plots
    md = write_markdown(tmp_path, report, plots).read_text()
    lines = []
    print_table(report, lines.append)
    for text in (md, "\n".join(lines)):
        assert "base" in text and "6.0 %" in text, "the starting model's held-out accuracy (sft.accuracy_before)"
        assert "gsm8k pass@4 (T=0.7)" in text and "gsm8k maj@4 (T=0.7)" in text
        assert "held-out pass@k and maj@k: 4 samples per problem at temperature 0.7 on the first 100" in text
        assert "pass@4" in text and "70.0 %" in text and "55.0 %" in text
        assert "GRPO held-out accuracy during training" in text and "+10.0" in text
    assert "| base | 134,515,008 | 6.0 % |" in md
    assert "| 25 | 45.0 % | +5.0 |" in md
    assert "![heldout](plots/heldout.png)" in md


def test_without_sft_the_base_row_is_grpos_step_0():
    from pipelines.report.report import print_table

    report = _report()
    del report["stages"]["sft"]
    lines = []
    print_table(report, lines.append)
    base = next(line for line in lines if line.startswith("base"))
    assert "40.0 %" in base, lines
