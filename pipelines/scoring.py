"""Held-out scoring shared by every stage, the `eval` stage and `rayzero eval`: greedy pass@1 of a model,
scored by the verifier of the rows' task; with `eval.samples > 0`, test-time scaling too (pass@k, maj@k,
best-of-N, weighted vote, beam search: see `rl.evaluation`); and standard benchmarks (`eval.benchmarks`,
prepared by `pipelines.data.prepare_benchmarks`), one result per benchmark.

Rows whose gold cannot be used (a gold answer `math_accuracy` cannot parse, tests `code_accuracy` cannot
run: the reward returns None) are counted as `unparsed_gold` and left out of `accuracy`, never scored 0 or 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from rewards.registry import get_reward
from rl.progress import ProgressLine
from rl.generation import generate

if TYPE_CHECKING:
    from pipelines.config.schema import EvalSection, PipelineConfig

CODE_COLUMNS = ("tests", "entry_point", "test_setup_code", "test_imports")


def row_scores(completions: list[str], rows: list[dict], scorer: str | None = None) -> list:
    """Correctness per row, by the rows' task: code rows (with `tests`: HumanEval, MBPP, stdin/stdout)
    run their tests in the sandbox (`code_accuracy`, all tests must pass); the others compare `answer`
    (`math_accuracy`). `scorer` forces one of the two for every row (a benchmark's scorer). None where
    the gold cannot be used."""
    if not rows:
        return []
    code = [i for i, r in enumerate(rows) if (scorer == "code_accuracy") or (scorer is None and r.get("tests"))]
    math = sorted(set(range(len(rows))) - set(code))
    out: list = [None] * len(rows)
    if code:
        fn = get_reward("code_accuracy", mode="all")
        sub = [rows[i] for i in code]
        cols = {c: [r.get(c) for r in sub] for c in CODE_COLUMNS if any(c in r for r in sub)}
        cols.setdefault("tests", [None] * len(sub))
        for i, s in zip(code, fn([completions[i] for i in code], **cols)):
            out[i] = s
    if math:
        golds = [rows[i].get("answer") for i in math]
        scores = get_reward("math_accuracy")([completions[i] for i in math], answer=[g if g is not None else "" for g in golds])
        for i, s in zip(math, scores):
            out[i] = s
    return out


def summarize(scores: list) -> dict:
    """accuracy over the rows that could be scored, with how many could not."""
    scored = [s for s in scores if s is not None]
    return {"accuracy": sum(1 for s in scored if s == 1.0) / max(1, len(scored)), "n": len(scores),
            "unparsed_gold": len(scores) - len(scored)}


def evaluate_model(model, tokenizer, rows: list[dict], cfg: "EvalSection", desc: str = "eval",
                   benchmarks: Mapping[str, dict] | None = None, seed: int = 0, tools=None) -> dict:
    """Greedy pass@1 on `rows` {prompt, answer | tests}; returns accuracy and a few samples for inspection.
    With `benchmarks` ({name: {"rows", "scorer", "max_new_tokens"}}, see `pipelines.data.benchmark_data`)
    also `benchmarks`: {name: {accuracy, n, unparsed_gold, pass@k, maj@k}}. With `tools` (pipelines.tool_use.
    eval_tools) the model may call the Python tool; the result then also has `tool_calls_per_sample` and
    `tool_error_rate`."""
    bar = ProgressLine(desc, len(rows))
    log: list = []
    outs = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, on_batch=bar.update, tools=tools, tool_log=log)
    bar.close()
    completions = [o[0] for o in outs]
    scores = row_scores(completions, rows)
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
    result = {
        **{k: v for k, v in summarize(scores).items() if k != "n"},
        "num_examples": len(rows),
        "mean_completion_tokens": sum(lengths) / max(1, len(lengths)),
        "samples": [{"prompt": r["prompt"], "completion": c, "answer": _gold_text(r), "score": s}
                    for r, c, s in list(zip(rows, completions, scores))[:8]],
        "correct": [s == 1.0 for s in scores],  # per row, so a subset's accuracy needs no second pass
        "tokens": lengths,
    }
    if tools is not None:
        from rl.tools import summarize as tool_summary

        result.update(tool_summary(log))
    if benchmarks:
        result["benchmarks"] = evaluate_benchmarks(model, tokenizer, benchmarks, cfg, seed=seed, desc=desc)
    return result


def heldout_accuracy(model, tokenizer, rows: list[dict], cfg: "EvalSection", tools=None) -> dict:
    """Greedy pass@1 on `rows` as `evaluate_model` measures it, without progress lines or samples: the
    check a stage runs on its model while it trains (`rl.callbacks.HeldoutEval`). With `tools` (a run trained
    with the tool) the model may call it, as in the stage's own evaluation, so the curve ends where it does."""
    outs = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, tools=tools)
    return summarize(row_scores([o[0] for o in outs], rows))


