"""The no-tool arm of a tool run (`no_tool.enabled`, docs/tools.md): the control `summary.tool_gain` needs.

The same model (architecture, tokenizer, initial weights: `run.seed`) trained WITHOUT the tool at the tool arm's
budget, measured in the same run:

- its cold start: the run's own cold-start problems (same rows, same order), each with the task's no-tool
  completion (`task.params.tool=false`: `<answer>2019887</answer>` instead of the call, its output and the
  answer), written to `no_tool/data/cold_start.jsonl`;
- SFT on it for exactly as many optimizer steps as the tool arm's SFT took (`sft` metrics `steps`), with SFT's
  hyper-parameters, into `no_tool/sft/`;
- GRPO from there without tools (`grpo.tools.enabled=false`) on the run's train split for exactly as many
  steps as the tool arm's GRPO took, with GRPO's hyper-parameters and rewards, into `no_tool/grpo/`;
- both evaluated on the run's held-out split (the same file the tool arm is scored on) without the tool.

The held-out rows are the run's own file, so the comparison is on identical problems; the stage also checks
that the task's no-tool variant draws the same held-out problems and the same cold-start prompts, and stops in
one line if not. What the tool arm's GRPO measured during training (`grpo.eval_every`) is not repeated here
(the control's final evaluation is what the summary compares), and it keeps no GRPO checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.runtime import run_task
from pipelines.models import base_model_dir
from pipelines.run_folder import RunFolder, read_jsonl, write_jsonl
from pipelines.stages.base import Resources, Stage, StageContext, StageError
from pipelines.stages.grpo import GRPOStage
from pipelines.stages.sft import SFTStage, train
from rl.metrics import generate_flops, train_flops

if TYPE_CHECKING:
    from pipelines.config.schema import PipelineConfig

KEEP = ("accuracy", "steps", "train_time_s", "num_tokens", "params")  # of each arm part, into the stage's metrics


class NoToolStage(Stage):
    name = "no_tool"
    checkpoint = False  # its models are in no_tool/sft/ and no_tool/grpo/: not a checkpoint eval/publish may name
    comparison = True
    reported = ("arm",)

    def check_config(self, cfg: "PipelineConfig") -> None:
        """The control of a tool run: it needs one, and a task that can write its cold start without the tool."""
        from pipelines.config.checks import fail
        from pipelines.tasks import get

        if not (cfg.grpo.enabled and cfg.grpo.tools.enabled):
            fail("no_tool.enabled", True, "trains the control of a tool run (the same budget without the tool): needs "
                 "grpo.enabled=true and grpo.tools.enabled=true")
        if not get(cfg.task.name).tool_calls:
            fail("no_tool.enabled", True, f"task '{cfg.task.name}' has no no-tool variant (task.params.tool=false) to "
                 "train the control on; use a tool task (multiply)")

    def flops(self, m: dict) -> float | None:
        return m.get("flops")

    def summary(self, results) -> dict:
        """tool_gain: the tool-trained GRPO policy with the tool minus this arm, trained and measured without it."""
        if "no_tool" not in results or "grpo" not in results:
            return {}
        return {"tool_gain": results["grpo"]["accuracy"] - results["no_tool"]["accuracy"]}

    def report_tables(self, stages) -> list:
        arm = stages.get("no_tool", {}).get("arm")
        return [arms_table(stages)] if arm else []

    def resources(self, cfg: "PipelineConfig") -> Resources:
        # SFT, then GRPO, one after the other: the peak is the larger of the two.
        arm = control_config(cfg)
        parts = [SFTStage().resources(arm)] if cfg.sft.enabled else []
        parts.append(GRPOStage().resources(arm))
        return Resources(cpus=max(p.cpus for p in parts), gpus=max(p.gpus for p in parts),
                         actors=tuple(a for p in parts for a in p.actors))

    def depends_on(self, cfg: "PipelineConfig") -> tuple[str, ...]:
        return ("sft",) if cfg.sft.enabled else ()  # its step count is matched (grpo's: the start checkpoint's input)

    def check_cluster(self, cfg: "PipelineConfig") -> None:
        arm = control_config(cfg)
        if cfg.sft.enabled:
            SFTStage().check_cluster(arm)
        GRPOStage().check_cluster(arm)

    def run(self, cfg: "PipelineConfig", ctx: StageContext) -> dict:
        out = ctx.out_dir
        tool_sft, tool_grpo = ctx.earlier.get("sft", {}), ctx.earlier.get("grpo", {})
        if not tool_grpo.get("steps"):
            raise StageError("no_tool: the tool arm's GRPO has no recorded steps to match (grpo must finish first)")
        arm = control_config(cfg, grpo_steps=tool_grpo["steps"], grpo_time_s=tool_grpo.get("train_time_s", 0.0))
        result: dict = {"tool_arm": {"sft_steps": tool_sft.get("steps"), "grpo_steps": tool_grpo["steps"]}}
        start = None
        if cfg.sft.enabled:
            cold = write_cold_start(cfg, arm, out / "data" / "cold_start.jsonl")
            (out / "sft").mkdir(parents=True)
            sft_ctx = dataclasses.replace(ctx, out_dir=out / "sft", init=None)
            sft = run_task(train, arm, sft_ctx, "no_tool-sft", max_steps=int(tool_sft["steps"]), cold_start=cold,
                           num_cpus=cfg.sft.cpus, num_gpus=cfg.sft.gpus, name="no_tool-sft")
            result["sft"] = {k: sft[k] for k in KEEP if k in sft} | {"accuracy_before": sft.get("accuracy_before")}
            start = out / "sft"
        (out / "grpo").mkdir(parents=True)
        grpo_ctx = dataclasses.replace(ctx, out_dir=out / "grpo", init=start or base_model_dir(cfg))
        grpo = GRPOStage().run(arm, grpo_ctx, label="no_tool-grpo")
        result["grpo"] = {k: grpo[k] for k in KEEP if k in grpo} | {
            k: grpo.get(k) for k in ("reward_first", "reward_last")}
        final, n = result["grpo"], result["grpo"]["params"]
        flops = train_flops(n, result.get("sft", {}).get("num_tokens", 0)) + \
            generate_flops(n, final.get("num_tokens", 0)) + train_flops(n, final.get("num_tokens", 0))
        return {"arm": result, "accuracy": final["accuracy"], "params": n, "steps": final["steps"], "flops": flops,
                "train_time_s": sum(p.get("train_time_s", 0.0) for p in (result.get("sft", {}), final)),
                "samples": grpo.get("samples", [])}


def arms_table(stages) -> tuple[str, list[tuple[str, ...]]]:
    """The tool run against this control, step for step (report.md and the console)."""
    arm = stages["no_tool"]["arm"]
    pct = lambda m: f"{100 * m['accuracy']:.1f} %" if isinstance(m.get("accuracy"), (int, float)) else "-"  # noqa: E731
    rows = [("arm", "SFT steps", "SFT held-out acc", "GRPO steps", "GRPO held-out acc")]
    for name, sft, grpo in (("trained and evaluated with the tool", stages.get("sft", {}), stages.get("grpo", {})),
                            ("trained and evaluated without it (no_tool)", arm.get("sft", {}), arm.get("grpo", {}))):
        rows.append((name, str(sft.get("steps", "-")), pct(sft), str(grpo.get("steps", "-")), pct(grpo)))
    return "tool vs no-tool at the same budget (same problems, same held-out rows)", rows


def control_config(cfg: "PipelineConfig", grpo_steps: int | None = None, grpo_time_s: float = 0.0) -> "PipelineConfig":
    """The run's config for the no-tool arm: the task's no-tool variant, GRPO without tools for `grpo_steps`
    (the tool arm's), no held-out curve and no checkpoints. The time cap stays a guard only: three times what
    the tool arm's GRPO trained, at least `grpo.time_budget_s` (0 stays 0: no cap)."""
    g = cfg.grpo
    steps = int(grpo_steps or g.max_steps)
    cap = max(g.time_budget_s, 3 * grpo_time_s) if g.time_budget_s else 0.0
    grpo = dataclasses.replace(g, tools=dataclasses.replace(g.tools, enabled=False), max_steps=steps,
                               time_budget_s=cap, save_steps=0, eval_every=-1)
    task = dataclasses.replace(cfg.task, params={**cfg.task.params, "tool": False})
    return dataclasses.replace(cfg, task=task, grpo=grpo)


def write_cold_start(cfg: "PipelineConfig", arm: "PipelineConfig", path: Path) -> Path:
    """The run's cold-start rows with the task's no-tool completions, written to `path`. StageError (one line)
    when the no-tool variant does not draw the same problems (held-out rows, cold-start prompts)."""
    from pipelines.data import render_splits
    from pipelines.tasks import load_task

    folder = RunFolder(cfg.run_dir)
    splits = load_task(arm.task, arm.run.seed)
    tokenizer = None
    if cfg.model.kind != "tiny":  # templates that render with the tokenizer (chat templates) need it
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder.tokenizer, trust_remote_code=cfg.model.trust_remote_code)
    plain = render_splits(arm.task, {s: splits.get(s, []) for s in ("cold_start", "heldout")}, tokenizer)
    heldout = read_jsonl(folder.data("heldout"))
    if [(r["prompt"], str(r["answer"])) for r in plain["heldout"]] != [(r["prompt"], str(r["answer"])) for r in heldout]:
        raise StageError(f"no_tool: task '{cfg.task.name}' with task.params.tool=false draws other held-out problems "
                         "than the tool run; the two arms would not be compared on the same rows")
    answer = {r["prompt"]: r["completion"] for r in plain["cold_start"]}
    rows = read_jsonl(folder.data("cold_start"))
    missing = [i for i, r in enumerate(rows) if r["prompt"] not in answer]
    if missing:
        raise StageError(f"no_tool: {len(missing)} of the run's {len(rows)} cold-start problems (first: row {missing[0]}) "
                         f"have no no-tool trace from task '{cfg.task.name}' (task.params.tool=false)")
    write_jsonl(path, [{**r, "completion": answer[r["prompt"]]} for r in rows])
    return path
