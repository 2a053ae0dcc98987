"""GRPO throughput: plain TRL vs rayzero's rollout pool, same model, data and GRPO config, one run.

    .venv/bin/python benchmarks/grpo_throughput.py [--steps 8] [--prompts 64] [--gens 8]

(a) `trl`: TRL's `GRPOTrainer` generating in-process (torch on all cores, generation then training).
(b) `rayzero`: the same trainer fed by `cluster.rollout.RolloutPool` through `rollout_func`, with
    overlap on: one rollout worker generates step t+1 while the learner trains step t (learner threads =
    all cores, rollout worker threads = half; on 2 cores they share a core while both run).
(c) `rayzero-ds`: (b) plus dynamic sampling (drop-only), as the `tiny` recipe runs: samples/s still
    counts every generated sample, but zero-variance groups skip the learner. Not the same computation
    as (a), so it is reported beside the ratio, not as it.
Both start from the same briefly SFT'd `tiny` policy, so completions have realistic lengths. Prints
samples/s for each, the ratio, and where each step's time goes (generation the learner waited for,
rewards, weight sync, the rest = learner forward/backward/optimizer).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def _timed(obj, name: str, bucket: dict) -> None:
    """Accumulate the wall time of `obj.name(...)` calls into bucket[name] (instrumentation only)."""
    fn = getattr(obj, name)

    def wrapper(*a, **kw):
        start = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            bucket[name] = bucket.get(name, 0.0) + time.perf_counter() - start

    setattr(obj, name, wrapper)


def _policy(workdir: Path, seed: int = 0) -> tuple[Path, list[dict]]:
    import torch

    from pipelines.config import load_config
    from pipelines.tasks.arithmetic import generate_splits
    from rl.modeling import build_tiny_model, save_tokenizer, train_tokenizer
    from rl.sft import SFTParams, sft_train

    cfg = load_config("tiny")
    t = cfg.task
    splits = generate_splits(t.num_cold_start, t.num_train, t.num_heldout, min_ops=t.min_ops, max_ops=t.max_ops,
                             max_value=t.max_value, seed=seed)
    tok = train_tokenizer([r["prompt"] + r.get("completion", "") for v in splits.values() for r in v], 512)
    m = cfg.model
    model = build_tiny_model(tok, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
                             intermediate_size=m.intermediate_size, max_position=m.max_position, seed=seed)
    torch.manual_seed(seed)
    sft_train(model, tok, splits["cold_start"], workdir / "sft-tmp", SFTParams(epochs=20, learning_rate=1e-3))
    path = workdir / "policy"
    save_tokenizer(tok, path, splits["cold_start"][0]["prompt"])
    model.save_pretrained(path)
    return path, splits["train"]


def _run(mode: str, policy: Path, rows: list[dict], args, workdir: Path) -> dict:
    import torch

    from rewards.registry import build_rewards
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import load_policy

    cores = os.cpu_count() or 2
    params = GRPOParams(max_steps=args.steps, learning_rate=1e-4, num_generations=args.gens,
                        prompts_per_step=args.prompts, max_completion_length=48, scale_rewards="none",
                        logging_steps=1, dynamic_sampling=mode.endswith("-ds"), max_resample_rounds=0)
    fns, weights = build_rewards({"math_accuracy": 1.0})
    pool, rollout_func = None, None
    if mode.startswith("rayzero"):
        import ray

        from cluster.rollout import RolloutPool
        from rl.rollout import engine_factory, make_rollout_func

        ray.init(num_cpus=cores, include_dashboard=False, configure_logging=False, log_to_driver=False)
        rollout_threads = args.rollout_threads or max(1, cores // 2)
        torch.set_num_threads(args.learner_threads or cores)
        pool = RolloutPool(engine_factory("hf", policy), num_workers=1, cpus_per_worker=rollout_threads)
        rollout_func = make_rollout_func(pool, sync_every=1, overlap=True)
    else:
        torch.set_num_threads(cores)
    model, tok = load_policy(policy)
    trainer = make_grpo_trainer(model, tok, rows, fns, weights, workdir / mode, params, rollout_func=rollout_func)
    bucket: dict = {}
    _timed(trainer, "_generate", bucket)
    _timed(trainer, "_calculate_rewards", bucket)
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "reward" in h]
    sync = sum(h.get("rollout/sync_s", 0.0) for h in logs)
    prefetch_wait = sum(h.get("rollout/prefetch_wait_s", 0.0) for h in logs)
    lag = max((h.get("rollout/policy_lag", 0.0) for h in logs), default=0.0)
    if pool is not None:
        import ray

        pool.shutdown()
        ray.shutdown()
    samples = args.steps * args.prompts * args.gens
    gen, rew = bucket.get("_generate", 0.0) + prefetch_wait, bucket.get("_calculate_rewards", 0.0)
    return {"mode": mode, "samples_per_s": samples / total, "total_s": total, "generation_wait_s": gen,
            "reward_s": rew, "sync_s": sync, "learner_s": total - gen - rew - sync, "max_policy_lag": lag,
            "reward_last": logs[-1]["reward"] if logs else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--learner-threads", type=int, default=0, help="rayzero learner threads (default: all cores)")
    ap.add_argument("--rollout-threads", type=int, default=0, help="rollout worker threads (default: half the cores)")
    ap.add_argument("--modes", default="trl,rayzero,rayzero-ds")
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        policy, rows = _policy(workdir)
        results = [_run(mode, policy, rows, args, workdir) for mode in args.modes.split(",")]
    print(f"\nGRPO throughput, {args.steps} steps x {args.prompts} prompts x {args.gens} samples, "
          f"{os.cpu_count()} cores")
    print(f"{'mode':8} {'samples/s':>10} {'total s':>8} {'gen wait':>9} {'reward':>7} {'sync':>6} {'learner':>8} lag")
    for r in results:
        print(f"{r['mode']:8} {r['samples_per_s']:10.1f} {r['total_s']:8.1f} {r['generation_wait_s']:9.1f} "
              f"{r['reward_s']:7.1f} {r['sync_s']:6.2f} {r['learner_s']:8.1f} {r['max_policy_lag']:.0f}")
    base = {r["mode"]: r["samples_per_s"] for r in results}
    for mode in ("rayzero", "rayzero-ds"):
        if "trl" in base and mode in base:
            print(f"ratio {mode}/trl: {base[mode] / base['trl']:.2f}x")


if __name__ == "__main__":
    main()
