"""Distillation stage: teachers sample solutions through Ray rollout workers, verified ones are kept
(rejection sampling), and students of one or more sizes are trained on one or more trace mixes.

    teacher pools   runs/<run>/traces/<teacher>-<hash>.jsonl   cached: a new mix never regenerates them
    distill/        the first student trained on the first mix (the stage's checkpoint)
    distill/traces.jsonl, traces.parquet   every pool (teacher, style, tokens, reward per trace)
    distill/mixes/<mix>.jsonl              the exact traces each mix trained on
    distill/students/<student>-<mix>/      every other (student, mix) checkpoint

Sampling runs on the driver, which owns the rollout actors; training and evaluation run as a Ray task
once the actors are gone, so on a small machine they never compete for the same CPUs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

from typing import TYPE_CHECKING

from cluster.runtime import run_task
from pipelines.config.schema import ConfigError
from pipelines.models import load_tokenizer, new_model, save_checkpoint
from pipelines.report import tracking
from pipelines.run_folder import RunFolder, read_jsonl, write_jsonl
from pipelines.scoring import evaluate_stage, row_scores
from pipelines.stages.base import Actor, Resources, Stage, StageContext, device_for, start_task
from rewards.registry import get_reward
from rl.progress import ProgressLine
from rl.metrics import generate_flops, train_flops
from rl.modeling import count_params, load_policy
from rl.sft import SFTParams, TrainingFields, sft_train
from rl.traces import SHORT, build_mix, largest_mix, mix_counts, mix_shares, select_traces

if TYPE_CHECKING:
    from pipelines.config.schema import PipelineConfig

METHODS = ("sft", "logit")  # students learn the traces' tokens, or the teacher's token distributions (TRL GKD)
TRUNCATE_FROM = "grpo"  # a `kind: truncate` student without `path` keeps layers of this stage's checkpoint


def stage_teachers() -> tuple[str, ...]:
    """Teachers named by stage (`Stage.teacher`); any other name is a checkpoint folder."""
    from pipelines.stages import teacher_stages

    return teacher_stages()


class DistillStage(Stage):
    name = "distill"
    card_tags = ("distillation",)
    card_text = "distillation: trained on verified solutions sampled from the RL'd teacher"
    resource_fields = ("distill.gpus, distill.rollout_gpus or distill.rollout_workers",
                       "distill.cpus, distill.rollout_cpus or distill.rollout_workers")
    positive = ("samples_per_prompt", "num_prompts", "temperature", "max_new_tokens", "keep_per_prompt",
                "rollout_workers", "rollout_cpus", "epochs", "learning_rate", "batch_size", "max_length", "cpus")
    non_negative = ("min_tokens", "max_tokens", "num_traces", "rollout_gpus", "gpus", "logit_beta", "logit_lmbda")

    def check_config(self, cfg: "PipelineConfig") -> None:
        check_config(cfg)

    def depends_on(self, cfg: "PipelineConfig") -> tuple[str, ...]:
        named = [t for m in cfg.distill.mixes.values() if m.long_short > 0 for t in m.teachers]
        named += [s.path or TRUNCATE_FROM for s in cfg.distill.students.values() if s.kind == "truncate"]
        return tuple(dict.fromkeys(t for t in named if t in stage_teachers()))

    def resources(self, cfg: "PipelineConfig") -> Resources:
        # Sampling (rollout actors) and training (one task) run one after the other: the peak is the larger.
        d = cfg.distill
        rollout = tuple(Actor(f"rollout-{i}", d.rollout_cpus, d.rollout_gpus) for i in range(d.rollout_workers))
        return Resources(cpus=max(d.rollout_workers * d.rollout_cpus, d.cpus),
                         gpus=max(d.rollout_workers * d.rollout_gpus, d.gpus),
                         actors=rollout + (Actor("distill-0", d.cpus, d.gpus),))

    def run(self, cfg: "PipelineConfig", ctx: StageContext) -> dict:
        return run(cfg, ctx)

    def summary(self, results) -> dict:
        """The student against its teacher (GRPO's policy, else SFT's): parameters and accuracy kept."""
        teacher = results.get("grpo") or results.get("sft")
        if self.name not in results or not teacher:
            return {}
        m = results[self.name]
        return {"student_param_ratio": m["params"] / teacher["params"],
                "student_accuracy_retained": m["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else None}

    def report_tables(self, stages) -> list:
        students = stages.get(self.name, {}).get("students")
        if not students:
            return []
        mixes = list(dict.fromkeys(s["mix"] for s in students))
        sizes = list(dict.fromkeys((s["student"], s["params"]) for s in students))
        acc = {(s["student"], s["mix"]): s["accuracy"] for s in students}
        return [("distillation: every student on every trace mix (held-out accuracy)", [("student", "params", *mixes)] + [
            (name, f"{params:,}", *(f"{100 * acc[(name, m)]:.1f} %" if (name, m) in acc else "-" for m in mixes))
            for name, params in sizes])]

    def start_model(self, cfg):
        """The first student (the stage's checkpoint) started from its own model section."""
        d = cfg.get(self.name, {})
        students = d.get("students") or {"student": d.get("student", {})}
        return next(iter(students.values()), {}) or {}

    def gpu_memory(self, cfg: "PipelineConfig", policy, gpu_gib: float, prompt_tokens: int) -> dict:
        from pipelines.memory_plan import distill_estimates

        return distill_estimates(cfg, policy, prompt_tokens, stage_teachers(), TRUNCATE_FROM)

    def memory_knobs(self, cfg: "PipelineConfig") -> list:
        from pipelines.memory_plan import halves

        return [(f"distill.batch_size={b}", {"distill.batch_size": b}) for b in halves(cfg.distill.batch_size)]


def check_config(cfg: "PipelineConfig") -> None:
    """The distill section's rules, and what it needs of the stages it names (teachers, truncated layers)."""
    from pipelines.config.checks import choice, fail, model
    from pipelines.models import STUDENT_KINDS
    from pipelines.stages import names

    d, order, teachers = cfg.distill, names(), stage_teachers()
    if cfg.task.num_train < 1:
        fail("task.num_train", cfg.task.num_train, "must be >= 1 when distill is enabled (teachers sample training prompts)")
    choice("distill.method", d.method, METHODS)
    if not d.mixes:
        fail("distill.mixes", {}, "needs at least one mix")
    if not d.students:
        fail("distill.students", {}, "needs at least one student")
    for name, mix in d.mixes.items():
        if not 0.0 <= mix.long_short <= 1.0:
            fail(f"distill.mixes.{name}.long_short", mix.long_short, "must be within [0, 1]")
        if mix.long_short > 0 and (not mix.teachers or any(w < 0 for w in mix.teachers.values())
                                   or sum(mix.teachers.values()) <= 0):
            fail(f"distill.mixes.{name}.teachers", dict(mix.teachers), "need weights >= 0 with a positive sum")
        for teacher in mix.teachers if mix.long_short > 0 else ():
            if teacher in teachers and not getattr(cfg, teacher).enabled:
                fail(f"distill.mixes.{name}.teachers", dict(mix.teachers), f"teacher '{teacher}' is a stage that "
                     f"is not enabled ({teacher}.enabled=false); enable it or name a checkpoint folder")
    for name, student in d.students.items():
        model(student, f"distill.students.{name}", STUDENT_KINDS)
    before = [t for t in teachers if order.index(t) < order.index("distill")]
    for name, mix in d.mixes.items():
        for teacher in mix.teachers if mix.long_short > 0 else ():
            if teacher in teachers and teacher not in before:
                fail(f"distill.mixes.{name}.teachers", dict(mix.teachers), f"teacher '{teacher}' runs after "
                     f"distill (stage order: {', '.join(order)}), so it has no checkpoint yet; name {' or '.join(before)}")
            if teacher not in teachers and not (Path(teacher).expanduser() / "config.json").is_file():
                fail(f"distill.mixes.{name}.teachers", dict(mix.teachers), f"teacher '{teacher}' is neither a "
                     f"stage ({', '.join(teachers)}) nor a checkpoint folder with config.json")
        if mix.long_short < 1 and not _has_short_completions(cfg):
            fail(f"distill.mixes.{name}.long_short", mix.long_short, f"short traces come from a "
                 f"'short_completion' column, which task '{cfg.task.name}' does not have: map "
                 "task.columns.short_completion, or set long_short=1")
    for name, student in d.students.items():
        if student.kind == "truncate":
            _check_truncated(cfg, name, student.path, teachers, before)


def _check_truncated(cfg: "PipelineConfig", name: str, path: str, teachers: tuple[str, ...], before: list[str]) -> None:
    from pipelines.config.checks import fail

    src = path or TRUNCATE_FROM
    if src in teachers and src not in before:
        fail(f"distill.students.{name}.path", path, f"stage '{src}' runs after distill, so it "
             f"has no checkpoint to truncate yet; use {' or '.join(before)}")
    if src in teachers and not getattr(cfg, src).enabled:
        fail(f"distill.students.{name}.path", path, f"truncates stage '{src}', which is not "
             f"enabled ({src}.enabled=false); enable it or give a checkpoint folder")
    if src not in teachers and not (Path(src).expanduser() / "config.json").is_file():
        fail(f"distill.students.{name}.path", path, f"not a stage ({', '.join(teachers)}) nor a "
             "checkpoint folder with config.json")


def _has_short_completions(cfg: "PipelineConfig") -> bool:
    from pipelines.tasks import get

    task = get(cfg.task.name)
    return task.short_solution is not None or task.has_short_column(cfg.task)


def teacher_path(cfg: "PipelineConfig", name: str) -> Path:
    """A teacher named in a mix: a finished stage of this run, or a checkpoint folder."""
    if name in stage_teachers():
        path = RunFolder(cfg.run_dir).stage(name)
        if not (path / "manifest.json").exists():
            raise ValueError(f"distill: teacher '{name}' is a stage of this run that has not finished "
                             f"(enable it, or name a checkpoint folder)")
        return path
    path = Path(name)
    if not (path / "config.json").exists():
        raise ValueError(f"distill.mixes: teacher '{name}' is neither a stage ({', '.join(stage_teachers())}) "
                         f"nor a checkpoint folder with config.json")
    return path


def _accept(cfg, completions: list[str], rows: list[dict]) -> list[bool]:
    correct = row_scores(completions, rows)  # the same verifier as held-out evaluation
    # The prompts go along: a template that pre-fills <think> leaves it out of the completion.
    formatted = (get_reward("strict_format")(completions, prompts=[r["prompt"] for r in rows])
                 if cfg.distill.require_format else [1.0] * len(rows))
    return [c == 1.0 and f == 1.0 for c, f in zip(correct, formatted)]


def teacher_pool(cfg, name: str, rows: list[dict]) -> tuple[list[dict], dict]:
    """Verified traces of one teacher, generated by a Ray rollout pool or read from the cache."""
    d = cfg.distill
    path = teacher_path(cfg, name)
    from pipelines.tool_use import checkpoint_tools

    tools = checkpoint_tools(path)  # a teacher trained with the tool samples with it: its traces hold real outputs
    key = json.dumps([str(path.resolve()), d.samples_per_prompt, d.num_prompts, d.temperature, d.keep_per_prompt,
                      d.min_tokens, d.max_tokens, d.require_format, d.dedupe, d.max_new_tokens, cfg.run.seed]
                     + ([repr(tools)] if tools else []))
    cache = cfg.run_dir / "traces" / f"{Path(name).name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.jsonl"
    if cache.exists():
        data = json.loads(cache.with_suffix(".stats.json").read_text())
        return read_jsonl(cache), data
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    k = d.samples_per_prompt
    prompt_ids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows for _ in range(k)]
    start = time.monotonic()
    ids = _sample(cfg, path, tools, prompt_ids, f"distill: {Path(name).name} traces")
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    lengths = [len(x) for x in ids]
    ok = _accept(cfg, texts, [r for r in rows for _ in range(k)])
    group = lambda xs: [xs[i * k:(i + 1) * k] for i in range(len(rows))]  # noqa: E731
    traces, stats = select_traces(rows, group(texts), group(ok), group(lengths), source=Path(name).name,
                                  style="long", keep_per_prompt=d.keep_per_prompt, min_tokens=d.min_tokens,
                                  max_tokens=d.max_tokens, dedupe=d.dedupe)
    stats.update(generation_time_s=time.monotonic() - start, generated_tokens=sum(lengths),
                 teacher_params=_param_count(path), rollout_workers=d.rollout_workers)
    if tools is not None:  # verified traces that called the tool (their outputs are the sandbox's, not made up)
        from rl.tools import count_calls

        stats["tool_traces"] = sum(1 for t in traces if count_calls(t["completion"]))
    write_jsonl(cache, traces)
    cache.with_suffix(".stats.json").write_text(json.dumps(stats, indent=2))
    return traces, stats


