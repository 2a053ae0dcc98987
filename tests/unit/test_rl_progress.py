"""Progress lines: few whole lines (per ~10 % or ~30 s) with step/total, the latest figures and elapsed
seconds; never carriage returns. And rl/ stays free of Ray, rewards and cluster imports."""

import ast
import io
from pathlib import Path

from rl.progress import ProgressLine

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _run(total, seconds_per_step, **figures):
    out, clock = io.StringIO(), Clock()
    bar = ProgressLine("grpo: train", total, out=out, clock=clock)
    for _ in range(total):
        clock.t += seconds_per_step
        bar.note(**figures)
        bar.update(1)
    bar.close()
    bar.close()  # idempotent
    return out.getvalue()


def test_fast_stage_prints_one_line_per_tenth():
    text = _run(200, 1.0, reward=0.4125, loss=None)
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 10, lines
    assert lines[0] == "grpo: train 20/200 (10%) reward=0.4125 elapsed=20s eta=180s"
    assert lines[-1] == "grpo: train 200/200 (100%) reward=0.4125 elapsed=200s"


def test_slow_stage_prints_every_thirty_seconds_and_close_prints_the_rest():
    lines = _run(7, 12.0, loss=1.5).splitlines()
    # 12 s per step: a line every third step (36 s >= 30 s) or at each 10 % mark (every step here).
    assert len(lines) == 7
    lines = _run(1000, 12.0).splitlines()  # 3.3 h: a line per 36 s (every third step), ~333 in all
    assert 330 <= len(lines) <= 345
    out, clock = io.StringIO(), Clock()
    bar = ProgressLine("eval", 100, out=out, clock=clock)
    clock.t = 5
    bar.update(3)
    bar.close()
    assert out.getvalue() == "eval 3/100 (3%) elapsed=5s\n"


def test_sft_stage_shows_steps_loss_and_time(tmp_path, capsys):
    from rl.callbacks import Progress
    from rl.modeling import build_tiny_model, train_tokenizer
    from rl.sft import SFTParams, sft_train

    rows = [{"prompt": f"{i} plus {i} is", "completion": f" {2 * i}."} for i in range(16)]
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in rows] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    sft_train(model, tok, rows, tmp_path, SFTParams(max_steps=20, batch_size=4), callbacks=[Progress("sft: train")])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("sft: train")]
    assert 2 <= len(lines) <= 11, lines
    assert lines[-1].startswith("sft: train 20/20 (100%) loss=") and "elapsed=" in lines[-1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_rl_imports_no_ray_rewards_or_cluster():
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"ray", "rewards", "cluster", "pipelines"})
           for p in (ROOT / "rl").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def _tiny_grpo(tmp_path, reward, max_steps, callbacks=(), **params):
    """A real TRL GRPO trainer on a tiny model (the stage's trainer class), rewarded by `reward`."""
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import build_tiny_model, train_tokenizer

    rows = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(8)]
    tok = train_tokenizer([r["prompt"] + " " + r["answer"] for r in rows] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    p = GRPOParams(max_steps=max_steps, learning_rate=1e-3, num_generations=2, prompts_per_step=2,
                   max_completion_length=4, logging_steps=1, **params)
    return make_grpo_trainer(model, tok, rows, [reward], [1.0], tmp_path, p, callbacks=list(callbacks))


def test_grpo_progress_line_shows_the_reward_of_its_own_step(tmp_path, capsys):
    """Issue 25: the reward printed with step N was step N-1's (the trainer logs after on_step_end)."""
    from rl.callbacks import Progress

    def reward(completions, trainer_state, **_):  # a different, known reward at every step
        return [float(trainer_state.global_step) + 0.5] * len(completions)

    trainer = _tiny_grpo(tmp_path, reward, 4, callbacks=[Progress("grpo: train")])
    trainer.train()
    logged = {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}
    assert len(set(logged.values())) == 4, logged
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("grpo: train")]
    shown = {int(l.split()[2].split("/")[0]): float(l.split("reward=")[1].split()[0]) if "reward=" in l else None
             for l in lines}
    assert shown == logged, lines
