"""GRPO: TRL's GRPOTrainer, started from the previous stage's checkpoint, run inside a learner worker
group (`cluster.learners`: gloo on CPU, NCCL on GPU; optionally DeepSpeed ZeRO) placed in rayzero's own
placement groups (`cluster.placement`: colocated rollout worker i shares learner i's bundle, node and GPU),
rewarded by functions from `rewards/` chosen by name, with rollouts generated in the learner (TRL) or on a
Ray rollout pool.

Checkpoints (`grpo.save_steps`) go to `runs/<run>/grpo.checkpoints/`, outside the stage's scratch
folder, so a crashed or killed run started again resumes GRPO from its latest checkpoint, with its
metric history: the resumed stage reports the same curve, rewards and FLOPs as an uninterrupted one.
The folder records the inputs (start checkpoint, data) its checkpoints were trained from; checkpoints
of other inputs are set aside, never resumed.

This module is everything the rest of the system knows about the stage (its rules, resources, placement,
FLOPs, report figures, card, memory knobs, resume hint); what runs inside each learner rank is in
pipelines/stages/grpo_learner.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cluster import placement
from cluster.learners import run_worker_group
from cluster.weight_sync import WeightSyncError, error_line
from pipelines.run_folder import RunFolder, read_json_or_none, write_json
from pipelines.stages.base import Actor, Resources, Stage, StageContext, StageError
from pipelines.stages.grpo_learner import POOL_KEYS, checkpoint_dir, train_loop
from rl.metrics import generate_flops, train_flops

if TYPE_CHECKING:
    from pipelines.config.schema import GRPOSection, PipelineConfig


def plan(cfg: "PipelineConfig") -> placement.Plan:
    g = cfg.grpo
    tp = g.vllm.tensor_parallel_size if g.rollout_engine == "vllm" else 1  # GPUs one rollout engine spans
    return placement.plan(g.placement, num_learners=g.num_workers, learner_cpus=g.cpus, num_rollout=g.rollout_workers,
                          rollout_cpus=g.rollout_cpus, use_gpu=g.use_gpu, rollout_gpus=tp)


def reward_pool_size(cfg: "PipelineConfig") -> tuple[int, float]:
    """(actors, CPUs each) of the code-reward pool: `grpo.reward_params.code_accuracy.{workers, cpus}`."""
    params = cfg.grpo.reward_params.get("code_accuracy", {})
    return int(params.get("workers", 0)), float(params.get("cpus", 1.0))


class GRPOStage(Stage):
    name = "grpo"
    trains_policy = True
    teacher = True
    lora_section = "grpo"
    card_tags = ("grpo", "reinforcement-learning")
    card_text = "GRPO (reinforcement learning with rule-based rewards) after a cold-start SFT"
    curve_label = "GRPO"
    resource_fields = ("grpo.gpus, grpo.num_workers or grpo.rollout_workers",
                       "grpo.cpus, grpo.rollout_cpus or the worker counts")
    positive = ("max_steps", "learning_rate", "prompts_per_step", "temperature", "max_completion_length",
                "num_workers", "sync_every", "sync_bucket_mb", "logging_steps", "num_iterations", "epsilon")
    non_negative = ("beta", "epsilon_high", "cpus", "gpus", "rollout_workers", "rollout_cpus", "save_steps",
                    "max_failures", "time_budget_s", "max_resample_rounds", "log_rollouts_every")

    def check_config(self, cfg: "PipelineConfig") -> None:
        check_config(cfg)

    def placement_plan(self, cfg: "PipelineConfig") -> placement.Plan:
        return plan(cfg)

    def plan_label(self, cfg: "PipelineConfig") -> str:
        return f"{self.name} ({cfg.grpo.placement})" if cfg.grpo.rollout_workers else self.name

    def resume_hint(self, cfg: "PipelineConfig") -> str:
        return f"; GRPO resumes from its last checkpoint (every {cfg.grpo.save_steps} steps)" if cfg.grpo.save_steps else ""

    def flops(self, m: dict) -> float | None:
        # every token is generated (or prefilled) once and trained on once
        n = m.get("params", 0)
        return generate_flops(n, m["num_tokens"]) + train_flops(n, m["num_tokens"]) if m.get("num_tokens") else None

    def summary(self, results) -> dict:
        out, acc = {}, results.get(self.name, {}).get("accuracy")
        if acc is not None and "sft" in results:
            out["grpo_gain_over_sft"] = acc - results["sft"]["accuracy"]
        if acc is not None and "baseline" in results:
            out["grpo_gain_over_equal_time_sft"] = acc - results["baseline"]["accuracy"]
        return out

    def base_accuracy(self, m: dict) -> float | None:
        curve = m.get("heldout_curve") or [{}]  # its curve starts from the model it started from
        return curve[0].get("accuracy") if curve[0].get("step") == 0 else None

    def gpu_actors(self, cfg: "PipelineConfig") -> list[str]:
        names = super().gpu_actors(cfg)
        if plan(cfg).engine_gpus:  # a vLLM engine over N > 1 GPUs holds none itself: its N one-GPU bundles do
            names += [f"rollout-{i}" for i in range(cfg.grpo.rollout_workers)]
        return names

    def gpu_memory(self, cfg: "PipelineConfig", policy, gpu_gib: float, prompt_tokens: int) -> dict:
        from pipelines.memory_plan import grpo_estimates

        return grpo_estimates(cfg, policy, gpu_gib, prompt_tokens) if policy else {}

    def gpu_groups(self, cfg: "PipelineConfig", names: list[str]) -> list[list[str]]:
        """A colocated learner and its rollout engine share one GPU."""
        g = cfg.grpo
        if g.placement == "colocated" and g.rollout_workers:
            pairs = [[n for n in (f"learner-{i}", f"rollout-{i}") if n in names] for i in range(g.num_workers)]
            return [p for p in pairs if p]
        return super().gpu_groups(cfg, names)

    def generates_while_training(self, cfg: "PipelineConfig") -> bool:
        return cfg.grpo.overlap  # one-step overlap: generation runs during training

    def memory_knobs(self, cfg: "PipelineConfig") -> list:
        return memory_knobs(cfg)

    def resources(self, cfg: "PipelineConfig") -> Resources:
        p = plan(cfg)
        actors = [Actor(f"learner-{i}", p.learner.get("CPU", 0.0), p.learner.get("GPU", 0.0)) for i in range(p.num_learners)]
        actors += [Actor(f"rollout-{i}", p.rollout.get("CPU", 0.0), p.rollout.get("GPU", 0.0)) for i in range(p.num_rollout)]
        n, cpus = reward_pool_size(cfg)
        actors += [Actor(f"reward-{i}", cpus) for i in range(n)]
        return Resources(cpus=p.total.get("CPU", 0.0) + n * cpus, gpus=p.total.get("GPU", 0.0), actors=tuple(actors))

    def check_cluster(self, cfg: "PipelineConfig") -> None:
        super().check_cluster(cfg)
        placement.check(plan(cfg), nodes=placement.cluster_nodes())  # every bundle fits on one node

    def run(self, cfg: "PipelineConfig", ctx: StageContext, label: str = "grpo") -> dict:
        """Driver side: place the rollout pool (if any), launch the learner group, collect rank 0's metrics.
        `label` names what runs (its progress lines, wandb run, checkpoint folder): another stage may train a
        GRPO arm of its own (pipelines/stages/no_tool.py)."""
        g = cfg.grpo
        ckpts = checkpoint_dir(cfg.run_dir, label)
        _claim_checkpoints(ckpts, dict(ctx.inputs), RunFolder(cfg.run_dir))
        p = plan(cfg)
        placed = placement.reserve(p)  # bundle i: learner i (+ rollout worker i when colocated)
        pools: dict = {}
        try:
            pools["rollout"] = _start_rollout_pool(cfg, placed, ctx.init) if g.rollout_workers else None
            pools["reward"] = _start_reward_pool(cfg)
            run_worker_group(train_loop, {"cfg": cfg, "ctx": ctx, "label": label, **pools}, num_workers=g.num_workers,
                             resources_per_worker=p.learner, use_gpu=g.use_gpu, name=f"{cfg.run.name}-grpo",
                             max_failures=g.max_failures, **placed.learner_args())
        except WeightSyncError as e:  # one line for the user (Ray wraps the learner's error in a traceback)
            raise StageError(f"{label}: {error_line(e)}") from None
        finally:
            for pool in pools.values():
                if pool is not None:
                    pool.shutdown()
            placed.release()
        metrics = json.loads((ctx.out_dir / "metrics.json").read_text())
        if not metrics["steps"]:
            raise StageError(f"{label}: the learner finished after 0 optimizer steps; check task.num_train, "
                             "grpo.prompts_per_step and grpo.time_budget_s")
        shutil.rmtree(ckpts, ignore_errors=True)  # the stage finished: its folder is the result
        return metrics


def check_config(cfg: "PipelineConfig") -> None:
    """GRPO's rules: its rewards against the task, the learner, the rollouts, and what it needs to start from."""
    from pipelines.config.checks import fail

    g = cfg.grpo
    _check_rewards(cfg)
    _check_learner(g)
    _check_rollouts(g)
    if cfg.model.kind == "tiny" and not cfg.sft.enabled:
        # A tiny model is built by SFT (driver.start_checkpoint): without it GRPO has no checkpoint to start
        # from (it would fail inside the learner, looking for a hub model named "None").
        fail("sft.enabled", False, "model.kind=tiny is built and trained by SFT; without it GRPO has no "
             "checkpoint to start from: enable sft, or start from a model (model.kind=hf or gguf)")
    if g.save_steps and g.save_steps > g.max_steps:
        fail("grpo.save_steps", g.save_steps, f"must be <= grpo.max_steps={g.max_steps} (no checkpoint would be written)")
    if not -1 <= g.eval_every <= g.max_steps:
        fail("grpo.eval_every", g.eval_every, f"must be 1..grpo.max_steps={g.max_steps} (steps between held-out "
             "evaluations), 0 (a quarter of the budget) or -1 (off)")