def evaluate_stage(model, tokenizer, cfg: "PipelineConfig", desc: str, benchmarks: bool = True,
                   no_tool: bool = True) -> dict:
    """What every training stage measures of its model: greedy pass@1 on the run's held-out split and, with
    `benchmarks`, on the run's prepared `eval.benchmarks` (results under "benchmarks")."""
    from pipelines.data import benchmark_data
    from pipelines.run_folder import RunFolder, read_jsonl

    rows = read_jsonl(RunFolder(cfg.run_dir).data("heldout"))
    bench = benchmark_data(cfg.run_dir, cfg.eval) if benchmarks and cfg.eval.benchmarks else None
    if not cfg.grpo.tools.enabled:
        return evaluate_model(model, tokenizer, rows, cfg.eval, desc=desc, benchmarks=bench, seed=cfg.run.seed)
    # A run trained with the tool: measured with it (the stage's accuracy) and, on the same rows, without it
    # (the same model, tool calls left unanswered): tool_gain = accuracy - accuracy_no_tool.
    from pipelines.tool_use import eval_tools

    out = evaluate_model(model, tokenizer, rows, cfg.eval, desc=desc, benchmarks=bench, seed=cfg.run.seed,
                         tools=eval_tools(cfg.grpo.tools))
    if not no_tool:
        return out
    bare = evaluate_model(model, tokenizer, rows, cfg.eval, desc=f"{desc} (no tool)", seed=cfg.run.seed)
    out["accuracy_no_tool"] = bare["accuracy"]
    out["tool_gain"] = out["accuracy"] - bare["accuracy"]
    return out


def evaluate_benchmarks(model, tokenizer, benchmarks: Mapping[str, dict], cfg: "EvalSection", seed: int = 0,
                        desc: str = "eval") -> dict[str, dict]:
    """Every benchmark greedy (pass@1), and with `cfg.samples > 0` pass@k and maj@k over that many samples
    at `cfg.temperature` (on the first `cfg.num_problems` rows, 0 = all)."""
    from rl.metrics import maj_at_k, mean, pass_at_k

    out = {}
    for name, b in benchmarks.items():
        rows, scorer = b["rows"], b.get("scorer")
        max_new = b.get("max_new_tokens") or cfg.max_new_tokens
        bar = ProgressLine(f"{desc}: {name}", len(rows))
        comps = [o[0] for o in generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new,
                                        batch_size=cfg.batch_size, on_batch=bar.update)]
        bar.close()
        scores = row_scores(comps, rows, scorer)
        res: dict[str, Any] = summarize(scores)
        res["mean_completion_tokens"] = mean([len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in comps])
        res["samples"] = [{"prompt": r["prompt"], "completion": c, "answer": _gold_text(r), "score": s}
                          for r, c, s in list(zip(rows, comps, scores))[:4]]
        if cfg.samples > 0:
            n, sub = cfg.samples, rows[: cfg.num_problems or None]
            ks = [k for k in cfg.ks if k <= n]
            bar = ProgressLine(f"{desc}: {name} samples", len(sub) * n)
            outs = generate(model, tokenizer, [r["prompt"] for r in sub], num_samples=n, temperature=cfg.temperature,
                            max_new_tokens=max_new, batch_size=cfg.batch_size, seed=seed, on_batch=bar.update)
            bar.close()
            flat = [c for o in outs for c in o]
            s_scores = row_scores(flat, [r for r in sub for _ in range(n)], scorer)
            groups = [(flat[i * n:(i + 1) * n], s_scores[i * n:(i + 1) * n]) for i in range(len(sub))]
            groups = [(c, s) for c, s in groups if all(x is not None for x in s)]  # gold usable
            res["pass@k"] = {k: mean([pass_at_k(n, sum(1 for x in s if x == 1.0), k) for _, s in groups]) for k in ks}
            if scorer != "code_accuracy" and not any(r.get("tests") for r in sub):
                res["maj@k"] = {k: mean([maj_at_k([_vote(c) for c in cs], [x == 1.0 for x in s], k, seed=seed)
                                         for cs, s in groups]) for k in ks}
            res["samples_per_problem"], res["temperature"] = n, cfg.temperature
        out[name] = res
    return out


def _gold_text(row: dict) -> str:
    """What a sample is checked against, as text (tables want one type per column): the answer, else the tests."""
    if row.get("answer") not in (None, ""):
        return str(row["answer"])
    tests = row.get("tests")
    return "\n".join(map(str, tests)) if isinstance(tests, list) else str(tests)