def _sample(cfg, path: Path, tools, prompt_ids: list[list[int]], label: str) -> list[list[int]]:
    """Completions of the teacher at `path` (with its tool, if it was trained with one) for `prompt_ids`, from
    a Ray rollout pool of `distill.rollout_workers`, in chunks (a progress line per chunk)."""
    from cluster.rollout import RolloutPool
    from rl.rollout import SamplingParams, engine_factory

    d = cfg.distill
    sp = SamplingParams(max_new_tokens=d.max_new_tokens, temperature=d.temperature)
    factory = engine_factory("hf", str(path), use_gpu=d.rollout_gpus > 0)
    if tools is not None:
        from pipelines.tool_use import wrap_engine_factory

        factory = wrap_engine_factory(factory, path, tools)
    pool = RolloutPool(factory, num_workers=d.rollout_workers, cpus_per_worker=d.rollout_cpus,
                       gpus_per_worker=d.rollout_gpus)
    ids: list[list[int]] = []
    bar = ProgressLine(label, len(prompt_ids))
    try:
        chunk = 512 * d.rollout_workers
        for i in range(0, len(prompt_ids), chunk):
            ids += pool.generate(prompt_ids[i:i + chunk], sp, seed=cfg.run.seed + i)["completion_ids"]
            bar.update(len(prompt_ids[i:i + chunk]))
    finally:
        bar.close()
        pool.shutdown()
    return ids


