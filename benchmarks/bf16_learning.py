"""Does a bf16 learner need fp32 master weights? Measured, on real GRPO updates.

    .venv/bin/python benchmarks/bf16_learning.py updates [--model tiny|smollm2] [--lr 2e-4]
    .venv/bin/python benchmarks/bf16_learning.py curves [--steps 30]

`updates`: a few GRPO steps with precision=bf16 and fp32 master weights; for every step, the share of weight
elements whose AdamW update (master after - master before) is smaller than half a bf16 step of the weight,
i.e. would round away if the weights themselves were the optimizer's state (pure bf16), and the share of
the update's L2 norm those elements carry.

`curves`: GRPO on the tiny task from the same briefly SFT'd policy, same seed, same data, as the tiny recipe
runs it (64 prompts x 8, dynamic sampling, lr 2e-4): precision=fp32 (fp32 weights, no autocast),
precision=bf16 (bf16 weights + fp32 masters, the default) and precision=bf16 with master_weights=false
(pure bf16). Prints the on-policy reward per step and its mean over the first and last quarter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def _lost(before, after) -> tuple[int, int, float, float]:
    """(elements lost, elements changed, lost update norm^2, total update norm^2) for one tensor."""
    import torch

    delta = (after - before).float()
    # half the spacing of bf16 values around `before` (8 significant bits)
    ulp = torch.ldexp(torch.ones_like(before), torch.frexp(before)[1] - 8)
    lost = (delta.abs() < 0.5 * ulp) & (delta != 0)
    return int(lost.sum()), int((delta != 0).sum()), float((delta[lost] ** 2).sum()), float((delta ** 2).sum())


def updates(args) -> None:
    import torch
    from transformers import TrainerCallback

    from benchmarks.grpo_throughput import _smollm2_policy, _tiny_policy
    from rewards.registry import build_rewards
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import load_policy

    with tempfile.TemporaryDirectory() as d:
        policy, rows = _tiny_policy(Path(d)) if args.model == "tiny" else _smollm2_policy()
        lr = args.lr or (2e-4 if args.model == "tiny" else 1e-5)
        prompts = 64 if args.model == "tiny" else 8
        model, tok = load_policy(policy)
        fns, weights = build_rewards({"math_accuracy": 1.0})
        p = GRPOParams(max_steps=args.steps, learning_rate=lr, num_generations=8, prompts_per_step=prompts,
                       max_completion_length=48, scale_rewards="none", logging_steps=1, precision="bf16")
        trainer = make_grpo_trainer(model, tok, rows, fns, weights, Path(d) / "out", p)
        report = []

        class Watch(TrainerCallback):
            def on_step_begin(self, *a, **kw):
                opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
                self.before = [m.detach().clone() for m in opt.masters]

            def on_step_end(self, *a, **kw):
                opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
                totals = [0, 0, 0.0, 0.0]
                for b, m in zip(self.before, opt.masters):
                    for i, v in enumerate(_lost(b, m.detach())):
                        totals[i] += v
                report.append(totals)

        trainer.add_callback(Watch())
        trainer.train()
    print(f"\n{args.model}, lr {lr:g}, AdamW (betas 0.9/0.999), bf16 weights with fp32 masters")
    for step, (lost, changed, lost_sq, total_sq) in enumerate(report, 1):
        print(f"step {step}: {100 * lost / max(1, changed):5.1f} % of updated elements would round away in bf16 "
              f"({100 * (lost_sq / max(total_sq, 1e-30)) ** 0.5:5.1f} % of the update's L2 norm)")


def curves(args) -> None:
    import torch

    from benchmarks.grpo_throughput import _tiny_policy
    from rewards.registry import build_rewards
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import load_policy

    torch.set_num_threads(os.cpu_count() or 2)
    settings = {"fp32": {"precision": "fp32"}, "bf16+master": {"precision": "bf16"},
                "bf16 pure": {"precision": "bf16", "master_weights": False}}
    out = {}
    with tempfile.TemporaryDirectory() as d:
        policy, rows = _tiny_policy(Path(d))
        for name, fields in settings.items():
            model, tok = load_policy(policy)
            fns, weights = build_rewards({"math_accuracy": 1.0})
            p = GRPOParams(max_steps=args.steps, learning_rate=2e-4, num_generations=8, prompts_per_step=64,
                           max_completion_length=48, scale_rewards="none", logging_steps=1, dynamic_sampling=True,
                           max_resample_rounds=0, **fields)
            trainer = make_grpo_trainer(model, tok, rows, fns, weights, Path(d) / name.replace(" ", "-"), p, seed=0)
            trainer.train()
            out[name] = [h["reward"] for h in trainer.state.log_history if "reward" in h]
            print(f"{name}: {' '.join(f'{r:.2f}' for r in out[name])}", flush=True)
    q = max(1, args.steps // 4)
    print(f"\ntiny GRPO, {args.steps} steps x 64 prompts x 8, lr 2e-4, dynamic sampling, seed 0: on-policy reward")
    for name, r in out.items():
        print(f"{name:12} first {q} steps {statistics.mean(r[:q]):.3f}  last {q} steps {statistics.mean(r[-q:]):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["updates", "curves"])
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=0)
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    if args.what == "updates":
        args.steps = args.steps or 3
        updates(args)
    else:
        args.steps = args.steps or 30
        curves(args)


if __name__ == "__main__":
    main()