def _vote(completion: str):
    from rewards.math import extract_answers

    found = extract_answers(completion)
    return found[0] if len(found) == 1 else None


def judge_for(tokenizer) -> "Judge":
    """Answers checked by `row_scores`; votes on the normalised final answer."""
    from rl.evaluation import Judge

    def correct(completions: list[str], rows: list[dict]) -> list[bool]:
        return [s == 1.0 for s in row_scores(completions, rows)]

    return Judge(correct=correct, answer=_vote,
                 token_count=lambda c: len(tokenizer(c, add_special_tokens=False)["input_ids"]))


def scorer_for(cfg: "EvalSection"):
    """The verifier used to rank samples and steps: a learned PRM if given, else a registered reward
    that needs no answer column (called with prompts and completions only)."""
    if cfg.prm_path:
        from rl.tts import load_prm_scorer

        return load_prm_scorer(cfg.prm_path)
    if cfg.scorer:
        fn = get_reward(cfg.scorer)
        return lambda prompts, completions: [float(x or 0.0) for x in fn(completions, prompts=prompts)]
    return None


def evaluate_checkpoint(path: str | Path, rows: list[dict], cfg: "EvalSection", seed: int = 0, desc: str = "eval",
                        benchmarks: Mapping[str, dict] | None = None, device: str | None = None) -> dict:
    """Greedy pass@1 of the checkpoint at `path`, plus test-time scaling when `cfg.samples > 0`;
    also its parameter count and accuracy per billion parameters ("knowledge density"). Benchmarks:
    `benchmarks` if given, else those of `cfg.benchmarks` the checkpoint's run folder has prepared
    (`runs/<run>/benchmarks/`, written before the run's first stage)."""
    from rl.evaluation import tts_evaluate
    from rl.metrics import generate_flops
    from rl.modeling import count_params, load_policy

    if benchmarks is None and cfg.benchmarks:
        from pipelines.data import benchmark_data

        benchmarks = benchmark_data(Path(path).parent, cfg)
    # bf16 weights where the device computes in bf16 ("auto"), fp32 on CPUs without it
    model, tok = load_policy(path, "auto" if device else "float32", device=device)
    params = count_params(model)
    from pipelines.tool_use import checkpoint_tools, eval_tools

    trained_with = checkpoint_tools(path)  # a checkpoint trained to call the tool is evaluated with it
    tools = eval_tools(trained_with) if trained_with is not None else None
    greedy = evaluate_model(model, tok, rows, cfg, desc=f"{desc}: greedy", tools=tools)
    out = {"accuracy": greedy["accuracy"], "params": params, "accuracy_per_billion_params": greedy["accuracy"] / (params / 1e9),
           "mean_completion_tokens": greedy["mean_completion_tokens"], "num_examples": len(rows),
           "unparsed_gold": greedy["unparsed_gold"], "samples": greedy["samples"]}
    if tools is not None:
        bare = evaluate_model(model, tok, rows, cfg, desc=f"{desc}: greedy (no tool)")
        out.update({k: greedy[k] for k in ("tool_calls_per_sample", "tool_error_rate")},
                   accuracy_no_tool=bare["accuracy"], tool_gain=greedy["accuracy"] - bare["accuracy"])
    gen_tokens = greedy["mean_completion_tokens"] * len(rows)
    if cfg.samples > 0:
        sub = rows[: cfg.num_problems or None]
        n = len(sub)
        sub_greedy = {"accuracy": sum(greedy["correct"][:n]) / max(1, n),
                      "mean_completion_tokens": sum(greedy["tokens"][:n]) / max(1, n)}
        bar = ProgressLine(f"{desc}: tts samples", n * cfg.samples)
        tts = tts_evaluate(model, tok, sub, cfg, judge_for(tok), greedy=sub_greedy, scorer=scorer_for(cfg),
                           max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=seed,
                           on_batch=bar.update)
        bar.close()
        out.update(tts)
        gen_tokens += sum(p["tokens"] for p in tts["tts"].get("beam", [])) * n
        gen_tokens += tts["mean_sample_tokens"] * n * cfg.samples
    if benchmarks:
        out["benchmarks"] = evaluate_benchmarks(model, tok, benchmarks, cfg, seed=seed, desc=desc)
        for name, b in out["benchmarks"].items():
            gen_tokens += b["mean_completion_tokens"] * b["n"] * (1 + b.get("samples_per_problem", 0))
    out["flops"] = generate_flops(params, gen_tokens)
    return out