def _param_count(path: Path) -> int:
    """Parameters of a saved checkpoint, read from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            total += sum(math.prod(st.get_slice(name).get_shape()) for name in st.keys())
    return total


def short_pool(cfg, rows: list[dict], tok) -> tuple[list[dict], dict]:
    """Short chains of thought from the task's short-CoT source (verified like teacher traces)."""
    from pipelines.tasks import short_completions

    comps = short_completions(cfg.task, rows, str(RunFolder(cfg.run_dir).data("train")))
    ok = _accept(cfg, comps, rows)
    lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in comps]
    return select_traces(rows, [[c] for c in comps], [[o] for o in ok], [[n] for n in lengths], source="reference",
                         style="short", keep_per_prompt=1, min_tokens=0, max_tokens=0)


def run(cfg: "PipelineConfig", ctx: StageContext) -> dict:
    """Driver side: build the trace pools (rollout actors), then train every student on every mix."""
    d, out = cfg.distill, ctx.out_dir
    rows = read_jsonl(RunFolder(cfg.run_dir).data("train"))[: d.num_prompts]
    teachers = list(dict.fromkeys(t for m in d.mixes.values() if m.long_short > 0 for t in m.teachers))
    pools, stats = {}, {}
    for t in teachers:
        pools[t], stats[t] = teacher_pool(cfg, t, rows)
    if any(m.long_short < 1 for m in d.mixes.values()):
        pools[SHORT], stats[SHORT] = short_pool(cfg, rows, load_tokenizer(cfg))
    empty = [p for p, traces in pools.items() if not traces]
    if empty:
        raise ConfigError(f"distill: no verified traces from {empty} on {len(rows)} prompts; nothing to distill "
                          f"(raise distill.samples_per_prompt or distill.num_prompts, or relax distill.require_format)")
    write_jsonl(out / "traces.jsonl", [t for p in pools.values() for t in p])
    from datasets import Dataset

    Dataset.from_list([t for p in pools.values() for t in p]).to_parquet(str(out / "traces.parquet"))
    shares = {name: mix_shares(m.long_short, m.teachers) for name, m in d.mixes.items()}
    sizes = {p: len(v) for p, v in pools.items()}
    budget = d.num_traces or min(largest_mix(sizes, s) for s in shares.values())
    mixes = {}
    for i, (name, s) in enumerate(shares.items()):
        counts = mix_counts(budget, s)
        try:
            mixes[name] = {"counts": counts, "traces": build_mix(pools, counts, seed=cfg.run.seed + i)}
        except ValueError as e:
            raise ConfigError(f"distill.mixes.{name}: {e}; lower distill.num_traces (0 = the most every mix can "
                             f"fill) or raise distill.samples_per_prompt") from None
        write_jsonl(out / "mixes" / f"{name}.jsonl", mixes[name]["traces"])
    result = run_task(train_students, cfg, ctx, num_cpus=d.cpus, num_gpus=d.gpus, name="distill")
    result["traces"] = stats
    result["mix_counts"] = {name: m["counts"] for name, m in mixes.items()}
    result["generation_time_s"] = sum(s.get("generation_time_s", 0.0) for s in stats.values())
    result["flops"] += sum(generate_flops(s["teacher_params"], s["generated_tokens"]) for s in stats.values()
                           if "teacher_params" in s)
    result["teacher_params"] = stats[teachers[0]]["teacher_params"] if teachers else None
    return result