def _check_rewards(cfg: "PipelineConfig") -> None:
    """The recipe's rewards exist, have parameters they take, and fit the task's prompts and rows."""
    from pipelines.config.checks import choice, fail
    from pipelines.config.schema import ConfigError
    from pipelines.tasks.templates import asks_for_tags, resolve
    from rewards.registry import available_rewards, check_custom, check_params, is_custom

    g, t = cfg.grpo, cfg.task
    if t.num_train < g.prompts_per_step:
        fail("task.num_train", t.num_train, f"must be >= grpo.prompts_per_step={g.prompts_per_step} "
             "(one GRPO step needs that many prompts)")
    # strict_format rewards the <think>/<answer> format only a template asking for it produces; a code task
    # is scored by code_accuracy.
    if "strict_format" in g.rewards and t.prompt_template != "plain" \
            and not asks_for_tags(resolve(t.prompt_template, t.system_prompt, t.chat_template)):
        fail("grpo.rewards", dict(g.rewards), f"strict_format rewards <think>…</think><answer>…</answer>, which "
             f"task.prompt_template={t.prompt_template!r} does not ask for; drop strict_format or use r1_zero")
    if "tests" in t.columns and "answer" not in t.columns and "code_accuracy" not in g.rewards:
        fail("grpo.rewards", dict(g.rewards), "the task's rows are code (task.columns maps tests): add "
             "code_accuracy (math_accuracy has no answer to compare with)")
    if not g.rewards:
        fail("grpo.rewards", dict(g.rewards), "needs at least one reward, e.g. {math_accuracy: 1.0}")
    for name in g.rewards:
        problem = check_custom(name) if is_custom(name) else None  # package.module:function: the user's own
        if problem:
            raise ConfigError(f"grpo.rewards: {problem}")
        if not is_custom(name):
            choice("grpo.rewards", name, available_rewards())
    if not any(g.rewards.values()):
        fail("grpo.rewards", dict(g.rewards), "every weight is 0: GRPO would get no learning signal; give one a weight")
    for name, params in g.reward_params.items():
        if name not in g.rewards:
            fail(f"grpo.reward_params.{name}", dict(params), f"'{name}' is not one of grpo.rewards ({', '.join(g.rewards)})")
        pool_keys = POOL_KEYS if name == "code_accuracy" else ()
        old = sorted(set(params) & {"ray_actors", "actor_cpus"}) if pool_keys else []
        if old:
            fail(f"grpo.reward_params.{name}", dict(params), f"{', '.join(old)} renamed: use workers (actors) and cpus (each)")
        problem = check_params(name, {k: v for k, v in params.items() if k not in pool_keys})
        if problem:
            fail(f"grpo.reward_params.{name}", dict(params), problem + (f" (and {', '.join(POOL_KEYS)} for a Ray "
                 "scoring pool)" if pool_keys else ""))