def _student(cfg, scfg, tok):
    """A fresh student from its ModelConfig; `kind: truncate` keeps `num_layers` of a teacher's layers
    (`path`: the teacher, a stage name or folder; default grpo)."""
    if scfg.kind != "truncate":
        return new_model(scfg, tok, cfg.run.seed + 1)
    from rl.modeling import truncate_layers

    return truncate_layers(load_policy(teacher_path(cfg, scfg.path or TRUNCATE_FROM))[0], scfg.num_layers)


def _train_student(cfg: "PipelineConfig", model, tok, traces: list[dict], dest: Path, params: SFTParams,
                   teachers: dict, mix: str, label: str) -> dict:
    """Train one student in place on one mix's traces: SFT on them, or logit distillation from the mix's main
    teacher (loaded once into `teachers`). Returns the trainer's metrics."""
    from rl.callbacks import MetricHistory, Progress  # (transformers' trainer: only where a stage trains)

    d, device = cfg.distill, device_for(cfg.distill.gpus)
    if d.method == "logit":
        from rl.distill import logit_distill

        name = max(d.mixes[mix].teachers.items(), key=lambda kv: kv[1])[0]
        if name not in teachers:  # one load per teacher, not per (student, mix)
            teachers[name] = load_policy(teacher_path(cfg, name), device=device)[0]
        return logit_distill(model, teachers[name], tok, traces, dest / "trainer", params, beta=d.logit_beta,
                             lmbda=d.logit_lmbda, seed=cfg.run.seed, max_new_tokens=d.max_new_tokens,
                             report_to=tracking.report_to(cfg), use_cpu=not d.gpus)
    # tool traces (a teacher trained with the tool): the student learns its own tokens, not the tool's
    return sft_train(model, tok, traces, dest / "trainer", params, seed=cfg.run.seed, use_cpu=not d.gpus,
                     report_to=tracking.report_to(cfg), callbacks=[Progress(label), MetricHistory(dest / "history.jsonl")],
                     mask_tool_outputs=cfg.grpo.tools.enabled)