def _check_learner(g: "GRPOSection") -> None:
    """The learner: TRL's parameters (rl.GRPOParams), DeepSpeed ZeRO and offload, LoRA, placement choices."""
    from cluster.placement import MODES
    from pipelines.config.checks import choice, fail, params_rules
    from rl.rollout import ENGINES

    params_rules("grpo", g, num_workers=g.num_workers)  # rl.GRPOParams: TRL's choices, sizes, divisibility
    choice("grpo.zero_stage", g.zero_stage, ZERO_STAGES)
    if g.offload_optimizer and not g.zero_stage:
        fail("grpo.offload_optimizer", g.offload_optimizer, "needs DeepSpeed: set grpo.zero_stage to 1, 2 or 3")
    if g.offload_params and g.zero_stage != 3:
        fail("grpo.offload_params", g.offload_params, f"needs grpo.zero_stage=3 (got {g.zero_stage}): only ZeRO-3 "
             "partitions the parameters; stages 1-2 offload the optimizer alone (grpo.offload_optimizer)")
    choice("grpo.sync_backend", g.sync_backend, SYNC_BACKENDS)
    choice("grpo.rollout_engine", g.rollout_engine, ENGINES)
    choice("grpo.placement", g.placement, MODES)
    if g.lora.r and g.zero_stage == 3:
        fail("grpo.lora.r", g.lora.r, "LoRA with grpo.zero_stage=3 is not supported (merging needs whole weights); use zero_stage 0-2")


def _check_rollouts(g: "GRPOSection") -> None:
    """Rollout engines and workers: vLLM (in the learner or on a pool), colocation, tools, overlap."""
    from pipelines.config.checks import fail, params_rules

    if g.vllm.mode != "colocate" and not g.in_learner_vllm:
        fail("grpo.vllm.mode", g.vllm.mode, "is for TRL's in-learner vLLM, which needs grpo.rollout_engine=vllm "
             "with grpo.rollout_workers=0 (rollout workers run their own engines)")
    if g.rollout_engine == "vllm":
        if g.in_learner_vllm:  # the shape first: it is wrong wherever the recipe runs
            from rl.trl_vllm import check_in_learner

            params_rules("grpo", g.vllm, check=check_in_learner, num_workers=g.num_workers)
        if importlib.util.find_spec("vllm") is None:
            fail("grpo.rollout_engine", g.rollout_engine, "vLLM is not installed here (pip install 'rayzero[vllm]' on a "
                 "CUDA machine); use grpo.rollout_engine=hf")
        if not g.use_gpu:
            fail("grpo.rollout_engine", g.rollout_engine, "vLLM runs on GPUs: set grpo.gpus >= 1, or use grpo.rollout_engine=hf")
        if g.vllm.sleep_level == 2 and g.sync_every != 1 and not g.in_learner_vllm:  # TRL syncs every round
            fail("grpo.vllm.sleep_level", 2, "level 2 drops the weights while asleep: needs grpo.sync_every=1")
    if g.placement == "colocated" and (not g.rollout_workers or g.rollout_workers != g.num_workers):
        fail("grpo.rollout_workers", g.rollout_workers, f"colocated placement puts one rollout worker beside each "
             f"learner worker: must equal grpo.num_workers={g.num_workers}")
    if g.tools.enabled:
        params_rules("grpo", g.tools, check=lambda t, **_: t.validate(prefix="tools."))
        if g.rollout_engine == "vllm" and not g.rollout_workers:
            fail("grpo.tools.enabled", True, "tool calls run in rayzero's rollouts, not TRL's in-learner vLLM: use "
                 "grpo.rollout_workers >= 1 with rollout_engine=vllm, or rollout_engine=hf")
        if g.decoder != "rayzero" and not g.rollout_workers:
            fail("grpo.tools.enabled", True, f"needs grpo.decoder=rayzero (stops at a call's closing tag), not {g.decoder!r}")
    if g.overlap and not g.rollout_workers:
        fail("grpo.overlap", g.overlap, "needs a rollout pool: set grpo.rollout_workers >= 1")
    if g.rollout_workers and g.placement == "disaggregated" and g.rollout_cpus <= 0:
        fail("grpo.rollout_cpus", g.rollout_cpus, "must be > 0 for disaggregated rollout workers")