def train_students(cfg: "PipelineConfig", ctx: StageContext) -> dict:
    """Ray task: every student (model section) on every mix, each evaluated on the held-out split."""
    d, out = cfg.distill, ctx.out_dir
    start_task(d.cpus)
    tok = load_tokenizer(cfg)
    device = device_for(d.gpus)
    run = tracking.start_stage_run(cfg, "distill")
    # The shared training fields (rl.sft.TrainingFields), as the distill section sets them.
    params = SFTParams(**{f.name: getattr(d, f.name) for f in dataclasses.fields(TrainingFields)})
    students, flops, teachers = [], 0.0, {}
    for si, (sname, scfg) in enumerate(d.students.items()):
        for mi, mname in enumerate(d.mixes):
            traces = read_jsonl(out / "mixes" / f"{mname}.jsonl")
            model = _student(cfg, scfg, tok).to(device or "cpu")
            dest = out if si == mi == 0 else out / "students" / f"{sname}-{mname}"
            start = time.monotonic()
            m = _train_student(cfg, model, tok, traces, dest, params, teachers, mname, f"distill: {sname} on {mname}")
            train_time = time.monotonic() - start
            save_checkpoint(model, tok, dest)
            if cfg.grpo.tools.enabled:  # trained on tool-using traces: evaluated (and `rayzero eval`ed) with the tool
                from pipelines.tool_use import mark_checkpoint

                mark_checkpoint(dest, cfg.grpo.tools)
            # The stage's checkpoint (first student, first mix) is also measured on eval.benchmarks.
            ev = evaluate_stage(model, tok, cfg, f"distill: eval {sname} on {mname}", benchmarks=si == mi == 0)
            n = count_params(model)
            flops += train_flops(n, m.get("num_tokens", 0))
            students.append({"student": sname, "mix": mname, "params": n, "accuracy": ev["accuracy"],
                             "train_time_s": train_time, "steps": m["steps"], "num_tokens": m.get("num_tokens", 0),
                             "traces": len(traces), "path": str(dest.relative_to(out)), "samples": ev["samples"],
                             "benchmarks": ev.get("benchmarks", {}),
                             **{k: ev[k] for k in ("tool_calls_per_sample", "accuracy_no_tool") if k in ev},
                             **({"masked_tool_tokens": m["masked_tool_tokens"]} if "masked_tool_tokens" in m else {})})
            if run is not None:
                run.log({f"students/{sname}/{mname}/accuracy": ev["accuracy"]})
    main = students[0]
    tracking.finish(run, {"eval/accuracy": main["accuracy"], "params": main["params"]}, eval_samples=main["samples"],
                    checkpoint=out)
    return {"accuracy": main["accuracy"], "params": main["params"], "steps": main["steps"],
            "train_time_s": sum(s["train_time_s"] for s in students), "students": students, "flops": flops,
            "samples": main["samples"], "benchmarks": main["benchmarks"],
            **{k: main[k] for k in ("tool_calls_per_sample", "accuracy_no_tool", "masked_tool_tokens") if k in main}}