ZERO_STAGES = (0, 1, 2, 3)  # 0 = plain DDP; rl/zero.py generates the DeepSpeed config for 1-3
# Learner -> rollout weight sync: through Ray's object store, or a torch collective (cluster/weight_sync.py:
# NCCL between GPUs, gloo between CPU processes, chosen from grpo.gpus).
SYNC_BACKENDS = ("object_store", "collective")



def memory_knobs(cfg: "PipelineConfig") -> list:
    """GRPO's settings that lower a learner's or engine's GPU memory, the first to try first."""
    from pipelines.memory_plan import halves_of_micro_batch

    g, out = cfg.grpo, []
    if g.rollout_engine == "vllm" and (g.placement == "colocated" or g.in_learner_vllm):
        for u in (0.35, 0.3, 0.25, 0.2, 0.15, 0.1):  # room for the learner beside the engine
            if u < g.vllm.gpu_memory_utilization:
                out.append((f"grpo.vllm.gpu_memory_utilization={u:g}", {"grpo.vllm.gpu_memory_utilization": u}))
    if g.rollout_engine == "vllm":
        for u in (0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):  # the engine's weights need room
            if u > g.vllm.gpu_memory_utilization:
                out.append((f"grpo.vllm.gpu_memory_utilization={u:g}", {"grpo.vllm.gpu_memory_utilization": u}))
    if g.num_workers > 1 and g.zero_stage < 3:
        out.append(("grpo.zero_stage=3", {"grpo.zero_stage": 3}))
    if not g.offload_optimizer:
        extra = {"grpo.zero_stage": 1} if not g.zero_stage else {}
        out.append(("grpo.offload_optimizer=true" + (" grpo.zero_stage=1" if extra else ""),
                    {"grpo.offload_optimizer": True, **extra}))
    if not g.gradient_checkpointing:
        out.append(("grpo.gradient_checkpointing=true", {"grpo.gradient_checkpointing": True}))
    out += halves_of_micro_batch(g.batch_layout(g.num_workers)[0], g.per_rank_batch(g.num_workers), "grpo")
    if not g.lora.enabled:
        out.append(("grpo.lora.r=16", {"grpo.lora.r": 16}))
    if g.zero_stage == 3 and not g.offload_params:
        out.append(("grpo.offload_params=true grpo.offload_optimizer=true",
                    {"grpo.offload_params": True, "grpo.offload_optimizer": True}))
    return out


def _claim_checkpoints(ckpts: Path, inputs: dict, folder: RunFolder) -> None:
    """Resume only from checkpoints trained from these inputs; others are moved aside."""
    marker = ckpts / "inputs.json"
    if ckpts.exists() and read_json_or_none(marker) != inputs:
        folder.set_aside(ckpts)
    if not ckpts.exists():
        write_json(marker, inputs)


def _start_rollout_pool(cfg: "PipelineConfig", placed: placement.Reservation, init: Path | None):
    from cluster.rollout import RolloutPool
    from rl.rollout import engine_factory

    g = cfg.grpo
    # A collective sync is NCCL between GPUs, except colocated: rollout worker 0 shares learner rank 0's GPU and
    # NCCL refuses two ranks on one device, so colocated engines take gloo (buckets staged through host memory).
    nccl = g.use_gpu and g.placement != "colocated"
    backend = "object_store" if g.sync_backend == "object_store" else ("nccl" if nccl else "gloo")
    factory = engine_factory(g.rollout_engine, str(init), use_gpu=g.use_gpu, vllm=g.vllm, seed=cfg.run.seed,
                             attn_implementation=g.attn_implementation)
    if g.tools.enabled:
        from pipelines.tool_use import wrap_engine_factory

        factory = wrap_engine_factory(factory, init, g.tools)
    return RolloutPool(factory, num_workers=g.rollout_workers, sync_backend=backend, bucket_bytes=g.sync_bucket_mb << 20,
                       verify=g.verify_sync, **placed.rollout_args())


def _start_reward_pool(cfg: "PipelineConfig"):
    """Code rewards scored on Ray actors (one sandbox each) when `code_accuracy.workers > 0`."""
    n, cpus = reward_pool_size(cfg)
    if not n:
        return None
    from cluster.actors import ActorPool
    from rewards.code import code_scorer_factory

    params = {k: v for k, v in cfg.grpo.reward_params["code_accuracy"].items() if k not in POOL_KEYS}
    return ActorPool(code_scorer_factory(**params), num_actors=n, num_cpus=cpus)


